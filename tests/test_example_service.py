"""examples/fastapi_service: a FastAPI service under uvicorn with several worker processes, each calling
``router_plugin.build_router`` once (lifespan), against the simulator and a real Redis: the counters are shared, so the
OpenRouter account pool (20/min) holds for the whole service, not per worker.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from router_plugin.demo import wait_for_fresh_minute
from tests.proxy_harness import OFFLINE_ENV, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "examples" / "fastapi_service"
WORKERS = 2


@pytest.fixture
def service(sim, redis_url, tmp_path):
    port = free_port()
    log_path = tmp_path / "service.log"
    env = {
        **os.environ, **OFFLINE_ENV,
        "ROUTER_CONFIG": str(REPO / "configs" / "litellm_config.offline.yaml"),  # the proxy's offline config
        "REDIS_URL": redis_url,
        "SIM_OPENROUTER_BASE": sim.openrouter_base,
        "SIM_GROQ_BASE": sim.groq_base,
    }
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(APP_DIR), "app:app", "--host", "127.0.0.1",
             "--port", str(port), "--workers", str(WORKERS), "--timeout-worker-healthcheck", "60"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while log_path.read_text(errors="replace").count("Application startup complete") < WORKERS:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the example service did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)


async def _burst(url: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=count, max_keepalive_connections=0)) as client:
        return await asyncio.gather(*(
            client.post("/ask", json={"prompt": f"request {n}: say hello", "max_tokens": 16}) for n in range(count)
        ))


def test_workers_share_the_counters_so_the_account_pool_holds_across_the_service(service, sim):
    wait_for_fresh_minute(min_left_s=20)  # OpenRouter counts per clock minute
    started = time.monotonic()
    replies = asyncio.run(_burst(service, 90))
    duration = time.monotonic() - started

    served = [r.json() for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code == 429]
    assert len(served) + len(refused) == 90, [r.text[:200] for r in replies if r.status_code not in (200, 429)][:3]
    by_model = Counter(s["model"] for s in served)
    workers = Counter(s["worker"] for s in served)
    print(f"\nexample service: {len(served)} served {dict(by_model)}, {len(refused)} refused, workers {dict(workers)}, "
          f"{duration:.1f}s, provider 429s {sim.stats()['rate_limited']}")

    assert len(workers) == WORKERS  # every worker served: each has its own Router...
    openrouter = [s for s in served if s["model"].startswith("openrouter/")]
    assert len(openrouter) == 20  # ...and still one account pool of 20/min for all of them (not 20 per worker)
    assert sorted(s["remaining"]["minute"] for s in openrouter) == list(range(20))
    assert sum(sim.stats()["requests"]["openrouter"].values()) == 20
    assert sum(sim.stats()["rate_limited"].values()) == 0  # nothing sent where it could not succeed
    allowance = math.ceil(duration / 2)  # Groq refills one request per 2 s per model during a slow burst
    for model in ("groq/openai/gpt-oss-120b", "groq/openai/gpt-oss-20b"):
        assert 30 <= by_model[model] <= 30 + allowance, by_model
    for reply in refused:  # nothing left in the chain: 429 with when to come back
        assert int(reply.headers["retry-after"]) >= 1
        assert "exhausted" in reply.json()["detail"]
    assert all(s["attempts"] == 1 and s["answer"] for s in served)
