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


# ---- values that used to pass and break later (issue 11 item 6) ------------------------------------------------

def one_model(**entry):
    return {"model_list": [{"model_name": "m", "litellm_params": {"model": "groq/openai/gpt-oss-20b", "api_key": "k"},
                            **entry}]}


NAN, INF = float("nan"), float("inf")
LATER = [
    ({**one_model(), "router_settings": "hello"}, "router_settings", "must be a mapping"),
    ({**one_model(), "litellm_settings": "hello"}, "litellm_settings", "must be a mapping"),
    (one_model(litellm_params={"model": "groq/openai/gpt-oss-20b", "api_key": 12345}),
     "model_list[0].litellm_params.api_key", "must be a string, got int"),
    (one_model(model_info="hello"), "model_list[0].model_info", "must be a mapping"),
    (one_model(litellm_params="hello"), "model_list[0].litellm_params", "must be a mapping"),
    ({**one_model(), "router_plugin": {"arrival_margin_s": NAN}}, "router_plugin.arrival_margin_s", "finite"),
    ({**one_model(), "router_plugin": {"timeouts": {"total_s": NAN}}}, "router_plugin.timeouts.total_s", "finite"),
    ({**one_model(), "router_plugin": {"redis_timeout_s": NAN}}, "router_plugin.redis_timeout_s", "finite"),
    ({**one_model(), "router_plugin": {"redis_timeout_s": INF}}, "router_plugin.redis_timeout_s", "finite"),
    ({**one_model(), "router_plugin": {"cooldowns": {"gone_s": INF}}}, "router_plugin.cooldowns.gone_s", "finite"),
    (one_model(model_name=123), "model_list[0].model_name", "must be a string, got 123"),
    (one_model(litellm_params={"model": "groq/openai/gpt-oss-20b", "api_key": "k", "rpm": "ten"}),
     "model_list[0].litellm_params.rpm", "must be an integer"),
    (one_model(model_info={"tpm": -1}), "model_list[0].model_info.tpm", "positive"),
    ({**one_model(), "router_plugn": {"max_wait_s": 1}}, "router_plugn", "did you mean 'router_plugin'?"),
    ({**one_model(), "router_plugin": {"max_waiters": 0}}, "router_plugin.max_waiters", "must be positive, got 0"),
    ({**one_model(), "router_plugin": {"max_waiters": "many"}}, "router_plugin.max_waiters", "must be an integer"),
]


@pytest.mark.parametrize("config, key, words", LATER, ids=[f"{k}-{w}" for _, k, w in LATER])
def test_values_that_broke_later_are_refused_with_one_line(config, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.key == key and words in str(err.value), str(err.value)
    assert "\n" not in str(err.value) and "12345" not in str(err.value)


def test_a_non_utf8_file_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model_list:\n  - model_name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: (file): not UTF-8 text: byte 0xe9 on line 2 (save the file as UTF-8)"


@pytest.mark.parametrize("text, line", [
    ("model_list:\n  - model_name: a\n    litellm_params: {model: x\n  - model_name: b\n", 3),  # '{' never closed
    ("a: 1\nb: [1, 2\nc: 3\n", 2),
    ("model_list:\n  - model_name: a\n\tlitellm_params: 3\n", 3),
    ("a: 1\nb: c: d\n", 2),
])
def test_yaml_errors_name_the_line_to_fix(tmp_path, text, line):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}:{line}:") and f"at line {line}, column" in str(err.value)


def test_gone_cooldown_cannot_be_infinite_so_a_404_is_recorded():
    # .inf used to load, then every 404 failed to record ("cannot convert float infinity to integer")
    with pytest.raises(ConfigError, match="cooldowns.gone_s: must be a finite number"):
        load_config({**one_model(), "router_plugin": {"cooldowns": {"gone_s": INF}}})
    assert load_config({**one_model(), "router_plugin": {"cooldowns": {"gone_s": 86400}}}).settings.cooldowns.gone_s == 86400


def test_redis_url_from_an_unset_variable_is_an_error(monkeypatch):
    monkeypatch.delenv("RP_TEST_REDIS_URL", raising=False)
    with pytest.raises(ConfigError) as err:
        load_config({**GOOD, "router_plugin": {"redis_url": "os.environ/RP_TEST_REDIS_URL"}})
    assert err.value.key == "router_plugin.redis_url" and "RP_TEST_REDIS_URL is not set" in str(err.value)


