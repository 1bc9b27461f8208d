"""Probe (d): what a stream looks like through the public Router.acompletion on this line, with simulator faults.
Can an instance-level wrapper of router.acompletion see each fault (cut, error chunk, truncate = no finish reason)?

    python docs/adapter_probes/probe_stream.py      # under either venv, PYTHONPATH=worktree
"""
from __future__ import annotations

import asyncio
import copy
import importlib.metadata as md

from litellm import Router
from litellm.router import CustomRoutingStrategyBase

from router_plugin.sim import start_sim

V = md.version("litellm")
MSG = [{"role": "user", "content": "tell me a story"}]
GA = "groq/openai/gpt-oss-120b"
OA = "openrouter/meta-llama/llama-3.3-70b-instruct:free"


class First(CustomRoutingStrategyBase):
    def __init__(self, d):
        self.d = d

    async def async_get_available_deployment(self, model, messages=None, input=None, specific_deployment=False, request_kwargs=None):
        return self.d[0]

    def get_available_deployment(self, *a, **k):
        return self.d[0]


def inner_of(resp):
    """Walk public-looking attributes down to an object that has received_finish_reason."""
    seen, obj, path = set(), resp, []
    for _ in range(4):
        if hasattr(obj, "received_finish_reason"):
            return path, obj
        for name in ("completion_stream", "model_response", "_stream", "stream", "__wrapped__", "_response"):
            nxt = getattr(obj, name, None)
            if nxt is not None and id(nxt) not in seen:
                seen.add(id(nxt)); path.append(f"{type(obj).__name__}.{name}"); obj = nxt
                break
        else:
            return path, None
    return path, None


async def one(sim, model_id, model, base, key, fault):
    sim.reset()
    if fault:
        sim.configure({"models": {model_id: {"stream_fault": fault, "stall_s": 1}}})
    d = [{"model_name": "g", "litellm_params": {"model": model, "api_key": key, "api_base": base}, "model_info": {"id": "x"}}]
    r = Router(model_list=copy.deepcopy(d), num_retries=0)
    (r.register_plugin if hasattr(r, "register_plugin") else r.set_custom_routing_strategy)(First(d))
    original = r.acompletion
    calls = []

    async def wrapped(*a, **k):  # what streams.py does, on the public member only
        calls.append(k.get("stream"))
        return await original(*a, **k)

    r.acompletion = wrapped
    chunks, finishes, err = 0, [], None
    try:
        resp = await asyncio.wait_for(r.acompletion(model="g", messages=MSG, max_tokens=50, stream=True), 10)
        path, inner = inner_of(resp)
        async for c in resp:
            chunks += 1
            f = c.choices[0].finish_reason if c.choices else None
            if f:
                finishes.append(f)
        said = getattr(inner, "received_finish_reason", None) if inner is not None else "n/a"
    except Exception as e:  # noqa: BLE001
        err, said, path = f"{type(e).__name__}: {str(e)[:70]}", "n/a", []
    print(f"[{V}] {model.split('/')[0]:10s} fault={fault!s:12s} wrapper_called={calls} type={type(resp).__name__ if err is None else '-'} "
          f"chunks={chunks} finish={finishes} provider_said={said!r} inner_path={path} err={err}")


async def main():
    with start_sim(port=0) as sim:
        g, o = f"{sim.base_url}/openai/v1", f"{sim.base_url}/api/v1"
        for fault in (None, "cut", "error_chunk", "truncate", "no_done", "malformed"):
            await one(sim, "openai/gpt-oss-120b", GA, g, "sim-groq-key", fault)
            await one(sim, "meta-llama/llama-3.3-70b-instruct:free", OA, o, "sim-openrouter-key", fault)


asyncio.run(main())
