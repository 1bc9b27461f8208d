"""Redis Cluster: a real 3-master cluster started from redis-server in the test run.

Every key of a deployment carries one hash tag (``rp:{slot}:...``), so each script's keys live in one cluster slot
and the scripts run unchanged; different deployments land on different masters. The same operations give the same
results on the cluster as on a single node, and ``redis_cluster: true`` makes a router use the cluster clients.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

import router_plugin
from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config
from router_plugin.limits import LimitOverride, PlanInputs, plan_for
from router_plugin.providers.facts import Remaining
from router_plugin.store import Blocked, QuotaStore, Reservation, SyncQuotaStore, resolve_target
from tests.servers import RedisServer, create_cluster, redis_server_binary

pytestmark = pytest.mark.integration


def redis_cli() -> str | None:
    """The redis-cli beside the redis-server the tests start (same version), else any on PATH."""
    candidate = Path(redis_server_binary()).with_name("redis-cli")
    return str(candidate) if candidate.exists() else shutil.which("redis-cli")


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too and below 65536."""
    import random
    import socket

    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 30_000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cli = redis_cli()  # None on a fresh machine (the wheels ship no redis-cli): create_cluster does its job
    base = tmp_path_factory.mktemp("cluster")
    nodes: list[RedisServer] = []
    try:
        for i in range(3):
            workdir = base / f"node{i}"
            workdir.mkdir()
            node = RedisServer(workdir, port=cluster_port(), extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                               "--cluster-node-timeout", "5000"])
            nodes.append(node)  # before start: a node that fails to answer is still stopped below
            node.start()
        if cli is None:
            create_cluster(nodes)
        else:
            create = subprocess.run(
                [cli, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes], "--cluster-replicas", "0",
                 "--cluster-yes"], capture_output=True, text=True, timeout=60)
            assert create.returncode == 0, create.stdout[-2000:] + create.stderr[-2000:]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [n.client().cluster("info") for n in nodes]
            if all(s.get("cluster_state") == "ok" for s in states):
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the cluster did not become ready: {states}")
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def url_of(node: RedisServer) -> str:
    return f"redis://127.0.0.1:{node.port}"


def plans():
    inputs = PlanInputs(limits={"openrouter": LimitOverride(rpm=6, rpd=9),
                                "groq/openai/gpt-oss-120b": LimitOverride(rpm=5, tpm=900)})
    deployments = [
        ("openrouter/deepseek/deepseek-r1:free", "or-key-1"),
        ("openrouter/qwen/qwen3-coder:free", "or-key-1"),  # the same account pool: same slot
        ("openrouter/qwen/qwen3-coder:free", "or-key-2"),  # another account
        ("groq/openai/gpt-oss-120b", "gq-key-1"),
        ("groq/openai/gpt-oss-20b", "gq-key-1"),
        ("groq/llama-3.1-8b-instant", "gq-key-2"),
    ]
    return [plan_for({"model_name": "c", "litellm_params": {"model": m, "api_key": k},
                      "model_info": {"id": f"d{i}"}}, inputs) for i, (m, k) in enumerate(deployments)]


def script(store, ps) -> list:
    """The same operations, in order, on any store: every script and every path through it."""
    out = []
    a, a2, other, g120, g20, g8 = ps
    for _ in range(5):
        out.append(store.reserve(a, 10))
        out.append(store.reserve(a2, 10))  # shares a's pool: the minute (6) fills after 6 of the 10
        out.append(store.reserve(other, 10))
        out.append(store.reserve(g120, 200))  # rpm 5 / tpm 900 overridden: tpm fills after 4
        out.append(store.reserve(g20, 100))
    out.append(store.reserve(g8, 99_999))  # larger than the whole limit
    first = next(r for r in out if isinstance(r, Reservation) and r.plan is g120)
    store.settle(first, 20)
    store.refund(next(r for r in out if isinstance(r, Reservation) and r.plan is g20))
    store.calibrate(g20, [Remaining("rpd", remaining=900, capacity=1000)])
    out.append(store.peek(g120))
    out.append(store.peek(g20))
    out.append(store.block(other, other.counters[1], int(time.time() * 1000) + 3_600_000, "exhausted (provider 429)"))
    out.append(store.reserve(other, 10))
    out.append(store.cool(g8, "busy upstream", 10, 300))
    out.append(store.cool(g8, "busy upstream", 10, 300))
    out.append(store.reserve(g8, 10))
    out.append(store.peek(g8, counters_only=True))
    return out


def summary(result) -> tuple:
    """What must be equal between two runs made a few ms apart: refill levels and times taken from the clock
    (cooldowns, blocks we set) may differ by those ms; fixed windows, refusals and their reasons may not."""
    if isinstance(result, Reservation):
        return ("reserved", result.plan.deployment_id,
                tuple((s.counter.key, s.remaining if s.counter.limit.kind == "fixed" else None) for s in result.states))
    if isinstance(result, Blocked):
        exact = result.counter is not None and result.counter.limit.kind == "fixed" and result.why == "full"
        return ("blocked", result.plan.deployment_id, result.counter and result.counter.key,
                result.until_ms if exact else None, result.why, result.never)
    return ("value", result if result < 1000 else "a time")


