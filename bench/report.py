"""results.json -> results.md (tables) and results.png (matplotlib). Only numbers from the run are printed."""

from __future__ import annotations

from collections import defaultdict
import json
from pathlib import Path

from . import configs
from .stats import fmt

ORDER = ("plugin", "stock", "stock_enforce")
SHORT = {"plugin": "(a) plugin", "stock": "(b) stock UBR-v2", "stock_enforce": "(c) stock + enforce"}


def _available(row: dict) -> int:
    return min(row["requests"], row["capacity"])


def served_pct(row: dict) -> float:
    avail = _available(row)
    return 100.0 * row["served"] / avail if avail else 0.0


def _mark(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "**missed**")


# ---- targets ------------------------------------------------------------------------------------------------

def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    out: list[tuple[str, str, bool | None]] = []
    rows = [r for r in results.get("quota", []) if r["setup"] == "plugin"]
    if rows:
        worst = min(rows, key=served_pct)
        p429 = sum(r["p429"] for r in rows)
        workers = sorted({r["workers"] for r in rows})
        note = ""
        short = [r for r in rows if served_pct(r) < 99.0]
        if p429 == 0 and short and all(_available(r) - r["served"] <= 2 * r["cap_groq_each"] - 60 for r in short):
            note = (f"; the {len(short)} run(s) under 99% each miss only Groq refill that arrived during the burst "
                    "window (≤ 1 request per model per 2 s), which the plugin's 2 s arrival margin deliberately does "
                    "not credit")
        total_served = sum(r["served"] for r in rows)
        total_avail = sum(_available(r) for r in rows)
        out.append((f"{configs.LABELS['plugin']}: served / available >= 99% with zero provider 429s at "
                    f"{', '.join(map(str, workers))} workers",
                    f"all runs {100 * total_served / total_avail:.1f}% ({total_served}/{total_avail}); lowest run "
                    f"{served_pct(worst):.1f}% ({worst['served']}/{_available(worst)}, {worst['workers']} "
                    f"worker{'s' if worst['workers'] > 1 else ''}, burst {worst['requests']}); provider 429s over all "
                    f"{len(rows)} runs: {p429}{note}",
                    served_pct(worst) >= 99.0 and p429 == 0))
    if "priority" in results:
        from .priority import target

        found = target(results["priority"])
        if found:
            out.append(found)
    ov = results.get("overhead", {}).get("routing")
    if ov:
        for p in results["overhead"]["providers"]:
            add_shuffle = ov["paired"][f"{p}:plugin-stock_shuffle:cost"]
            add_ubr = ov["paired"][f"{p}:plugin-stock:cost"]
            own, own_ubr = _own_overhead(ov, p, "stock_shuffle"), _own_overhead(ov, p, "stock")
            name = "OpenRouter" if p == "openrouter" else "Groq"
            out.append((f"routing overhead p50 <= 1 ms added over stock ({name} deployment)",
                        f"{add_shuffle:+,.0f} µs vs simple-shuffle, {add_ubr:+,.0f} µs vs usage-based-routing-v2",
                        max(add_shuffle, add_ubr) <= 1000))
            out.append((f"added <= 10% of stock LiteLLM's own per-request overhead ({name} deployment)",
                        f"{100 * add_shuffle / own:+.0f}% of simple-shuffle's {own:,.0f} µs; "
                        f"{100 * add_ubr / own_ubr:+.0f}% of usage-based-routing-v2's {own_ubr:,.0f} µs",
                        add_shuffle <= 0.10 * own and add_ubr <= 0.10 * own_ubr))
    st = results.get("overhead", {}).get("store")
    if st and "sequential" in st:
        seq = st["sequential"]["per_s"]
        out.append((">= 5,000 reservations/s on one Redis (judged on concurrent clients, as many workers load it)",
                    f"{st['concurrent_async']['per_s']:,.0f}/s from {st['concurrent_async']['concurrency']} concurrent "
                    f"coroutines, {st['pipelined']['per_s']:,.0f}/s pipelined; one client strictly one at a time: "
                    f"{seq:,.0f}/s ({st['sequential']['us_per_op']:.0f} µs per round trip"
                    + ("" if seq >= 5000 else ", under 5,000 in this run") + ")",
                    st["concurrent_async"]["per_s"] >= 5000))
    pr = results.get("perrequest")
    if pr:
        from .perrequest import NAMES, TARGET_CPU, TARGET_LATENCY

        for p, row in pr["paths"].items():
            lat, cpu = row["latency"], row["cpu"]
            out.append((f"added caller latency <= {100 * TARGET_LATENCY:.0f}% and added CPU <= "
                        f"{100 * TARGET_CPU:.0f}% of stock simple-shuffle's ({NAMES.get(p, p)} path)",
                        f"latency {lat['added_us']:+,.0f} µs = {100 * lat['ratio']:+.1f}% of {lat['stock_p50_us']:,.0f} "
                        f"µs (blocks: {_blocks(lat)}); CPU {cpu['added_us']:+,.0f} µs = {100 * cpu['ratio']:+.1f}% of "
                        f"{cpu['stock_p50_us']:,.0f} µs (blocks: {_blocks(cpu)})",
                        lat["ratio"] <= TARGET_LATENCY and cpu["ratio"] <= TARGET_CPU))
    fl = results.get("flood")
    if fl:
        run = next((r for r in fl["runs"] if r["setup"] == "plugin"), None)
        if run:
            out.append(("proxy refusals/s >= 2x its served requests/s (router_plugin proxy, same run)",
                        f"{run['flood']['per_s']:,.0f} refusals/s vs {run['serve']['per_s']:,.0f} served/s = "
                        f"{run['ratio']:.2f}x (best phases); by the proxy's CPU per request, which the load of other "
                        f"processes moves less: {run['serve']['cpu_us_per_request']:,.0f} µs per served request vs "
                        f"{run['flood']['cpu_us_per_request']:,.0f} µs per refusal = {_cpu_ratio(run):.2f}x",
                        run["ratio"] is not None and run["ratio"] >= 2.0 and _cpu_ratio(run) >= 2.0))
    return out


