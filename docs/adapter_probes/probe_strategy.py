"""Probe (a)+(b): how a custom routing strategy is installed and called on the running LiteLLM line.

Run from the worktree with PYTHONPATH set, under either venv:
    python docs/adapter_probes/probe_strategy.py
Prints one line per fact. Uses the in-process simulator (router_plugin.sim), nothing leaves 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import copy
import importlib.metadata as md
import time
import warnings

warnings.simplefilter("default", DeprecationWarning)

import litellm
from litellm import Router
from litellm.router import CustomRoutingStrategyBase

from router_plugin.sim import start_sim

V = md.version("litellm")
MSG = [{"role": "user", "content": "hi"}]
GA, GB, FB = "groq/openai/gpt-oss-120b", "groq/openai/gpt-oss-20b", "openrouter/meta-llama/llama-3.3-70b-instruct:free"


def model_list(sim):
    g = f"{sim.base_url}/openai/v1"
    o = f"{sim.base_url}/api/v1"
    return [
        {"model_name": "g", "litellm_params": {"model": GA, "api_key": "sim-groq-key", "api_base": g}, "model_info": {"id": "ga"}},
        {"model_name": "g", "litellm_params": {"model": GB, "api_key": "sim-groq-key", "api_base": g}, "model_info": {"id": "gb"}},
        {"model_name": "fb", "litellm_params": {"model": FB, "api_key": "sim-openrouter-key", "api_base": o}, "model_info": {"id": "fb"}},
    ]


class Recorder(CustomRoutingStrategyBase):
    """Returns deployments from its OWN copy of the model list (no router API); records every call."""

    def __init__(self, ml, mode="first"):
        self.ml, self.mode, self.calls = ml, mode, []

    def _pick(self, model, request_kwargs):
        md_ = (request_kwargs or {}).get("metadata") or (request_kwargs or {}).get("litellm_metadata") or {}
        self.calls.append({"model": model, "keys": sorted((request_kwargs or {}).keys()),
                           "md": {k: md_.get(k) for k in ("model_group", "original_model_group", "attempted_retries",
                                                           "attempted_fallbacks", "previous_models")},
                           "fallback_depth": (request_kwargs or {}).get("fallback_depth"),
                           "md_is_callers": md_.get("probe_marker") is not None})
        md_["probe_seen"] = len(self.calls)  # does the caller see writes into metadata?
        if self.mode == "raise0":
            raise litellm.RateLimitError(message="probe refusal", llm_provider="probe", model=model, num_retries=0)
        if self.mode == "raise":
            raise litellm.RateLimitError(message="probe refusal", llm_provider="probe", model=model)
        if self.mode == "none":
            return None
        group = [d for d in self.ml if d["model_name"] == model]
        return group[0] if self.mode == "first" else group[len(self.calls) % len(group)]

    async def async_get_available_deployment(self, model, messages=None, input=None, specific_deployment=False,
                                             request_kwargs=None):
        return self._pick(model, request_kwargs)

    def get_available_deployment(self, model, messages=None, input=None, specific_deployment=False,
                                 request_kwargs=None):
        return self._pick(model, request_kwargs)


def install(router, strat):
    if hasattr(router, "register_plugin"):
        router.register_plugin(strat)
        return "register_plugin"
    router.set_custom_routing_strategy(strat)
    return "set_custom_routing_strategy"


async def run(sim, mode="first", sim_cfg=None, router_kw=None, call_kw=None, label=""):
    sim.reset()
    if sim_cfg:
        sim.configure(sim_cfg)
    ml = model_list(sim)
    router = Router(model_list=copy.deepcopy(ml), **(router_kw or {}))
    strat = Recorder(ml, mode)
    how = install(router, strat)
    metadata = {"probe_marker": 1}
    t0 = time.monotonic()
    err = None
    try:
        resp = await router.acompletion(model="g", messages=MSG, max_tokens=5, metadata=metadata, **(call_kw or {}))
        served = resp._hidden_params.get("model_id")
    except Exception as e:  # noqa: BLE001
        served, err = None, f"{type(e).__name__}: {str(e)[:90]}"
    dt = time.monotonic() - t0
    upstream = sum(sum(v.values()) for v in sim.stats()["responses"].values())
    print(f"[{V}] {label}: install={how} strategy_calls={len(strat.calls)} models={[c['model'] for c in strat.calls]} "
          f"served={served} err={err} upstream_requests={upstream} secs={dt:.2f} caller_md_probe_seen={metadata.get('probe_seen')}")
    return strat, metadata


async def main():
    with start_sim(port=0) as sim:
        s, _ = await run(sim, label="A success")
        c = s.calls[0]
        print(f"[{V}] A request_kwargs keys={c['keys']}")
        print(f"[{V}] A metadata={ {k: v for k, v in c['md'].items()} } md_is_callers={c['md_is_callers']}")
        s, _ = await run(sim, sim_cfg={"models": {"openai/gpt-oss-120b": {"status": 500, "status_count": 99}}},
                         router_kw={"num_retries": 2}, label="B always-500 on first pick, num_retries=2, no fallbacks")
        print(f"[{V}] B retry metadata: {[ (c['md']['attempted_retries'], bool(c['md']['previous_models'])) for c in s.calls]}")
        pm = s.calls[-1]['md']['previous_models']
        print(f"[{V}] B previous_models type={type(pm).__name__} len={len(pm)} entry_keys={sorted(pm[0].keys())} "
              f"ids={[e.get('deployment_id') for e in pm]} types={[e.get('exception_type') for e in pm]}")
        s, _ = await run(sim, sim_cfg={"models": {"openai/gpt-oss-120b": {"status": 500, "status_count": 99}}},
                         router_kw={"num_retries": 1, "fallbacks": [{"g": ["fb"]}]}, label="C 500 + fallbacks g->fb")
        print(f"[{V}] C fallback calls: {[(c['model'], c['fallback_depth'], c['md']['original_model_group'], c['md']['attempted_fallbacks']) for c in s.calls]}")
        await run(sim, mode="raise0", router_kw={"num_retries": 3, "fallbacks": [{"g": ["fb"]}]},
                  label="D strategy raises RateLimitError(num_retries=0), router num_retries=3, fallbacks")
        await run(sim, mode="raise0", router_kw={"num_retries": 3, "fallbacks": [{"g": ["fb"]}]},
                  call_kw={"disable_fallbacks": True}, label="D2 same + disable_fallbacks")
        await run(sim, mode="raise", router_kw={"num_retries": 2}, label="E strategy raises plain RateLimitError, num_retries=2")
        from litellm.router import RetryPolicy
        await run(sim, mode="raise", router_kw={"num_retries": 2, "retry_policy": RetryPolicy(RateLimitErrorRetries=0)},
                  label="F plain RateLimitError, RetryPolicy(RateLimitErrorRetries=0)")
        await run(sim, mode="none", router_kw={"num_retries": 1}, label="G strategy returns None, num_retries=1")
        await run(sim, sim_cfg={"models": {"openai/gpt-oss-120b": {"status": 429, "status_count": 1}}},
                  router_kw={"num_retries": 2}, label="H upstream 429 once (one-deployment pick), num_retries=2")


asyncio.run(main())