def test_dotenv_in_the_working_directory_and_next_to_the_config(tmp_path, monkeypatch):
    conf_dir, work = tmp_path / "conf", tmp_path / "work"
    conf_dir.mkdir(), work.mkdir()
    for name in ("RP_DOTENV_A", "RP_DOTENV_B", "RP_DOTENV_SET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RP_DOTENV_SET", "from-the-environment")
    (work / ".env").write_text("RP_DOTENV_A=redis://127.0.0.1:1/0\nRP_DOTENV_SET=from-the-file\n")
    (conf_dir / ".env").write_text("RP_DOTENV_B=gsk-from-dotenv\n")
    path = conf_dir / "c.yaml"
    path.write_text("model_list:\n  - model_name: a\n    litellm_params: {model: groq/openai/gpt-oss-20b, "
                    "api_key: os.environ/RP_DOTENV_B}\nrouter_plugin:\n  redis_url: os.environ/RP_DOTENV_A\n")
    monkeypatch.chdir(work)
    cfg = load_config(path)
    assert cfg.settings.redis_url == "redis://127.0.0.1:1/0"
    import os

    assert os.environ["RP_DOTENV_B"] == "gsk-from-dotenv" and os.environ["RP_DOTENV_SET"] == "from-the-environment"


# ---- an existing LiteLLM config keeps its meaning (issue 12) --------------------------------------------------

