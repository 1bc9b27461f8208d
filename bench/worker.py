"""A bench worker: a long-lived process that builds routers and fires requests, as a gunicorn/Celery worker would.

The parent (``bench.pool``) talks to each worker over a ``multiprocessing`` pipe. One worker process serves many
runs: litellm is imported once (seconds per process on this machine), and before every run the worker drops
the previous router, puts LiteLLM's global callback lists back to what they were after import, and builds a
fresh router from the run's spec. So every run starts from a router that has never seen a request, in a process
whose imports and HTTP clients are warm -- like a worker that has been up for a while and is handed a new config.

Commands (dicts with ``op``):
    build     {"spec"}                         -> {"build_s"}
    drop      {}                               -> {}: no router, LiteLLM's callback lists as after import
    burst     {"n", "max_tokens", "tag"}       -> {"outcomes"}: all n requests at once (asyncio.gather)
    schedule  {"items", "t0"}                  -> {"outcomes"}: item i is sent at wall time t0 + item["at"]
    call      {"fn", "kwargs"}                 -> whatever bench.<module>.<fn>(**kwargs) returns (async or not)
    stop
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
import traceback
from typing import Any

_CALLBACK_LISTS = ("callbacks", "input_callback", "success_callback", "failure_callback", "_async_success_callback",
                   "_async_failure_callback", "service_callback")


def main(conn, index: int, env: dict[str, str]) -> None:  # the child process entry point
    os.environ.update(env)
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "router_plugin", "router_plugin.store", "httpx",
                 "aiohttp"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    import litellm

    litellm.suppress_debug_info = True
    litellm.set_verbose = False
    litellm.expose_router_debug_in_errors = False
    worker = Worker(index)
    try:
        asyncio.run(worker.serve(conn))
    finally:
        conn.close()


class Worker:
    def __init__(self, index: int) -> None:
        import litellm

        self.index = index
        self.router: Any = None
        self.spec: dict | None = None
        self._pristine = {name: list(getattr(litellm, name, []) or []) for name in _CALLBACK_LISTS}

    async def serve(self, conn) -> None:
        while True:
            try:
                cmd = await asyncio.to_thread(conn.recv)
            except (EOFError, OSError):  # the parent is gone: nothing left to serve
                await self._drop()
                return
            op = cmd.get("op")
            if op == "stop":
                await self._drop()
                conn.send({"ok": True})
                return
            try:
                if op == "build":
                    reply = await self.build(cmd["spec"])
                elif op == "drop":
                    await self._drop()
                    reply = {}
                elif op == "burst":
                    reply = {"outcomes": await self.burst(cmd["n"], cmd.get("max_tokens", 32), cmd.get("tag", "")),
                             "store": self.store_stats()}
                elif op == "schedule":
                    reply = {"outcomes": await self.schedule(cmd["items"], cmd["t0"])}
                elif op == "call":
                    module, _, fn = cmd["fn"].rpartition(".")
                    result = getattr(importlib.import_module(module), fn)(**cmd.get("kwargs", {}))
                    if asyncio.iscoroutine(result):
                        result = await result
                    reply = {"result": result}
                else:
                    raise ValueError(f"unknown op {op!r}")
                reply["ok"] = True
            except BaseException as exc:  # report, keep serving
                reply = {"ok": False, "error": f"worker {self.index}: {type(exc).__name__}: {exc}",
                         "trace": traceback.format_exc()[-4000:]}
            conn.send(reply)

    # ---- routers -------------------------------------------------------------------------------------------
    async def build(self, spec: dict) -> dict:
        await self._drop()
        started = time.perf_counter()
        self.router = build_router(spec)
        self.spec = spec
        return {"build_s": time.perf_counter() - started}

    async def _drop(self) -> None:
        """Forget the current router: its callbacks, its Redis connections, LiteLLM's pending log tasks."""
        import litellm

        await drain_logging()
        router, self.router = self.router, None
        if router is not None:
            await close_router(router)
        for name, items in self._pristine.items():
            setattr(litellm, name, list(items))

    # ---- load ----------------------------------------------------------------------------------------------
    def store_stats(self) -> dict | None:
        """The plugin's quota-store health in this worker (None for stock routers): how often it took Redis for
        unreachable and served from its fail_open share instead — the one way the plugin can over-admit."""
        from router_plugin.adapter.installer import installed

        inst = installed(self.router) if self.router is not None else None
        guard = getattr(getattr(inst, "store", None), "guard", None)
        if guard is None:
            return None
        status = guard.status()
        return {"outages": status.outages, "local_grants": status.local_grants,
                "lag_retries": getattr(inst.store, "lag_retries", 0), "pool_waits": getattr(inst.store, "pool_waits", 0),
                "last_error": status.last_error[:200]}

    async def burst(self, n: int, max_tokens: int, tag: str) -> list[dict]:
        before = asyncio.all_tasks()
        outcomes = await asyncio.gather(*(
            send(self.router, self.index, i, f"{tag} worker {self.index} request {i}: say hello", max_tokens)
            for i in range(n)
        ))
        await drain_logging(before)
        return list(outcomes)

    async def schedule(self, items: list[dict], t0: float) -> list[dict]:
        async def at(item: dict) -> dict:
            delay = t0 + item["at"] - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            out = await send(self.router, self.index, item["i"], item["text"], item["max_tokens"],
                             item.get("metadata"))
            out["sched"] = item["at"]
            return out

        before = asyncio.all_tasks()
        outcomes = await asyncio.gather(*(at(item) for item in items))
        await drain_logging(before)
        return list(outcomes)