def _cpu_ratio(run: dict) -> float:
    """Served CPU / refusal CPU: how many refusals a core answers per served request (the rate ratio when the proxy
    is CPU-bound, without the phases' different shares of a shared machine)."""
    refusal = run["flood"]["cpu_us_per_request"]
    return run["serve"]["cpu_us_per_request"] / refusal if refusal else float("nan")


def _blocks(entry: dict) -> str:
    return ", ".join(f"{100 * r:+.1f}%" for r in entry.get("blocks") or []) or "–"


def _own_overhead(ov: dict, provider: str, setup: str) -> float:
    """Stock LiteLLM's own per-request cost: its p50 cost minus the p50 of the bare upstream call."""
    series = ov["series"]
    return series[f"{provider}:{setup}"]["cost"]["p50_us"] - series[f"{provider}:upstream_only"]["cost"]["p50_us"]


# ---- markdown -----------------------------------------------------------------------------------------------

def write_markdown(results: dict, path: Path) -> None:
    m = results["machine"]
    lines: list[str] = []
    add = lines.append
    add("# router_plugin vs stock LiteLLM — benchmark results")
    add("")
    add(f"Written by `{results['command']}` ({results['mode']} mode) on {m['date']}; the whole run took "
        f"{results['elapsed_s'] / 60:.1f} min. Every number below comes from that one run "
        "(raw data: `results.json` beside this file).")
    add("")
    add(f"Machine: `nproc` = {m['nproc_cmd']} ({m['cpu']}), load average {m['load_at_start']} at the start "
        f"and {m.get('load_at_end', '?')} at the end (1/5/15 min; other engineers' work shared the machine); Python {m['python']}, litellm {m['litellm']}, redis-py {m['redis_py']}, "
        f"redis-server {m['redis_server']} (`{m['redis_binary']}`), matplotlib {m['matplotlib']}; {m['platform']}.")
    add("")
    carried = results.get("carried") or {}
    if carried:
        add("Parts run this time: " + ", ".join(f"`{p}`" for p in results.get("parts", [])) + ". Carried over from "
            "earlier runs (not rerun; their numbers are from that run, machine and code): "
            + "; ".join(f"`{p}` from {c['date']} (`{c['command']}`, commit `{c['commit']}`)"
                        for p, c in carried.items()) + ".")
        add("")
    dirty = m.get("git_dirty")
    add(f"Code measured: commit `{m.get('git_commit', '?')}`"
        + (f" plus uncommitted changes in the shared checkout to: {dirty}." if dirty else " (clean checkout)."))
    add("")
    add("Providers are `router_plugin.sim` (OpenRouter + Groq with their real limits, windows, headers and error "
        "bodies) on 127.0.0.1; one real redis-server is shared by every worker process of a run. Setups: "
        "**(a)** `router_plugin.build_router(config)` with `router_plugin: {redis_url}`; **(b)** stock LiteLLM "
        f"{m['litellm']}, `routing_strategy: usage-based-routing-v2`, `rpm` per deployment (and `tpm` for Groq) in "
        "`litellm_params`, `redis_host`/`redis_port` on the Router; **(c)** (b) plus "
        "`optional_pre_call_checks: [\"enforce_model_rate_limits\"]`. Chain: "
        + ", ".join(f"`{c}`" for c in configs.CHAIN) + ".")
    add("")
    tg = targets(results)
    if tg:
        add("## Targets")
        add("")
        add("| target | this run | |")
        add("|---|---|---|")
        for name, value, ok in tg:
            add(f"| {name} | {value} | {_mark(ok)} |")
        add("")
    if "quota" in results:
        _quota_md(results["quota"], add)
    if "day" in results:
        _day_md(results["day"], add)
    if "overhead" in results:
        _overhead_md(results["overhead"], add)
    if "perrequest" in results:
        _perrequest_md(results["perrequest"], add)
    if "flood" in results:
        _flood_md(results["flood"], add)
    if "priority" in results:
        from .priority import markdown

        markdown(results["priority"], add)
    add("## Rerun")
    add("")
    add("```bash")
    add("pip install -e \".[bench]\"          # matplotlib, only for results.png")
    add("python -m bench                    # full run (this file); --quick for a shorter one")
    add("```")
    add("")
    path.write_text("\n".join(lines))


