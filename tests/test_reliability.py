"""Redis faults, persistence, the clock, and hostile upstream replies — with real parts.

Every test here starts its own redis-server (tests/servers.py) when it kills, pauses or restarts one, so the
session's server is never disturbed. Times are only ever asserted as behaviour bounds ("no call waited longer than
the configured Redis timeout plus slack"), never as performance claims.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

import router_plugin
from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config
from router_plugin.errors import StoreError
from router_plugin.limits import LimitOverride, PlanInputs, plan_for
from router_plugin.store import Blocked, Reservation, SyncQuotaStore, resolve_target
from router_plugin.store.resilient import open_resilient
from tests.servers import RedisServer
from router_plugin.adapter.router_api import all_deployments

pytestmark = pytest.mark.integration

OR_A, OR_B, GQ_A, GQ_B = DEMO_CHAIN
AOF = ["--appendonly", "yes", "--appendfsync", "always"]
TIMEOUT_S = 0.5  # redis_timeout_s in these tests (the default is 2.0: a hung Redis costs that, once)
SLACK_S = 0.75  # scheduling on a shared 2-core machine: a behaviour bound, not a performance claim
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own (AOF on), which the test may kill, pause and restart."""
    servers: list[RedisServer] = []

    def start(port: int | None = None, extra: list[str] | None = None) -> RedisServer:
        server = RedisServer(tmp_path, port=port, extra=AOF if extra is None else extra)
        servers.append(server)  # before start: stopped at teardown even if it never answers
        server.start()
        return server

    yield start
    for server in servers:
        if server.proc and server.proc.poll() is None:
            try:
                server.proc.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            server.stop()


def with_password(server: RedisServer, password: str) -> RedisServer:
    """AUTH on (tests/servers.py pings without a password, so the password is set once it answers)."""
    server.client().config_set("requirepass", password)
    return server


def kill(server: RedisServer) -> None:
    server.proc.kill()
    server.proc.wait(10)


def or_plan(rpd: int = 40, rpm: int = 1000, key: str = "sk-test-or"):
    inputs = PlanInputs(limits={"openrouter": LimitOverride(rpm=rpm, rpd=rpd)})
    return plan_for({"model_name": "c", "litellm_params": {"model": OR_A, "api_key": key}, "model_info": {"id": "a"}},
                    inputs)


def gq_plan(key: str = "gsk-test"):
    return plan_for({"model_name": "c", "litellm_params": {"model": GQ_A, "api_key": key}, "model_info": {"id": "g"}},
                    PlanInputs())


