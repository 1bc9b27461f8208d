"""Part 2 -- a day in the life: a steady, mixed load over one simulated day, for (a) and (b).

Time is compressed, limits scaled to match (neither the simulator's windows nor Redis ``TIME`` can be faked
consistently for both routers, so the clock stays real and the *limits* are scaled):

* one simulated day = ``day_seconds`` real seconds, so ``k = 86400 / day_seconds`` simulated seconds pass per
  real second (k = 576 for the full run: one simulated hour = 6.25 s);
* per-minute limits are multiplied by k, in the simulator (OpenRouter ``minute_limit``, Groq ``rpm``/``tpm``)
  and in both routers' configs (router_plugin ``limits`` overrides; stock ``rpm``/``tpm`` in litellm_params), so a
  real minute holds k simulated minutes' worth;
* daily limits are the published ones, unscaled: the whole simulated day fits inside one real UTC day (the run
  waits if it would cross UTC midnight), so OpenRouter's 50/day and Groq's 1,000 requests/day and 200,000
  tokens/day per model are each one day's budget. (Groq's daily buckets refill continuously; over the real
  run that is under 0.2% of a day's budget, so the simulated day gets one day's budget, as a model used every
  day to its limit would.)
* exception: Groq tokens/min is capped at 5,000,000 per real minute (see ``scaled``); it never binds here;
* stock LiteLLM's ``cooldown_time`` is NOT scaled (see ``scaled``): at its default 5 s of real time it outlasts a
  request's retries, as on a real day, but also k x 5 s of simulated traffic, which spares stock most of the 429s
  it would get on a real day -- the comparison favours stock.

The load: ``day_requests`` arrivals, a seeded Poisson-like process shaped like a working day (quiet night, busy
09:00-18:00), request sizes mixed: 70% chat (~300 prompt tokens, max_tokens 256), 25% RAG (~1,500 tokens,
max_tokens 512), 5% long documents (~5,000 tokens, max_tokens 1,024). Groq counts prompt + completion tokens, so
the 200,000 tokens/day limit binds long before 1,000 requests/day does -- as it does for real RAG traffic.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import time
from collections import Counter, defaultdict
from typing import Any

from . import configs

CLASSES = (  # name, share, prompt characters (the simulator counts chars / 4 as tokens), max_tokens
    ("chat", 0.70, 1_200, 256),
    ("rag", 0.25, 6_000, 512),
    ("long", 0.05, 20_000, 1_024),
)
_WORDS = "the quick brown fox jumps over the lazy dog while the router counts every token it sends ".split()


def rate_shape(hour: float) -> float:
    """Relative arrival rate over the day: a night floor, a working-day plateau with smooth shoulders."""
    day = 1.0 / (1.0 + math.exp(-(hour - 8.5) * 1.5)) * 1.0 / (1.0 + math.exp((hour - 18.5) * 1.2))
    return 0.12 + day


def schedule(n: int, seed: int = 6) -> list[dict[str, Any]]:
    """``n`` arrivals over a day (seconds since simulated midnight), deterministic for a seed."""
    rng = random.Random(seed)
    grid = [rate_shape(h / 60.0) for h in range(24 * 60)]
    total = sum(grid)
    cdf, acc = [], 0.0
    for w in grid:
        acc += w / total
        cdf.append(acc)
    items = []
    for i in range(n):
        u = rng.random()
        lo, hi = 0, len(cdf) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if cdf[mid] < u:
                lo = mid + 1
            else:
                hi = mid
        t = (lo + rng.random()) * 60.0
        r = rng.random()
        name, _, chars, max_tokens = CLASSES[-1]
        acc = 0.0
        for cname, share, cchars, cmax in CLASSES:
            acc += share
            if r < acc:
                name, chars, max_tokens = cname, cchars, cmax
                break
        chars = int(chars * rng.uniform(0.7, 1.3))
        items.append({"sim_t": t, "cls": name, "chars": chars, "max_tokens": max_tokens})
    items.sort(key=lambda x: x["sim_t"])
    for i, item in enumerate(items):
        item["i"] = i
    return items


def _text(i: int, chars: int) -> str:
    words, out, size = _WORDS, [f"request {i}:"], 0
    j = 0
    while size < chars:
        w = words[j % len(words)]
        out.append(w)
        size += len(w) + 1
        j += 1
    return " ".join(out)[:chars]


def sim_tokens(chars: int, max_tokens: int) -> int:
    """What the simulator charges a served Groq request: ceil(chars / 4) + 4 per message + min(max_tokens, 16)."""
    return math.ceil(chars / 4) + 4 + min(max_tokens, 16)


def scaled(k: float) -> dict[str, Any]:
    """The simulator config and both routers' overrides for time compression ``k``."""
    or_rpm, g_rpm = int(configs.OR_RPM * k), int(configs.GROQ_RPM * k)
    # Groq's x-ratelimit-reset-tokens is a Go duration; below 1 ms Go (and the simulator) writes "µs", which
    # LiteLLM's HTTP layer cannot carry in a header (httpx encodes header values as ASCII) and fails the request.
    # A capped TPM keeps the reset of one request >= 1 ms; it never binds under this load.
    g_tpm = int(min(configs.GROQ_TPM * k, TPM_CAP))
    groq_models = [m.split("/", 1)[1] for m in configs.CHAIN if configs.provider(m) == "groq"]
    sim = {"openrouter": {"accounts": {"*": {"minute_limit": or_rpm, "daily_limit": configs.OR_RPD}}},
           "groq": {"limits": {m: {"rpm": g_rpm, "rpd": configs.GROQ_RPD, "tpm": g_tpm, "tpd": configs.GROQ_TPD}
                               for m in groq_models}}}
    plugin_limits: dict[str, Any] = {"openrouter": {"rpm": or_rpm, "rpd": configs.OR_RPD}}
    for m in configs.CHAIN:
        if configs.provider(m) == "groq":
            plugin_limits[m] = {"rpm": g_rpm, "rpd": configs.GROQ_RPD, "tpm": g_tpm, "tpd": configs.GROQ_TPD}
    # Stock's cooldown_time stays at its default (5 s of real time). Scaling it by 1/k as well would put it below
    # the milliseconds between one request's retries, so one request would meet the same exhausted deployment
    # again and fail -- unlike a real day, where 5 s outlasts a request's retries. Unscaled, it instead outlasts
    # many simulated minutes of traffic, sparing stock most 429s it would get on a real day: it favours stock.
    extra = {"plugin": {"limits": plugin_limits}, "stock": {"rpm_scale": k}}
    return {"sim": sim, "extra": extra, "or_rpm": or_rpm, "groq_rpm": g_rpm, "groq_tpm": g_tpm}


