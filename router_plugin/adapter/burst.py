"""demo.run_burst with each worker building its router through the adapter (prototype.build_router)."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import time
from collections.abc import Mapping
from typing import Any

from ..demo import DEMO_GROUP, BurstResult, _fire, wait_for_fresh_minute


def run_burst(config: Mapping[str, Any], workers: int = 4, per_worker: int = 25, *, group: str = DEMO_GROUP,
              max_tokens: int = 32, timeout_s: float = 120.0, min_minute_left_s: float = 0.0) -> BurstResult:
    ctx = mp.get_context("spawn")
    ready, go = ctx.Barrier(workers + 1), ctx.Barrier(workers + 1)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(dict(config), i, per_worker, group, max_tokens, (ready, go), queue),
                         daemon=True) for i in range(workers)]
    for p in procs:
        p.start()
    try:
        ready.wait(timeout=timeout_s)
    except threading.BrokenBarrierError:
        go.abort()
        raise RuntimeError(f"an adapter worker failed: {queue.get(timeout=5)}") from None
    if min_minute_left_s:
        wait_for_fresh_minute(min_minute_left_s)
    go.wait(timeout=timeout_s)
    result = BurstResult(started=time.time())
    for _ in range(workers):
        batch = queue.get(timeout=timeout_s)
        if isinstance(batch, str):
            raise RuntimeError(f"an adapter worker failed: {batch}")
        result.outcomes.extend(batch)
    result.ended = time.time()
    for p in procs:
        p.join(10)
    return result


def _worker(config, index, count, group, max_tokens, barriers, queue):  # a child process
    ready, go = barriers
    try:
        import logging
        import warnings

        warnings.filterwarnings("error", message=r"Router\..* is deprecated", category=DeprecationWarning)
        logging.getLogger("router_plugin").setLevel(logging.ERROR)
        import litellm

        from .prototype import build_router

        litellm.suppress_debug_info = True
        router = build_router(config)
    except Exception as exc:
        queue.put(f"worker {index}: {type(exc).__name__}: {exc}")
        ready.abort()
        return
    ready.wait()
    go.wait()
    queue.put(asyncio.run(_fire(router, index, count, group, max_tokens, False)))