def next_utc_midnight_ms(now_s: float) -> int:
    return int((now_s // 86400 + 1) * 86400 * 1000)


def raw_used(url: str, plan, name: str) -> float:
    """The counter as stored in Redis (not capped at the limit, as ``remaining`` is)."""
    from router_plugin.store import KeySpace

    counter = next(c for c in plan.counters if c.key == name)
    raw = redis.Redis.from_url(url).hgetall(KeySpace().counter(plan, counter))
    return float(raw.get(b"used", 0))


def day_used(url: str, plan) -> int:
    peek = SyncQuotaStore(resolve_target(url, None, 2.0)).peek(plan, counters_only=True)
    assert isinstance(peek, Reservation), peek
    return plan.counters[1].limit.capacity - peek.remaining("day").remaining


# ---- fail_open, one process ------------------------------------------------------------------------------------


def test_fail_open_takes_its_share_of_what_was_left_logs_once_and_returns_to_redis(own_redis, caplog):
    caplog.set_level(logging.DEBUG, logger="router_plugin")
    server = own_redis()
    plan = or_plan(rpd=40)
    store, _ = open_resilient(resolve_target(server.url, None, TIMEOUT_S), expected_workers=4, probe_interval_s=0.5)

    async def scenario():
        before = [await store.reserve(plan, 10) for _ in range(8)]  # 8 of 40 used in Redis: 32 left
        assert all(isinstance(r, Reservation) for r in before)
        kill(server)
        outage, waits = [], []
        for _ in range(20):
            started = time.monotonic()
            outage.append(await store.reserve(plan, 10))
            waits.append(time.monotonic() - started)
        granted = [r for r in outage if isinstance(r, Reservation)]
        # Its share of what was left: 32 // 4 = 8 (a worker that saw nothing would take 40 // 4 = 10).
        assert len(granted) == 8
        refused = outage[8]
        assert isinstance(refused, Blocked) and refused.counter.key == "day"
        assert "this worker's share, 10 of 40, while the quota store redis://127.0.0.1" in refused.counter.label
        assert refused.until_ms == next_utc_midnight_ms(time.time())  # the window is still the UTC day
        assert max(waits) <= TIMEOUT_S + SLACK_S  # nobody waits on a dead Redis
        assert not store.guard.reachable and store.guard.outages == 1
        # settle a local reservation: it stays local (Redis never saw it)
        await store.settle(granted[0], 5)

        restarted = own_redis(port=server.port)  # same port, same directory: the AOF brings back the 8
        await asyncio.sleep(0.6)  # one probe interval
        back = await store.reserve(plan, 10)
        assert isinstance(back, Reservation) and store.guard.reachable
        await store.wait_replayed()
        return restarted

    restarted = asyncio.run(scenario())
    # Counters right again: 8 before + 8 served locally during the outage (replayed) + 1 after.
    assert day_used(restarted.url, plan) == 17
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # loud, once — not once per request
    text = errors[0].getMessage()
    assert "quota store redis://127.0.0.1" in text and "fail_open" in text and "1/4 of each limit" in text
    assert any("answers again" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_fail_open_without_history_takes_capacity_over_workers(tmp_path):
    # Redis was never reachable (a worker starting during the outage): the share of each whole limit.
    store, sync = open_resilient(resolve_target("redis://127.0.0.1:1/0", None, TIMEOUT_S), expected_workers=4)
    plan, groq = or_plan(rpd=40, rpm=20), gq_plan()
    got = [sync.reserve(plan, 10) for _ in range(10)]
    assert sum(isinstance(r, Reservation) for r in got) == 5  # the minute: 20 // 4
    assert isinstance(got[-1], Blocked) and got[-1].counter.key == "minute"
    # Groq, 8000 tokens/min -> 2000 for this worker; 30 requests/min -> 7 (rounded down, at least 1)
    assert isinstance(sync.reserve(groq, 1500), Reservation)
    refused = sync.reserve(groq, 1000)
    assert isinstance(refused, Blocked) and refused.counter.key == "tpm"
    big = sync.reserve(groq, 2500)  # more than this worker's whole share: refused with that reason
    assert isinstance(big, Blocked) and big.never and "share, 2000 of 8000" in big.counter.label
    # The async store of the same router shares the same limiter.
    assert isinstance(asyncio.run(store.reserve(plan, 10)), Blocked)


def test_a_hung_redis_never_holds_a_request_longer_than_the_timeout(own_redis):
    server = own_redis()
    plan = or_plan(rpd=1000)
    store, _ = open_resilient(resolve_target(server.url, None, TIMEOUT_S), expected_workers=4, probe_interval_s=1.0)

    async def timed(coro):
        started = time.monotonic()
        result = await coro
        return result, time.monotonic() - started

    async def scenario():
        assert isinstance(await store.reserve(plan, 1), Reservation)
        os.kill(server.proc.pid, signal.SIGSTOP)  # accepts connections, never answers
        try:
            first = await asyncio.gather(*(timed(store.reserve(plan, 1)) for _ in range(20)))
            later = [await timed(store.reserve(plan, 1)) for _ in range(30)]
            await asyncio.sleep(1.1)
            probe = [await timed(store.reserve(plan, 1)) for _ in range(5)]  # one of these is the probe
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        await asyncio.sleep(1.1)
        recovered = await store.reserve(plan, 1)
        await store.wait_replayed()
        return first, later, probe, recovered

    first, later, probe, recovered = asyncio.run(scenario())
    for outcome, took in first + later + probe:
        assert isinstance(outcome, Reservation)  # served from this worker's share
        assert took <= TIMEOUT_S + SLACK_S, took
    assert max(t for _, t in later) < TIMEOUT_S / 2  # circuit open: no call goes near Redis
    assert sum(t >= TIMEOUT_S * 0.8 for _, t in probe) <= 1  # at most one probe per interval waits
    assert isinstance(recovered, Reservation) and store.guard.reachable
    # 1 + 55 served locally (replayed) + 1. The 20 + 1 commands that were already written to the paused server's
    # socket run when it resumes: a hung Redis may count those twice — conservative, never an under-count.
    assert 1 + 55 + 1 <= raw_used(server.url, plan, "day") <= 1 + 55 + 1 + 21


def test_fail_closed_refuses_at_once_naming_the_store_and_recovers(own_redis, caplog):
    caplog.set_level(logging.ERROR, logger="router_plugin")
    server = with_password(own_redis(), "redis-pw-CANARY-31337")
    url = f"redis://:redis-pw-CANARY-31337@127.0.0.1:{server.port}/0"
    plan = or_plan()
    store, sync = open_resilient(resolve_target(url, None, TIMEOUT_S), on_store_error="fail_closed",
                                 probe_interval_s=0.5)
    assert isinstance(sync.reserve(plan, 1), Reservation)
    kill(server)
    errors = []
    for _ in range(10):
        started = time.monotonic()
        with pytest.raises(StoreError) as info:
            sync.reserve(plan, 1)
        assert time.monotonic() - started <= TIMEOUT_S + SLACK_S
        errors.append(str(info.value))
    assert f"quota store redis://:***@127.0.0.1:{server.port}/0" in errors[0]
    assert "fail_closed" in errors[-1] and f"redis://:***@127.0.0.1:{server.port}/0" in errors[-1]
    with pytest.raises(StoreError, match="fail_closed"):
        asyncio.run(store.reserve(plan, 1))
    assert all("CANARY" not in e for e in errors)
    assert len([r for r in caplog.records if "Refusing every request" in r.getMessage()]) == 1
    with_password(own_redis(port=server.port), "redis-pw-CANARY-31337")
    time.sleep(0.6)
    assert isinstance(sync.reserve(plan, 1), Reservation)
    assert all("CANARY" not in r.getMessage() for r in caplog.records)


def test_fail_closed_through_the_router_is_a_clear_error_and_never_retried(sim):
    config = demo_config(sim.base_url, redis_url="redis://127.0.0.1:1/0", on_store_error="fail_closed",
                         redis_timeout_s=TIMEOUT_S)
    router = router_plugin.build_router(config)
    for _ in range(3):  # the first names the failure, the next ones the open circuit: all at once
        started = time.monotonic()
        with pytest.raises(Exception) as info:
            asyncio.run(router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=8))
        assert time.monotonic() - started <= TIMEOUT_S + 2.0
        assert "quota store redis://127.0.0.1:1/0" in str(info.value)
    assert "on_store_error is fail_closed" in str(info.value)
    assert sum(sum(v.values()) for v in sim.stats()["requests"].values()) == 0  # nothing sent anywhere


# ---- kill and restart a real redis-server in the middle of a multi-process burst -------------------------------

BURST_WORKERS = 4
BURST_SECONDS = 11.0
KILL_AT_S, RESTART_AT_S = 3.0, 6.5


def _outage_worker(config, index, barrier, queue, seconds):  # runs in a child process (spawn)
    records: list = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append((record.levelno, record.getMessage()))

    try:
        import litellm

        litellm.suppress_debug_info = True
        logging.getLogger("router_plugin").setLevel(logging.WARNING)
        logging.getLogger("router_plugin").addHandler(Keep())
        router = router_plugin.build_router(config)
    except Exception as exc:
        barrier.abort()
        queue.put(f"worker {index}: {type(exc).__name__}: {exc}")
        return
    barrier.wait()
    try:
        queue.put(asyncio.run(_paced(router, index, seconds, records)))
    except Exception as exc:
        queue.put(f"worker {index}: {type(exc).__name__}: {exc}")


async def _paced(router, index, seconds, records):
    from router_plugin.adapter.installer import installed

    stop = time.time() + seconds
    outcomes: list = []

    async def loop(k):
        n = 0
        while time.time() < stop and n < 200:
            n += 1
            metadata: dict = {}
            started, mono = time.time(), time.monotonic()
            try:
                await router.acompletion(model=DEMO_GROUP, messages=[{"role": "user", "content": f"w{index} {k} {n}"}],
                                         max_tokens=16, metadata=metadata)
                ok, kind, error = True, None, None
            except Exception as exc:
                ok, kind, error = False, type(exc).__name__, str(exc)[:300]
            info = metadata.get("router_plugin", {})
            outcomes.append({"t": started, "took": time.monotonic() - mono, "ok": ok, "model": info.get("model"),
                             "type": kind, "error": error})
            await asyncio.sleep(0.12)

    await asyncio.gather(*(loop(k) for k in range(2)))
    inst = installed(router)
    await inst.store.wait_replayed()
    guard = inst.store.guard
    return {"outcomes": outcomes, "status": dataclasses.asdict(guard.status()), "logs": records,
            "tally": [[k, w, v] for (k, w), v in guard.local_tally.items()], "workers": guard.workers}


def test_kill_and_restart_redis_mid_burst(sim, own_redis):
    server = own_redis()
    sim.configure({"openrouter": {"accounts": {"sim-openrouter-key": {"daily_limit": 1000, "minute_limit": 1000}}},
                   "latency_ms": 30})
    rpd = 200  # the plugin's OpenRouter day limit (the simulator's is higher: over-admission is measured, not 429'd)
    config = demo_config(sim.base_url, redis_url=server.url, chain=(OR_A, OR_B, GQ_A), expected_workers=BURST_WORKERS,
                         limits={"openrouter": {"rpm": 1000, "rpd": rpd}}, redis_timeout_s=TIMEOUT_S,
                         calibration={"interval_s": 0})  # the subject is the outage, not the cold start
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(BURST_WORKERS + 1)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_outage_worker, args=(config, i, barrier, queue, BURST_SECONDS), daemon=True)
             for i in range(BURST_WORKERS)]
    results = []
    try:
        for p in procs:
            p.start()
        barrier.wait(timeout=180)
        t0 = time.time()
        time.sleep(KILL_AT_S)
        kill(server)
        killed_at = time.time()
        time.sleep(RESTART_AT_S - KILL_AT_S)
        restarted = own_redis(port=server.port)  # AOF: the counters from before the outage come back
        restarted_at = time.time()
        for _ in procs:
            got = queue.get(timeout=BURST_SECONDS + 60)
            assert not isinstance(got, str), got
            results.append(got)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    outcomes = [o for r in results for o in r["outcomes"]]
    during = [o for o in outcomes if killed_at <= o["t"] < restarted_at]
    stats = sim.stats()
    sent_or = sum(stats["requests"]["openrouter"].values())
    sent_gq = sum(stats["requests"]["groq"].values())

    # Nothing crashed, nothing hung: every request was served or refused at once with the reason.
    assert len(results) == BURST_WORKERS
    assert {o["type"] for o in outcomes} <= {None, "QuotaExhaustedError"}, \
        [o for o in outcomes if o["type"] not in (None, "QuotaExhaustedError")][:3]
    slowest = max(o["took"] for o in outcomes)
    assert slowest <= TIMEOUT_S + 3.0, slowest
    span = (min(o["t"] for o in outcomes) - t0, max(o["t"] for o in outcomes) - t0, killed_at - t0, restarted_at - t0)
    assert sum(o["ok"] for o in during) > 0, (span, [r["status"] for r in results])  # the outage was served
    # Loud once per outage, and back to Redis by itself.
    for r in results:
        st = r["status"]
        assert st["reachable"] and st["outages"] == 1 and st["local_grants"] > 0, st
        errors = [m for level, m in r["logs"] if level >= logging.ERROR]
        assert len(errors) == 1 and "per-process limiter holding 1/4" in errors[0], r["logs"]
        assert sum("answers again after" in m for _, m in r["logs"]) == 1, r["logs"]
        # Over-admission during the outage: each worker admitted at most its share in any window.
        for key, window, units in r["tally"]:
            share = (rpd if key.endswith(":c:day") else 1000) // BURST_WORKERS
            assert units <= share, (key, window, units)
    # Counters right again after reconnect: every OpenRouter request the provider received is counted in Redis
    # (those admitted before the kill survived in the AOF; those admitted locally were replayed).
    plan = or_plan(rpd=rpd, key="sim-openrouter-key")
    assert raw_used(restarted.url, plan, "day") == sent_or
    over = max(0, sent_or - rpd)
    assert over <= BURST_WORKERS * (rpd // BURST_WORKERS)  # the configured share, summed over the workers
    groq = plan_for({"model_name": "c", "litellm_params": {"model": GQ_A, "api_key": "sim-groq-key"}}, PlanInputs())
    peek = SyncQuotaStore(resolve_target(restarted.url, None, 2.0)).peek(groq, counters_only=True)
    assert abs((1000 - peek.remaining("rpd").remaining) - sent_gq) <= 1
    print(f"\n{len(outcomes)} requests in {time.time() - t0:.1f} s, {len(during)} during the {restarted_at - killed_at:.1f} s "
          f"outage ({sum(o['ok'] for o in during)} served); OpenRouter sent {sent_or} vs limit {rpd} "
          f"(over-admission {over}); Groq sent {sent_gq}; provider 429s {sum(stats['rate_limited'].values())}; "
          f"slowest request {slowest:.2f} s")


# ---- persistence -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aof", [True, False], ids=["aof", "no-persistence"])
def test_a_restart_keeps_the_days_counters_with_aof(own_redis, aof):
    server = own_redis(extra=AOF if aof else ["--appendonly", "no"])
    store = SyncQuotaStore(resolve_target(server.url, None, 2.0))
    plan, groq = or_plan(rpd=50), gq_plan()
    for _ in range(7):
        store.reserve(plan, 10)
    for _ in range(5):
        store.reserve(groq, 100)
    day = plan.counters[1]
    store.block(plan, day, next_utc_midnight_ms(time.time()), "exhausted (provider 429)")
    ttl_before = server.client().pttl(store.keys.counter(plan, day))
    kill(server)  # SIGKILL: no shutdown save; only what the AOF fsynced survives
    restarted = own_redis(port=server.port, extra=AOF if aof else ["--appendonly", "no"])
    after = SyncQuotaStore(resolve_target(restarted.url, None, 2.0))
    if not aof:  # the contrast: without persistence a restart forgets the day
        assert isinstance(after.reserve(plan, 1), Reservation)
        return
    blocked = after.peek(plan)
    assert isinstance(blocked, Blocked) and blocked.counter.key == "day"  # the provider's block survived
    assert blocked.until_ms == next_utc_midnight_ms(time.time())
    peek = after.peek(plan, counters_only=True)
    assert peek is not None
    raw = restarted.client().hgetall(after.keys.counter(plan, day))
    assert float(raw[b"used"]) == 7
    assert 0 < restarted.client().pttl(after.keys.counter(plan, day)) <= ttl_before
    g = after.peek(groq)
    assert g.remaining("rpd").remaining == 1000 - 5 and g.remaining("tpm").remaining < 8000


# ---- the clock -------------------------------------------------------------------------------------------------

_SHIFTED = textwrap.dedent("""
    import asyncio, json, sys, time
    shift = float(sys.argv[2])
    real = time.time
    time.time = lambda: real() + shift          # this worker's clock is off by minutes
    time.time_ns = lambda: int(time.time() * 1e9)
    from router_plugin.limits import LimitOverride, PlanInputs, plan_for
    from router_plugin.store import resolve_target
    from router_plugin.store.resilient import open_resilient
    plan = plan_for({"model_name": "c", "litellm_params": {"model": "openrouter/deepseek/deepseek-r1:free",
                     "api_key": "clock-key"}, "model_info": {"id": "a"}},
                    PlanInputs(limits={"openrouter": LimitOverride(rpm=20, rpd=50)}))
    store, sync = open_resilient(resolve_target(sys.argv[1], None, 2.0), expected_workers=1)
    out = {"worker_clock_ms": int(time.time() * 1000)}
    got = [sync.reserve(plan, 1) for _ in range(int(sys.argv[3]))]
    out["granted"] = sum(type(r).__name__ == "Reservation" for r in got)
    out["now_ms"] = [r.now_ms for r in got]
    last = got[-1]
    out["until_ms"] = getattr(last, "until_ms", None)
    out["guard_clock_ms"] = sync.guard.now_ms()
    print(json.dumps(out))
""")


def _run_shifted(url: str, shift_s: float, n: int) -> dict:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _SHIFTED, url, str(shift_s), str(n)], capture_output=True, text=True,
                         timeout=60, env=env, cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_worker_clock_off_by_minutes_changes_nothing(redis_url, redis_server):
    # Early in a clock minute, so that the three processes below share one minute window.
    if 60 - time.time() % 60 < 12:
        time.sleep(60 - time.time() % 60 + 0.2)
    ahead = _run_shifted(redis_url, +7 * 60 + 13, 8)  # 7 minutes ahead: another minute window, maybe another day
    behind = _run_shifted(redis_url, -11 * 60, 8)
    redis_ms = (lambda t: int(t[0]) * 1000 + int(t[1]) // 1000)(redis_server.client().time())
    assert abs(ahead["worker_clock_ms"] - redis_ms) > 6 * 60_000  # the shift really was in effect
    for out in (ahead, behind):
        assert out["granted"] == 8
        for now_ms in out["now_ms"]:  # every reservation is stamped with Redis TIME, not the worker's clock
            assert abs(now_ms - redis_ms) < 30_000
        assert abs(out["guard_clock_ms"] - redis_ms) < 30_000  # the fail_open limiter's clock too
    # Both shifted workers and this one count in the same minute: 8 + 8 of 20, so 4 more, then the minute is full
    # until the end of REDIS's minute.
    plan = plan_for({"model_name": "c", "litellm_params": {"model": OR_A, "api_key": "clock-key"},
                     "model_info": {"id": "a"}}, PlanInputs(limits={"openrouter": LimitOverride(rpm=20, rpd=50)}))
    store = SyncQuotaStore(resolve_target(redis_url, None, 2.0))
    got = [store.reserve(plan, 1) for _ in range(5)]
    assert sum(isinstance(r, Reservation) for r in got) == 4
    assert got[-1].counter.key == "minute" and got[-1].until_ms == (redis_ms // 60_000 + 1) * 60_000


def test_provider_waits_are_counted_from_redis_time_not_the_workers_clock(redis_url, redis_server):
    """Groq states its resets as waits ("7.66s", retry-after). A worker whose clock is 7 minutes ahead must block the
    limit for that wait from Redis TIME — not until 7 minutes past the real reset. OpenRouter's reset is an absolute
    time from OpenRouter's clock and is kept as given."""
    from router_plugin.providers.facts import Exhausted
    from router_plugin.store import KeySpace

    router = router_plugin.build_router(demo_config("http://127.0.0.1:9", redis_url=redis_url))
    inst = router_plugin.adapter.installer.installed(router)
    plans = {p.model: p for p in (inst.plans.plan(d) for d in all_deployments(router))}
    groq, openrouter = plans[DEMO_CHAIN[2]], plans[DEMO_CHAIN[0]]
    shifted = time.time() + 7 * 60  # the worker's wrong clock
    or_reset = (int(time.time()) // 60 + 1) * 60  # OpenRouter's X-RateLimit-Reset: the next minute, absolute

    async def record():
        await inst.callbacks._record(groq, Exhausted("tpm", shifted + 7.66, "tokens per minute"), shifted)
        await inst.callbacks._record(openrouter, Exhausted("minute", float(or_reset), "free-models-per-min"), shifted)

    asyncio.run(record())
    client = redis_server.client()
    redis_ms = (lambda t: int(t[0]) * 1000 + int(t[1]) // 1000)(client.time())
    keys = KeySpace()
    tpm = next(c for c in groq.counters if c.key == "tpm")
    minute = next(c for c in openrouter.counters if c.key == "minute")
    groq_until = float(client.hget(keys.counter(groq, tpm), "until"))
    assert abs(groq_until - (redis_ms + 7660)) < 3000, (groq_until - redis_ms)
    assert float(client.hget(keys.counter(openrouter, minute), "until")) == or_reset * 1000


# ---- hostile upstream replies through the real Router ----------------------------------------------------------


class GarbageServer:
    """An HTTP/1.1 endpoint on 127.0.0.1 that answers chat completions with garbage of one kind."""

    KINDS = {
        "not-json": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 17\r\n\r\n<html>oops</html>",
        "truncated": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n"
                     b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assis',
        "empty-200": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
        "wrong-shape": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 44\r\n\r\n"
                       b'{"choices": "\xff\xfe nope", "usage": {"x": -1}}',
        "not-http": b"\x00\x01\x02 SSH-2.0-garbage \xff\xff\r\n\r\n",
        "huge-header": b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 99999999999999999999\r\nx-ratelimit-reset-tokens: "
                       + b"9" * 60_000 + b"\r\ncontent-length: 2\r\n\r\n{}",
    }

    def __init__(self, kind: str):
        self.kind = kind
        self.hits = 0
        self._loop = asyncio.new_event_loop()
        self._server = None
        import threading

        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    def _run(self, ready):
        asyncio.set_event_loop(self._loop)

        async def handle(reader, writer):
            self.hits += 1
            try:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                writer.write(self.KINDS[self.kind])
                await writer.drain()
            except Exception:
                pass
            finally:
                writer.close()

        async def start():
            self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._loop.run_until_complete(start())
        ready.set()
        self._loop.run_forever()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/openai/v1"

    def stop(self):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def _ask_and_let_callbacks_run(router, **kwargs):
    """One request, then a moment for LiteLLM's logging worker to run the success / failure callbacks in this loop
    (LiteLLM 1.108 runs them from a queue: with ``asyncio.run`` per request they would run in the next loop)."""
    metadata: dict = {}
    try:
        response = await router.acompletion(model=DEMO_GROUP, messages=MSG, metadata=metadata, **kwargs)
        if kwargs.get("stream"):
            async for _ in response:
                pass
        outcome = response
    except Exception as exc:
        outcome = exc
    await asyncio.sleep(1.0)
    return outcome, metadata.get("router_plugin", {})


def _accounting(url: str, router):
    """(requests counted, tokens held) per deployment, as stored in Redis."""
    inst = router_plugin.adapter.installer.installed(router)
    plans = [inst.plans.plan(d) for d in all_deployments(router)]
    return [(round(raw_used(url, p, "rpm")), raw_used(url, p, "tpm")) for p in plans]


@pytest.mark.parametrize("kind", list(GarbageServer.KINDS))
def test_a_garbled_upstream_reply_fails_over_and_its_tokens_come_back(sim, redis_url, kind):
    garbage = GarbageServer(kind)
    try:
        config = demo_config(sim.base_url, redis_url=redis_url, chain=(GQ_A, GQ_B),
                             calibration={"interval_s": 0})  # garbage.hits: completion attempts only
        config["model_list"][0]["litellm_params"].update(api_base=garbage.base, max_retries=0)
        router = router_plugin.build_router(config)
        started = time.monotonic()
        outcome, info = asyncio.run(asyncio.wait_for(_ask_and_let_callbacks_run(router, max_tokens=3000), 60))
        assert time.monotonic() - started < 30
        assert not isinstance(outcome, Exception), outcome
        assert outcome.choices[0].message.content and info["model"] == GQ_B  # fell over to the next deployment
        (bad_requests, bad_tokens), (good_requests, good_tokens) = _accounting(redis_url, router)
        # The garbled attempts stay counted, exactly as many as reached the endpoint; their 3000+ tokens are back.
        assert garbage.hits >= 1 and bad_requests == garbage.hits
        assert bad_tokens < 1
        # The served attempt is settled to the real usage, not left at the 3000+ token estimate.
        assert good_requests == 1 and good_tokens < 500  # (unsettled it would hold ~3000 minus ~1 s of drain)
    finally:
        garbage.stop()


@pytest.mark.parametrize("switch", [{"status": 500}, {"status": 503}, {"error_200": True}, {"error_200": 503},
                                    {"status": 400}])
def test_simulated_upstream_errors_are_accounted(sim, redis_url, switch):
    bad_model = GQ_A.split("/", 1)[1]
    sim.configure({"models": {bad_model: switch}})
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, chain=(GQ_A, GQ_B)))
    outcome, info = asyncio.run(asyncio.wait_for(_ask_and_let_callbacks_run(router, max_tokens=3000), 60))
    if switch.get("status") == 400:  # the request's own fault: it fails cleanly, without trying the next one
        assert isinstance(outcome, Exception) and not isinstance(outcome, (StoreError, asyncio.TimeoutError))
    else:
        assert not isinstance(outcome, Exception), outcome
        assert info["model"] == GQ_B  # fell over
    (bad_requests, bad_tokens), _ = _accounting(redis_url, router)
    assert bad_requests == sim.stats()["requests"]["groq"][bad_model]  # every attempt counted, once
    assert bad_tokens < 1  # and their tokens refunded


def test_a_stream_cut_mid_way_is_accounted(sim, redis_url):
    bad_model = GQ_A.split("/", 1)[1]
    sim.configure({"models": {bad_model: {"stream_fault": "cut"}}})
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, chain=(GQ_A, GQ_B)))
    outcome, info = asyncio.run(asyncio.wait_for(
        _ask_and_let_callbacks_run(router, max_tokens=3000, stream=True), 60))  # a hang would time out here
    assert not isinstance(outcome, asyncio.TimeoutError)
    (bad_requests, bad_tokens), _ = _accounting(redis_url, router)
    assert bad_requests == sim.stats()["requests"]["groq"][bad_model]  # counted once per attempt
    # Settled (to what streamed), refunded, or at worst kept at the estimate: never more than one estimate held.
    assert bad_tokens <= bad_requests * (3000 + 10)