def wait_clear_of_utc_midnight(seconds: float, log) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    left = 86400 - (now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6)
    if left < seconds:
        log(f"    the run would cross UTC midnight (OpenRouter's day): waiting {left:.0f} s")
        time.sleep(left + 1.0)


def hhmm(sim_seconds: float | None) -> str:
    if sim_seconds is None:
        return "–"
    sim_seconds = max(0.0, min(sim_seconds, 86399.0))
    return f"{int(sim_seconds // 3600):02d}:{int(sim_seconds % 3600 // 60):02d}"


TPM_CAP = 5_000_000

POOLS = ("openrouter", "groq/openai/gpt-oss-120b", "groq/openai/gpt-oss-20b")


def pool_of(model: str | None) -> str | None:
    if not model:
        return None
    if model.startswith("openrouter/") or model.endswith(":free"):
        return "openrouter"
    return model if model.startswith("groq/") else f"groq/{model}"


def summarize(setup: str, items: list[dict], outcomes: list[dict], sim_stats: dict, t0: float, k: float,
              workers: int) -> dict[str, Any]:
    by_i = {it["i"]: it for it in items}
    served = [o for o in outcomes if o["ok"]]
    kinds = Counter(o["kind"] for o in outcomes)
    to_sim = lambda t: (t - t0) * k  # noqa: E731
    log = [e for e in sim_stats["log"] if e["t"] >= t0 - 1]
    pools: dict[str, dict[str, Any]] = {}
    for pool in POOLS:
        ok = [e for e in log if e["status"] == 200 and pool_of(e["model"] if e["provider"] == "groq" else
                                                              "openrouter/" + str(e["model"])) == pool]
        rl = [e for e in log if e["status"] == 429 and pool_of(e["model"] if e["provider"] == "groq" else
                                                              "openrouter/" + str(e["model"])) == pool]
        daily_rl = [e for e in rl if e.get("reason") in ("day", "rpd", "tpd")]
        info: dict[str, Any] = {"served": len(ok), "p429": len(rl),
                                "first_daily_429": hhmm(to_sim(min(e["t"] for e in daily_rl))) if daily_rl else "–",
                                "last_success": hhmm(to_sim(max(e["t"] for e in ok))) if ok else "–"}
        if pool == "openrouter":
            used = sum(sim_stats["openrouter_day_used"].values())
            info["budget_used_pct"] = 100.0 * used / configs.OR_RPD
        else:
            tokens = sum(sim_tokens(by_i[o["i"]]["chars"], by_i[o["i"]]["max_tokens"])
                         for o in served if pool_of(o["model"]) == pool)
            info["tokens"] = tokens
            info["budget_used_pct"] = 100.0 * max(len(ok) / configs.GROQ_RPD, tokens / configs.GROQ_TPD)
        info["dry"] = info["budget_used_pct"] >= 97.0
        info["dry_at"] = info["last_success"] if info["dry"] else "not dry"
        pools[pool] = info
    # cumulative curves for the plot: per simulated hour
    hours = list(range(25))
    cum_served: dict[str, list[int]] = defaultdict(lambda: [0] * 25)
    cum_429 = [0] * 25
    for o in served:
        h = min(24, int(math.ceil(by_i[o["i"]]["sim_t"] / 3600.0)))
        cum_served[pool_of(o["model"]) or "?"][h] += 1
    for e in log:
        if e["status"] == 429:
            h = min(24, max(0, int(math.ceil(to_sim(e["t"]) / 3600.0))))
            cum_429[h] += 1
    curves = {p: _cumsum(cum_served[p]) for p in POOLS}
    not_served = [o for o in outcomes if not o["ok"]]
    rl = sim_stats["rate_limited"]
    reasons = Counter(e.get("reason") for e in log if e["status"] == 429)
    return {
        "setup": setup, "workers": workers, "requests": len(outcomes), "served": len(served),
        "refused": kinds.get("refused", 0), "failed_429": kinds.get("provider_429", 0), "errors": kinds.get("error", 0),
        "p429": rl["openrouter"] + rl["groq"], "p429_openrouter": rl["openrouter"], "p429_groq": rl["groq"],
        "p429_reasons": dict(reasons), "pools": pools, "hours": hours, "cum_served": curves,
        "cum_429": _cumsum(cum_429),
        "late_s": max((o["t0"] - (t0 + by_i[o["i"]]["sim_t"] / k) for o in outcomes), default=0.0),
        "not_served_by_class": dict(Counter(by_i[o["i"]]["cls"] for o in not_served)),
        "error_samples": [f"{o.get('err')}: {o.get('msg', '')[:160]}" for o in not_served if o["kind"] == "error"][:3],
    }


