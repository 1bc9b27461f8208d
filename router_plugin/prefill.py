"""Which models take an assistant prefill, for continuing a broken stream — declared, or learnt for every worker.

A stream that broke off mid-answer is continued on another deployment (streams.py). The exact way is an assistant
prefill: the conversation plus the partial answer as a trailing assistant message. Some models refuse that (HTTP
400/422). Those are asked the other way: the partial answer given back as an assistant turn, then a user turn asking
to continue from exactly where it stops (:data:`CONTINUE_INSTRUCTION`).

How the plugin knows, in order:

* declared per deployment — ``model_info: {supports_assistant_prefill: false}`` (LiteLLM's own model-info key,
  passed through untouched);
* learnt — a model that refused a prefill is remembered in Redis for :data:`MEMORY_S`, for every worker, so the
  next continuation goes the working way at once (kept in this process instead while Redis is unreachable).

Pure Python: no LiteLLM import; Redis through the store's client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from .limits import DeploymentPlan

#: How long a refused prefill is remembered (a provider may add support; a day is cheap to relearn).
MEMORY_S = 24 * 3600
#: What a model that takes no prefill is asked after the partial answer (given back as its own turn).
CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it from exactly where it stops: do not repeat any of it, do not "
    "start over, add no preamble or comment — reply with the rest of the answer only."
)

_local: dict[str, float] = {}  # key -> expiry (time.time()): what this process learnt while Redis was unreachable


def declared(deployment: Mapping[str, Any] | None) -> bool | None:
    """``model_info.supports_assistant_prefill`` of a ``model_list`` entry; None when it says nothing."""
    info = deployment.get("model_info") if isinstance(deployment, Mapping) else None
    value = info.get("supports_assistant_prefill") if isinstance(info, Mapping) else None
    return value if isinstance(value, bool) else None


def _key(store: Any, plan: DeploymentPlan) -> str:
    prefix = getattr(getattr(store, "keys", None), "prefix", "rp:")
    return f"{prefix}{{{plan.slot}}}:noprefill:{plan.model.split('/', 1)[-1]}"


def _timeout_s(store: Any) -> float:
    return max(0.5, float(getattr(getattr(store, "target", None), "timeout_s", 0.5) or 0.5))


def _reachable(store: Any) -> bool:
    guard = getattr(store, "guard", None)
    return guard is None or bool(getattr(guard, "reachable", True))


async def refuses(store: Any, plan: DeploymentPlan) -> bool:
    """True when ``plan``'s model refused a prefill recently (any worker). Never raises."""
    key = _key(store, plan)
    if _reachable(store):
        try:
            return bool(await asyncio.wait_for(store.client.exists(key), _timeout_s(store)))
        except Exception:
            pass
    return _local.get(key, 0.0) > time.time()


async def remember_refusal(store: Any, plan: DeploymentPlan, memory_s: float = MEMORY_S) -> None:
    """Remember, for every worker, that ``plan``'s model refused a prefill. Never raises."""
    key = _key(store, plan)
    if _reachable(store):
        try:
            await asyncio.wait_for(store.client.set(key, "1", ex=max(1, int(memory_s))), _timeout_s(store))
            return
        except Exception:
            pass
    _local[key] = time.time() + memory_s


def forget_local() -> None:
    """Drop this process's copy (tests)."""
    _local.clear()


__all__ = ["CONTINUE_INSTRUCTION", "MEMORY_S", "declared", "forget_local", "refuses", "remember_refusal"]