def test_the_users_redis_is_the_store_unless_the_section_names_one(monkeypatch):
    for name in ("REDIS_URL", "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    base = one_model()
    assert load_config(base).settings.redis_url is None  # nothing anywhere: the embedded Redis
    rs = {"redis_host": "10.0.0.5", "redis_port": 6380, "redis_password": "p@ss"}
    s = load_config({**base, "router_settings": rs}).settings
    assert s.redis_url == "redis://:p%40ss@10.0.0.5:6380/0" and s.store_source == "router_settings.redis_host/redis_port"
    s = load_config({**base, "router_settings": {"redis_url": "redis://r:1/2"}}).settings
    assert s.redis_url == "redis://r:1/2"
    s = load_config({**base, "router_settings": rs, "router_plugin": {"redis_url": "redis://mine:1/0"}}).settings
    assert s.redis_url == "redis://mine:1/0" and s.store_source is None
    assert load_config({**base, "router_settings": rs, "router_plugin": {"embedded_path": "/tmp/x.rdb"}}).settings.redis_url is None
    monkeypatch.setenv("REDIS_HOST", "envhost")
    monkeypatch.setenv("REDIS_PORT", "6390")
    assert load_config(base).settings.redis_url == "redis://envhost:6390/0"  # the proxy's REDIS_* convention
    monkeypatch.setenv("REDIS_URL", "redis://envurl:1/0")
    assert load_config(base).settings.redis_url == "redis://envurl:1/0"
    with pytest.raises(ConfigError, match=r"router_settings.redis_host: environment variable RP_NOPE_HOST is not set"):
        load_config({**base, "router_settings": {"redis_host": "os.environ/RP_NOPE_HOST", "redis_port": 1}})
    with pytest.raises(ConfigError, match=r"router_settings.redis_port: must be a TCP port"):
        load_config({**base, "router_settings": {"redis_host": "h", "redis_port": "abc"}})


def test_overridden_litellm_settings_are_named_with_why():
    from router_plugin.config import litellm_overrides

    found = {o.key: o for o in litellm_overrides(
        {"routing_strategy": "usage-based-routing-v2", "num_retries": 3, "cooldown_time": 30, "retry_after": 5}, {}, 4)}
    assert set(found) == {"router_settings.routing_strategy", "router_settings.num_retries",
                          "router_settings.cooldown_time", "router_settings.retry_after"}
    assert found["router_settings.num_retries"].change.startswith("raised from 3 to 8")
    assert all(o.why and o.user_set for o in found.values())
    plain = litellm_overrides({}, {}, 4)  # nothing set: only LiteLLM's default cooldowns, as a note
    assert [(o.key, o.user_set) for o in plain] == [("router_settings.disable_cooldowns", False)]
    assert litellm_overrides({"num_retries": 10, "disable_cooldowns": True}, {}, 4) == []
    assert [o.key for o in litellm_overrides({}, {"num_retries": 1}, 2)][0] == "litellm_settings.num_retries"


def test_users_lower_rpm_tpm_become_limits_of_that_deployment():
    from router_plugin._plans import PlanBook

    book = PlanBook(PlanInputs())

    def caps(entry):
        return {c.key: c.limit.capacity for c in book.plan(entry).counters}

    groq = {"model_name": "g", "litellm_params": {"model": "groq/openai/gpt-oss-120b", "api_key": "k", "rpm": 10},
            "model_info": {"id": "g1", "tpm": 5000}}
    assert caps(groq) == {"rpm": 10, "rpd": 1000, "tpm": 5000, "tpd": 200000}
    higher = {**groq, "litellm_params": {**groq["litellm_params"], "rpm": 500}, "model_info": {"id": "g2"}}
    assert caps(higher)["rpm"] == 30  # a higher rpm never raises the provider's limit
    orr = {"model_name": "o", "litellm_params": {"model": "openrouter/deepseek/deepseek-r1:free", "api_key": "k",
                                                 "rpm": 5}, "model_info": {"id": "o1"}}
    assert caps(orr) == {"minute": 20, "day": 50, "m:deepseek/deepseek-r1:free:rpm": 5}  # on top of the pool


@pytest.mark.integration
def test_an_existing_litellm_config_keeps_its_meaning(sim, redis_server, caplog, monkeypatch):
    """The typical existing config: LiteLLM's strategy, num_retries: 3, its Redis in router_settings and rpm: 10 on
    a deployment. The counters go to that Redis, rpm: 10 holds, and every overridden setting is named."""
    import asyncio

    import router_plugin
    from router_plugin.demo import DEMO_CHAIN
    from tests.support import sent

    for name in ("REDIS_URL", "REDIS_HOST", "REDIS_PORT"):
        monkeypatch.delenv(name, raising=False)
    redis_server.client().flushall()
    gq_a, gq_b = DEMO_CHAIN[2], DEMO_CHAIN[3]
    base = f"{sim.base_url}/openai/v1"
    config = {
        "model_list": [
            {"model_name": "chat", "litellm_params": {"model": gq_a, "api_key": "sim-groq-key", "api_base": base,
                                                      "rpm": 10}},
            {"model_name": "chat", "litellm_params": {"model": gq_b, "api_key": "sim-groq-key", "api_base": base}},
        ],
        "router_settings": {"routing_strategy": "usage-based-routing-v2", "num_retries": 3,
                            "redis_host": "127.0.0.1", "redis_port": redis_server.port},
    }
    with caplog.at_level("INFO", logger="router_plugin"):
        router = router_plugin.build_router(config)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("router_settings.routing_strategy" in w and "usage-based-routing-v2" in w for w in warned), warned
    assert any("router_settings.num_retries: raised from 3 to 4" in w for w in warned), warned
    assert any("disable_cooldowns" in r.getMessage() for r in caplog.records)

    async def burst():  # one after the other: LiteLLM's own rpm -> max_parallel_requests semaphore plays no part
        return [await router.acompletion(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=16)
                for _ in range(15)]

    replies = asyncio.run(burst())
    assert len(replies) == 15
    assert sent(sim, gq_a) == 10 and sent(sim, gq_b) == 5  # rpm: 10 held; the rest went to the next deployment
    assert redis_server.client().keys("rp:*")  # the counters are in the user's Redis


# ---- fuzzer: any value at any key is a valid config or a ConfigError naming a key, never another exception ----

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st  # noqa: E402

from router_plugin.config import (  # noqa: E402
    _SECTION_KEYS, Calibration, Cooldowns, Timeouts, find_problems,
)

_ANY = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**12) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12) | st.sampled_from(["os.environ/RP_FUZZ_UNSET", "os.environ/TEST_GROQ_KEY", "hello",
                                              "redis://127.0.0.1:6379/0", "groq/openai/gpt-oss-20b"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
_PATHS = (
    [("router_plugin", k) for k in sorted(_SECTION_KEYS)]
    + [("router_plugin", "cooldowns", f) for f in Cooldowns.__dataclass_fields__]
    + [("router_plugin", "timeouts", f) for f in Timeouts.__dataclass_fields__]
    + [("router_plugin", "calibration", f) for f in Calibration.__dataclass_fields__]
    + [("router_plugin", "metrics", f) for f in ("enabled", "port")]
    + [("router_plugin", "openrouter", "tier"), ("router_plugin", "limits", "groq/openai/gpt-oss-20b"),
       ("router_plugin", "limits", "openrouter", "rpm"), ("router_plugin", "limits", "groq/openai/gpt-oss-20b", "tpm")]
    + [("model_list", 0, k) for k in ("model_name", "litellm_params", "model_info")]
    + [("model_list", 0, "litellm_params", k) for k in ("model", "api_key", "api_base", "rpm", "tpm")]
    + [("model_list", 0, "model_info", k) for k in ("id", "rpm", "tpm")]
    + [(k,) for k in ("model_list", "router_plugin", "router_settings", "litellm_settings", "general_settings",
                      "router_plugn")]
    + [("router_settings", k) for k in ("routing_strategy", "num_retries", "redis_url", "redis_host", "redis_port",
                                         "redis_password", "cooldown_time", "retry_after")]
    + [("litellm_settings", k) for k in ("num_retries", "cache", "cache_params")]
)


def _fuzz_base() -> dict:
    return {"model_list": [{"model_name": "m", "litellm_params": {"model": "groq/openai/gpt-oss-20b",
                                                                   "api_key": "os.environ/TEST_GROQ_KEY"},
                            "model_info": {"id": "d1"}}],
            "router_settings": {"redis_host": "127.0.0.1", "redis_port": 6379},
            "litellm_settings": {}, "router_plugin": {"cooldowns": {}, "timeouts": {}, "metrics": {}}}


def _set(config: dict, path: tuple, value) -> None:
    node = config
    for part in path[:-1]:
        nxt = node[part] if (isinstance(node, list) and isinstance(part, int)) else node.get(part)
        if not isinstance(nxt, (dict, list)):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[path[-1]] = value


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_PATHS), _ANY), min_size=1, max_size=3))
def test_fuzz_any_value_at_any_key(changes):
    from router_plugin._plans import PlanBook
    from router_plugin.checks import check

    config = _fuzz_base()
    for path, value in changes:
        try:
            _set(config, path, value)
        except (TypeError, IndexError, KeyError, AttributeError):  # an earlier change replaced a parent: path gone
            pass
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        shown_key = "".join(c if c.isprintable() else repr(c)[1:-1] for c in exc.key)  # a key may hold a line break
        assert exc.key and "\n" not in str(exc) and str(exc).startswith(f"<dict>: {shown_key}: ")
    else:  # a config that loads must not break later: every plan derives, every number is finite
        import math

        book = PlanBook(loaded.settings.plan_inputs)
        for entry in loaded.model_list:
            book.plan(entry)
        for block in (loaded.settings, loaded.settings.cooldowns, loaded.settings.timeouts):
            for value in vars(block).values():
                if isinstance(value, float):
                    assert math.isfinite(value)
    raw, errors = find_problems(config)
    assert all(isinstance(e, ConfigError) and e.key for e in errors)
    check(config).render()