def _quota_md(rows: list[dict], add) -> None:
    add("## 1. Quota efficiency: one burst from 1, 4 and 8 worker processes")
    add("")
    add("Each run: simulator reset and Redis flushed, every worker builds a fresh router, then the whole burst is "
        "sent at once (each worker `asyncio.gather`s its share); a run starts only with enough of the clock minute "
        "left to finish inside it. **Capacity** = what the providers would have accepted while the router handled "
        "the burst: OpenRouter 20 per clock minute touched (one pool for both `:free` models) + each Groq model "
        "floor(30 + 0.5/s × window), where the window runs from the first request to the last routing decision "
        "(the later of the last provider attempt and the last refusal). **Available** = min(burst, capacity). "
        "**429s** are every limit 429 the simulator sent (LiteLLM's retries included). **OR failed attempts** = "
        "OpenRouter attempts that did not succeed (each counts toward the 50/day if OpenRouter counts rate-limited "
        "attempts, as its help centre says); **OR quota burnt (sim)** = the simulator's daily count minus "
        "OpenRouter successes (it counts admitted attempts that then failed). **Refused** = the router said no "
        "without sending; **failed** = a provider's 429 reached the caller. Latencies are of requests not served.")
    add("")
    add("| workers | burst | setup | served / available | capacity (OR + 2×Groq) | provider 429s (OR / Groq) | "
        "OR failed attempts | OR quota burnt (sim) | refused | failed | not served p50 / p99 (ms) | window (s) |")
    add("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        add(f"| {r['workers']} | {r['requests']} | {SHORT[r['setup']]} | {r['served']} / {_available(r)} = "
            f"**{served_pct(r):.1f}%** | {r['capacity']} ({r['cap_openrouter']} + 2×{r['cap_groq_each']}) | "
            f"**{r['p429']}** ({r['p429_openrouter']} / {r['p429_groq']}) | {r['or_failed_attempts']} | "
            f"{r['or_burnt_sim']} | {r['refused']} | {r['failed_429'] + r['errors']} | "
            f"{fmt(r['not_served_p50_ms'], 1)} / {fmt(r['not_served_p99_ms'], 1)} | {r['window_s']:.1f} |")
    add("")
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in rows:
        t = totals[r["setup"]]
        t["served"] += r["served"]
        t["available"] += _available(r)
        t["p429"] += r["p429"]
        t["p429_or"] += r["p429_openrouter"]
        t["or_failed"] += r["or_failed_attempts"]
        t["runs"] += 1
        t["worst"] = min(t.get("worst", 1e9), served_pct(r))
    add("Over all runs:")
    add("")
    add("| setup | runs | served / available | lowest run | provider 429s (to OpenRouter) | OR failed attempts |")
    add("|---|---:|---:|---:|---:|---:|")
    for s in ORDER:
        if s in totals:
            t = totals[s]
            add(f"| {configs.LABELS[s]} | {t['runs']:.0f} | {t['served']:.0f} / {t['available']:.0f} = "
                f"{100 * t['served'] / t['available']:.1f}% | {t['worst']:.1f}% | {t['p429']:.0f} ({t['p429_or']:.0f}) | "
                f"{t['or_failed']:.0f} |")
    plugin_runs = [r for r in rows if "store_outages" in r]
    if plugin_runs:
        hit = [r for r in plugin_runs if r["store_outages"]]
        add("")
        add("(a)'s quota store, per run, summed over the workers: "
            + (f"in {len(hit)} of {len(plugin_runs)} runs a worker took Redis for unreachable and served from its "
               "`fail_open` share meanwhile (the one way the plugin can admit more than a limit): "
               + "; ".join(f"{r['workers']} workers × burst {r['requests']}: {r['store_outages']} outage(s), "
                           f"{r['store_local_grants']} local grant(s), provider 429s {r['p429']}"
                           + (f" (`{r['store_errors'][0][:140]}`)" if r.get("store_errors") else "")
                           for r in hit)
               if hit else f"no worker took Redis for unreachable in any of the {len(plugin_runs)} runs")
            + f". Calls that waited again for a free pooled connection: "
              f"{sum(r['store_pool_waits'] for r in plugin_runs)}; calls retried because the worker's own event "
              f"loop, not Redis, was late: {sum(r['store_lag_retries'] for r in plugin_runs)}.")
    errors = [e for r in rows for e in r.get("error_samples", [])]
    if errors:
        add("")
        add("Other errors seen (samples): " + "; ".join(f"`{e[:120]}`" for e in errors[:3]))
    add("")


