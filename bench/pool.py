"""A pool of long-lived worker processes (``bench.worker``), started once per bench run with ``spawn``."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

from . import worker as _worker

ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "LITELLM_LOG": "CRITICAL"}


class WorkerError(RuntimeError):
    pass


class Pool:
    def __init__(self, size: int, timeout_s: float = 300.0) -> None:
        ctx = mp.get_context("spawn")
        self.timeout_s = timeout_s
        self.conns = []
        self.procs = []
        env = {**ENV, **{k: os.environ[k] for k in ENV if k in os.environ}}
        for i in range(size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker.main, args=(child, i, env), daemon=True, name=f"bench-worker-{i}")
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    @property
    def size(self) -> int:
        return len(self.conns)

    def _ask(self, indices, commands) -> list[dict]:
        for i, cmd in zip(indices, commands):
            self.conns[i].send(cmd)
        replies = []
        deadline = time.monotonic() + self.timeout_s
        for i in indices:
            conn = self.conns[i]
            if not conn.poll(max(0.1, deadline - time.monotonic())):
                raise WorkerError(f"worker {i} did not answer within {self.timeout_s:.0f} s")
            reply = conn.recv()
            if not reply.get("ok"):
                raise WorkerError(f"{reply.get('error')}\n{reply.get('trace', '')}")
            replies.append(reply)
        return replies

    def build(self, spec: dict, workers: int) -> list[float]:
        return [r["build_s"] for r in self._ask(range(workers), [{"op": "build", "spec": spec}] * workers)]

    def drop(self, workers: int) -> None:
        self._ask(range(workers), [{"op": "drop"}] * workers)

    def burst(self, per_worker: list[int], max_tokens: int = 32, tag: str = "") -> list[dict]:
        cmds = [{"op": "burst", "n": n, "max_tokens": max_tokens, "tag": tag} for n in per_worker]
        out: list[dict] = []
        self.store_stats = []  # per worker, router_plugin only (see Worker.store_stats)
        for reply in self._ask(range(len(per_worker)), cmds):
            out.extend(reply["outcomes"])
            if reply.get("store"):
                self.store_stats.append(reply["store"])
        return out

    def schedule(self, items_per_worker: list[list[dict]], t0: float) -> list[dict]:
        cmds = [{"op": "schedule", "items": items, "t0": t0} for items in items_per_worker]
        out: list[dict] = []
        for reply in self._ask(range(len(items_per_worker)), cmds):
            out.extend(reply["outcomes"])
        return out

    def call(self, index: int, fn: str, **kwargs: Any) -> Any:
        return self._ask([index], [{"op": "call", "fn": fn, "kwargs": kwargs}])[0]["result"]

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send({"op": "stop"})
            except (OSError, BrokenPipeError):
                pass
        for proc, conn in zip(self.procs, self.conns):
            proc.join(10)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            conn.close()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
