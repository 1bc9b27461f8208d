"""Probe (c)+(e): per-attempt hooks. Does a CustomLogger's async_pre_call_deployment_hook run once per attempt and
can it set that attempt's transport timeout? Does async_post_call_failure_deployment_hook run per failed attempt and
can it leave a note in the request metadata that the strategy reads on the next attempt? Success/failure log events.

    python docs/adapter_probes/probe_attempt.py      # under either venv, PYTHONPATH=worktree
"""
from __future__ import annotations

import asyncio
import copy
import importlib.metadata as md
import time

import litellm
from litellm import Router
from litellm.integrations.custom_logger import CustomLogger
from litellm.router import CustomRoutingStrategyBase

from router_plugin.sim import start_sim

V = md.version("litellm")
MSG = [{"role": "user", "content": "hi"}]
GA, GB = "groq/openai/gpt-oss-120b", "groq/openai/gpt-oss-20b"


class Walk(CustomRoutingStrategyBase):
    def __init__(self, d):
        self.d, self.seen = d, []

    async def async_get_available_deployment(self, model, messages=None, input=None, specific_deployment=False, request_kwargs=None):
        md_ = request_kwargs.get("metadata") or {}
        self.seen.append(list(md_.get("probe_failed", [])))
        return self.d[(len(self.seen) - 1) % len(self.d)]

    def get_available_deployment(self, *a, **k):
        raise NotImplementedError


class Hooks(CustomLogger):
    def __init__(self, set_timeout=None):
        super().__init__()
        self.set_timeout, self.events = set_timeout, []

    async def async_pre_call_deployment_hook(self, kwargs, call_type):
        self.events.append(("pre", kwargs.get("model_info", {}).get("id"), kwargs.get("timeout"), kwargs.get("stream")))
        if self.set_timeout is not None:
            kwargs["timeout"] = self.set_timeout
        return kwargs

    async def async_post_call_failure_deployment_hook(self, request_data, original_exception, call_type, **kw):
        mid = (request_data.get("model_info") or {}).get("id")
        self.events.append(("fail_hook", mid, type(original_exception).__name__))
        md_ = request_data.get("metadata") or request_data.get("litellm_metadata")
        if isinstance(md_, dict):
            md_.setdefault("probe_failed", []).append(mid)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        hp = getattr(response_obj, "_hidden_params", {}) or {}
        ah = hp.get("additional_headers") or {}
        self.events.append(("log_success", kwargs["litellm_params"]["model_info"]["id"],
                            sorted(k for k in ah if "ratelimit" in k)[:3], bool(kwargs.get("response_headers"))))

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        exc = kwargs.get("exception")
        h = getattr(exc, "litellm_response_headers", None)
        self.events.append(("log_failure", kwargs["litellm_params"]["model_info"]["id"], type(exc).__name__,
                            (dict(h) if h is not None else {}).get("retry-after")))


async def case(sim, label, *, cfg=None, set_timeout=None, call_kw=None, warm=0):
    sim.reset()
    if cfg:
        sim.configure(cfg)
    g = f"{sim.base_url}/openai/v1"
    d = [{"model_name": "g", "litellm_params": {"model": m, "api_key": "sim-groq-key", "api_base": g}, "model_info": {"id": i}}
         for m, i in ((GA, "ga"), (GB, "gb"))]
    hooks = Hooks(set_timeout)
    litellm.callbacks = [hooks]
    r = Router(model_list=copy.deepcopy(d), num_retries=2)
    s = Walk(d)
    (r.register_plugin if hasattr(r, "register_plugin") else r.set_custom_routing_strategy)(s)
    for _ in range(warm):
        await r.acompletion(model="g", messages=MSG, max_tokens=5)
        s.seen.clear()
    await asyncio.sleep(0.2)
    hooks.events.clear()
    t0 = time.monotonic()
    try:
        resp = await r.acompletion(model="g", messages=MSG, max_tokens=5, **(call_kw or {}))
        if call_kw and call_kw.get("stream"):
            async for _ in resp:
                pass
            out = "stream read"
        else:
            out = f"served by {resp._hidden_params.get('model_id')}"
    except Exception as e:  # noqa: BLE001
        out = f"{type(e).__name__}: {str(e)[:60]}"
    dt = time.monotonic() - t0
    await asyncio.sleep(0.3)  # background log events
    print(f"[{V}] {label}: {out} in {dt:.2f}s; strategy saw probe_failed={s.seen}")
    print(f"[{V}]    events={hooks.events}")
    litellm.callbacks = []


async def main():
    with start_sim(port=0) as sim:
        await case(sim, "T0 plain success (events)")
        await case(sim, "T0s stream success (events)", call_kw={"stream": True})
        slow = {"models": {"openai/gpt-oss-120b": {"latency_ms": 3000}}}
        await case(sim, "T1 first deployment 3 s slow, no limit", cfg=slow)
        await case(sim, "T2 same, pre_call_deployment_hook sets timeout=0.5", cfg=slow, set_timeout=0.5)
        await case(sim, "T3 same, request timeout=0.5", cfg=slow, call_kw={"timeout": 0.5})
        s500 = {"models": {"openai/gpt-oss-120b": {"status": 500}}}
        await case(sim, "T4 first deployment 500 (failure hook -> metadata note)", cfg=s500)
        rpm1 = {"groq": {"limits": {"openai/gpt-oss-120b": {"rpm": 1}}}}
        await case(sim, "T5 first deployment 429 with retry-after (failure events)", cfg=rpm1, warm=1)


asyncio.run(main())