def _day_md(day: dict, add) -> None:
    add("## 2. A day in the life")
    add("")
    sl = day["scaled_limits"]
    cls = day["classes"]
    add(f"One simulated day in {day['day_seconds']:.0f} real seconds (k = {day['k']:.0f}: one simulated hour = "
        f"{3600 / day['k']:.2f} s), {day['workers']} worker processes, {day['requests']} requests on a working-day "
        "curve (quiet night, busy 09:00–18:00; seeded, identical for both setups), mixed sizes: "
        + ", ".join(f"{name} {v['count']} (~{v['prompt_tokens']:,} prompt tokens, max_tokens {v['max_tokens']})"
                    for name, v in cls.items()) + ". "
        "**Scaled limits**: the clock stays real (neither the simulator's windows nor Redis `TIME` can be faked "
        "consistently for both routers), so per-minute limits are multiplied by k in the simulator and in both "
        f"configs (OpenRouter {sl['openrouter_rpm']:,}/min, Groq {sl['groq_rpm']:,} requests/min and "
        f"{sl['groq_tpm']:,} tokens/min — TPM capped so the simulator's reset header stays ≥ 1 ms; it never binds "
        "here); daily limits are the published ones, unscaled, because the simulated day fits in one real UTC "
        "day: OpenRouter 50/day, Groq 1,000 requests/day and 200,000 tokens/day per model. Stock's "
        f"`cooldown_time` keeps its default 5 s of real time: that outlasts a request's retries, as on a real day, "
        f"but also {5 * day['k'] / 60:.0f} simulated minutes of traffic, which spares stock most of the 429s it would "
        "get on a real day (the comparison favours stock). Times below are simulated clock times.")
    add("")
    add("| setup | served / requests | OpenRouter served (dry at) | gpt-oss-120b served (dry at) | "
        "gpt-oss-20b served (dry at) | provider 429s (OR / Groq) | 429 reasons | refused at once | failed |")
    add("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in day["runs"]:
        p = r["pools"]
        cells = []
        for pool in ("openrouter", "groq/openai/gpt-oss-120b", "groq/openai/gpt-oss-20b"):
            v = p[pool]
            cells.append(f"{v['served']} ({v['dry_at']}; {v['budget_used_pct']:.0f}% of day)")
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r["p429_reasons"].items())) or "none"
        add(f"| {configs.LABELS[r['setup']]} | {r['served']} / {r['requests']} | {' | '.join(cells)} | "
            f"**{r['p429']}** ({r['p429_openrouter']} / {r['p429_groq']}) | {reasons} | {r['refused']} | "
            f"{r['failed_429'] + r['errors']} |")
    add("")
    per_req = []
    for r in day["runs"]:
        groq = [v for k, v in r["pools"].items() if k.startswith("groq/")]
        served_g = sum(v["served"] for v in groq)
        if served_g:
            per_req.append(f"{configs.LABELS[r['setup']]} {sum(v.get('tokens', 0) for v in groq) / served_g:,.0f}")
    if per_req:
        add("Both routers spend each Groq model's 200,000 tokens/day; the served counts differ by how many requests "
            "fit into those tokens — Groq tokens per served request: " + ", ".join(per_req) + ". Near the end of a "
            "budget stock keeps trying (a request that does not fit is a 429, a smaller one after it may fit); the "
            "plugin admits by its own estimate (prompt characters / 3 + max_tokens, more conservative than Groq's "
            "characters / 4 + max_tokens) and refuses without sending.")
        add("")
    add(f"Requests went out on schedule: the latest was {max(r['late_s'] for r in day['runs']):.2f} s (real) late, "
        f"{max(r['late_s'] for r in day['runs']) * day['k'] / 60:.0f} simulated minutes. ")
    add("\"Dry at\" = the simulated time of the pool's last success, given when the pool used ≥ 97% of its daily "
        "budget (OpenRouter: the simulator's daily count of 50; Groq: the larger of requests/1,000 and "
        "tokens/200,000). Stock's first daily-limit 429 per pool: "
        + "; ".join(f"{configs.LABELS[r['setup']]}: " + ", ".join(f"{k.split('/')[-1]} {v['first_daily_429']}"
                                                                    for k, v in r["pools"].items())
                    for r in day["runs"] if r["setup"] != "plugin") + ".")
    add("")