def build_router(spec: dict):
    if spec["kind"] == "plugin":
        import router_plugin

        return router_plugin.build_router(spec["config"])
    import litellm

    return litellm.Router(**spec["kwargs"])


async def close_router(router) -> None:
    from router_plugin.adapter.installer import installed

    inst = installed(router)
    if inst is not None:
        try:
            await inst.store.aclose()
            inst.sync_store.close()
        except Exception:
            pass
    try:
        router.discard()
    except Exception:
        pass
    redis_cache = getattr(getattr(router, "cache", None), "redis_cache", None)
    if redis_cache is not None:
        try:
            await redis_cache.disconnect()
        except Exception:
            pass


_LONG_LIVED: set = set()  # tasks that outlived a drain once (e.g. LiteLLM's logging-worker loop): never awaited


async def drain_logging(before: set | None = None, patience_s: float = 1.0) -> None:
    """Wait until the background work of the requests sent so far has finished.

    LiteLLM hands a finished request's success callbacks (its own logging, UBR-v2's usage update, the plugin's
    settle) to ``asyncio.create_task``, which enqueues them on its logging worker, which runs each as another
    task -- so "done" means: no task newer than ``before`` is pending and the logging queue is empty. A task
    still pending after ``patience_s`` is taken for a long-lived one and ignored from then on.
    """
    from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

    me = asyncio.current_task()
    before = before or set()
    deadline = time.monotonic() + 30.0

    def newer() -> set:
        return {t for t in asyncio.all_tasks()
                if t is not me and not t.done() and t not in before and t not in _LONG_LIVED}

    while time.monotonic() < deadline:
        pending = newer()
        if pending:
            _, still = await asyncio.wait(pending, timeout=patience_s)
            _LONG_LIVED.update(still)
            continue
        queue = getattr(GLOBAL_LOGGING_WORKER, "_queue", None)
        if queue is not None and not queue.empty():
            try:
                await asyncio.wait_for(GLOBAL_LOGGING_WORKER.flush(), timeout=patience_s)
            except asyncio.TimeoutError:
                return
            continue
        await asyncio.sleep(0)
        if not newer():
            return


def classify(exc: BaseException) -> str:
    """refused = the router said no without sending; provider_429 = a provider's 429 reached the caller."""
    name = type(exc).__name__
    if name == "QuotaExhaustedError":
        return "refused"
    if name in ("RouterRateLimitError", "RouterRateLimitErrorBasic") or "No deployments available" in str(exc):
        return "refused"
    provider = getattr(exc, "llm_provider", None)
    status = getattr(exc, "status_code", None)
    if status == 429 and provider in ("openrouter", "groq"):
        return "provider_429"
    if status == 429:
        return "refused"  # a limiter inside LiteLLM (e.g. enforce_model_rate_limits)
    return "error"


async def send(router, worker: int, i: int, text: str, max_tokens: int, metadata: dict | None = None) -> dict:
    from .configs import GROUP, MODEL_OF_ID

    metadata = dict(metadata or {})  # e.g. {"priority": 1} (bench/priority.py)
    t0 = time.time()
    started = time.perf_counter()
    try:
        response = await router.acompletion(model=GROUP, messages=[{"role": "user", "content": text}],
                                            max_tokens=max_tokens, metadata=metadata)
        hidden = getattr(response, "_hidden_params", {}) or {}
        model_id = hidden.get("model_id")
        model = MODEL_OF_ID.get(str(model_id)) or (metadata.get("router_plugin") or {}).get("model")
        return {"w": worker, "i": i, "ok": True, "kind": "served", "model": model, "t0": t0, "t1": time.time(),
                "lat": time.perf_counter() - started}
    except Exception as exc:
        return {"w": worker, "i": i, "ok": False, "kind": classify(exc), "model": None, "t0": t0, "t1": time.time(),
                "lat": time.perf_counter() - started, "err": type(exc).__name__,
                "prov": str(getattr(exc, "llm_provider", "") or ""), "msg": str(exc)[:300]}