def test_every_script_runs_on_a_three_master_cluster_with_single_node_results(cluster, redis_url):
    ps = plans()
    cluster_store = SyncQuotaStore(resolve_target(url_of(cluster[0]), None, 2.0, cluster=True))
    assert isinstance(cluster_store.client, RedisCluster)
    single_store = SyncQuotaStore(resolve_target(redis_url, None, 2.0))
    if 60 - time.time() % 60 < 10:  # both runs inside one clock minute
        time.sleep(60 - time.time() % 60 + 0.2)
    on_cluster = script(cluster_store, ps)
    on_single = script(single_store, ps)
    assert [summary(r) for r in on_cluster] == [summary(r) for r in on_single]
    # Fixed windows and blocks are exact; refill buckets agree within their drain between the two runs.
    for c, s in zip(on_cluster, on_single):
        if isinstance(c, Reservation):
            for cs, ss in zip(c.states, s.states):
                assert abs(cs.remaining - ss.remaining) <= max(2, cs.counter.limit.capacity // 100)
    # Both reached the limits the same way (the test exercises refusals, not only grants).
    assert sum(isinstance(r, Blocked) for r in on_cluster) >= 8
    # The deployments' keys are spread over several masters, and all keys of one deployment share one slot.
    rc = cluster_store.client
    holders = set()
    for plan in ps:
        keys = cluster_store.keys.reserve_keys(plan)
        slots = {rc.keyslot(k) for k in keys}
        assert len(slots) == 1, keys
        holders.add(rc.get_node_from_key(keys[0]).name)
        assert all(k.startswith("rp:{") for k in keys)
    assert len(holders) >= 2
    for node in cluster:
        for key in node.client().scan_iter(count=1000):
            assert node.client().pttl(key) > 0  # every key expires, on every master


def test_async_store_on_the_cluster(cluster):
    ps = plans()
    store = QuotaStore(resolve_target(url_of(cluster[1]), None, 2.0, cluster=True), prefix="async:")

    async def run():
        got = [await store.reserve(ps[5], 10) for _ in range(3)]
        await store.settle(got[0], 5)
        await store.cool(ps[5], "busy", 1, 2)
        refused = await store.reserve(ps[5], 10)
        await store.aclose()
        return got, refused

    got, refused = asyncio.run(run())
    assert all(isinstance(r, Reservation) for r in got)
    assert isinstance(refused, Blocked) and refused.counter is None and refused.why == "busy"


def test_a_router_with_redis_cluster_true(cluster, sim):
    config = demo_config(sim.base_url, redis_url=url_of(cluster[2]), redis_cluster=True, key_prefix="router:")
    router = router_plugin.build_router(config)
    inst = router_plugin.adapter.installer.installed(router)

    async def run():
        metadata: dict = {}
        response = await router.acompletion(model=DEMO_GROUP, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=8, metadata=metadata)
        return response, metadata["router_plugin"]

    response, info = asyncio.run(run())
    assert response.choices[0].message.content and info["model"] == DEMO_CHAIN[0]
    rc = RedisCluster(host="127.0.0.1", port=cluster[0].port)
    keys = [k.decode() for k in rc.scan_iter(match="router:*", target_nodes=RedisCluster.ALL_NODES)]
    assert any(":c:minute" in k for k in keys), keys
    peek = inst.sync_store.peek(inst.plans.plan(router.model_list[0]))
    assert isinstance(peek, Reservation) and peek.remaining("minute").remaining == 19


def test_redis_cluster_needs_a_url():
    from router_plugin.errors import StoreError

    with pytest.raises(StoreError, match="redis_cluster: true needs router_plugin.redis_url"):
        resolve_target(None, None, 0.5, cluster=True)


def test_a_least_privilege_acl_user_runs_the_scripts_on_the_cluster(cluster):
    """The ACL of SECURITY.md, plus the commands a cluster client needs to find the slots."""
    rules = ["resetkeys", "~acl:*", "-@all", "+evalsha", "+eval", "+script|load", "+ping", "+time", "+hmget", "+hset",
             "+pttl", "+pexpireat", "+cluster|slots", "+cluster|shards", "+command", "+readonly"]
    for node in cluster:
        node.client().execute_command("ACL", "SETUSER", "rp-cluster", "on", ">pw-cluster", *rules)
    ps = plans()
    store = SyncQuotaStore(resolve_target(f"redis://rp-cluster:pw-cluster@127.0.0.1:{cluster[0].port}", None, 2.0,
                                          cluster=True), prefix="acl:")
    outcomes = [store.reserve(p, 10) for p in ps]
    assert all(isinstance(o, Reservation) for o in outcomes)
    store.cool(ps[0], "busy", 1, 2)
    store.settle(outcomes[3], 5)
    assert isinstance(store.reserve(ps[0], 1), Blocked)


def test_reserve_first_and_deferred_settles_on_the_cluster(cluster):
    """A walk over several slots: one call per run of one slot, in order; deferred settles flushed per slot."""
    from router_plugin.store import Ask

    ps = plans()
    a, a2, other, g120, g20, g8 = ps
    store = QuotaStore(resolve_target(url_of(cluster[0]), None, 2.0, cluster=True), prefix="first:")

    async def run():
        for _ in range(6):  # a's account pool (shared with a2): its minute (6) is full
            assert isinstance(await store.reserve(a, 10), Reservation)
        chosen = await store.reserve_first([Ask(a, 10), Ask(a2, 10), Ask(g120, 200), Ask(g20, 100)])
        store.settle_later(chosen, 20)
        store.settle_later(await store.reserve_first([Ask(g20, 100)]), 10)
        await store.flush()
        none = await store.reserve_first([Ask(a, 10), Ask(a2, 10), Ask(g8, 99_999)])
        left = await store.peek(g120)
        await store.aclose()
        return chosen, none, left

    chosen, none, left = asyncio.run(run())
    assert isinstance(chosen, Reservation) and chosen.plan is g120
    assert [b.plan for b in none] == [a, a2, g8] and none[0].counter.key == "minute" and none[2].never
    assert left.remaining("tpm").remaining == 900 - 20  # the settle reached its slot: 20 real tokens, not 200
