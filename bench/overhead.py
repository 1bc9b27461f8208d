"""Part 3 -- routing overhead per request, and the quota store's reservations per second.

Routing overhead. One worker process; the simulator answers at once (no added latency) with every limit out of
reach. For each provider the group has ONE deployment (OpenRouter ``meta-llama/llama-3.3-70b-instruct:free``, or Groq
``openai/gpt-oss-120b``), so every router sends every request to the same place and LiteLLM's own per-provider
work is identical; only the routing differs:

    stock_shuffle   stock simple-shuffle, LiteLLM's default (no Redis)
    stock           stock usage-based-routing-v2 with ``rpm``/``tpm`` and its Redis (as a multi-worker user runs it)
    plugin          router_plugin.build_router (its own Redis: one atomic reservation per request; for Groq the
                    success callback also settles the token estimate to the real usage, a second round trip)
    upstream_only   the same POST straight through LiteLLM's HTTP client, no router: the provider call alone

All routers live in the same process. LiteLLM keeps callbacks in global lists, so the bench swaps in each
router's own lists before its request. Requests are sequential and interleaved one by one in a fresh random
order (the machine's drift lands on every router alike; samples are paired by index). Per request:

    cost        wall time of ``acompletion`` + the background work LiteLLM scheduled for it (its success logging,
                UBR-v2's usage update, the plugin's settle), awaited to completion before the next request
    cpu         this process's CPU time over the same span (the simulator and Redis run in other processes)
    total       ``acompletion`` alone: what the caller waits
    background  cost - total

    stock's own overhead = p50 cost(stock) - p50 cost(upstream_only)
    plugin added         = median over i of cost(plugin, i) - cost(stock, i)   (also for cpu)

The routing decision alone is timed separately: ``router.async_get_available_deployment`` called directly on
the full four-deployment chain.

Store throughput: ``SyncQuotaStore.reserve`` sequentially (one round trip each), pipelined (the same EVALSHA
batched 100 per round trip), and ``QuotaStore.reserve`` with 64 concurrent coroutines; every reservation is a
real, successful reservation of a Groq deployment's four counters (RPM, RPD, TPM, TPD) in one Redis.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from . import configs
from .stats import percentile

HUGE = 10**9
# Groq resets carried in headers must stay >= 1 ms (see day.scaled): reset-tokens = level * 60 / tpm,
# reset-requests = level * 86400 / rpd; a request here reserves ~25 tokens.
SIM_LIMITS = {
    "openrouter": {"accounts": {"*": {"minute_limit": HUGE, "daily_limit": HUGE}}},
    "groq": {"limits": {m.split("/", 1)[1]: {"rpm": HUGE, "rpd": 10_000_000, "tpm": 600_000, "tpd": HUGE}
                        for m in configs.CHAIN if configs.provider(m) == "groq"}},
}
PLUGIN_LIMITS = {"openrouter": {"rpm": HUGE, "rpd": HUGE}}
PLUGIN_LIMITS.update({m: {"rpm": HUGE, "rpd": 10_000_000, "tpm": 600_000, "tpd": HUGE}
                      for m in configs.CHAIN if configs.provider(m) == "groq"})
PROVIDERS = {"openrouter": "openrouter/meta-llama/llama-3.3-70b-instruct:free", "groq": "groq/openai/gpt-oss-120b"}
SETUPS = ("upstream_only", "stock_shuffle", "stock", "plugin")
LABELS = {"upstream_only": "upstream call alone (no router)", "stock_shuffle": "stock simple-shuffle (no Redis)",
          "stock": "stock usage-based-routing-v2 + Redis", "plugin": "router_plugin"}
PROMPT = "overhead request 1"


def specs(bench, chain: tuple[str, ...]) -> dict[str, dict]:
    """Router specs for ``chain`` (one deployment in the timed runs, the full chain for the routing decision)."""
    from . import configs as c

    base, port = bench.sim.base_url, bench.redis.port
    shuffle = c.stock_router_kwargs(base, port, strategy="simple-shuffle", rpm_scale=1e6, chain=chain)
    shuffle.pop("redis_host")
    shuffle.pop("redis_port")
    return {
        "stock_shuffle": {"kind": "stock", "kwargs": shuffle},
        "stock": {"kind": "stock", "kwargs": c.stock_router_kwargs(base, port, rpm_scale=1e6, chain=chain)},
        "plugin": {"kind": "plugin", "config": c.plugin_config(base, bench.redis.url, limits=PLUGIN_LIMITS,
                                                               chain=chain)},
    }


def raw_request(bench, provider: str) -> dict:
    model = PROVIDERS[provider].split("/", 1)[1]
    base = bench.sim.openrouter_base if provider == "openrouter" else bench.sim.groq_base
    key = configs.OPENROUTER_KEY if provider == "openrouter" else configs.GROQ_KEY
    return {"url": base + "/chat/completions",
            "headers": {"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            "body": {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": PROMPT}]}}


# ---- runs inside a worker process (bench.worker "call") ---------------------------------------------------

async def measure(specs: dict[str, dict], raws: dict[str, dict], n: int, full_chain_specs: dict[str, dict],
                  seed: int = 6) -> dict[str, Any]:
    """``specs`` / ``raws`` are keyed "<provider>:<setup>" / "<provider>"; see the module docstring."""
    import litellm
    from litellm.llms.custom_httpx.http_handler import get_async_httpx_client

    from .worker import _CALLBACK_LISTS, build_router, close_router, drain_logging

    def lists() -> dict[str, list]:
        return {name: list(getattr(litellm, name, []) or []) for name in _CALLBACK_LISTS}

    def restore(saved: dict[str, list]) -> None:
        for name, items in saved.items():
            setattr(litellm, name, list(items))

    pristine = lists()
    routers: dict[str, tuple[Any, dict[str, list]]] = {}
    for name, spec in specs.items():
        restore(pristine)
        routers[name] = (build_router(spec), lists())
    restore(pristine)
    http = get_async_httpx_client(llm_provider="openrouter")

    async def bare(raw: dict) -> None:
        response = await http.post(raw["url"], json=raw["body"], headers=raw["headers"])
        response.json()

    names = [f"{p}:upstream_only" for p in raws] + list(specs)
    keys = ("cost", "cpu", "total", "background")
    samples: dict[str, dict[str, list[float]]] = {s: {k: [] for k in keys} for s in names}

    async def one(name: str) -> None:
        provider, setup = name.split(":")
        if setup == "upstream_only":
            restore(pristine)
            call = bare(raws[provider])
        else:
            router, saved = routers[name]
            restore(saved)
            call = router.acompletion(model=configs.GROUP, messages=[{"role": "user", "content": PROMPT}],
                                      max_tokens=16)
        before = asyncio.all_tasks()
        cpu0, started = time.process_time(), time.perf_counter()
        await call
        total = time.perf_counter() - started
        await drain_logging(before)
        cost = time.perf_counter() - started
        s = samples[name]
        s["cost"].append(cost)
        s["cpu"].append(time.process_time() - cpu0)
        s["total"].append(total)
        s["background"].append(cost - total)

    try:
        await interleaved(names, one, samples, n, seed)
    finally:
        for router, saved in routers.values():
            restore(saved)
            await close_router(router)
        restore(pristine)
        await drain_logging()
    out: dict[str, Any] = {"series": {}, "paired": {}}
    for name, s in samples.items():
        out["series"][name] = {key: {"p50_us": _us(percentile(v, 50)), "p99_us": _us(percentile(v, 99)),
                                     "mean_us": _us(sum(v) / len(v)) if v else None, "n": len(v)}
                               for key, v in s.items()}
    for provider in raws:
        for base in ("stock_shuffle", "stock"):
            for key in ("cost", "cpu", "total"):
                a, b = samples[f"{provider}:plugin"][key], samples[f"{provider}:{base}"][key]
                diffs = [x - y for x, y in zip(a, b)]
                out["paired"][f"{provider}:plugin-{base}:{key}"] = _us(percentile(diffs, 50))
    out["isolated"] = await isolated_routing(full_chain_specs, max(50, n // 2))
    return out


async def interleaved(names: list[str], one, samples: dict[str, dict[str, list[float]]], n: int, seed: int) -> None:
    """Warm every setup up (lazy imports, connections, first-call caches), forget what the warm-up measured, then
    run ``n`` rounds, each setup once per round in a fresh seeded random order: sample i of every setup pairs up."""
    rng = random.Random(seed)
    for name in names:  # warm-up: lazy imports, connections, first-call caches
        for _ in range(min(30, n)):
            await one(name)
    for s in samples.values():
        for v in s.values():
            v.clear()
    for _ in range(n):
        order = list(names)
        rng.shuffle(order)
        for name in order:
            await one(name)


async def isolated_routing(specs: dict[str, dict], n: int) -> dict[str, Any]:
    """The routing decision alone: ``router.async_get_available_deployment`` called directly, n times each."""
    import litellm

    from .worker import _CALLBACK_LISTS, build_router, close_router

    saved = {name: list(getattr(litellm, name, []) or []) for name in _CALLBACK_LISTS}
    out: dict[str, Any] = {}
    messages = [{"role": "user", "content": "overhead request 1"}]
    try:
        for setup, spec in specs.items():
            router = build_router(spec)
            times = []
            for i in range(n + 50):
                kwargs = {"metadata": {}, "max_tokens": 16}
                started = time.perf_counter()
                await router.async_get_available_deployment(model=configs.GROUP, messages=messages,
                                                            request_kwargs=kwargs)
                if i >= 50:
                    times.append(time.perf_counter() - started)
            out[setup] = {"p50_us": _us(percentile(times, 50)), "p99_us": _us(percentile(times, 99)), "n": len(times)}
            await close_router(router)
            for name, items in saved.items():
                setattr(litellm, name, list(items))
    finally:
        for name, items in saved.items():
            setattr(litellm, name, list(items))
    return out


def _us(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e6


# ---- store throughput (also inside a worker) --------------------------------------------------------------

def _store_plan():
    from router_plugin.limits import LimitOverride, PlanInputs, plan_for

    deployment = {"model_name": "bench", "model_info": {"id": "store-bench"},
                  "litellm_params": {"model": "groq/openai/gpt-oss-120b", "api_key": "store-bench-key"}}
    inputs = PlanInputs(limits={"groq/openai/gpt-oss-120b": LimitOverride(rpm=HUGE, rpd=HUGE, tpm=HUGE, tpd=HUGE)})
    return plan_for(deployment, inputs)


async def store_throughput(redis_url: str, n: int, batch: int = 100, concurrency: int = 64) -> dict[str, Any]:
    from router_plugin.store import QuotaStore, Reservation, SyncQuotaStore, resolve_target
    from router_plugin.store import _codec

    plan = _store_plan()
    target = resolve_target(redis_url, None, 5.0)
    out: dict[str, Any] = {"counters_per_reservation": len(plan.counters)}

    sync = SyncQuotaStore(target, "bench-store:")
    sync.client.flushdb()
    for _ in range(200):
        sync.reserve(plan, 50)
    ok = 0
    started = time.perf_counter()
    for _ in range(n):
        ok += isinstance(sync.reserve(plan, 50), Reservation)
    elapsed = time.perf_counter() - started
    out["sequential"] = {"n": n, "ok": ok, "seconds": elapsed, "per_s": n / elapsed,
                         "us_per_op": elapsed / n * 1e6}

    script = sync._scripts["reserve"]
    keys = sync.keys.reserve_keys(plan)
    args = _codec.reserve_args(plan, 50, sync.margin_ms, False, False)
    done, ok = 0, 0
    started = time.perf_counter()
    while done < n:
        pipe = sync.client.pipeline(transaction=False)
        k = min(batch, n - done)
        for _ in range(k):
            script(keys=keys, args=args, client=pipe)
        for reply in pipe.execute():
            ok += isinstance(_codec.parse_reserve(plan, 50, reply), Reservation)
        done += k
    elapsed = time.perf_counter() - started
    out["pipelined"] = {"n": n, "ok": ok, "batch": batch, "seconds": elapsed, "per_s": n / elapsed}
    sync.close()

    store = QuotaStore(target, "bench-store:")
    for _ in range(200):
        await store.reserve(plan, 50)
    counter = {"left": n, "ok": 0}

    async def worker():
        while counter["left"] > 0:
            counter["left"] -= 1
            reply = await store.reserve(plan, 50)  # (not `ok += await ...`: that would lose updates)
            counter["ok"] += isinstance(reply, Reservation)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    out["concurrent_async"] = {"n": n, "ok": counter["ok"], "concurrency": concurrency, "seconds": elapsed,
                               "per_s": n / elapsed}
    await store.aclose()
    return out


# ---- parent side --------------------------------------------------------------------------------------------

def run(bench, mode: dict) -> dict[str, Any]:
    bench.reset(SIM_LIMITS)
    bench.pool.drop(bench.pool.size)  # no router left in any worker; worker 0 measures, the others idle
    timed = {f"{p}:{setup}": spec for p, model in PROVIDERS.items() for setup, spec in specs(bench, (model,)).items()}
    raws = {p: raw_request(bench, p) for p in PROVIDERS}
    result: dict[str, Any] = {"n_per_series": mode["overhead_n"], "providers": PROVIDERS}
    result["routing"] = bench.pool.call(0, "bench.overhead.measure", specs=timed, raws=raws, n=mode["overhead_n"],
                                        full_chain_specs=specs(bench, configs.CHAIN))
    r = result["routing"]
    for p in PROVIDERS:
        bench.log(f"    {p}: cost p50 (us) " + ", ".join(
            f"{s} {r['series'][f'{p}:{s}']['cost']['p50_us']:.0f}" for s in SETUPS)
            + f"; plugin added (paired) {r['paired'][f'{p}:plugin-stock_shuffle:cost']:+.0f} vs shuffle, "
              f"{r['paired'][f'{p}:plugin-stock:cost']:+.0f} vs UBR-v2")
    bench.reset()
    result["store"] = bench.pool.call(0, "bench.overhead.store_throughput", redis_url=bench.redis.url,
                                      n=mode["store_n"])
    st = result["store"]
    bench.log(f"    store: sequential {st['sequential']['per_s']:.0f}/s, pipelined {st['pipelined']['per_s']:.0f}/s, "
              f"64 concurrent {st['concurrent_async']['per_s']:.0f}/s")
    return result