@pytest.mark.parametrize("lag_aware", [True, False], ids=["lag-aware", "control-without-lag-check"])
def test_a_busy_event_loop_is_not_taken_for_a_redis_outage(redis_url, monkeypatch, lag_aware):
    """Calls that take longer than redis_timeout_s because the worker's own loop is busy (a burst of LiteLLM
    requests: ten connections opened while other requests hold the CPU) are not an outage."""
    import router_plugin.store.resilient as resilient

    if not lag_aware:  # the control: without the lag check the same burst does look like an outage
        monkeypatch.setattr(resilient, "_LAG_RETRIES", 0)
    store, _ = open_resilient(resolve_target(redis_url, None, 0.2), expected_workers=4)
    plan = or_plan(rpd=1000)

    async def busy():  # CPU-bound stretches between awaits, as LiteLLM's request handling on a loaded machine
        for _ in range(6):
            time.sleep(0.15)
            await asyncio.sleep(0)

    async def timed():
        started = time.monotonic()
        outcome = await store.reserve(plan, 1)
        return outcome, time.monotonic() - started

    async def scenario():
        return await asyncio.gather(*(timed() for _ in range(10)), busy(), busy())

    results = asyncio.run(scenario())[:10]
    assert all(isinstance(outcome, Reservation) for outcome, _ in results)
    if not lag_aware:
        assert store.guard.outages == 1  # the client timed out connecting, on the loop's account
        return
    assert max(took for _, took in results) > 0.2  # slower than the timeout in wall time ...
    assert store.guard.reachable and store.guard.outages == 0 and store.guard.local_grants == 0  # ... not an outage
    assert store.lag_retries >= 1


@pytest.mark.parametrize("in_flight", [400])
def test_a_burst_beyond_the_connection_pool_waits_its_turn_and_never_over_admits(redis_url, in_flight):
    """More requests in flight in one worker than its connection pool holds is congestion, not an outage: every
    call waits for a connection (none falls back to the per-process share, which would admit on top of the shared
    counters), and exactly the limit is admitted."""
    from router_plugin.store.connect import ASYNC_POOL_SIZE

    assert in_flight > 2 * ASYNC_POOL_SIZE
    store, _ = open_resilient(resolve_target(redis_url, None, 0.5), expected_workers=4)
    plan = or_plan(rpd=1000, rpm=150, key="sk-test-pool")

    async def scenario():
        return await asyncio.gather(*(store.reserve(plan, 1) for _ in range(in_flight)))

    outcomes = asyncio.run(scenario())
    assert sum(isinstance(o, Reservation) for o in outcomes) == 150
    assert all(isinstance(o, (Reservation, Blocked)) for o in outcomes)
    assert store.guard.outages == 0 and store.guard.local_grants == 0
