"""Part 1 -- quota efficiency: one burst, fired all at once from W worker processes, per (setup, W, size).

Per run: the simulator is reset and Redis flushed (every router starts from zero counters, the providers from
full quota), each of the W workers builds a fresh router from the setup's config, then all requests of the
burst are sent at once (each worker ``asyncio.gather``s its share). A run starts only when enough of the
current clock minute is left for it to end inside that minute (OpenRouter counts per clock minute); if one
nevertheless crosses a minute boundary, the capacity below counts the extra minute.

Capacity -- the most the providers would have accepted while the router was handling the burst:

    window W_s   = from the first request of the burst to the last routing decision: the later of the last
                   provider attempt (the simulator's log) and the last refusal
    OpenRouter   = min(50 per UTC day, 20 x clock minutes touched by the window)  (one pool for both :free models)
    each Groq    = floor(min(30 + 0.5/s x W_s, tpm-bound, 1000 per day))       (the bucket starts full and refills)
    capacity     = OpenRouter + both Groq models  (80 + about 1 per second of window)

served / capacity compares what reached a caller with that. 429s are what the simulator answered with a limit
reason (every attempt, LiteLLM's retries included). "OR quota burnt" is the simulator's daily count minus
OpenRouter successes (the simulator counts admitted attempts that then failed, not attempts refused by the
limiter itself); "OR failed attempts" counts every OpenRouter attempt that did not succeed -- what would burn
the daily quota if OpenRouter counts rate-limited attempts too (its help centre: "Failed attempts still count").
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

from . import configs
from .stats import percentile

PROMPT = "{tag} worker {w} request {i}: say hello"


def _split(total: int, workers: int) -> list[int]:
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


def wait_for_room(seconds: float, log) -> None:
    """Sleep into the next clock minute unless ``seconds`` are left in this one."""
    left = 60.0 - (time.time() % 60.0)
    if left < seconds:
        log(f"    waiting {left:.0f} s for a fresh clock minute")
        time.sleep(left + 0.3)


def capacity(window_s: float, t_start: float, t_end: float, tokens_per_request: int) -> dict[str, float]:
    minutes = int(t_end // 60) - int(t_start // 60) + 1
    openrouter = min(configs.OR_RPD, configs.OR_RPM * minutes)
    groq_requests = configs.GROQ_RPM + configs.GROQ_RPM / 60.0 * window_s
    groq_tokens = (configs.GROQ_TPM + configs.GROQ_TPM / 60.0 * window_s) / max(1, tokens_per_request)
    groq_each = math.floor(min(groq_requests, groq_tokens, configs.GROQ_RPD) + 1e-9)
    return {"openrouter": openrouter, "groq_each": groq_each, "total": openrouter + 2 * groq_each, "minutes": minutes}


def summarize(setup: str, workers: int, outcomes: list[dict], sim_stats: dict, max_tokens: int) -> dict[str, Any]:
    t_start = min(o["t0"] for o in outcomes)
    log = [e for e in sim_stats["log"] if e["t"] >= t_start - 1]
    not_served = [o for o in outcomes if not o["ok"]]
    decisions = [e["t"] for e in log] + [o["t1"] for o in not_served]
    t_end = max(decisions) if decisions else t_start
    window = max(0.0, t_end - t_start)
    text = PROMPT.format(tag="burst", w=0, i=0)
    cap = capacity(window, t_start, t_end, math.ceil(len(text) / 4) + 4 + max_tokens)
    served = [o for o in outcomes if o["ok"]]
    kinds = Counter(o["kind"] for o in outcomes)
    responses = sim_stats["responses"]
    or_ok = responses["openrouter"].get("200", 0)
    or_attempts = sum(sim_stats["requests"]["openrouter"].values())
    or_day = sum(sim_stats["openrouter_day_used"].values())
    rl = sim_stats["rate_limited"]
    by_model = Counter(o["model"] for o in served)
    return {
        "setup": setup, "workers": workers, "requests": len(outcomes),
        "served": len(served), "capacity": cap["total"], "cap_openrouter": cap["openrouter"],
        "cap_groq_each": cap["groq_each"], "minutes": cap["minutes"], "window_s": window,
        "served_pct": 100.0 * len(served) / cap["total"] if cap["total"] else 0.0,
        "p429": rl["openrouter"] + rl["groq"], "p429_openrouter": rl["openrouter"], "p429_groq": rl["groq"],
        "or_attempts": or_attempts, "or_ok": or_ok, "or_failed_attempts": or_attempts - or_ok,
        "or_burnt_sim": or_day - or_ok,
        "refused": kinds.get("refused", 0), "failed_429": kinds.get("provider_429", 0), "errors": kinds.get("error", 0),
        "not_served_p50_ms": _ms(percentile([o["lat"] for o in not_served], 50)),
        "not_served_p99_ms": _ms(percentile([o["lat"] for o in not_served], 99)),
        "served_p50_ms": _ms(percentile([o["lat"] for o in served], 50)),
        "duration_s": max(o["t1"] for o in outcomes) - t_start,
        "by_model": {m: by_model.get(m, 0) for m in configs.CHAIN},
        "error_samples": [f"{o.get('err')}: {o.get('msg', '')[:160]}" for o in not_served
                          if o["kind"] == "error"][:3],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def warm_up(bench, setups: list[str], workers: int) -> None:
    """Each worker builds each setup once and sends a couple of requests (lazy imports, HTTP clients)."""
    for setup in setups:
        bench.reset()
        bench.pool.build(bench.spec(setup), workers)
        bench.pool.burst([2] * workers, tag="warmup")
    bench.reset()


def run(bench, setups: list[str], workers_list: list[int], sizes: list[int], max_tokens: int = 32,
        align_minute: bool = True) -> list[dict]:
    rows: list[dict] = []
    expected: dict[str, float] = {}
    for workers in workers_list:
        for size in sizes:
            for setup in setups:
                if align_minute:
                    wait_for_room(max(12.0, 3.0 * expected.get(setup, 5.0) + 3.0), bench.log)
                bench.reset()
                bench.pool.build(bench.spec(setup), workers)
                outcomes = bench.pool.burst(_split(size, workers), max_tokens=max_tokens, tag="burst")
                row = summarize(setup, workers, outcomes, bench.sim.stats(), max_tokens)
                stats = getattr(bench.pool, "store_stats", [])
                if stats:  # router_plugin: did any worker take Redis for unreachable (fail_open share)?
                    row["store_outages"] = sum(x["outages"] for x in stats)
                    row["store_local_grants"] = sum(x["local_grants"] for x in stats)
                    row["store_lag_retries"] = sum(x["lag_retries"] for x in stats)
                    row["store_pool_waits"] = sum(x["pool_waits"] for x in stats)
                    row["store_errors"] = sorted({x["last_error"] for x in stats if x["last_error"]})[:3]
                expected[setup] = max(expected.get(setup, 0.0), row["duration_s"])
                rows.append(row)
                bench.log(f"    {configs.LABELS[setup]:<40} W={workers} n={size:>3}: served {row['served']:>3}/"
                          f"{row['capacity']} ({row['served_pct']:.1f}%), 429s {row['p429']:>3} "
                          f"(OR {row['p429_openrouter']}), refused {row['refused']}, failed {row['failed_429']}"
                          f"+{row['errors']}, {row['duration_s']:.1f} s"
                          + (f"; store outages {row['store_outages']} (local grants {row['store_local_grants']}, "
                             f"lag retries {row['store_lag_retries']}, pool waits {row['store_pool_waits']})"
                             if "store_outages" in row else ""))
    return rows
