"""Background calibration (opt-in: ``router_plugin: {calibration: {interval_s: 300}}``).

Every ``interval_s``, one worker of the whole fleet (whoever takes the Redis lease ``<key_prefix>calibration:lock``
first; it expires by itself, nobody deletes it) refreshes what the providers' free endpoints say:

* OpenRouter ``GET /api/v1/key`` per account: today's ``free_model_daily_requests`` raises the account pool's
  ``day`` counter to what OpenRouter has counted (requests made by other apps on the same account included), and a
  config whose ``openrouter.tier`` disagrees with the key (50 vs 1000 a day) is logged at WARNING;
* OpenRouter ``GET /api/v1/models`` and Groq ``GET /openai/v1/models``: a configured model that the roster no longer
  lists is quarantined for every worker (``cooldowns.gone_s``, as a 404 would), *before* a request burns an
  attempt on it. A roster that fails or comes back empty quarantines nothing.

The calibrator is an :class:`~router_plugin.events.Observer`: nothing runs at import or install; the first routing
decision made inside an event loop starts one task in that loop (again in a new loop, for services that call
``asyncio.run`` per job). Sync ``Router.completion`` callers have no loop, so no background task — use
``router-plugin key`` / ``models`` from cron instead. A failed refresh is logged and retried next interval; it
never reaches a request.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import roster
from .events import Observer

log = logging.getLogger("router_plugin")


@dataclass
class CalibrationRun:
    """What one call of :meth:`Calibrator.run_once` did."""

    ran: bool
    skipped: str | None = None  # why it did not run (another worker holds the lease)
    day_used: dict[str, int] = field(default_factory=dict)  # account -> the provider's count applied
    quarantined: list[str] = field(default_factory=list)  # models that left the roster
    errors: list[str] = field(default_factory=list)


class Calibrator(Observer):
    def __init__(self, router: Any, interval_s: float, timeout_s: float | None = None):
        self._router = weakref.ref(router)
        self.interval_s = float(interval_s)
        self.timeout_s = timeout_s if timeout_s is not None else min(10.0, max(1.0, self.interval_s / 2))
        self.lease_s = max(self.interval_s, 2 * self.timeout_s)
        self._tasks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._store: Any = None
        self._warned: set[str] = set()
        self.runs: list[CalibrationRun] = []  # the last few, for tests and debugging

    # ---- lazy start from the event loop ---------------------------------------------------------------------

    def _kick(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # sync Router.completion: no loop to run in
            return
        task = self._tasks.get(loop)
        if task is None or task.done():
            self._tasks[loop] = loop.create_task(self._forever(), name="router_plugin-calibration")

    def routed(self, *args) -> None:
        self._kick()

    def refused(self, *args) -> None:
        self._kick()

    async def _forever(self) -> None:
        try:
            while True:
                try:
                    if (await self.run_once()).skipped == "router gone":
                        return  # the router was replaced (the proxy rebuilt it) and collected: stop
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # keep the loop alive; the next interval tries again
                    log.warning("router_plugin: calibration failed: %s: %s", type(exc).__name__, exc)
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    # The loop is shutting down (asyncio.run returning) and a client library swallowed the
                    # CancelledError: end now, or asyncio.run would wait for this task forever.
                    return
                await asyncio.sleep(self.interval_s)
        finally:
            if self._store is not None:
                try:
                    await self._store.aclose()
                except Exception:
                    pass

    # ---- one refresh ----------------------------------------------------------------------------------------

    def lock_key(self, prefix: str) -> str:
        return f"{prefix}calibration:lock"

    def _quota_store(self, settings) -> Any:
        from .report import store_target
        from .store import QuotaStore

        if self._store is None:
            self._store = QuotaStore(store_target(settings), settings.key_prefix,
                                     arrival_margin_s=settings.arrival_margin_s)
        return self._store

    async def run_once(self) -> CalibrationRun:
        """Take the fleet-wide lease and refresh, or return at once if another worker holds it."""
        from .installer import installed

        router = self._router()
        inst = installed(router) if router is not None else None
        if inst is None:
            return CalibrationRun(False, "router gone")
        store = self._quota_store(inst.settings)
        token = uuid.uuid4().hex
        got = await store.client.set(self.lock_key(inst.settings.key_prefix), token, nx=True,
                                     px=max(1, int(self.lease_s * 1000)))
        if not got:
            result = CalibrationRun(False, "another worker calibrated within the interval")
        else:
            result = await self._refresh(router, inst, store)
        self.runs = (self.runs + [result])[-10:]
        return result

    async def _refresh(self, router: Any, inst: Any, store: Any) -> CalibrationRun:
        result = CalibrationRun(True)
        model_list = list(router.model_list)
        settings = inst.settings
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=True) as client:
            key_jobs = [self._sync_account(client, ep, inst, store, result, model_list)
                        for ep in roster.endpoints(model_list, "openrouter")
                        if any(roster.is_openrouter_free_model(c.model) for c in ep.deployments)]
            roster_job = roster.fetch_rosters(model_list, timeout_s=self.timeout_s)
            *_, rosters = await asyncio.gather(*key_jobs, roster_job)
        for r in rosters:
            if r.error:
                result.errors.append(r.error)
        gone_s = settings.cooldowns.gone_s
        for entry in roster.gone_deployments(model_list, rosters):
            plan = inst.plans.plan(model_list[entry.index])
            if not plan.metered:
                continue
            why = f"quarantined: left the {entry.provider} roster (GET /models no longer lists {entry.bare})"
            await store.cool(plan, why, base_s=gone_s, max_s=gone_s, escalate=False)
            result.quarantined.append(plan.model)
            if plan.model not in self._warned:
                self._warned.add(plan.model)
                log.error("router_plugin: %s is no longer in the %s roster; quarantined for %.0f h for every worker "
                          "— remove it from the config (%s)", plan.model, entry.provider, gone_s / 3600, entry.key)
        for error in result.errors:
            log.warning("router_plugin: calibration: %s", error)
        return result

    async def _sync_account(self, client, ep: roster.Endpoint, inst, store, result: CalibrationRun,
                            model_list: list) -> None:
        try:
            info = await roster.fetch_key(client, ep.base_url, ep.api_key)
        except roster.KeyLookupError as exc:
            result.errors.append(str(exc))
            return
        free = next(c for c in ep.deployments if roster.is_openrouter_free_model(c.model))
        plan = inst.plans.plan(model_list[free.index])
        fact = roster.day_fact(info)
        if fact is not None:
            await store.calibrate(plan, [fact])
            result.day_used[ep.account] = info.limit - fact.remaining
        day = next((c for c in plan.counters if c.limit.name == "day"), None)
        if day is not None:
            override = inst.settings.limits.get("openrouter")
            warning = roster.tier_disagreement(day.limit.capacity, info, inst.settings.openrouter_tier,
                                               override.rpd if override else None)
            if warning and ("tier:" + ep.account) not in self._warned:
                self._warned.add("tier:" + ep.account)
                log.warning("router_plugin: OpenRouter account %s: %s", ep.account, warning)

