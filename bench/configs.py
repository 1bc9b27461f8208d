"""The same chain, configured three ways (plus the scaled variants used by the day-in-the-life run).

(a) ``plugin``  router_plugin.build_router with ``router_plugin: {redis_url: ...}``
(b) ``stock``   the config a user would write for stock LiteLLM 1.108: usage-based-routing-v2, ``rpm`` per
                deployment (and ``tpm`` for Groq) in litellm_params, one shared Redis via redis_host/redis_port
(c) ``stock_enforce``  (b) plus ``optional_pre_call_checks: ["enforce_model_rate_limits"]``

Every deployment points at the simulator. The limits a user would write are the published ones
(providers.md): OpenRouter ``:free`` 20 requests/min (the user does not know it is one pool per account), Groq
gpt-oss 30 requests/min and 8,000 tokens/min per model.
"""

from __future__ import annotations

from typing import Any

from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP

GROUP = DEMO_GROUP
CHAIN = DEMO_CHAIN
IDS = {
    "openrouter/meta-llama/llama-3.3-70b-instruct:free": "or-llama-3.3-70b",
    "openrouter/qwen/qwen3-coder:free": "or-qwen3-coder",
    "groq/openai/gpt-oss-120b": "groq-gpt-oss-120b",
    "groq/openai/gpt-oss-20b": "groq-gpt-oss-20b",
}
MODEL_OF_ID = {v: k for k, v in IDS.items()}
OPENROUTER_KEY = "bench-openrouter-key"
GROQ_KEY = "bench-groq-key"

# Published free limits (providers.md §1.1, §2.1) -- what the simulator enforces by default.
OR_RPM, OR_RPD = 20, 50
GROQ_RPM, GROQ_RPD, GROQ_TPM, GROQ_TPD = 30, 1_000, 8_000, 200_000

SETUPS = ("plugin", "stock", "stock_enforce")
LABELS = {
    "plugin": "(a) router_plugin",
    "stock": "(b) stock usage-based-routing-v2",
    "stock_enforce": "(c) stock + enforce_model_rate_limits",
    "stock_shuffle": "stock simple-shuffle",
}


def provider(model: str) -> str:
    return model.split("/", 1)[0]


def _model_list(sim_base: str, per_deployment: dict[str, dict[str, Any]] | None = None,
                chain: tuple[str, ...] = CHAIN) -> list[dict]:
    out = []
    for model in chain:
        base = f"{sim_base}/api/v1" if provider(model) == "openrouter" else f"{sim_base}/openai/v1"
        key = OPENROUTER_KEY if provider(model) == "openrouter" else GROQ_KEY
        params: dict[str, Any] = {"model": model, "api_key": key, "api_base": base}
        params.update((per_deployment or {}).get(model, {}))
        out.append({"model_name": GROUP, "litellm_params": params, "model_info": {"id": IDS[model]}})
    return out


def plugin_config(sim_base: str, redis_url: str, *, limits: dict | None = None, chain: tuple[str, ...] = CHAIN,
                  **settings: Any) -> dict:
    """(a): the chain plus ``router_plugin: {redis_url, ...}``; ``limits`` are ``router_plugin.limits`` overrides."""
    section: dict[str, Any] = {"redis_url": redis_url, **settings}
    if limits:
        section["limits"] = {k: v for k, v in limits.items() if k == "openrouter" or k in chain}
    return {"model_list": _model_list(sim_base, chain=chain), "router_plugin": section}


def stock_router_kwargs(sim_base: str, redis_port: int, *, enforce: bool = False, strategy: str = "usage-based-routing-v2",
                        rpm_scale: float = 1.0, limits: bool = True, chain: tuple[str, ...] = CHAIN,
                        **router_settings: Any) -> dict:
    """(b)/(c): ``litellm.Router(**kwargs)``. ``rpm_scale`` multiplies the per-minute limits (day-in-the-life)."""
    per: dict[str, dict[str, Any]] = {}
    if limits:
        for model in CHAIN:
            if provider(model) == "openrouter":
                per[model] = {"rpm": int(OR_RPM * rpm_scale)}
            else:
                per[model] = {"rpm": int(GROQ_RPM * rpm_scale), "tpm": int(GROQ_TPM * rpm_scale)}
    kwargs: dict[str, Any] = {
        "model_list": _model_list(sim_base, per, chain=chain),
        "routing_strategy": strategy,
        "redis_host": "127.0.0.1",
        "redis_port": redis_port,
        **router_settings,
    }
    if enforce:
        kwargs["optional_pre_call_checks"] = ["enforce_model_rate_limits"]
    return kwargs


def setup_spec(setup: str, sim_base: str, redis_url: str, redis_port: int, **extra: Any) -> dict:
    """A picklable description a worker turns into a router (see ``bench.worker.build``)."""
    if setup == "plugin":
        return {"kind": "plugin", "config": plugin_config(sim_base, redis_url, **extra.get("plugin", {}))}
    if setup in ("stock", "stock_enforce"):
        return {"kind": "stock", "kwargs": stock_router_kwargs(sim_base, redis_port, enforce=setup == "stock_enforce",
                                                               **extra.get("stock", {}))}
    if setup == "stock_shuffle":
        return {"kind": "stock", "kwargs": stock_router_kwargs(sim_base, redis_port, strategy="simple-shuffle",
                                                               **extra.get("stock", {}))}
    raise ValueError(f"unknown setup {setup!r}")
