"""A burst of requests from several worker processes through one chain, and what happened to each.

Used by ``router-plugin demo`` (simulator + embedded Valkey, no API keys) and by the multi-process tests.
Each worker is a separate process that builds its own Router with ``build_router`` — exactly what a
gunicorn/uvicorn/Celery worker does — and all of them share one Redis.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEMO_GROUP = "free-chat"
# Models served now (providers.md §1.8, §2.1 updates 2026-12: deepseek/deepseek-r1:free left OpenRouter on
# 2026-03-22; qwen/qwen3-coder:free is back since 2026-05-15; llama-3.3-70b-versatile and llama-3.1-8b-instant are
# shut down on Groq).
DEMO_CHAIN = (
    "openrouter/meta-llama/llama-3.3-70b-instruct:free",
    "openrouter/qwen/qwen3-coder:free",
    "groq/openai/gpt-oss-120b",
    "groq/openai/gpt-oss-20b",
)


def demo_config(sim_base_url: str, *, redis_url: str | None = None, embedded_path: str | None = None,
                openrouter_key: str = "sim-openrouter-key", groq_key: str = "sim-groq-key",
                chain: tuple[str, ...] = DEMO_CHAIN, **settings: Any) -> dict:
    """A LiteLLM config for the chain, pointed at the simulator."""
    model_list = []
    for model in chain:
        provider = model.split("/", 1)[0]
        base = f"{sim_base_url}/api/v1" if provider == "openrouter" else f"{sim_base_url}/openai/v1"
        key = openrouter_key if provider == "openrouter" else groq_key
        model_list.append({"model_name": DEMO_GROUP, "litellm_params": {"model": model, "api_key": key, "api_base": base}})
    section: dict[str, Any] = dict(settings)
    if redis_url:
        section["redis_url"] = redis_url
    if embedded_path:
        section["embedded_path"] = embedded_path
    return {"model_list": model_list, "router_plugin": section}


@dataclass(frozen=True)
class Outcome:
    worker: int
    ok: bool
    model: str | None  # the deployment that served it
    attempts: int
    error: str | None
    error_type: str | None
    latency_s: float


@dataclass
class BurstResult:
    outcomes: list[Outcome] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0

    @property
    def served(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def refused(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error_type == "QuotaExhaustedError"]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok and o.error_type != "QuotaExhaustedError"]

    def served_by(self) -> Counter:
        return Counter(o.model for o in self.served)

    def fallbacks(self) -> int:
        """Requests that needed more than one attempt (a deployment failed and the next one served)."""
        return sum(1 for o in self.served if o.attempts > 1)


def run_burst(config: Mapping[str, Any], workers: int = 4, per_worker: int = 25, *, group: str = DEMO_GROUP,
              max_tokens: int = 32, stream: bool = False, timeout_s: float = 120.0,
              min_minute_left_s: float = 0.0) -> BurstResult:
    """Start ``workers`` processes, let each build its router, then fire all requests at once.

    ``min_minute_left_s``: once every worker is ready (importing LiteLLM takes seconds), wait for a new clock minute
    if less than this is left of the current one, so that the burst falls inside one OpenRouter minute.
    """
    ctx = mp.get_context("spawn")
    ready, go = ctx.Barrier(workers + 1), ctx.Barrier(workers + 1)
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(dict(config), i, per_worker, group, max_tokens, stream, (ready, go), queue),
                    daemon=True)
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    try:
        ready.wait(timeout=timeout_s)  # every worker has built its router
    except threading.BrokenBarrierError:
        go.abort()
        raise RuntimeError(f"a demo worker failed: {_first_report(queue)}") from None
    if min_minute_left_s:
        wait_for_fresh_minute(min_minute_left_s)
    go.wait(timeout=timeout_s)
    result = BurstResult(started=time.time())
    deadline = time.monotonic() + timeout_s
    for _ in range(workers):
        remaining = max(1.0, deadline - time.monotonic())
        batch = queue.get(timeout=remaining)
        if isinstance(batch, str):
            raise RuntimeError(f"a demo worker failed: {batch}")
        result.outcomes.extend(batch)
    result.ended = time.time()
    for p in procs:
        p.join(10)
    return result


def _first_report(queue) -> str:
    try:
        return str(queue.get(timeout=5))
    except Exception:
        return "no report (it died while starting)"


def _worker(config, index, count, group, max_tokens, stream, barriers, queue):  # runs in a child process
    ready, go = barriers
    try:
        import logging

        logging.getLogger("router_plugin").setLevel(logging.ERROR)
        import litellm

        from .adapter.installer import build_router

        litellm.suppress_debug_info = True
        router = build_router(config)
    except Exception as exc:  # report instead of hanging the parent on the barrier
        queue.put(f"worker {index}: {type(exc).__name__}: {exc}")
        ready.abort()
        return
    ready.wait()
    go.wait()
    outcomes = asyncio.run(_fire(router, index, count, group, max_tokens, stream))
    queue.put(outcomes)


async def _fire(router, index, count, group, max_tokens, stream) -> list[Outcome]:
    async def one(n: int) -> Outcome:
        metadata: dict = {}
        start = time.perf_counter()
        try:
            response = await router.acompletion(
                model=group, messages=[{"role": "user", "content": f"worker {index} request {n}: say hello"}],
                max_tokens=max_tokens, stream=stream, metadata=metadata,
            )
            if stream:
                async for _ in response:
                    pass
            info = metadata.get("router_plugin", {})
            return Outcome(index, True, info.get("model"), int(info.get("attempts", 1)), None, None,
                           time.perf_counter() - start)
        except Exception as exc:
            info = metadata.get("router_plugin", {})
            return Outcome(index, False, None, int(info.get("attempts", 0)), str(exc)[:600], type(exc).__name__,
                           time.perf_counter() - start)

    outcomes = list(await asyncio.gather(*(one(n) for n in range(count))))
    # LiteLLM runs success callbacks (the plugin's settle) as background tasks after the caller has its answer:
    # let them finish before this process exits, or the real token usage never reaches the shared counters.
    pending = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()
               and not t.get_name().startswith("router_plugin-")}  # not the periodic calibration
    if pending:
        await asyncio.wait(pending, timeout=10)
    return outcomes


def wait_for_fresh_minute(min_left_s: float = 20.0) -> None:
    """OpenRouter counts per clock minute: start a burst early enough in a minute that it ends inside it."""
    left = 60 - (time.time() % 60)
    if left < min_left_s:
        time.sleep(left + 0.2)
