"""Part 6 -- a day in the life with priorities (issue 17): 20% interactive (priority 0), 80% background (priority 1)
traffic on the free pools, on a day whose quota is scarce (the day's requests are 1.25x what the pools hold).

Same machinery as part 2 (``bench/day.py``: one simulated day compressed into ``day_seconds``, per-minute limits
scaled by k, the seeded working-day arrival curve), with three differences:

* every request is a chat request (~300 prompt tokens, max_tokens 256), so the pools' requests/day are what binds;
* the day budgets are scarce and scale with the load: OpenRouter's account day is ``n / 8`` requests (50 for the
  full run's 400) and each Groq model's requests/day ``0.3375 n`` (135): ``0.8 n`` in all, in the simulator and in
  the plugin's ``limits``. Interactive demand (0.2 n) is then a quarter of the day: more than the reserve (a fifth)
  alone, so the interactive requests that arrive before background work reaches the reserve are served from the
  shared part, and the reserve covers those that arrive after;
* each request carries ``metadata={"priority": 0 | 1}`` (seeded, 20% priority 0).

Setups, in the same run: **(a)** the plugin with ``priority: {reserve: 0.2}`` (20% of every pool's day and minute
kept for priority 0); **(b)** the plugin without it; **(c)** stock LiteLLM (usage-based-routing-v2, as in part 2).
The question: what fraction of the interactive requests is served, and what does background get?
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from typing import Any

from . import configs
from .day import _cumsum, _text, scaled, schedule, summarize, wait_clear_of_utc_midnight

RESERVE = 0.2
INTERACTIVE_SHARE = 0.2
CHAT_CHARS, CHAT_MAX_TOKENS = 1_200, 256
SETUPS = ("plugin_priority", "plugin", "stock")
LABELS = {"plugin_priority": "(a) router_plugin, priority reserve 0.2",
          "plugin": "(b) router_plugin, no priorities",
          "stock": "(c) stock usage-based-routing-v2"}


def budgets(n: int) -> dict[str, int]:
    """The scarce day, 0.8 n requests in all: OpenRouter's account pool n / 8 (its published 50 for n = 400) and
    each Groq model 0.3375 n (135)."""
    return {"openrouter": max(4, round(n / 8)), "groq": max(8, round(0.3375 * n))}


def load(n: int, seed: int = 17) -> list[dict[str, Any]]:
    items = schedule(n, seed=seed)
    rng = random.Random(seed)
    for it in items:
        it.update(cls="chat", chars=CHAT_CHARS, max_tokens=CHAT_MAX_TOKENS,
                  priority=0 if rng.random() < INTERACTIVE_SHARE else 1)
    return items


def setup_extra(sc: dict, days: dict[str, int], setup: str) -> tuple[str, dict]:
    """(the configs.setup_spec setup, its extra) for one of SETUPS."""
    limits = dict(sc["extra"]["plugin"]["limits"])
    limits["openrouter"] = {**limits["openrouter"], "rpd": days["openrouter"]}
    for m in configs.CHAIN:
        if configs.provider(m) == "groq":
            limits[m] = {**limits[m], "rpd": days["groq"]}
    if setup == "plugin_priority":
        return "plugin", {"plugin": {"limits": limits, "priority": {"reserve": RESERVE}}}
    if setup == "plugin":
        return "plugin", {"plugin": {"limits": limits}}
    return "stock", {"stock": dict(sc["extra"]["stock"])}


def sim_config(sc: dict, days: dict[str, int]) -> dict:
    sim = {"openrouter": {"accounts": {"*": {**sc["sim"]["openrouter"]["accounts"]["*"],
                                              "daily_limit": days["openrouter"]}}},
           "groq": {"limits": {m: {**v, "rpd": days["groq"]} for m, v in sc["sim"]["groq"]["limits"].items()}}}
    return sim


def by_priority(items: list[dict], outcomes: list[dict], t0: float, k: float) -> dict[str, Any]:
    by_i = {it["i"]: it for it in items}
    out: dict[str, Any] = {}
    for p, name in ((0, "interactive"), (1, "background")):
        mine = [o for o in outcomes if by_i[o["i"]]["priority"] == p]
        served = [o for o in mine if o["ok"]]
        per_hour = [0] * 25
        for o in served:
            per_hour[min(24, int(math.ceil(by_i[o["i"]]["sim_t"] / 3600.0)))] += 1
        out[name] = {"priority": p, "requests": len(mine), "served": len(served),
                     "served_pct": 100.0 * len(served) / len(mine) if mine else 100.0,
                     "cum_served": _cumsum(per_hour),
                     "not_served": dict(Counter(o["kind"] for o in mine if not o["ok"]))}
    return out


def run(bench, mode: dict) -> dict[str, Any]:
    day_s = float(mode["day_seconds"])
    k = 86400.0 / day_s
    workers = int(mode["day_workers"])
    n = int(mode.get("priority_requests", mode["day_requests"]))
    items = load(n)
    sc = scaled(k)
    days = budgets(n)
    groq_models = sum(1 for m in configs.CHAIN if configs.provider(m) == "groq")
    result: dict[str, Any] = {"day_seconds": day_s, "k": k, "workers": workers, "requests": n,
                              "interactive": sum(1 for it in items if it["priority"] == 0),
                              "background": sum(1 for it in items if it["priority"] == 1),
                              "reserve": RESERVE, "day_budgets": days,
                              "day_capacity": days["openrouter"] + groq_models * days["groq"],
                              "labels": LABELS, "runs": []}
    try:
        for setup in SETUPS:
            kind, extra = setup_extra(sc, days, setup)
            bench.extra = extra
            wait_clear_of_utc_midnight(day_s + 30.0, bench.log)
            bench.reset(sim_config(sc, days))
            bench.pool.build(bench.spec(kind), workers)
            t0 = time.time() + 1.0
            per_worker: list[list[dict]] = [[] for _ in range(workers)]
            for it in items:
                per_worker[it["i"] % workers].append({"i": it["i"], "at": it["sim_t"] / k,
                                                      "text": _text(it["i"], it["chars"]),
                                                      "max_tokens": it["max_tokens"],
                                                      "metadata": {"priority": it["priority"]}})
            outcomes = bench.pool.schedule(per_worker, t0)
            row = summarize(setup, items, outcomes, bench.sim.stats(), t0, k, workers)
            row["by_priority"] = by_priority(items, outcomes, t0, k)
            result["runs"].append(row)
            bp = row["by_priority"]
            bench.log(f"    {LABELS[setup]:<42} interactive {bp['interactive']['served']}/"
                      f"{bp['interactive']['requests']} ({bp['interactive']['served_pct']:.1f}%), background "
                      f"{bp['background']['served']}/{bp['background']['requests']} "
                      f"({bp['background']['served_pct']:.1f}%), served {row['served']} of a day of "
                      f"{result['day_capacity']}, provider 429s {row['p429']}")
    finally:
        bench.extra = {}
    return result


def markdown(part: dict, add) -> None:
    add("## 6. A day in the life with priorities (issue 17)")
    add("")
    run = part.get("separate_run")
    if run:  # spliced into a results.md written by an earlier full run
        add(f"(This part comes from its own run: `{run['command']}` on {run['date']}, commit `{run['commit']}`, "
            f"`nproc` = {run['nproc']}, load average {run['load']} at its start; the parts above are from the run "
            "this file names at the top.)")
        add("")
    add(f"{part['requests']} chat requests over one simulated day ({part['day_seconds']:.0f} s real, "
        f"k = {part['k']:.0f}), {part['workers']} worker processes: {part['interactive']} interactive "
        f"(`metadata.priority` 0) and {part['background']} background (priority 1), mixed at random (seeded) along "
        f"part 2's working-day arrival curve. The day is scarce: OpenRouter's account day "
        f"{part['day_budgets']['openrouter']} requests and each Groq model's {part['day_budgets']['groq']} "
        f"requests/day, {part['day_capacity']} in all for {part['requests']} requests (simulator and plugin limits "
        f"alike). (a) keeps `reserve: {part['reserve']}` of every pool for priority 0; (b) is the same plugin "
        "without `priority`; (c) is stock LiteLLM configured as in part 2 (it has no notion of priority).")
    add("")
    add("| setup | interactive served | background served | all served | provider 429s | interactive not "
        "served (why) |")
    add("|---|---:|---:|---:|---:|---|")
    for r in part["runs"]:
        bp = r["by_priority"]
        i, b = bp["interactive"], bp["background"]
        why = ", ".join(f"{k} {v}" for k, v in i["not_served"].items()) or "–"
        add(f"| {part['labels'][r['setup']]} | {i['served']} / {i['requests']} = {i['served_pct']:.1f}% | "
            f"{b['served']} / {b['requests']} = {b['served_pct']:.1f}% | {r['served']} / {r['requests']} | "
            f"{r['p429']} | {why} |")
    add("")
    add("Target: interactive served >= 99% with the plugin's priorities. `refused` = the router said no without "
        "sending (the plugin's refusal names the reserve); `provider_429` = a provider's 429 reached the caller.")
    add("")


def target(part: dict) -> tuple[str, str, bool] | None:
    row = next((r for r in part.get("runs", []) if r["setup"] == "plugin_priority"), None)
    if row is None:
        return None
    pct = row["by_priority"]["interactive"]["served_pct"]
    return ("6. interactive served with priorities >= 99%", f"{pct:.1f}%", pct >= 99.0)


def plot(part: dict, ax_curve, ax_bars) -> None:
    colors = {"plugin_priority": "#1b7837", "plugin": "#7fbc41", "stock": "#c51b7d"}
    hours = list(range(25))
    for r in part["runs"]:
        bp = r["by_priority"]
        ax_curve.plot(hours, bp["interactive"]["cum_served"], "-", color=colors.get(r["setup"], "k"),
                      label=f"{part['labels'][r['setup']]}: interactive")
        ax_curve.plot(hours, bp["background"]["cum_served"], "--", color=colors.get(r["setup"], "k"),
                      label=f"{part['labels'][r['setup']]}: background")
    ax_curve.set_title(f"6. Served over the scarce day ({part['requests']} requests, day of {part['day_capacity']}; "
                       "cumulative)", fontsize=9)
    ax_curve.set_xlabel("simulated hour")
    ax_curve.set_xticks(range(0, 25, 3))
    ax_curve.legend(fontsize=6)
    names = [r["setup"] for r in part["runs"]]
    xs = range(len(names))
    ax_bars.bar([x - 0.2 for x in xs], [r["by_priority"]["interactive"]["served_pct"] for r in part["runs"]],
                width=0.4, color="#2166ac", label="interactive (priority 0)")
    ax_bars.bar([x + 0.2 for x in xs], [r["by_priority"]["background"]["served_pct"] for r in part["runs"]],
                width=0.4, color="#bababa", label="background (priority 1)")
    ax_bars.axhline(99, color="grey", lw=0.8)
    ax_bars.set_xticks(list(xs))
    ax_bars.set_xticklabels([part["labels"][s].split(" ", 1)[1].replace(", ", "\n") for s in names], fontsize=7)
    ax_bars.set_ylabel("% served")
    ax_bars.set_title("6. Served fraction per priority", fontsize=9)
    ax_bars.legend(fontsize=7)
