"""Smoke test of the benchmark (issue 6): ``python -m bench --tiny`` runs every part and writes well-formed results.

The tiny mode proves the harness works end to end (redis-server, simulator, worker processes, all setups, report);
its numbers mean nothing and nothing here asserts on timings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.integration


def test_tiny_bench_writes_well_formed_results(tmp_path):
    plot = importlib.util.find_spec("matplotlib") is not None
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "bench", "--tiny", "--out", str(tmp_path)] + ([] if plot else ["--no-plot"])
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "tiny"
    for key in ("date", "nproc", "python", "litellm", "redis_server", "git_commit"):
        assert results["machine"][key], key

    setups = {row["setup"] for row in results["quota"]}
    assert setups == {"plugin", "stock", "stock_enforce"}
    for row in results["quota"]:
        assert row["requests"] == 20
        assert row["served"] + row["refused"] + row["failed_429"] + row["errors"] == row["requests"]
        assert row["capacity"] >= 80
        assert row["errors"] == 0, row["error_samples"]

    day = results["day"]
    assert [r["setup"] for r in day["runs"]] == ["plugin", "stock"]
    for run in day["runs"]:
        assert run["served"] + run["refused"] + run["failed_429"] + run["errors"] == run["requests"] == day["requests"]
        assert run["errors"] == 0, run["error_samples"]
        assert set(run["pools"]) == {"openrouter", "groq/openai/gpt-oss-120b", "groq/openai/gpt-oss-20b"}
        assert len(run["cum_served"]["openrouter"]) == 25

    overhead = results["overhead"]
    for provider in ("openrouter", "groq"):
        for setup in ("upstream_only", "stock_shuffle", "stock", "plugin"):
            series = overhead["routing"]["series"][f"{provider}:{setup}"]
            assert series["cost"]["n"] == 30 and series["cost"]["p50_us"] > 0
    for mode in ("sequential", "pipelined", "concurrent_async"):
        assert overhead["store"][mode]["ok"] == overhead["store"][mode]["n"] == 1000

    prio = results["priority"]  # part 6: a day with 20% interactive / 80% background on a scarce day (issue 17)
    assert [r["setup"] for r in prio["runs"]] == ["plugin_priority", "plugin", "stock"]
    assert prio["interactive"] + prio["background"] == prio["requests"] == 40
    assert prio["day_capacity"] < prio["requests"]  # the day is scarce
    for run in prio["runs"]:
        bp = run["by_priority"]
        assert bp["interactive"]["requests"] == prio["interactive"] and bp["background"]["requests"] == prio["background"]
        assert bp["interactive"]["served"] + bp["background"]["served"] == run["served"]
        assert len(bp["interactive"]["cum_served"]) == 25
        assert run["errors"] == 0, run["error_samples"]

    perrequest = results["perrequest"]
    assert set(perrequest["paths"]) == {"openrouter", "groq"}
    for row in perrequest["paths"].values():
        for key in ("latency", "cpu"):
            assert row[key]["stock_p50_us"] > 0 and row[key]["plugin_p50_us"] > 0
            assert row[key]["ratio"] is not None

    flood = results["flood"]
    assert [r["setup"] for r in flood["runs"]] == ["plugin", "stock"]
    for run in flood["runs"]:
        assert run["serve"]["ok"] == flood["n"], run["serve"]["statuses"]  # every request of the serve phase served
        assert run["serve"]["per_s"] > 0
    plugin = flood["runs"][0]
    assert plugin["flood"]["ok"] == flood["n"], plugin["flood"]["statuses"]  # every flood request refused...
    assert plugin["flood"]["upstream_sent"] == 0  # ...without sending anything upstream
    assert plugin["flood"]["sample"]["headers"]["x-should-retry"] == "false"
    assert plugin["ratio"] is not None

    md = (tmp_path / "results.md").read_text()
    assert "| (a) router_plugin, priority reserve 0.2 |" in md
    for heading in ("## Targets", "## 1. Quota efficiency", "## 2. A day in the life", "## 3. Routing overhead",
                    "## 4. What the plugin adds to one request", "## 5. A refusal flood through the real LiteLLM proxy",
                    "proxy refusals/s >= 2x", "## 6. A day in the life with priorities"):
        assert heading in md
    assert "python -m bench --tiny" in md
    if plot:
        assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
