"""Part 4 -- what the plugin adds to one request: stock simple-shuffle vs router_plugin (issue 18's table).

One worker process; the simulator answers at once (zero-latency upstream) with every limit out of reach. For each
path -- OpenRouter ``:free`` (``openrouter/meta-llama/llama-3.3-70b-instruct:free``) and Groq
(``groq/openai/gpt-oss-120b``) -- the group has that ONE deployment, so both routers send every request to the same
place and only the routing differs:

    stock_shuffle   stock LiteLLM's default simple-shuffle (no Redis: the cheapest stock Router)
    plugin          router_plugin.build_router (its Redis: the reservation; for Groq the settle after the reply)

Both routers live in the same process (LiteLLM's global callback lists are swapped to each router's own before its
request) and their requests are interleaved one by one in a fresh random order, so the machine's drift lands on both
alike and samples pair up by index. Per request:

    caller latency   wall time of ``router.acompletion``: what the caller waits
    CPU              this process's CPU time (``time.process_time``: every thread, so LiteLLM's and the plugin's
                     background work is included) from the call until the background work LiteLLM scheduled for
                     it (success logging, the plugin's settle) has finished

    added caller latency = median over i of latency(plugin, i) - latency(stock, i), as a share of stock's p50
    added CPU            = the same for CPU

The run is split into ``blocks`` equal blocks (three by default) and the ratios are given per block, so their spread
shows how stable they are. Targets (issue 18): added caller latency <= 5% and added CPU <= 10% of stock's, both paths.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from . import configs
from .overhead import PLUGIN_LIMITS, PROMPT, PROVIDERS, SIM_LIMITS, interleaved
from .stats import percentile

SETUPS = ("stock_shuffle", "plugin")
LABELS = {"stock_shuffle": "stock simple-shuffle", "plugin": "router_plugin"}
NAMES = {"openrouter": "OpenRouter `:free`", "groq": "Groq"}
TARGET_LATENCY, TARGET_CPU = 0.05, 0.10


def specs(bench) -> dict[str, dict]:
    out = {}
    for p, model in PROVIDERS.items():
        shuffle = configs.stock_router_kwargs(bench.sim.base_url, bench.redis.port, strategy="simple-shuffle",
                                              rpm_scale=1e6, chain=(model,))
        shuffle.pop("redis_host")
        shuffle.pop("redis_port")
        out[f"{p}:stock_shuffle"] = {"kind": "stock", "kwargs": shuffle}
        out[f"{p}:plugin"] = {"kind": "plugin", "config": configs.plugin_config(
            bench.sim.base_url, bench.redis.url, limits=PLUGIN_LIMITS, chain=(model,))}
    return out


# ---- runs inside a worker process (bench.worker "call") ---------------------------------------------------

async def measure(specs: dict[str, dict], n: int, blocks: int = 3, seed: int = 18) -> dict[str, Any]:
    import litellm

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
    samples: dict[str, dict[str, list[float]]] = {s: {"latency": [], "cpu": []} for s in specs}

    async def one(name: str) -> None:
        router, saved = routers[name]
        restore(saved)
        before = asyncio.all_tasks()
        cpu0, started = time.process_time(), time.perf_counter()
        await router.acompletion(model=configs.GROUP, messages=[{"role": "user", "content": PROMPT}], max_tokens=16)
        latency = time.perf_counter() - started
        await drain_logging(before)
        samples[name]["latency"].append(latency)
        samples[name]["cpu"].append(time.process_time() - cpu0)

    names = list(specs)
    try:
        await interleaved(names, one, samples, n, seed)
    finally:
        for router, saved in routers.values():
            restore(saved)
            await close_router(router)
        restore(pristine)
        await drain_logging()
    return summarize(samples, n, blocks)


def summarize(samples: dict[str, dict[str, list[float]]], n: int, blocks: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n": n, "blocks": blocks, "paths": {}}
    providers = sorted({name.split(":")[0] for name in samples}, key=list(PROVIDERS).index)
    size = max(1, n // blocks)
    for p in providers:
        stock, plugin = samples[f"{p}:stock_shuffle"], samples[f"{p}:plugin"]
        row: dict[str, Any] = {}
        for key in ("latency", "cpu"):
            base = percentile(stock[key], 50)
            diffs = [a - b for a, b in zip(plugin[key], stock[key])]
            added = percentile(diffs, 50)
            per_block = []
            for i in range(0, n, size):
                s, d = stock[key][i:i + size], diffs[i:i + size]
                if len(s) >= max(3, size // 2):
                    per_block.append(percentile(d, 50) / percentile(s, 50))
            row[key] = {"stock_p50_us": base * 1e6, "plugin_p50_us": percentile(plugin[key], 50) * 1e6,
                        "added_us": added * 1e6, "ratio": added / base if base else None, "blocks": per_block}
        out["paths"][p] = row
    return out


# ---- parent side --------------------------------------------------------------------------------------------

def run(bench, mode: dict) -> dict[str, Any]:
    bench.reset(SIM_LIMITS)
    bench.pool.drop(bench.pool.size)
    n = mode.get("perrequest_n", mode.get("overhead_n", 1500))
    result = bench.pool.call(0, "bench.perrequest.measure", specs=specs(bench), n=n, blocks=3 if n >= 30 else 1)
    result["providers"] = PROVIDERS
    for p, row in result["paths"].items():
        bench.log(f"    {p}: stock latency {row['latency']['stock_p50_us']:.0f} us, CPU {row['cpu']['stock_p50_us']:.0f}"
                  f" us; plugin added latency {row['latency']['added_us']:+.0f} us "
                  f"({100 * (row['latency']['ratio'] or 0):+.1f}%), CPU {row['cpu']['added_us']:+.0f} us "
                  f"({100 * (row['cpu']['ratio'] or 0):+.1f}%)")
    bench.reset()
    return result
