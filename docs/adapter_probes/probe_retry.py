"""Probe (b): retry decisions and Retry-After sleeps through public settings only (no private methods).

    python docs/adapter_probes/probe_retry.py      # under either venv, PYTHONPATH=worktree
"""
from __future__ import annotations

import asyncio
import copy
import importlib.metadata as md
import time

import litellm
import litellm.integrations.custom_logger
from litellm import Router
from litellm.router import CustomRoutingStrategyBase, RetryPolicy

from router_plugin.sim import start_sim

V = md.version("litellm")
MSG = [{"role": "user", "content": "hi"}]
GA, GB = "groq/openai/gpt-oss-120b", "groq/openai/gpt-oss-20b"


def ml(sim, one=False):
    g = f"{sim.base_url}/openai/v1"
    out = [{"model_name": "g", "litellm_params": {"model": GA, "api_key": "sim-groq-key", "api_base": g}, "model_info": {"id": "ga"}}]
    if not one:
        out.append({"model_name": "g", "litellm_params": {"model": GB, "api_key": "sim-groq-key", "api_base": g}, "model_info": {"id": "gb"}})
    return out


class PluginError(Exception):
    """Not a litellm exception (like router_plugin's RouterPluginError/BudgetExceededError)."""


class Walk(CustomRoutingStrategyBase):
    def __init__(self, deployments, raise_=None):
        self.d, self.raise_, self.calls = deployments, raise_, 0

    async def async_get_available_deployment(self, model, messages=None, input=None, specific_deployment=False, request_kwargs=None):
        self.calls += 1
        if self.raise_ is not None:
            raise self.raise_
        return self.d[(self.calls - 1) % len(self.d)]

    def get_available_deployment(self, *a, **k):  # pragma: no cover
        raise NotImplementedError


async def case(sim, label, *, one=False, cfg=None, warm=0, raise_=None, call_kw=None, wait_s=6.0, **router_kw):
    sim.reset()
    if cfg:
        sim.configure(cfg)
    d = ml(sim, one)
    r = Router(model_list=copy.deepcopy(d), **router_kw)
    s = Walk(d, raise_)
    (r.register_plugin if hasattr(r, "register_plugin") else r.set_custom_routing_strategy)(s)
    for _ in range(warm):
        await r.acompletion(model="g", messages=MSG, max_tokens=5)
    s.calls = 0
    t0 = time.monotonic()
    try:
        resp = await asyncio.wait_for(r.acompletion(model="g", messages=MSG, max_tokens=5, **(call_kw or {})), wait_s)
        out = f"served by {resp._hidden_params.get('model_id')}"
    except asyncio.TimeoutError:
        out = f"STILL WAITING after {wait_s}s (slept the Retry-After)"
    except Exception as e:  # noqa: BLE001
        out = f"{type(e).__name__}"
    stats = sim.stats()
    upstream = sum(sum(v.values()) for v in stats["responses"].values())
    print(f"[{V}] {label}: strategy_calls={s.calls} upstream={upstream} (incl. {warm} warm) -> {out} in {time.monotonic()-t0:.2f}s")


class Rewrite(litellm.integrations.custom_logger.CustomLogger if hasattr(litellm, "integrations") else object):
    """R13: a failure hook that tries to make a 402 retryable (sets num_retries, swaps the class)."""

    async def async_post_call_failure_deployment_hook(self, request_data, original_exception, call_type, **_):
        try:
            original_exception.num_retries = 3
            original_exception.__class__ = litellm.InternalServerError
        except Exception as exc:  # noqa: BLE001
            print("  (hook could not rewrite:", type(exc).__name__, exc, ")")
        return None


async def main():
    with start_sim(port=0) as sim:
        rpm1 = {"groq": {"limits": {"openai/gpt-oss-120b": {"rpm": 1}}}}
        await case(sim, "R1 one deployment, upstream 429 retry-after~60, num_retries=1", one=True, cfg=rpm1, warm=1, num_retries=1)
        await case(sim, "R2 same + model_group_retry_policy g: RateLimitErrorRetries=0", one=True, cfg=rpm1, warm=1,
                   num_retries=1, model_group_retry_policy={"g": RetryPolicy(RateLimitErrorRetries=0)})
        await case(sim, "R2b same + retry_policy RateLimitErrorRetries=0", one=True, cfg=rpm1, warm=1,
                   num_retries=1, retry_policy=RetryPolicy(RateLimitErrorRetries=0))
        await case(sim, "R3 two deployments, first 429 retry-after~60, num_retries=1", cfg=rpm1, warm=1, num_retries=1)
        gone = {"models": {"openai/gpt-oss-120b": {"gone": True}}}
        await case(sim, "R4 two deployments, first 404 gone, num_retries=2", cfg=gone, num_retries=2)
        await case(sim, "R5 same + retry_policy NotFoundErrorRetries=2", cfg=gone, num_retries=2,
                   retry_policy=RetryPolicy(NotFoundErrorRetries=2))
        s401 = {"models": {"openai/gpt-oss-120b": {"status": 401}}}
        await case(sim, "R6 two deployments, first 401, num_retries=2", cfg=s401, num_retries=2)
        await case(sim, "R6b same + retry_policy AuthenticationErrorRetries=2", cfg=s401, num_retries=2,
                   retry_policy=RetryPolicy(AuthenticationErrorRetries=2))
        s402 = {"models": {"openai/gpt-oss-120b": {"status": 402}}}
        await case(sim, "R7 two deployments, first 402, num_retries=2", cfg=s402, num_retries=2)
        await case(sim, "R7b same + retry_policy DefaultRetries=2", cfg=s402, num_retries=2, retry_policy=RetryPolicy(DefaultRetries=2))
        from litellm.integrations.custom_logger import CustomLogger  # noqa: F401
        hook = Rewrite()
        litellm.callbacks.append(hook)
        await case(sim, "R13 first 402, failure hook sets num_retries=3 and class InternalServerError", cfg=s402,
                   num_retries=2)
        litellm.callbacks.remove(hook)
        await case(sim, "R8 strategy raises a non-litellm exception, num_retries=3", raise_=PluginError("x"), num_retries=3)
        e = PluginError("x"); e.num_retries = 0
        await case(sim, "R9 non-litellm exception with .num_retries=0, num_retries=3", raise_=e, num_retries=3)
        await case(sim, "R10 RateLimitError(num_retries=0), num_retries=3", num_retries=3,
                   raise_=litellm.RateLimitError(message="x", llm_provider="p", model="g", num_retries=0))
        await case(sim, "R11 ServiceUnavailableError(num_retries=0), num_retries=3", num_retries=3,
                   raise_=litellm.ServiceUnavailableError(message="x", llm_provider="p", model="g", num_retries=0))
        await case(sim, "R12 BadRequestError from strategy, num_retries=3", num_retries=3,
                   raise_=litellm.BadRequestError(message="x", llm_provider="p", model="g"))


asyncio.run(main())
