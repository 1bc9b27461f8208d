"""The circuit of one model, for every worker: open while it keeps failing, closed again by its first success.

The store already does the open half: ``QuotaStore.cool()`` sets the model aside in Redis (every worker's
strategy skips it: inside the reservation, or for an unmetered deployment — no quota counters, e.g. a generic
``openai/`` upstream — through one dry ``peek``) for a cooldown that doubles with each strike, and remembers the
strikes for a while after the cooldown ends. Nothing probes a cooled model: when the cooldown is over, the next real request that the
strategy routes there is the probe (no request is ever sent just to test a model — a probe of an OpenRouter
``:free`` model would spend the account's daily quota).

This module is the closing half: a success clears the strike count, so a model that answers again is trusted
again at once, and its next failure starts from the base cooldown instead of an escalated one. An active
cooldown (another worker's fresh failure) is never cleared: the script only acts once the cooldown has ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .limits import DeploymentPlan

# KEYS[1] the model's cooldown hash (fields: until, why, strikes). Reply: 1 if strikes were cleared.
_CLOSE = """
local h = redis.call('HMGET', KEYS[1], 'until', 'strikes')
if not h[2] then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if (tonumber(h[1]) or 0) > now then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


async def close_circuit(store: Any, plan: DeploymentPlan) -> bool:
    """Clear ``plan``'s strikes once its cooldown has ended (after a success). True if there were any."""
    guard = getattr(store, "guard", None)
    if guard is not None and not getattr(guard, "reachable", True):
        return False  # Redis is down (store/resilient.py serves locally): the strikes simply age out
    timeout_s = max(0.5, float(getattr(getattr(store, "target", None), "timeout_s", 0.5) or 0.5))
    try:
        return bool(await asyncio.wait_for(store.client.eval(_CLOSE, 1, store.keys.model(plan)), timeout_s))
    except Exception:  # never let bookkeeping fail a served request
        return False


def strikes(store: Any, plan: DeploymentPlan) -> int:
    """Current strike count of ``plan``'s model (sync store; for status and tests)."""
    value = store.client.hget(store.keys.model(plan), "strikes")
    return int(value) if value is not None else 0
