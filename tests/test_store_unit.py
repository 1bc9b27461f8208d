"""The quota scripts, run for real by fakeredis's Lua engine (no server needed).

Time inside the scripts is Redis TIME; fakeredis answers it from the test's patched clock where a test needs
to move time (``clock`` fixture).
"""

from __future__ import annotations

import fakeredis
import pytest

from router_plugin.limits import PlanInputs, plan_for
from router_plugin.providers.facts import Remaining
from router_plugin.store import Blocked, Reservation, StoreTarget, SyncQuotaStore

OR_A = {"model_name": "chat", "litellm_params": {"model": "openrouter/deepseek/deepseek-r1:free", "api_key": "k1"},
        "model_info": {"id": "or-a"}}
OR_B = {"model_name": "chat", "litellm_params": {"model": "openrouter/qwen/qwen3-coder:free", "api_key": "k1"},
        "model_info": {"id": "or-b"}}
OR_OTHER_KEY = {"model_name": "chat", "litellm_params": {"model": "openrouter/qwen/qwen3-coder:free", "api_key": "k9"},
                "model_info": {"id": "or-c"}}
GQ_120 = {"model_name": "chat", "litellm_params": {"model": "groq/openai/gpt-oss-120b", "api_key": "g1"},
          "model_info": {"id": "gq-120"}}
GQ_20 = {"model_name": "chat", "litellm_params": {"model": "groq/openai/gpt-oss-20b", "api_key": "g1"},
         "model_info": {"id": "gq-20"}}