def _overhead_md(ov: dict, add) -> None:
    from .overhead import LABELS, SETUPS

    r = ov["routing"]
    series, paired = r["series"], r["paired"]
    n = ov["n_per_series"]
    add("## 3. Routing overhead and quota-store throughput")
    add("")
    add("One worker process; the simulator answers at once (no added latency) with every limit out of reach. "
        "For each provider the model group has one deployment ("
        + ", ".join(f"`{m}`" for m in ov["providers"].values()) + "), so every router sends every request to the "
        "same place and LiteLLM's own per-provider work is the same; only the routing differs. All routers live "
        "in one process (LiteLLM's global callback lists are swapped to each router's own before its request); "
        f"{n:,} sequential requests per router, interleaved one by one in a fresh random order, so the machine's "
        "drift lands on every router alike and samples pair up by index. **cost** = wall time of "
        "`router.acompletion` plus the background work LiteLLM scheduled for that request (its success logging, "
        "UBR-v2's usage update, the plugin's settle), awaited before the next request; **CPU** = this process's "
        "CPU time over the same span (simulator and Redis are other processes); **caller latency** = "
        "`acompletion` alone; **upstream alone** = the same POST through LiteLLM's own HTTP client, no router. "
        "Stock's own overhead = its p50 cost − upstream alone; **plugin added** = median over i of "
        "plugin(i) − stock(i).")
    add("")
    add("| provider | router | cost p50 / p99 (µs) | CPU p50 (µs) | caller latency p50 / p99 (µs) | "
        "background p50 (µs) |")
    add("|---|---|---:|---:|---:|---:|")
    for p in ov["providers"]:
        for setup in SETUPS:
            v = series[f"{p}:{setup}"]
            add(f"| {p} | {LABELS[setup]} | {fmt(v['cost']['p50_us'])} / {fmt(v['cost']['p99_us'])} | "
                f"{fmt(v['cpu']['p50_us'])} | {fmt(v['total']['p50_us'])} / {fmt(v['total']['p99_us'])} | "
                f"{fmt(v['background']['p50_us'])} |")
    add("")
    add("| provider | stock's own overhead p50: shuffle / UBR-v2 (µs) | plugin added vs shuffle: wall / CPU / "
        "caller latency (µs) | ratio | plugin added vs UBR-v2: wall / CPU / caller latency (µs) | ratio |")
    add("|---|---:|---:|---:|---:|---:|")
    for p in ov["providers"]:
        own, own_ubr = _own_overhead(r, p, "stock_shuffle"), _own_overhead(r, p, "stock")
        a = [paired[f"{p}:plugin-stock_shuffle:{k}"] for k in ("cost", "cpu", "total")]
        b = [paired[f"{p}:plugin-stock:{k}"] for k in ("cost", "cpu", "total")]
        add(f"| {p} | {own:,.0f} / {own_ubr:,.0f} | {a[0]:+,.0f} / {a[1]:+,.0f} / {a[2]:+,.0f} | "
            f"{100 * a[0] / own:+.0f}% | {b[0]:+,.0f} / {b[1]:+,.0f} / {b[2]:+,.0f} | {100 * b[0] / own_ubr:+.0f}% |")
    add("")
    iso = r.get("isolated", {})
    if iso:
        add("The routing decision alone, `router.async_get_available_deployment` called directly on the full "
            "four-deployment chain (µs, p50 / p99): "
            + "; ".join(f"{LABELS[s]} {fmt(v['p50_us'])} / {fmt(v['p99_us'])}" for s, v in iso.items())
            + " (the plugin's includes its one atomic reservation round trip to Redis).")
        add("")
    st = ov.get("store")
    if st and "sequential" in st:
        add(f"Quota store against one Redis (each reservation = one Lua script call that checks and reserves "
            f"{st['counters_per_reservation']} counters of a Groq deployment, all or none):")
        add("")
        add("| mode | reservations | seconds | reservations/s |")
        add("|---|---:|---:|---:|")
        add(f"| sequential, `SyncQuotaStore.reserve` (one round trip each; {st['sequential']['us_per_op']:.0f} µs) "
            f"| {st['sequential']['ok']:,} | {st['sequential']['seconds']:.2f} | **{st['sequential']['per_s']:,.0f}** |")
        add(f"| pipelined, the same script {st['pipelined']['batch']} per round trip | {st['pipelined']['ok']:,} | "
            f"{st['pipelined']['seconds']:.2f} | **{st['pipelined']['per_s']:,.0f}** |")
        c = st["concurrent_async"]
        add(f"| `QuotaStore.reserve`, {c['concurrency']} concurrent coroutines, one process | {c['ok']:,} | "
            f"{c['seconds']:.2f} | **{c['per_s']:,.0f}** |")
        add("")


# ---- plot ---------------------------------------------------------------------------------------------------

COLORS = {"plugin": "#1b7837", "stock": "#c51b7d", "stock_enforce": "#e08214"}
STYLES = {1: ":", 4: "--", 8: "-", 2: "-."}


