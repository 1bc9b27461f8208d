"""Probe (f): which Router members the plugin uses warn on this line, and the replacement each warning names.

    python docs/adapter_probes/probe_deprecations.py   # under either venv
"""
import importlib.metadata as md
import warnings

from litellm import Router
from litellm.router import CustomRoutingStrategyBase

V = md.version("litellm")
ml = [{"model_name": "g", "litellm_params": {"model": "groq/openai/gpt-oss-20b", "api_key": "k", "api_base": "http://127.0.0.1:9/openai/v1"}}]


class S(CustomRoutingStrategyBase):
    async def async_get_available_deployment(self, *a, **k): ...
    def get_available_deployment(self, *a, **k): ...


def probe(label, fn):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            out = fn()
            res = "ok"
        except Exception as e:  # noqa: BLE001
            res = f"{type(e).__name__}: {e}"[:120]
    dep = [f"{x.category.__name__}: {str(x.message)[:150]} ({x.filename.split('site-packages/')[-1]}:{x.lineno})"
           for x in w if issubclass(x.category, DeprecationWarning)]
    print(f"[{V}] {label:48s} -> {res}; warnings={dep or 'none'}")


r = Router(model_list=ml)
probe("router.model_list", lambda: r.model_list)
probe("router.get_model_list(model_name='g')", lambda: r.get_model_list(model_name="g"))
probe("router.get_model_names()", lambda: r.get_model_names())
probe("router.disable_cooldowns = True", lambda: setattr(r, "disable_cooldowns", True))
probe("Router(..., disable_cooldowns=True)", lambda: Router(model_list=ml, disable_cooldowns=True))
probe("router.num_retries (read)", lambda: r.num_retries)
probe("router.num_retries = 4", lambda: setattr(r, "num_retries", 4))
probe("router.set_custom_routing_strategy(S())", lambda: r.set_custom_routing_strategy(S()))
probe("router.register_plugin(S())", lambda: r.register_plugin(S()))
probe("router.registry().deployments('g')", lambda: r.registry().deployments("g"))
probe("router.registry().names()", lambda: r.registry().names())
probe("router.registry().all()", lambda: r.registry().all())
probe("router.settings().as_dict()['num_retries']", lambda: r.settings().as_dict()["num_retries"])
probe("router.should_retry_this_error", lambda: r.should_retry_this_error)
probe("router._acompletion", lambda: r._acompletion)
probe("router._acompletion_streaming_iterator", lambda: r._acompletion_streaming_iterator)
probe("router._time_to_sleep_before_retry", lambda: r._time_to_sleep_before_retry)
probe("router.acompletion = f (instance)", lambda: setattr(r, "acompletion", r.acompletion))
probe("Router(enable_mid_stream_fallback_continuation=False)", lambda: Router(model_list=ml, enable_mid_stream_fallback_continuation=False))
probe("router.update_settings(num_retries=3)", lambda: r.update_settings(num_retries=3))