@pytest.mark.integration
def test_the_proxy_refuses_a_bad_config_with_one_line(tmp_path):
    """A real ``litellm --config``: the refusal is one clear line (no traceback, not mangled by LiteLLM's
    redaction of ``api_key: ...``), and the proxy exits non-zero."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from tests.servers import free_port

    path = tmp_path / "bad.yaml"
    path.write_text("model_list:\n  - model_name: chat\n    litellm_params: {model: groq/openai/gpt-oss-20b, "
                    "api_key: os.environ/RP_PROXY_UNSET_KEY}\n"
                    "litellm_settings:\n  callbacks: router_plugin.proxy_handler\n")
    # the variable is in a .env in the proxy's directory: LiteLLM resolves os.environ/ when it reads the file, without
    # it, so the plugin must not find it either (it would pass a config whose key LiteLLM sends as None)
    (tmp_path / ".env").write_text("RP_PROXY_UNSET_KEY=gsk-in-dotenv\n")
    env = {k: v for k, v in os.environ.items() if k != "RP_PROXY_UNSET_KEY"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    litellm_cli = shutil.which("litellm") or sys.executable
    cmd = [litellm_cli] if litellm_cli != sys.executable else [sys.executable, "-m", "litellm.proxy.proxy_cli"]
    proc = subprocess.run([*cmd, "--config", str(path), "--port", str(free_port())], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = [line for line in out.splitlines() if "RP_PROXY_UNSET_KEY" in line]
    assert lines == [f"router_plugin: the proxy cannot start: {path}: model_list[0].litellm_params.api_key: "
                     "environment variable RP_PROXY_UNSET_KEY is not set (export RP_PROXY_UNSET_KEY=... before starting the "
                     "proxy, which does not read a .env in its directory)"], out[-3000:]
    assert "Traceback" not in out and "REDACTED" not in out


# ---- priorities, pacing and fair shares (issue 17) ------------------------------------------------------------

def test_priority_pace_and_shares_load():
    cfg = load_config(with_section(priority={"reserve": 0.2}, pace={"openrouter": True,
                                                                     "groq/openai/gpt-oss-120b": {"burst": 40}},
                                   shares={"per": "team", "openrouter": 0.5}))
    policy = cfg.settings.policy
    assert policy.reserve == 0.2 and policy.active
    assert policy.pace["openrouter"].burst is None and policy.pace["groq/openai/gpt-oss-120b"].burst == 40
    assert policy.shares.per == "team" and policy.shares.fractions == {"openrouter": 0.5}
    assert not load_config(GOOD).settings.policy.active  # all three are opt-in


POLICY_BAD = [
    (with_section(priority={"reserve": 1}), "router_plugin.priority.reserve", "below 1"),
    (with_section(priority={"reserve": -0.1}), "router_plugin.priority.reserve", "zero or more"),
    (with_section(priority={"reserve": "20%"}), "router_plugin.priority.reserve", "must be a number"),
    (with_section(priority={"reseve": 0.2}), "router_plugin.priority.reseve", "the only key is reserve"),
    (with_section(priority=0.2), "router_plugin.priority", "{reserve: 0.2}"),
    (with_section(pace={"openrouter": "yes"}), "router_plugin.pace.openrouter", "true, false or {burst: N}"),
    (with_section(pace={"openrouter": {"burst": 0}}), "router_plugin.pace.openrouter.burst", "positive"),
    (with_section(pace={"openrouter": {"bursts": 3}}), "router_plugin.pace.openrouter.bursts", "the only key is burst"),
    (with_section(pace={"openrouter/deepseek/deepseek-r1:free": True}),
     "router_plugin.pace.openrouter/deepseek/deepseek-r1:free", "use openrouter instead"),
    (with_section(pace={"groq/openai/gpt-oss-12b": True}), "router_plugin.pace.groq/openai/gpt-oss-12b",
     "did you mean 'groq/openai/gpt-oss-120b'?"),
    (with_section(shares={"per": "org", "openrouter": 0.5}), "router_plugin.shares.per", "key, user, team"),
    (with_section(shares={"openrouter": 1.5}), "router_plugin.shares.openrouter", "at most 1"),
    (with_section(shares={"openrouter": 0}), "router_plugin.shares.openrouter", "positive"),
    (with_section(shares=["openrouter"]), "router_plugin.shares", "{per: key, openrouter: 0.5}"),
]


@pytest.mark.parametrize("config, key, words", POLICY_BAD, ids=[f"{k}-{w}" for _, k, w in POLICY_BAD])
def test_bad_priority_pace_and_shares_name_the_key_and_the_fix(config, key, words):
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert err.value.key == key and words in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_check_reports_every_policy_problem_at_once():
    from router_plugin.config import find_problems

    _, errors = find_problems(with_section(priority={"reserve": 2}, pace={"openrouter": {"burst": -1}},
                                           shares={"per": "org"}))
    assert {e.key for e in errors} >= {"router_plugin.priority.reserve", "router_plugin.pace.openrouter.burst",
                                       "router_plugin.shares.per"}
    _, errors = find_problems(with_section(pace={"openrouter": {"burst": 0}, "groq/openai/gpt-oss-12b": True}))
    assert {e.key for e in errors} >= {"router_plugin.pace.openrouter.burst", "router_plugin.pace.groq/openai/gpt-oss-12b"}