def _perrequest_md(pr: dict, add) -> None:
    from .perrequest import NAMES, PROVIDERS, TARGET_CPU, TARGET_LATENCY

    add("## 4. What the plugin adds to one request (stock simple-shuffle vs router_plugin)")
    add("")
    add(f"One worker process; zero-latency upstream (the simulator answers at once), every limit out of reach; for "
        f"each path the group has one deployment ({', '.join(f'`{m}`' for m in PROVIDERS.values())}), so both "
        f"routers send every request to the same place. Stock simple-shuffle (LiteLLM's default, no Redis) and "
        f"router_plugin live in the same process and their {pr['n']:,} requests each are interleaved one by one in "
        "a fresh random order (samples pair up by index). **Caller latency** = wall time of `router.acompletion`; "
        "**CPU** = the process's CPU time (every thread: background logging and the plugin's settle included) from "
        "the call until the background work LiteLLM scheduled for it has finished. **Added** = median over i of "
        "plugin(i) − stock(i), and as a share of stock's p50; the run is split into "
        f"{pr['blocks']} blocks and each block's share is listed, to show how stable it is. Targets: added caller "
        f"latency <= {100 * TARGET_LATENCY:.0f}% and added CPU <= {100 * TARGET_CPU:.0f}% of stock's, both paths.")
    add("")
    add("| path | stock caller latency / CPU per request p50 (µs) | router_plugin caller latency / CPU p50 (µs) "
        "| plugin added: caller latency | plugin added: CPU (background included) |")
    add("|---|---:|---:|---:|---:|")
    for p, row in pr["paths"].items():
        lat, cpu = row["latency"], row["cpu"]
        add(f"| {NAMES.get(p, p)} | {lat['stock_p50_us']:,.0f} / {cpu['stock_p50_us']:,.0f} | "
            f"{lat['plugin_p50_us']:,.0f} / {cpu['plugin_p50_us']:,.0f} | "
            f"{lat['added_us']:+,.0f} µs ({100 * lat['ratio']:+.1f}%; blocks {_blocks(lat)}) | "
            f"{cpu['added_us']:+,.0f} µs ({100 * cpu['ratio']:+.1f}%; blocks {_blocks(cpu)}) |")
    add("")


def _flood_md(fl: dict, add) -> None:
    from .flood import FLOOD_MODEL, LABELS, SERVE_MODEL

    add("## 5. A refusal flood through the real LiteLLM proxy")
    add("")
    add(f"`litellm --config ... --num_workers {fl['workers']}` (the real proxy, one per setup, one after the other in "
        f"this run) against the simulator (answers at once) and the run's redis-server. Group `serve` = "
        f"`{SERVE_MODEL}` with its limits out of reach (every request served); group `flood` = `{FLOOD_MODEL}` whose "
        "pool is out of quota (router_plugin: the OpenRouter account's day is spent first; stock: `rpm: 1` with "
        "`enforce_model_rate_limits` and `num_retries: 0` (else LiteLLM retries its own refusal with backoff "
        "sleeps), LiteLLM's own local refusal, spent first). One client process sends "
        f"{fl['n']:,} chat completions per phase, {fl['concurrency']} in flight (raw HTTP, no client retries); the "
        f"phases alternate serve, flood ({fl['repeats']} of each) and each rate is its phase's best. **Proxy CPU** = "
        "user + system time of the proxy's processes over the phase, per request. Target: router_plugin's proxy "
        "answers refusals at >= 2x the rate it serves requests (a refusal costs a small fraction of a served "
        "request). Nothing in a refusal is sent upstream.")
    add("")
    add("| setup | served requests/s | proxy CPU per served request (µs) | refusals/s | proxy CPU per refusal (µs) "
        "| refusals/s ÷ served/s | CPU per served ÷ CPU per refusal | upstream calls during the flood phases |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|")
    for run in fl["runs"]:
        sv, fd = run["serve"], run["flood"]
        add(f"| {LABELS.get(run['setup'], run['setup'])} | {sv['per_s']:,.0f} ({sv['ok']}/{sv['n']}) | "
            f"{sv['cpu_us_per_request']:,.0f} | {fd['per_s']:,.0f} ({fd['ok']}/{fd['n']}) | "
            f"{fd['cpu_us_per_request']:,.0f} | **{run['ratio']:.2f}x** | {_cpu_ratio(run):.2f}x | "
            f"{fd['upstream_sent']} |")
    add("")
    for run in fl["runs"]:
        sample = run["flood"].get("sample") or {}
        if sample:
            add(f"A refusal from the {LABELS.get(run['setup'], run['setup'])}: headers "
                f"`{json.dumps(sample.get('headers', {}))}`, body `{str(sample.get('body', ''))[:220]}…`")
            add("")


