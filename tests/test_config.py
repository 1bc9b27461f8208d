"""Config loading: good configs load; every bad one fails at load with the file, the key and a fix."""

from __future__ import annotations

import pytest

from router_plugin.config import load_config
from router_plugin.errors import ConfigError
from router_plugin.limits import PlanInputs, plan_for
from tests.fake_keys import openrouter_key

GOOD = {
    "model_list": [
        {"model_name": "free-chat", "litellm_params": {"model": "openrouter/deepseek/deepseek-r1:free",
                                                       "api_key": "os.environ/TEST_OR_KEY"}},
        {"model_name": "free-chat", "litellm_params": {"model": "groq/openai/gpt-oss-120b",
                                                       "api_key": "os.environ/TEST_GROQ_KEY"}},
    ],
    "router_plugin": {
        "redis_url": "redis://127.0.0.1:6379/0",
        "openrouter": {"tier": "funded"},
        "limits": {"groq/openai/gpt-oss-120b": {"rpm": 10, "tpm": 4000}, "openrouter": {"rpm": 5}},
        "max_wait_s": 2,
    },
}


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("TEST_OR_KEY", "or-test-key")
    monkeypatch.setenv("TEST_GROQ_KEY", "groq-test-key")


def with_section(**section):
    return {**GOOD, "router_plugin": section}


def with_model(**params):
    return {"model_list": [{"model_name": "m", "litellm_params": params}]}


def test_good_config_loads_with_overrides():
    cfg = load_config(GOOD)
    s = cfg.settings
    assert s.redis_url == "redis://127.0.0.1:6379/0" and s.openrouter_tier == "funded" and s.max_wait_s == 2
    groq = plan_for({**GOOD["model_list"][1], "litellm_params": {"model": "groq/openai/gpt-oss-120b", "api_key": "x"}},
                    s.plan_inputs)
    assert {c.key: c.limit.capacity for c in groq.counters} == {"rpm": 10, "rpd": 1000, "tpm": 4000, "tpd": 200000}
    orp = plan_for(GOOD["model_list"][0], s.plan_inputs)
    assert {c.key: c.limit.capacity for c in orp.counters} == {"minute": 5, "day": 1000}


def test_yaml_file_and_env_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_REDIS", "redis://10.0.0.1:6380/2")
    path = tmp_path / "c.yaml"
    path.write_text(
        "model_list:\n"
        "  - model_name: a\n"
        "    litellm_params: {model: groq/openai/gpt-oss-20b, api_key: os.environ/TEST_GROQ_KEY}\n"
        "router_plugin:\n  redis_url: os.environ/MY_REDIS\n"
    )
    assert load_config(path).settings.redis_url == "redis://10.0.0.1:6380/2"


@pytest.mark.parametrize(
    "config, key, words",
    [
        (with_model(model="acme/foo"), "model_list[0].litellm_params.model", "unknown provider 'acme'"),
        (with_model(model="openrouter/deepseek/deepseek-r1:free", api_key="os.environ/NOPE_NOT_SET"),
         "model_list[0].litellm_params.api_key", "NOPE_NOT_SET is not set"),
        (with_model(model="openrouter/openai/gpt-4o-mini", api_key="k"), "model_list[0].litellm_params.model",
         "not a free model"),
        ({"model_list": [{"litellm_params": {"model": "groq/openai/gpt-oss-20b"}}]}, "model_list[0].model_name", "missing"),
        ({"model_list": []}, "model_list", "non-empty"),
        (with_section(limits={"groq/openai/gpt-oss-120b": {"rpm": -5}}),
         "router_plugin.limits.groq/openai/gpt-oss-120b.rpm", "positive"),
        (with_section(limits={"groq/openai/gpt-oss-120b": {"rqm": 5}}),
         "router_plugin.limits.groq/openai/gpt-oss-120b.rqm", "did you mean 'rpm'"),
        (with_section(max_wiat_s=3), "router_plugin.max_wiat_s", "did you mean 'max_wait_s'"),
        (with_section(openrouter={"tier": "gold"}), "router_plugin.openrouter.tier", "'free'"),
        (with_section(max_wait_s="soon"), "router_plugin.max_wait_s", "must be a number"),
        (with_section(allow_paid="yes"), "router_plugin.allow_paid", "true or false"),
        (with_section(on_store_error="ignore"), "router_plugin.on_store_error", "fail_open, fail_closed"),
        (with_section(timeouts={"first_token_s": 0}), "router_plugin.timeouts.first_token_s", "positive"),
        (with_section(timeouts={"ttft": 3}), "router_plugin.timeouts.ttft", "unknown key"),
        (with_section(cooldowns={"busy_s": -1}), "router_plugin.cooldowns.busy_s", "positive"),
        (with_section(metrics={"port": 70000}), "router_plugin.metrics.port", "TCP port"),
        (with_section(expected_workers=0), "router_plugin.expected_workers", "positive"),
    ],
)
def test_bad_configs_name_the_key(config, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.key == key
    assert words in str(err.value)
    assert str(err.value).startswith("<dict>: " + key)


def test_missing_provider_key_is_reported(monkeypatch):
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    with pytest.raises(ConfigError) as err:
        load_config(with_model(model="openrouter/deepseek/deepseek-r1:free"))
    assert err.value.key == "model_list[0].litellm_params.api_key" and "OPENROUTER_API_KEY" in str(err.value)


def test_paid_model_allowed_only_when_asked():
    cfg = load_config({**with_model(model="openrouter/openai/gpt-4o-mini", api_key="k"), "router_plugin": {"allow_paid": True}})
    p = plan_for({**cfg.model_list[0], "model_info": {"id": "x"}}, cfg.settings.plan_inputs)
    assert not p.free and not p.metered


def test_bad_yaml_names_the_position(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model_list:\n  - model_name: a\n   litellm_params: {model: x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "line" in str(err.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="file not found"):
        load_config("/nonexistent/config.yaml")


def test_api_key_never_reaches_the_plan():
    p = plan_for(GOOD["model_list"][0] | {"litellm_params": {"model": "openrouter/deepseek/deepseek-r1:free",
                                                              "api_key": openrouter_key("secretsecret")}}, PlanInputs())
    assert "secret" not in repr(p)