class Clock:
    """Drives fakeredis's TIME: the scripts read time only from Redis."""

    def __init__(self, monkeypatch, start: float):
        self.now = start
        import time as _time

        monkeypatch.setattr(_time, "time", lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store():
    """No arrival margin: the provider arithmetic exactly (the margin has tests of its own)."""
    return SyncQuotaStore(StoreTarget(url="redis://fakeredis"), client=fakeredis.FakeRedis(), arrival_margin_s=0)


@pytest.fixture
def margin_store():
    return SyncQuotaStore(StoreTarget(url="redis://fakeredis"), client=fakeredis.FakeRedis(), arrival_margin_s=2.0)


@pytest.fixture
def clock(monkeypatch):
    # 10 s into a clock minute, far from midnight: 2026-11-26 12:00:10 UTC
    return Clock(monkeypatch, 1795780810.0)


def plan(d, **inputs):
    return plan_for(d, PlanInputs(**inputs))


def take(store, p, n, tokens=10):
    return [store.reserve(p, tokens) for _ in range(n)]


def granted(outcomes):
    return sum(isinstance(o, Reservation) for o in outcomes)


def test_two_free_models_of_one_key_share_one_account_pool(store, clock):
    a, b = plan(OR_A), plan(OR_B)
    assert a.slot == b.slot
    got = take(store, a, 12) + take(store, b, 12)
    assert granted(got) == 20  # never 20 each
    refused = got[-1]
    assert isinstance(refused, Blocked) and refused.counter.key == "minute"
    assert refused.until_ms == 1795780860000  # the next clock minute, not now + 60 s


def test_other_api_key_is_another_account(store, clock):
    take(store, plan(OR_A), 20)
    assert granted(take(store, plan(OR_OTHER_KEY), 20)) == 20


def test_openrouter_day_limit_by_tier(store, clock):
    p = plan(OR_A)
    for _ in range(3):  # 20 a minute for 3 minutes: 50 a day stops it at 50
        take(store, p, 20)
        clock.advance(60)
    used = store.peek(p)
    assert isinstance(used, Reservation) and used.remaining("day").remaining == 0
    refused = store.reserve(p, 1)
    assert isinstance(refused, Blocked) and refused.counter.key == "day"
    assert refused.until_ms == 1795824000000  # 2026-11-27 00:00:00 UTC
    funded = plan(OR_A, openrouter_tier="funded")
    assert funded.counters[1].limit.capacity == 1000


def test_day_window_resets_at_utc_midnight(store, clock):
    p = plan(OR_A)
    for _ in range(3):
        take(store, p, 20)
        clock.advance(60)
    clock.now = 1795824000.5  # just past midnight
    assert isinstance(store.reserve(p, 1), Reservation)


def test_groq_models_have_separate_limits(store, clock):
    assert granted(take(store, plan(GQ_120), 31)) == 30
    assert granted(take(store, plan(GQ_20), 30)) == 30


def test_groq_requests_refill_continuously(store, clock):
    p = plan(GQ_120)
    take(store, p, 30)
    refused = store.reserve(p, 10)
    assert isinstance(refused, Blocked) and refused.counter.key == "rpm"
    assert 1.9 <= refused.wait_s <= 2.0  # 30/min refills one request every 2 s
    clock.advance(2.0)
    assert isinstance(store.reserve(p, 10), Reservation)
    assert isinstance(store.reserve(p, 10), Blocked)


def test_groq_tokens_per_minute_and_the_wait_formula(store, clock):
    p = plan(GQ_120)  # 8000 TPM
    assert isinstance(store.reserve(p, 6000), Reservation)
    refused = store.reserve(p, 3000)
    assert isinstance(refused, Blocked) and refused.counter.key == "tpm"
    # Groq's own formula: (used + requested - limit) * 60 / limit = (6000 + 3000 - 8000) * 60 / 8000 = 7.5 s
    assert refused.wait_s == pytest.approx(7.5, abs=0.01)


def test_a_request_larger_than_the_limit_can_never_fit(store, clock):
    refused = store.reserve(plan(GQ_120), 9000)
    assert isinstance(refused, Blocked) and refused.never and refused.counter.key == "tpm"


def test_all_or_nothing(store, clock):
    p = plan(GQ_120)
    store.reserve(p, 7990)
    before = store.peek(p)
    refused = store.reserve(p, 100)  # rpm has room, tpm does not: nothing may be taken
    assert isinstance(refused, Blocked)
    after = store.peek(p)
    assert [s.remaining for s in after.states] == [s.remaining for s in before.states]


def test_settle_replaces_the_estimate_with_real_usage(store, clock):
    p = plan(GQ_120)
    r = store.reserve(p, 5000)
    store.settle(r, 800)
    left = store.peek(p).remaining("tpm").remaining
    assert 7195 <= left <= 7200  # 8000 - 800, give or take the refill


def test_refund_returns_tokens_but_keeps_the_request(store, clock):
    p = plan(GQ_120)
    r = store.reserve(p, 5000)
    store.refund(r)
    after = store.peek(p)
    assert after.remaining("tpm").remaining >= 7999
    assert after.remaining("rpm").remaining == 29  # the attempt reached the provider: it counts


def test_block_holds_until_the_provider_reset_and_never_shortens(store, clock):
    p = plan(OR_A)
    day = next(c for c in p.counters if c.key == "day")
    store.block(p, day, 1795824000000, "exhausted (provider 429)")
    store.block(p, day, 1795780900000, "shorter")  # must not shorten
    refused = store.reserve(plan(OR_B), 1)  # the other :free model of the account is blocked too
    assert isinstance(refused, Blocked) and refused.until_ms == 1795824000000
    assert refused.why == "exhausted (provider 429)"


def test_cooldown_is_per_model_and_escalates(store, clock):
    a, b = plan(OR_A), plan(OR_B)
    assert store.cool(a, "busy upstream", 10, 300) == 1  # strikes
    assert store.cool(a, "busy upstream", 10, 300) == 2
    refused = store.reserve(a, 1)
    assert isinstance(refused, Blocked) and refused.counter is None
    assert refused.until_ms == 1795780830000  # 10 s, then 20 s: the second strike doubled it
    assert isinstance(store.reserve(b, 1), Reservation)  # only that model
    clock.advance(21)
    assert isinstance(store.reserve(a, 1), Reservation)


def test_a_reservation_reports_the_models_remembered_strikes(store, clock):
    """After its cooldown a model's strikes are still remembered (for escalation); the reservation says so, so that
    only a success after failures pays a round trip to clear them (circuit.py), and a healthy model's does not."""
    a, b = plan(OR_A), plan(OR_B)
    store.cool(a, "busy upstream", 10, 300)
    store.cool(a, "busy upstream", 10, 300)
    clock.advance(31)
    assert store.reserve(a, 1).strikes == 2
    assert store.reserve(b, 1).strikes == 0


def test_calibration_only_raises_the_count(store, clock):
    p = plan(GQ_120)
    store.calibrate(p, [Remaining("rpd", remaining=900, capacity=1000), Remaining("tpm", remaining=7000, capacity=8000)])
    seen = store.peek(p)
    assert seen.remaining("rpd").remaining == 900
    assert seen.remaining("tpm").remaining in (6999, 7000)
    store.calibrate(p, [Remaining("rpd", remaining=990, capacity=1000)])  # says more is left: ignored
    assert store.peek(p).remaining("rpd").remaining == 900


def test_settle_with_the_replys_headers_is_one_adjust_with_both_effects(store, clock):
    p = plan(GQ_120)
    reservation = store.reserve(p, 1000)  # tpm 8000: 7000 left while reserved
    assert reservation.remaining("tpm").remaining == 7000
    # Settled to 300 real tokens (700 back) and, in the same call, the reply's headers: 7500 tokens left this minute
    # (another worker's request the provider already counted) -> 500 used, more than our 300: raised to 500.
    store.settle(reservation, 300, [Remaining("tpm", remaining=7500, capacity=8000)])
    assert store.peek(p).remaining("tpm").remaining in (7499, 7500)
    store.settle(store.reserve(p, 100), 40, [Remaining("tpm", remaining=7900, capacity=8000)])  # says less used
    assert store.peek(p).remaining("tpm").remaining in (7459, 7460, 7461)  # settled (-60), calibration ignored


def test_calibration_scales_a_different_provider_limit(store, clock):
    p = plan(GQ_120)  # we think 1000/day; the header says 14400 with 7200 left -> half used
    store.calibrate(p, [Remaining("rpd", remaining=7200, capacity=14400)])
    assert store.peek(p).remaining("rpd").remaining == 500


def test_keys_carry_one_hash_tag_per_deployment_and_no_secret(store, clock):
    store.reserve(plan(OR_A), 1)
    store.reserve(plan(GQ_120), 1)
    store.cool(plan(OR_B), "x", 1, 1)
    keys = [k.decode() for k in store.client.keys("*")]
    assert keys
    for key in keys:
        assert "k1" not in key and "g1" not in key
        tag = key[key.index("{") + 1: key.index("}")]
        assert tag.startswith(("or:", "gq:"))
        assert store.client.pttl(key) > 0  # every key expires


def test_margin_delays_refill_credit_but_not_the_first_burst(margin_store, clock):
    p = plan(GQ_120)
    assert granted(take(margin_store, p, 30)) == 30  # an idle bucket still takes the whole burst
    clock.advance(2.0)  # one request has drained at the provider only if all 30 arrived at once
    refused = margin_store.reserve(p, 10)
    assert isinstance(refused, Blocked) and refused.counter.key == "rpm"
    assert refused.until_ms == int((1795780810.0 + 4.0) * 1000)  # 2 s of drain + the 2 s margin
    clock.advance(2.0)
    assert isinstance(margin_store.reserve(p, 10), Reservation)
    clock.advance(2.0)  # steady state: one every 2 s again, only shifted by the margin
    assert isinstance(margin_store.reserve(p, 10), Reservation)


def test_margin_counts_end_of_window_reservations_in_the_next_window(margin_store, clock):
    p = plan(OR_A)
    clock.now = 1795780859.0  # 1 s before the minute ends: these may reach OpenRouter in the next minute
    assert granted(take(margin_store, p, 5)) == 5
    clock.now = 1795780861.0
    assert granted(take(margin_store, p, 20)) == 15  # 20 - the 5 that may have landed here
    clock.now = 1795780925.0  # two minutes on: nothing carried over
    assert granted(take(margin_store, p, 20)) == 20


# ---- where the store lives: clients built for a store that may be down (connect.py) ------------------------------


def test_clients_time_out_at_the_setting_and_never_sleep_to_retry():
    from redis.backoff import NoBackoff

    from router_plugin.store import resolve_target

    target = resolve_target("redis://127.0.0.1:1/0", None, 0.25)
    for client in (target.sync_client(), target.async_client()):
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.25 and kwargs["socket_connect_timeout"] == 0.25
        # redis-py's default is 10 retries with backoff: a dead Redis would hold a request for seconds.
        assert kwargs["retry"].get_retries() <= 1 and isinstance(kwargs["retry"]._backoff, NoBackoff)


def test_redis_cluster_setting_builds_cluster_clients_lazily():
    from redis.asyncio.cluster import RedisCluster as AsyncCluster

    from router_plugin.store import resolve_target

    target = resolve_target("redis://127.0.0.1:1", None, 0.25, cluster=True)
    assert target.cluster and target.describe() == "redis://127.0.0.1:1 (cluster)"
    assert isinstance(target.async_client(), AsyncCluster)  # no connection until the first command
    store = SyncQuotaStore(target)  # nor here: the sync cluster client is built on first use
    with pytest.raises(Exception, match="quota store redis://127.0.0.1:1 \\(cluster\\) failed to reserve"):
        store.reserve(plan(OR_A), 1)


@pytest.mark.parametrize("url, shown", [
    ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://user:s3cret@h/0", "redis://user:***@h/0"),
    ("rediss://h:6380/0?password=s3cret&ssl_ca_certs=/ca.pem", "rediss://h:6380/0?password=***&ssl_ca_certs=/ca.pem"),
    ("unix:///run/redis.sock?password=s3cret", "unix:///run/redis.sock?password=***"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_the_store_is_named_without_its_password(url, shown):
    from router_plugin.store import resolve_target

    assert resolve_target(url, None, 0.5).describe() == shown