def write_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_priority = "priority" in results
    fig, axes = plt.subplots(4 if with_priority else 3, 2, figsize=(13, 17.5 if with_priority else 13))
    (a1, a2), (a3, a4), (a5, a6) = axes[:3]
    if with_priority:
        from .priority import plot

        plot(results["priority"], *axes[3])
    rows = results.get("quota", [])
    for setup in ORDER:
        for w in sorted({r["workers"] for r in rows}):
            sel = sorted((r for r in rows if r["setup"] == setup and r["workers"] == w), key=lambda r: r["requests"])
            if not sel:
                continue
            xs = [r["requests"] for r in sel]
            a1.plot(xs, [served_pct(r) for r in sel], STYLES.get(w, "-"), marker="o", color=COLORS[setup],
                    label=f"{SHORT[setup]}, {w} worker{'s' if w > 1 else ''}")
            a2.plot(xs, [r["p429"] for r in sel], STYLES.get(w, "-"), marker="o", color=COLORS[setup])
    a1.set_title("1. Served / available (one burst)")
    a1.set_xlabel("requests in the burst")
    a1.set_ylabel("%")
    a1.axhline(99, color="grey", lw=0.8)
    if a1.get_legend_handles_labels()[0]:
        a1.legend(fontsize=6, ncol=2, loc="lower left")
    a2.set_title("1. Provider 429s received (retries included)")
    a2.set_xlabel("requests in the burst")
    a2.set_ylabel("429 responses")
    day = results.get("day")
    if day:
        pool_colors = {"openrouter": "#762a83", "groq/openai/gpt-oss-120b": "#2166ac", "groq/openai/gpt-oss-20b": "#4393c3"}
        for r in day["runs"]:
            style = "-" if r["setup"] == "plugin" else "--"
            for pool, ys in r["cum_served"].items():
                a3.plot(r["hours"], ys, style, color=pool_colors.get(pool, "k"),
                        label=f"{'plugin' if r['setup'] == 'plugin' else 'stock'}: {pool.split('/')[-1]} served")
            a3.plot(r["hours"], r["cum_429"], style, color="#d73027",
                    label=f"{'plugin' if r['setup'] == 'plugin' else 'stock'}: provider 429s")
        a3.set_title(f"2. A day in the life ({day['requests']} requests; cumulative)")
        a3.set_xlabel("simulated hour")
        a3.set_xticks(range(0, 25, 3))
        a3.legend(fontsize=7)
    ov = results.get("overhead", {}).get("routing")
    if ov:
        from .overhead import SETUPS

        short = {"upstream_only": "upstream\nalone", "stock_shuffle": "stock\nshuffle", "stock": "stock\nUBR-v2",
                 "plugin": "router_\nplugin"}
        providers = list(results["overhead"]["providers"])
        width = 0.8 / len(providers)
        for j, p in enumerate(providers):
            names = [f"{p}:{s}" for s in SETUPS]
            p50 = [ov["series"][n]["cost"]["p50_us"] for n in names]
            cpu = [ov["series"][n]["cpu"]["p50_us"] for n in names]
            xs = [i + (j - (len(providers) - 1) / 2) * width for i in range(len(SETUPS))]
            a4.bar(xs, p50, width=width * 0.95, color=["#762a83", "#2166ac"][j % 2], alpha=0.85,
                   label=f"{p}: wall cost p50")
            a4.scatter(xs, cpu, marker="_", s=300, color="k", label="CPU p50" if j == 0 else None, zorder=3)
        a4.set_xticks(range(len(SETUPS)))
        a4.set_xticklabels([short[s] for s in SETUPS], fontsize=8)
        a4.set_ylabel("µs per request")
        a4.set_title("3. Per-request cost, zero-latency upstream")
        a4.legend(fontsize=7)
    pr = results.get("perrequest")
    if pr:
        from .perrequest import NAMES

        paths = list(pr["paths"])
        for j, key in enumerate(("latency", "cpu")):
            xs = [i + (j - 0.5) * 0.4 for i in range(len(paths))]
            a5.bar(xs, [100 * (pr["paths"][p][key]["ratio"] or 0) for p in paths], width=0.38,
                   color=["#2166ac", "#762a83"][j], label=f"added {'caller latency' if key == 'latency' else 'CPU'}")
        a5.axhline(5, color="#2166ac", lw=0.8, ls="--")
        a5.axhline(10, color="#762a83", lw=0.8, ls="--")
        a5.set_xticks(range(len(paths)))
        a5.set_xticklabels([NAMES.get(p, p).replace("`", "") for p in paths])
        a5.set_ylabel("% of stock simple-shuffle's p50")
        a5.set_title("4. What the plugin adds per request (targets: 5% / 10%)")
        a5.legend(fontsize=7)
    else:
        a5.axis("off")
    fl = results.get("flood")
    if fl:
        runs = fl["runs"]
        xs = range(len(runs))
        a6.bar([x - 0.2 for x in xs], [r["serve"]["per_s"] for r in runs], width=0.38, color="#4393c3",
               label="served requests/s")
        a6.bar([x + 0.2 for x in xs], [r["flood"]["per_s"] for r in runs], width=0.38, color="#d73027",
               label="refusals/s")
        a6.set_xticks(list(xs))
        a6.set_xticklabels([f"{r['setup']}\n{r['ratio']:.2f}x" for r in runs])
        a6.set_ylabel("per second")
        a6.set_title(f"5. Refusal flood through the proxy ({fl['workers']} workers, {fl['concurrency']} in flight)")
        a6.legend(fontsize=7)
    else:
        a6.axis("off")
    fig.suptitle(f"router_plugin vs stock LiteLLM {results['machine']['litellm']} — {results['machine']['date']}, "
                 f"nproc={results['machine']['nproc_cmd']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- README block -------------------------------------------------------------------------------------------

def readme_block(results: dict) -> str:
    """The README's bench section, from a results.json (``python -m bench.report --readme``)."""
    m = results["machine"]
    out: list[str] = ["## Benchmarks", ""]
    out.append(f"`bench/` runs the same workload through **(a)** router_plugin, **(b)** stock LiteLLM {m['litellm']} "
               "configured as a user would for the same chain (`usage-based-routing-v2`, `rpm`/`tpm` per deployment, "
               "one shared Redis) and **(c)** (b) plus `enforce_model_rate_limits`, against the simulator and a real "
               "redis-server, and writes [`bench/results.md`](bench/results.md) (all tables, method, machine) and "
               "`bench/results.png`. From the run of " + m["date"] + f" (`nproc` = {m['nproc_cmd']}, "
               f"`{results['command']}`, {results['elapsed_s'] / 60:.0f} min):")
    out.append("")
    rows = results.get("quota", [])
    if rows:
        out.append("| one burst, 1/4/8 workers × 50–400 requests | served / available | provider 429s (to OpenRouter) "
                   "| lowest run |")
        out.append("|---|---:|---:|---:|")
        for s in ORDER:
            sel = [r for r in rows if r["setup"] == s]
            if not sel:
                continue
            served = sum(r["served"] for r in sel)
            avail = sum(_available(r) for r in sel)
            out.append(f"| {configs.LABELS[s]} | {served} / {avail} = {100 * served / avail:.1f}% | "
                       f"{sum(r['p429'] for r in sel)} ({sum(r['p429_openrouter'] for r in sel)}) | "
                       f"{min(served_pct(r) for r in sel):.1f}% |")
        out.append("")
    day = results.get("day")
    if day:
        out.append(f"A simulated day ({day['requests']} mixed requests, 4 workers, limits scaled to a "
                   f"{day['day_seconds']:.0f} s day): "
                   + "; ".join(f"{configs.LABELS[r['setup']]} served {r['served']}, {r['p429']} provider 429s"
                               for r in day["runs"]) + ".")
        out.append("")
    prio = results.get("priority")
    if prio:
        rows = {r["setup"]: r["by_priority"] for r in prio["runs"]}
        out.append(f"A scarce day with priorities ({prio['requests']} chat requests, {prio['interactive']} interactive "
                   f"at priority 0 and {prio['background']} background at priority 1, a day of {prio['day_capacity']}): "
                   + "; ".join(f"{prio['labels'][s]} served {b['interactive']['served_pct']:.1f}% of the interactive "
                               f"and {b['background']['served_pct']:.1f}% of the background requests"
                               for s, b in rows.items()) + ".")
        out.append("")
    ov = results.get("overhead", {}).get("routing")
    if ov:
        parts = []
        for p in results["overhead"]["providers"]:
            parts.append(f"{p}: {ov['paired'][f'{p}:plugin-stock_shuffle:cost']:+,.0f} µs vs simple-shuffle "
                         f"(whose own overhead is {_own_overhead(ov, p, 'stock_shuffle'):,.0f} µs), "
                         f"{ov['paired'][f'{p}:plugin-stock:cost']:+,.0f} µs vs usage-based-routing-v2")
        st = results["overhead"].get("store", {})
        out.append("Per-request cost added by the plugin (p50, zero-latency upstream): " + "; ".join(parts) + ". "
                   + (f"Quota store: {st['sequential']['per_s']:,.0f} reservations/s sequential, "
                      f"{st['pipelined']['per_s']:,.0f}/s pipelined on one Redis." if "sequential" in st else ""))
        out.append("")
    tg = targets(results)
    if tg:
        out.append("Targets: " + "; ".join(f"{name} — {'met' if ok else 'missed'}" for name, _, ok in tg) + ".")
        out.append("")
    out.append("```bash")
    out.append("pip install -e \".[bench]\" && python -m bench          # ~15 min on 2 cores; --quick ~7 min")
    out.append("python -m pytest -q tests/test_bench.py                 # smoke run of the harness (--tiny)")
    out.append("```")
    return "\n".join(out)


if __name__ == "__main__":
    import json
    import sys

    src = Path(sys.argv[2] if len(sys.argv) > 2 else Path(__file__).with_name("results.json"))
    if len(sys.argv) > 1 and sys.argv[1] == "--readme":
        print(readme_block(json.loads(src.read_text())))
    else:
        print("usage: python -m bench.report --readme [results.json]")
