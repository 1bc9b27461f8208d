"""``router-plugin`` commands against the simulator and a real redis-server: what they print, not only exit codes."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import pytest
import yaml

import router_plugin
from router_plugin.cli import CLEAR, main
from router_plugin.config import load_config
from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config
from tests.fake_keys import openrouter_key
from tests.support import bare
from router_plugin.adapter.router_api import all_deployments

pytestmark = pytest.mark.integration

OR_A, OR_B, GQ_A, GQ_B = DEMO_CHAIN
MSG = [{"role": "user", "content": "hello"}]
FAKE_OR_KEY = openrouter_key("FAKE-cli-0123456789abcdef-must-never-be-printed")


def write_config(tmp_path, sim, redis_url, name="config.yaml", **kw) -> str:
    kw.setdefault("redis_timeout_s", 5)  # others' tests share these 2 cores: a slow Redis reply is not the subject
    path = tmp_path / name
    path.write_text(yaml.safe_dump(demo_config(sim.base_url, redis_url=redis_url, **kw), sort_keys=False))
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ask(router, n=1, **kw) -> list[dict]:
    async def go():
        infos = []
        for _ in range(n):
            metadata: dict = {}
            await router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=16, metadata=metadata, **kw)
            infos.append(metadata["router_plugin"])
        return infos

    return asyncio.run(go())


def completions_sent(sim) -> int:
    stats = sim.stats()
    return sum(sum(c.values()) for c in stats["requests"].values())


# ---- help -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("command, phrase", [
    ("status", "used / limit per minute and per day"),
    ("check", "every error with its key and a fix"),
    ("models", "OpenRouter GET /api/v1/models"),
    ("key", "free_model_daily_requests"),
    ("demo", "router-plugin status --config /tmp/demo.yaml --watch"),
])
def test_every_command_has_help(capsys, command, phrase):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert out.startswith(f"usage: router-plugin {command}")
    assert phrase in " ".join(out.split())


def test_console_entry_point_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "router_plugin.cli", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0
    for command in ("status", "check", "models", "key", "demo"):
        assert re.search(rf"^\s+{command}\s+\S", done.stdout, re.M), done.stdout


# ---- status ---------------------------------------------------------------------------------------------------

def test_status_shows_pools_resets_cooldowns_and_quarantine(sim, redis_url, tmp_path, capsys):
    sim.configure({"models": {bare(OR_A): {"gone": True}}})
    path = write_config(tmp_path, sim, redis_url, calibration={"interval_s": 0})  # the 404 path, not the roster's
    router = router_plugin.build_router(path)
    infos = ask(router, 3)
    assert [i["model"] for i in infos] == [OR_B] * 3  # OR_A 404 -> quarantined, OR_B serves

    code, out, _ = run(capsys, "status", "--config", path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("router_plugin status   store " + redis_url) and lines[0].endswith("(Redis clock)")
    pool = next(i for i, line in enumerate(lines) if line.startswith("OpenRouter free pool (account "))
    minute, day = lines[pool + 1], lines[pool + 2]
    # 4 attempts reached OpenRouter (the 404 counts, as OpenRouter counts it): the account pool shows 4 today
    # (this minute: 4, or fewer if a clock minute ended since)
    used, left = map(int, re.match(r"\s+requests/min\s+(\d+) / 20\s+(\d+)\s+(\d\d:\d\d:00 \(in \d+s\)|-)\s+ok$",
                                   minute).groups()[:2])
    assert used <= 4 and used + left == 20
    assert re.match(r"\s+requests/day\s+4 / 50\s+46\s+\d\d-\d\d 00:00:00 \(in (\d+h\d\dm|\d+m\d\ds)\)\s+ok$", day), day
    assert any(re.match(r"\s+tokens/min\s+0 / 8000\s+8000\s+-\s+ok$", line) for line in lines)
    gone = next(line for line in lines if line.startswith(OR_A))
    assert "quarantined" in gone and f"No endpoints found for {bare(OR_A)}" in gone
    assert re.search(r"\(in (5h59m|6h00m)\)", gone)
    assert re.match(rf"{re.escape(OR_B)}\s+free-chat\s+ok", next(line for line in lines if line.startswith(OR_B)))
    assert completions_sent(sim) == 4  # status itself sent nothing


STATUS_KEYS = {"schema", "now", "now_utc", "store", "key_prefix", "config", "pools", "deployments",
               "provider_values_clamped_today", "waiting"}
POOL_KEYS = {"id", "label", "provider", "deployments", "limits", "served_today", "reserved_for_priority_0", "pace",
             "forecast"}
LIMIT_KEYS = {"counter", "name", "unit", "window_s", "kind", "used", "limit", "remaining", "resets_at",
              "resets_at_utc", "resets_in_s", "state", "reason"}
DEPLOYMENT_KEYS = {"group", "model", "provider", "pool", "context_window", "state", "reason", "until", "until_utc",
                   "until_in_s", "strikes"}


def test_status_json_schema_and_provider_blocks(sim, redis_url, tmp_path, capsys):
    # The account spent its day elsewhere: the first request gets OpenRouter's per-day 429 and falls over to Groq.
    sim.configure({"openrouter": {"accounts": {"sim-openrouter-key": {"used_today": 50}}}})
    # (GQ_A's tokens/min at 60 drains 1 token a second: what was used is still visible when status runs)
    path = write_config(tmp_path, sim, redis_url, limits={GQ_A: {"tpm": 60}}, calibration={"interval_s": 0})
    router = router_plugin.build_router(path)
    info = ask(router)[0]
    assert info["model"] == GQ_A and info["attempts"] == 2

    code, out, _ = run(capsys, "status", "--config", path, "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == STATUS_KEYS and doc["schema"] == "router_plugin.status/1"
    assert doc["store"] == redis_url and doc["key_prefix"] == "rp:" and doc["config"] == path
    assert doc["now_utc"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(doc["now"]))
    assert [p["label"].split(" (")[0] for p in doc["pools"]] == ["OpenRouter free pool", GQ_A, GQ_B]
    for pool in doc["pools"]:
        assert set(pool) == POOL_KEYS
        for lim in pool["limits"]:
            assert set(lim) == LIMIT_KEYS
            assert lim["state"] in ("ok", "exhausted", "blocked") and lim["unit"] in ("requests", "tokens")
            assert lim["remaining"] == max(0, lim["limit"] - lim["used"])
    openrouter = doc["pools"][0]
    assert openrouter["provider"] == "openrouter" and openrouter["deployments"] == [OR_A, OR_B]
    day = next(lim for lim in openrouter["limits"] if lim["counter"] == "day")
    midnight = (doc["now"] // 86400 + 1) * 86400
    assert day["state"] == "blocked" and day["reason"] == "exhausted (provider 429)"
    assert day["used"] == day["limit"] == 50 and day["resets_at"] == midnight
    assert day["resets_at_utc"].endswith("T00:00:00Z") and day["kind"] == "fixed" and day["window_s"] == 86400
    groq = doc["pools"][1]
    assert {lim["counter"]: lim["used"] for lim in groq["limits"]}["rpd"] == 1
    tpm = next(lim for lim in groq["limits"] if lim["counter"] == "tpm")
    assert tpm["kind"] == "refill" and tpm["limit"] == 60 and 0 < tpm["used"] < 60 and tpm["resets_at"] > doc["now"]
    assert [d["model"] for d in doc["deployments"]] == list(DEMO_CHAIN)
    for d in doc["deployments"]:
        assert set(d) == DEPLOYMENT_KEYS and d["state"] == "ok" and d["group"] == DEMO_GROUP
    assert doc["deployments"][0]["pool"] == openrouter["id"] and doc["deployments"][0]["context_window"] == 65536

    code, out, _ = run(capsys, "status", "--config", path)
    day_line = next(line for line in out.splitlines() if line.strip().startswith("requests/day") and "50 / 50" in line)
    assert "blocked: exhausted (provider 429)" in day_line and "00:00:00 (in " in day_line


def test_status_shows_use_per_priority_and_key_reserve_pace_forecast_and_the_line(sim, redis_url, tmp_path,
                                                                                   capsys):
    """Issue 17 item 5: served requests per priority and per key / team, what is kept for priority 0, the pace,
    the forecast at the last hour's rate, and who waits in line."""
    from router_plugin.store import QuotaStore, resolve_target
    from router_plugin.store.queue import WaitQueue

    path = write_config(tmp_path, sim, redis_url, calibration={"interval_s": 0}, priority={"reserve": 0.2},
                        pace={"openrouter": {"burst": 10}})
    router = router_plugin.build_router(path)
    who = {"alice": ("hash-alice", "research"), "bob": ("hash-bob", "ops")}

    async def go():
        for name, priority in (("alice", 0), ("alice", 1), ("bob", 1), ("alice", 0), ("bob", 1)):
            key_hash, team = who[name]
            await router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=16, metadata={
                "priority": priority, "user_api_key_hash": key_hash, "user_api_key_alias": name,
                "user_api_key_team_id": team})
        await asyncio.sleep(1.5)  # the counts are written in the background, at most once a second
        queue = WaitQueue(QuotaStore(resolve_target(redis_url, None, 5.0), "rp:"))
        for priority in (3, 0, 3):
            await queue.turn(DEMO_GROUP, priority)._join()  # three requests waiting in line (never leaving)

    asyncio.run(go())
    code, out, _ = run(capsys, "status", "--config", path)
    assert code == 0
    block = out.split("\nOpenRouter free pool (account ")[2].split("\n\n")[0].splitlines()[1:]
    assert block[:4] == [
        "  served today by priority: 0: 2, 1: 3",
        "  served today per key: alice: 3, bob: 2",
        "  served today per team: research: 3, ops: 2",
        "  kept for priority 0: 4 requests/min, 10 requests/day",
    ]
    assert re.fullmatch(r"  pace: 5 used of (\d+) allowed so far today \(burst 10\)", block[4]), block[4]
    doc_code, doc_out, _ = run(capsys, "status", "--config", path, "--json")
    pool = json.loads(doc_out)["pools"][0]
    now = json.loads(doc_out)["now"]
    assert pool["pace"]["allowed_so_far"] == min(50, int(10 + 50 * (now % 86400) / 86400))
    fc = pool["forecast"]
    assert fc["rate_per_h"] == 5.0  # 5 served in the last hour; 45 left of the day
    if now + 9 * 3600 < (now // 86400 + 1) * 86400:
        at = time.strftime("%H:%M UTC", time.gmtime(fc["runs_out_at"]))
        assert abs(fc["runs_out_at"] - (now + 9 * 3600)) < 5
        assert block[5] == f"  forecast: at the last hour's rate (5/h) the day runs out at {at}"
    else:
        assert block[5] == "  forecast: at the last hour's rate (5/h) the day lasts until its reset"
    assert "waiting in line for 'free-chat': 3 (priority 0: 1, priority 3: 2)" in out.splitlines()
    assert json.loads(doc_out)["waiting"] == {"free-chat": {"0": 1, "3": 2}}


def test_status_watch_redraws_in_place(sim, redis_url, tmp_path, capsys):
    path = write_config(tmp_path, sim, redis_url)
    code, out, _ = run(capsys, "status", "--config", path, "--watch", "--interval", "0.05", "--count", "3")
    assert code == 0
    frames = out.split(CLEAR)
    assert frames[0] == "" and len(frames) == 4
    for frame in frames[1:]:
        assert frame.startswith("router_plugin status") and "requests/min" in frame and "Ctrl-C to stop" in frame

    code, out, _ = run(capsys, "status", "--config", path, "--watch", "--json", "--interval", "0.05", "--count", "2")
    docs = [json.loads(line) for line in out.splitlines()]
    assert len(docs) == 2 and all(d["schema"] == "router_plugin.status/1" for d in docs)
    assert CLEAR not in out


def test_status_errors_are_clear(sim, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ROUTER_PLUGIN_CONFIG", raising=False)
    code, _, err = run(capsys, "status")
    assert code == 2 and "no config: pass --config FILE or set ROUTER_PLUGIN_CONFIG" in err

    path = write_config(tmp_path, sim, "redis://127.0.0.1:1/0")
    code, _, err = run(capsys, "status", "--config", path)
    assert code == 2 and "quota store redis://127.0.0.1:1/0" in err and "Redis" in err

    config = demo_config(sim.base_url, redis_url="redis://127.0.0.1:1/0")
    config["model_list"][0]["litellm_params"]["api_key"] = "os.environ/RP_TEST_UNSET_KEY"
    monkeypatch.delenv("RP_TEST_UNSET_KEY", raising=False)
    (tmp_path / "env.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run(capsys, "status", "--config", str(tmp_path / "env.yaml"))
    assert code == 2
    assert "model_list[0].litellm_params.api_key: environment variable RP_TEST_UNSET_KEY is not set" in err
    assert "router-plugin check" in err


# ---- check ----------------------------------------------------------------------------------------------------

GOOD_LIST = [
    {"model_name": "free-chat", "litellm_params": {"model": OR_A, "api_key": "k1"}},
    {"model_name": "free-chat", "litellm_params": {"model": GQ_A, "api_key": "k2"}},
]


def with_section(**section) -> dict:
    return {"model_list": GOOD_LIST, "router_plugin": section}


def with_entry(params: dict, name: str | None = "free-chat") -> dict:
    entry = {"litellm_params": params} | ({"model_name": name} if name else {})
    return {"model_list": [*GOOD_LIST, entry]}


BROKEN = [
    (with_section(limits={GQ_A: {"rqm": 5}}), f"router_plugin.limits.{GQ_A}.rqm: unknown limit",
     "did you mean 'rpm'?"),
    (with_section(limits={"openrouter": {"rpd": -3}}), "router_plugin.limits.openrouter.rpd: must be positive, got -3",
     None),
    (with_section(openrouter={"tier": "gold"}), "router_plugin.openrouter.tier: must be 'free' (50 requests/day) or "
     "'funded' (1000/day), got 'gold'", None),
    (with_section(max_wait=3), "router_plugin.max_wait: unknown key", "did you mean 'max_wait_s'?"),
    (with_section(metrics={"port": 70000}), "router_plugin.metrics.port: must be a TCP port (1-65535), got 70000", None),
    (with_section(cooldowns={"busy_s": "soon"}), "router_plugin.cooldowns.busy_s: must be a number, got 'soon'", None),
    (with_section(on_store_error="panic"), "router_plugin.on_store_error: must be one of fail_open, fail_closed", None),
    (with_entry({"model": "openrouter/openai/gpt-4o-mini", "api_key": "k"}),
     "model_list[2].litellm_params.model: openrouter/openai/gpt-4o-mini is not a free model and would cost money",
     "set router_plugin.allow_paid: true"),
    (with_entry({"model": "acme/fast-1", "api_key": "k"}), "model_list[2].litellm_params.model: unknown provider 'acme'",
     "prefix the model with its provider"),
    (with_entry({"model": GQ_B, "api_key": "k"}, name=None), "model_list[2].model_name: missing", None),
    (with_entry({"model": GQ_B, "api_key": "os.environ/RP_TEST_UNSET_KEY"}),
     "model_list[2].litellm_params.api_key: environment variable RP_TEST_UNSET_KEY is not set",
     "export RP_TEST_UNSET_KEY=..."),
    ({"model_list": []}, "model_list: must be a non-empty list", None),
]


@pytest.mark.parametrize("config, message, fix", BROKEN, ids=[b[1].split(":")[0] for b in BROKEN])
def test_check_names_the_key_and_the_fix(tmp_path, capsys, monkeypatch, config, message, fix):
    monkeypatch.delenv("RP_TEST_UNSET_KEY", raising=False)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1
    assert f"ERROR  {message}" in out, out
    if fix:
        assert fix in out
    assert out.rstrip().splitlines()[-1].startswith(f"{path}: FAILED — ")


def test_check_reports_every_problem_at_once_and_warnings(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RP_TEST_UNSET_KEY", raising=False)
    config = {
        "model_list": [
            {"model_name": "chat", "litellm_params": {"model": OR_A, "api_key": "os.environ/RP_TEST_UNSET_KEY",
                                                      "api_base": "os.environ/RP_TEST_UNSET_BASE"}},
            {"model_name": "chat", "litellm_params": {"model": "groq/llama-3.3-70b-versatile", "api_key": "k"}},
            {"model_name": "only-free", "litellm_params": {"model": "openrouter/x-ai/grok-4-fast:free", "api_key": "k"}},
            {"model_name": "only-free", "litellm_params": {"model": "openrouter/openai/gpt-4o", "api_key": "k"}},
            {"model_name": "chat", "litellm_params": {"model": "groq/some/new-model", "api_key": "k"}},
        ],
        "router_plugin": {"limits": {"groq/openai/gpt-oss-12b": {"rpm": 5, "tpd": 0}}, "max_wait_s": -1,
                          "metrics": {"enabled": False, "port": 9464}},
    }
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert errors == [  # in file order (yaml.safe_dump sorted each entry's keys)
        "ERROR  router_plugin.limits.groq/openai/gpt-oss-12b.tpd: must be positive, got 0",
        "ERROR  router_plugin.max_wait_s: must be zero or more, got -1",
        "ERROR  model_list[0].litellm_params.api_base: environment variable RP_TEST_UNSET_BASE is not set",
        "ERROR  model_list[0].litellm_params.api_key: environment variable RP_TEST_UNSET_KEY is not set",
        "ERROR  model_list[3].litellm_params.model: openrouter/openai/gpt-4o is not a free model and would cost money",
    ]
    assert "WARN   model_list[1].litellm_params.model: groq/llama-3.3-70b-versatile is retired on Groq" in out
    assert "fix: replace it, e.g. with groq/openai/gpt-oss-120b" in out
    assert "WARN   model_list[2].litellm_params.model: openrouter/x-ai/grok-4-fast:free has left OpenRouter's free roster" in out
    assert "WARN   model_list[2].model_name: chain 'only-free' has no Groq fallback" in out
    assert "chain 'chat' has no Groq fallback" not in out
    assert "WARN   model_list[4].litellm_params.model: groq/some/new-model is not in the built-in Groq limits table" in out
    assert "WARN   router_plugin.limits.groq/openai/gpt-oss-12b: no deployment uses this model" in out
    assert "WARN   router_plugin.metrics.port: set while metrics.enabled is false" in out
    assert out.rstrip().endswith(f"{path}: FAILED — 5 error(s), 6 warning(s)")

    code, out, _ = run(capsys, "check", str(path), "--json")
    doc = json.loads(out)
    assert doc["ok"] is False and doc["errors"] == 5 and doc["warnings"] == 6
    assert {p["level"] for p in doc["problems"]} == {"error", "warning", "note"}  # note: LiteLLM's cooldowns off
    assert all(set(p) == {"level", "key", "problem", "fix"} for p in doc["problems"])


def test_check_missing_env_keys_and_good_configs(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RP_TEST_UNSET_KEY", raising=False)
    config = {"model_list": [
        {"model_name": "chat", "litellm_params": {"model": OR_A, "api_key": "os.environ/RP_TEST_UNSET_KEY"}},
        {"model_name": "chat", "litellm_params": {"model": GQ_A, "api_key": "os.environ/RP_TEST_UNSET_KEY"}},
    ]}
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1 and out.count("environment variable RP_TEST_UNSET_KEY is not set") == 2
    code, out, _ = run(capsys, "check", str(path), "--ignore-env")
    assert code == 0 and out.count("WARN   model_list[") == 2 and "OK — 0 error(s), 2 warning(s)" in out

    monkeypatch.setenv("RP_TEST_UNSET_KEY", "set-now")
    code, out, _ = run(capsys, "check", str(path))
    assert code == 0 and out.strip().splitlines()[-1] == f"{path}: OK — 0 error(s), 0 warning(s)"
    assert [line for line in out.splitlines() if line[:5] in ("ERROR", "WARN ")] == []

    (tmp_path / "bad.yaml").write_text("model_list: [\n")
    code, out, _ = run(capsys, "check", str(tmp_path / "bad.yaml"))
    assert code == 1 and "ERROR  (yaml): not valid YAML at line" in out
    code, out, _ = run(capsys, "check", str(tmp_path / "missing.yaml"))
    assert code == 1 and "ERROR  (file): file not found" in out


def test_check_an_existing_litellm_config(tmp_path, capsys, monkeypatch):
    """Issue 12: the typical existing config used to pass as OK with its settings silently replaced."""
    monkeypatch.delenv("RP_TEST_UNSET_URL", raising=False)
    config = {
        "model_list": [{"model_name": "chat", "litellm_params": {"model": GQ_A, "api_key": "k", "rpm": 10}},
                       {"model_name": "chat", "litellm_params": {"model": GQ_B, "api_key": "k"}}],
        "router_settings": {"routing_strategy": "usage-based-routing-v2", "num_retries": 3,
                            "redis_host": "127.0.0.1", "redis_port": 6379, "redis_password": "pw-never-shown"},
    }
    path = tmp_path / "existing.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    code, out, _ = run(capsys, "check", str(path))
    assert code == 0, out
    assert "WARN   router_settings.routing_strategy: 'usage-based-routing-v2' is replaced by router_plugin's strategy" in out
    assert "WARN   router_settings.num_retries: raised from 3 to 4 (2 x the longest chain of 2)" in out
    assert "NOTE   router_settings.disable_cooldowns: set to true" in out
    assert "NOTE   router_plugin.redis_url: not set: the quota counters go to the Redis of router_settings.redis_host" in out
    assert out.count("       why: ") == 3 and "pw-never-shown" not in out
    assert out.rstrip().endswith("OK — 0 error(s), 2 warning(s)")

    config["router_plugn"] = {"max_wait_s": 1}  # a misspelled section would be ignored
    config["router_settings"] = {"redis_host": "os.environ/RP_TEST_UNSET_URL", "redis_port": 6379}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1
    assert "ERROR  router_plugn: unknown section: its settings would be ignored\n       fix: did you mean 'router_plugin'?" in out
    assert "ERROR  router_settings.redis_host: environment variable RP_TEST_UNSET_URL is not set" in out

    path.write_text(yaml.safe_dump({"model_list": config["model_list"],
                                    "router_plugin": {"redis_url": "os.environ/RP_TEST_UNSET_URL"}}))
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1 and "ERROR  router_plugin.redis_url: environment variable RP_TEST_UNSET_URL is not set" in out


def test_check_reads_dotenv_from_the_working_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RP_TEST_DOTENV_KEY", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model_list": [
        {"model_name": "chat", "litellm_params": {"model": GQ_A, "api_key": "os.environ/RP_TEST_DOTENV_KEY"}}]}))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, _ = run(capsys, "check", str(path))
    assert code == 1 and "RP_TEST_DOTENV_KEY is not set" in out
    (work / ".env").write_text("RP_TEST_DOTENV_KEY=from-dotenv\n")
    code, out, _ = run(capsys, "check", str(path))
    assert code == 0, out


# ---- models ---------------------------------------------------------------------------------------------------

def test_models_lists_the_live_roster_and_marks_gone_deployments(sim, redis_url, tmp_path, capsys):
    sim.configure({"models": {bare(OR_A): {"gone": True}}})
    path = write_config(tmp_path, sim, redis_url)
    code, out, _ = run(capsys, "models", "--config", path)
    assert code == 1  # a configured deployment is gone
    assert f"openrouter  {sim.openrouter_base}/models: 11 free models" in out
    assert f"groq        {sim.groq_base}/models: 12 free models" in out
    assert re.search(r"^openrouter\s+qwen/qwen3-coder:free\s+262144\s+-\s+model_list\[1\] \(free-chat\)$",
                     out, re.M)
    assert re.search(r"^openrouter\s+deepseek/deepseek-r1:free\s+163840\s+-\s*$", out, re.M)
    assert re.search(r"^groq\s+openai/gpt-oss-120b\s+131072\s+65536\s+model_list\[2\] \(free-chat\)$", out, re.M)
    assert "openai/gpt-4o-mini" not in out and "deepseek/deepseek-r1 " not in out  # paid models are not listed
    assert f"  GONE  model_list[0]  {OR_A}  (group free-chat)" in out
    assert completions_sent(sim) == 0

    code, out, _ = run(capsys, "models", "--config", path, "--provider", "groq", "--json")
    doc = json.loads(out)
    assert [r["provider"] for r in doc["rosters"]] == ["groq"] and doc["gone"] == []
    scout = next(m for m in doc["rosters"][0]["models"] if m["id"] == "meta-llama/llama-4-scout-17b-16e-instruct")
    assert scout == {"id": "meta-llama/llama-4-scout-17b-16e-instruct",
                     "model": "groq/meta-llama/llama-4-scout-17b-16e-instruct", "context": 131072,
                     "max_completion_tokens": 8192, "configured": []}


def test_models_write_gives_a_roster_the_config_can_use(sim, redis_url, tmp_path, capsys):
    path = write_config(tmp_path, sim, redis_url)
    roster_file = tmp_path / "roster.yaml"
    code, out, _ = run(capsys, "models", "--config", path, "--write", str(roster_file))
    assert code == 0 and "every configured deployment is in the live roster" in out
    assert f"wrote {roster_file}" in out
    doc = yaml.safe_load(roster_file.read_text())
    assert doc["router_plugin"]["limits"] == {OR_A: {"context": 65536}, OR_B: {"context": 262144},
                                              GQ_A: {"context": 131072}, GQ_B: {"context": 131072}}
    assert doc["roster"]["openrouter"]["qwen/qwen3-coder:free"] == 262144 and doc["roster"]["gone"] == []
    assert doc["roster"]["groq"]["allam-2-7b"] == 4096
    # merged into the config, the overrides load and set the plans' context windows
    config = yaml.safe_load(open(path))
    config["router_plugin"]["limits"] = doc["router_plugin"]["limits"]
    loaded = load_config(config)
    router = router_plugin.build_router(config)
    from router_plugin.adapter.installer import installed

    assert loaded.settings.limits[OR_A].context == 65536
    assert installed(router).plans.plan(all_deployments(router)[0]).context_window == 65536


# ---- key ------------------------------------------------------------------------------------------------------

def test_key_reports_the_tier_and_starts_the_day_count_true(sim, redis_url, tmp_path, capsys):
    sim.configure({"openrouter": {"accounts": {FAKE_OR_KEY: {"used_today": 45}}}})
    path = write_config(tmp_path, sim, redis_url, openrouter_key=FAKE_OR_KEY)
    code, out, err = run(capsys, "key", "--config", path)
    assert code == 0
    assert re.search(rf"^OpenRouter account [0-9a-f]{{8}} \(model_list\[0\], model_list\[1\]\)  {sim.openrouter_base}/key$",
                     out, re.M)
    assert "  is_free_tier: true (never bought credits)" in out
    assert "  free_model_daily_requests: 45 used of 50 (5 left)" in out
    assert "  config: router_plugin.openrouter.tier = free (50/day) — agrees" in out
    assert re.search(r"shared day counter in redis://\S+: raised from 0 to 45 of 50; resets \d\d-\d\d 00:00:00", out)
    assert FAKE_OR_KEY not in out + err

    code, out, _ = run(capsys, "status", "--config", path, "--json")
    day = next(lim for lim in json.loads(out)["pools"][0]["limits"] if lim["counter"] == "day")
    assert day["used"] == 45 and day["remaining"] == 5

    code, out, _ = run(capsys, "key", "--config", path, "--json")  # again: never lowers, nothing to raise
    account = json.loads(out)["accounts"][0]
    assert account["key"] == {"is_free_tier": True, "tier": "free", "daily_limit": 50, "daily_used": 45,
                              "daily_remaining": 5}
    assert account["store"]["day_used_before"] == account["store"]["day_used_after"] == 45
    assert account["warning"] is None and account["config"] == {"tier": "free", "daily_limit": 50}
    assert completions_sent(sim) == 0


def test_key_warns_when_the_config_tier_disagrees(sim, redis_url, tmp_path, capsys):
    sim.configure({"openrouter": {"accounts": {"sim-openrouter-key": {"funded": True, "used_today": 100}}}})
    path = write_config(tmp_path, sim, redis_url)  # tier: free (the default)
    code, out, _ = run(capsys, "key", "--config", path)
    assert code == 0
    assert "  is_free_tier: false (has bought credits)" in out
    assert "  free_model_daily_requests: 100 used of 1000 (900 left)" in out
    assert "— DISAGREES" in out
    assert ("WARN  router_plugin.openrouter.tier: config says free (50/day) but the key allows 1000/day: the router "
            "refuses 950 free requests a day that OpenRouter would serve (set router_plugin.openrouter.tier: funded)") in out
    assert "raised from 0 to 5 of 50" in out  # 100 of 1000 used is 10 %: 5 of the 50 the config allows

    sim.configure({"openrouter": {"accounts": {"sim-openrouter-key": {"funded": False}}}})
    path = write_config(tmp_path, sim, redis_url, name="funded.yaml", openrouter={"tier": "funded"})
    code, out, _ = run(capsys, "key", "--config", path)
    assert "config says funded (1000/day) but the key allows 50/day" in out
    assert "429 free-models-per-day after 50" in out


# ---- demo -----------------------------------------------------------------------------------------------------

def test_demo_prints_the_same_status_table_and_status_can_watch_it(redis_url, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("router_plugin.demo.wait_for_fresh_minute", lambda *a, **k: None)
    config_file = tmp_path / "demo.yaml"
    code, out, _ = run(capsys, "demo", "--workers", "2", "--requests", "3", "--quiet", "--redis-url", redis_url,
                       "--redis-timeout", "5", "--write-config", str(config_file))
    assert code == 0
    assert "served 6 / 6   refused at once 0" in out and "429s sent by the providers 0" in out
    table = out[out.index("quota left (shared by every worker)"):]
    assert re.search(r"^OpenRouter free pool \(account [0-9a-f]{8}\)$", table, re.M)
    assert re.search(r"^  requests/day\s+\d / 50\s+\d\d\s", table, re.M)
    assert re.search(rf"^{re.escape(OR_A)}\s+free-chat\s+ok", table, re.M)
    # another terminal, another process: status reads the same counters from the same Redis
    code, out, _ = run(capsys, "status", "--config", str(config_file))

    def usage(text):  # (limit, used / limit, left) of every pool row but the ticking minute windows
        return [row for row in re.findall(r"^  (\S+)\s+(\d+ / \d+)\s+(\d+)\s", text, re.M)
                if row[0] != "requests/min"]

    assert usage(out) == usage(table) and len(usage(out)) == 7
    assert usage(out)[0][:2] == ("requests/day", "6 / 50")  # the OpenRouter pool: every worker's requests
