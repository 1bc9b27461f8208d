"""``python -m bench`` (or ``python bench/run.py``): router_plugin vs stock LiteLLM 1.108, one run, one report.

Starts a redis-server on a free loopback port and the provider simulator, runs

    1. quota efficiency  (bench/quota.py)
    2. a day in the life (bench/day.py)
    3. routing overhead + quota-store throughput (bench/overhead.py)
    4. per-request overhead: stock simple-shuffle vs the plugin, caller latency and CPU (bench/perrequest.py)
    5. a refusal flood through the real LiteLLM proxy: refusals/s next to served requests/s (bench/flood.py)
    6. a day in the life with priorities: 20% interactive, 80% background, a scarce day (bench/priority.py)

through (a) router_plugin, (b) stock usage-based-routing-v2 and (c) stock + enforce_model_rate_limits, and writes
bench/results.md, bench/results.png and bench/results.json. Every number in them comes from this one run.

    python -m bench            # the full run (about 15 minutes on a 2-core machine)
    python -m bench --quick    # fewer sizes, a shorter day, fewer samples (about 7 minutes)
    python -m bench --tiny     # a smoke run for tests (well under a minute); --out DIR to write elsewhere
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench import configs  # noqa: E402
from bench.pool import Pool  # noqa: E402
from bench.servers import RedisServer  # noqa: E402

HERE = Path(__file__).resolve().parent
PARTS = ("quota", "day", "overhead", "perrequest", "flood", "priority")

MODES: dict[str, dict[str, Any]] = {
    "full": {"workers": [1, 4, 8], "sizes": [50, 100, 200, 400], "day_seconds": 150.0, "day_workers": 4,
             "day_requests": 1200, "overhead_n": 1500, "store_n": 20000, "perrequest_n": 1500,
             "flood_n": 1500, "flood_concurrency": 32, "flood_repeats": 2, "flood_workers": 2, "priority_requests": 400},
    "quick": {"workers": [1, 4, 8], "sizes": [50, 200], "day_seconds": 60.0, "day_workers": 4,
              "day_requests": 1200, "overhead_n": 600, "store_n": 8000, "perrequest_n": 600,
              "flood_n": 600, "flood_concurrency": 32, "flood_repeats": 1, "flood_workers": 2, "priority_requests": 400},
    # tiny: a smoke run for tests/test_bench.py -- well-formed output, numbers not meaningful (no minute alignment)
    "tiny": {"workers": [2], "sizes": [20], "day_seconds": 5.0, "day_workers": 2, "day_requests": 60,
             "overhead_n": 30, "store_n": 1000, "align_minute": False, "perrequest_n": 30,
             "flood_n": 40, "flood_concurrency": 8, "flood_repeats": 1, "flood_workers": 1, "priority_requests": 40},
}


@dataclass
class Bench:
    pool: Pool
    sim: Any
    redis: RedisServer
    log: Callable[[str], None]
    extra: dict[str, Any] = field(default_factory=dict)  # per-part config overrides for setup_spec

    def reset(self, sim_config: dict | None = None) -> None:
        """Providers back to full quota, every router counter gone."""
        self.sim.reset()
        if sim_config:
            self.sim.configure(sim_config)
        self.redis.flush()

    def spec(self, setup: str) -> dict:
        return configs.setup_spec(setup, self.sim.base_url, self.redis.url, self.redis.port, **self.extra)


def machine_facts(redis: RedisServer) -> dict[str, str]:
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "nproc_cmd": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or "?",
        "cpu": cpu,
        "load_at_start": load,
        "python": platform.python_version(),
        "litellm": version("litellm"),
        "redis_py": version("redis"),
        "redis_server": redis.version(),
        "redis_binary": __import__("bench.servers", fromlist=["x"]).redis_server_binary(),
        "matplotlib": version("matplotlib"),
        "platform": platform.platform(),
        **git_facts(),
    }


def git_facts() -> dict[str, str]:
    """The commit measured, and which files outside bench/ differed from it (engineers share this checkout)."""
    root = HERE.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.rstrip("\n")
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()
               if line[3:] and not line[3:].startswith(("bench/", "tests/test_bench.py"))]
    return {"git_commit": git("rev-parse", "--short", "HEAD").strip() or "?",
            "git_dirty": ", ".join(changed[:40]) + (" ..." if len(changed) > 40 else "")}


def carry_earlier_parts(results: dict[str, Any], previous: Path) -> None:
    """``--parts`` ran a subset: keep the other parts of the results.json being replaced, each marked with the run
    it came from (results.md says so), so one section can be rerun without losing the others."""
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError):
        return
    carried = dict(old.get("carried") or {})
    for part in PARTS:
        if part in results["parts"] or part not in old:
            continue
        results[part] = old[part]
        m = old.get("machine") or {}
        carried[part] = carried.get(part) or {"date": m.get("date", "?"), "commit": m.get("git_commit", "?"),
                                              "command": old.get("command", "?"), "mode": old.get("mode", "?")}
    for part in results["parts"]:
        carried.pop(part, None)
    if carried:
        results["carried"] = carried


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer sizes, shorter day, fewer samples (~7 min)")
    mode.add_argument("--tiny", action="store_true", help="smoke run for tests (< 1 min)")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of " + ",".join(PARTS))
    p.add_argument("--out", default=str(HERE), help="directory for results.md/.png/.json (default: bench/)")
    p.add_argument("--no-plot", action="store_true", help="skip results.png (matplotlib not needed)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (timeout, kill): unwind normally so the redis-server, simulator and workers are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    mode_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        print(f"unknown part(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    entry = "python bench/run.py" if Path(sys.argv[0]).name == "run.py" else "python -m bench"
    given = sys.argv[1:] if argv is None else argv
    command = entry + (" " + shlex.join(given) if given else "")
    from router_plugin.sim import SimState, start_sim

    pool_size = max(max(mode["workers"]), mode["day_workers"], 1)
    results: dict[str, Any] = {"mode": mode_name, "command": command, "params": mode, "parts": parts}
    with RedisServer() as redis:
        results["machine"] = machine_facts(redis)
        log(f"redis-server {results['machine']['redis_server']} on port {redis.port}; "
            f"starting the simulator and {pool_size} worker processes")
        sim = start_sim(port=0, state=SimState(max_log=500_000))
        pool = Pool(pool_size)
        bench = Bench(pool, sim, redis, log)
        try:
            if "quota" in parts:
                from bench import quota

                log("part 1: quota efficiency (warm-up first)")
                quota.warm_up(bench, list(configs.SETUPS), pool_size)
                results["quota"] = quota.run(bench, list(configs.SETUPS), mode["workers"], mode["sizes"],
                                             align_minute=mode.get("align_minute", True))
            if "day" in parts:
                from bench import day

                log("part 2: a day in the life")
                results["day"] = day.run(bench, mode)
            if "overhead" in parts:
                from bench import overhead

                log("part 3: routing overhead and store throughput")
                results["overhead"] = overhead.run(bench, mode)
            if "perrequest" in parts:
                from bench import perrequest

                log("part 4: per-request overhead, stock simple-shuffle vs router_plugin")
                results["perrequest"] = perrequest.run(bench, mode)
            if "flood" in parts:
                from bench import flood

                log("part 5: a refusal flood through the real LiteLLM proxy")
                results["flood"] = flood.run(bench, mode)
            if "priority" in parts:
                from bench import priority

                log("part 6: a day in the life with priorities")
                results["priority"] = priority.run(bench, mode)
        finally:
            pool.close()
            sim.stop()
    results["elapsed_s"] = time.time() - started
    carry_earlier_parts(results, out / "results.json")
    try:
        results["machine"]["load_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        results["machine"]["load_at_end"] = "?"
    from bench import report

    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    report.write_markdown(results, out / "results.md")
    if not args.no_plot:
        report.write_plot(results, out / "results.png")
    log(f"done in {results['elapsed_s']:.0f} s: {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