def _cumsum(xs: list[int]) -> list[int]:
    out, acc = [], 0
    for x in xs:
        acc += x
        out.append(acc)
    return out


def run(bench, mode: dict, setups: tuple[str, ...] = ("plugin", "stock")) -> dict[str, Any]:
    day_s = float(mode["day_seconds"])
    k = 86400.0 / day_s
    workers = int(mode["day_workers"])
    items = schedule(int(mode["day_requests"]))
    sc = scaled(k)
    load = Counter(it["cls"] for it in items)
    result: dict[str, Any] = {"day_seconds": day_s, "k": k, "workers": workers, "requests": len(items),
                              "classes": {c[0]: {"share": c[1], "prompt_tokens": c[2] // 4, "max_tokens": c[3],
                                                 "count": load.get(c[0], 0)} for c in CLASSES},
                              "scaled_limits": {"openrouter_rpm": sc["or_rpm"], "groq_rpm": sc["groq_rpm"],
                                                "groq_tpm": sc["groq_tpm"]},
                              "runs": []}
    try:
        bench.extra = sc["extra"]
        for setup in setups:
            wait_clear_of_utc_midnight(day_s + 30.0, bench.log)
            bench.reset(sc["sim"])
            bench.pool.build(bench.spec(setup), workers)
            t0 = time.time() + 1.0
            per_worker: list[list[dict]] = [[] for _ in range(workers)]
            for it in items:
                per_worker[it["i"] % workers].append({"i": it["i"], "at": it["sim_t"] / k,
                                                      "text": _text(it["i"], it["chars"]),
                                                      "max_tokens": it["max_tokens"]})
            outcomes = bench.pool.schedule(per_worker, t0)
            row = summarize(setup, items, outcomes, bench.sim.stats(), t0, k, workers)
            result["runs"].append(row)
            bench.log(f"    {configs.LABELS[setup]:<40} served {row['served']}/{row['requests']}, 429s {row['p429']} "
                      f"(OR {row['p429_openrouter']}, Groq {row['p429_groq']}), refused {row['refused']}, "
                      f"failed {row['failed_429']}+{row['errors']}; dry at "
                      + ", ".join(f"{p}: {v['dry_at']}" for p, v in row["pools"].items()))
    finally:
        bench.extra = {}
    return result
