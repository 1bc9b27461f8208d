"""Calibration from the providers' free endpoints: before a process's first admission, and every few minutes.

On by default (``router_plugin: {calibration: {interval_s: 300}}``; ``interval_s: 0`` turns it off). The endpoints
cost no completion quota (README "What the plugin learns at start and on every reply, and from where"):

* OpenRouter ``GET /api/v1/key`` per key: ``creator_user_id`` groups keys into accounts (the pool is the account,
  providers.md §1.1), ``free_model_daily_requests {used, limit}`` gives the account's tier (50/1000 a day, a config
  that disagrees is warned about) and raises the account's ``day`` counter to what OpenRouter has counted
  (requests made by other apps on the same account included);
* OpenRouter ``GET /api/v1/models`` and Groq ``GET /openai/v1/models``: a configured model that the roster no
  longer lists is quarantined for every worker (``cooldowns.gone_s``, as a 404 would) before a request burns an
  attempt on it, and the listed ``context_length`` / ``context_window`` replaces the built-in one. A roster that
  fails or comes back empty changes nothing.

One refresh serves the whole fleet: whoever takes the Redis lease ``<key_prefix>calibration:lock`` (it expires by
itself after the interval) refreshes, applies the counters and quarantines in Redis, and writes what each process
must apply locally (account grouping, tiers, context windows; key fingerprints only, never a key) to
``<key_prefix>calibration:result``. A process's first admission (strategy ``ready`` hook) reads that result; if it
is older than the interval, it takes the lease and refreshes, or waits for the worker that holds it — at most
``FIRST_WAIT_S`` in all, once per process — and then admits as it would without it, logging once why. A refresh
that fails is logged once per interval and changes nothing. Sync ``Router.completion`` callers have no loop: no
calibration (use ``router-plugin key`` / ``models`` from cron).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any

import httpx

from . import roster
from .events import Observer
from .limits import key_fingerprint

log = logging.getLogger("router_plugin")

DEFAULT_INTERVAL_S = 300.0
FIRST_WAIT_S = 2.0  # the most a process's first admission waits for a fleet-wide result, in all
POLL_S = 0.05
# Per process: (store, prefix, endpoints) whose first wait already ran out — another Router of the same process
# (tests, services that rebuild routers) does not wait again for a result that is not coming.
_WAITED: set[tuple] = set()
#: Recalibrations started by the store's on_empty hook (a reference keeps each task alive until it is done).
_PENDING: set[asyncio.Task] = set()


@dataclass
class CalibrationRun:
    """What one call of :meth:`Calibrator.run_once` did."""

    ran: bool
    skipped: str | None = None  # why it did not run (another worker holds the lease)
    day_used: dict[str, int] = field(default_factory=dict)  # account -> the provider's count applied
    quarantined: list[str] = field(default_factory=list)  # models that left the roster
    errors: list[str] = field(default_factory=list)


def _calibrated(model_list: list) -> list:
    """The deployments that talk to a provider (``mock_response`` ones never do)."""
    return [d for d in model_list if roster.provider_of_deployment(d) and
            "mock_response" not in (d.get("litellm_params") or {})]


class Calibrator(Observer):
    def __init__(self, router: Any, interval_s: float, timeout_s: float | None = None,
                 first_wait_s: float = FIRST_WAIT_S):
        self._router = weakref.ref(router)
        self.interval_s = float(interval_s)
        self.timeout_s = timeout_s if timeout_s is not None else min(10.0, max(1.0, self.interval_s / 2))
        self.lease_s = max(self.interval_s, 2 * self.timeout_s)
        self.first_wait_s = first_wait_s
        self._tasks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._first: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._ready = False
        self._store: Any = None
        self._warned: set[str] = set()
        self._applied_at = 0.0  # "at" of the last result applied here
        self._error_logged_at = 0.0
        self.runs: list[CalibrationRun] = []  # the last few, for tests and debugging
        self.first: str | None = None  # how the first admission was calibrated (tests, debugging)

    # ---- before the first admission ---------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """True once ``ensure_ready`` has returned in this process (it then returns at once)."""
        return self._ready

    async def ensure_ready(self) -> None:
        """The strategy's ``ready`` hook: awaited before every admission, returns at once after the first."""
        if self._ready:
            return
        loop = asyncio.get_running_loop()
        task = self._first.get(loop)
        if task is None:
            task = self._first[loop] = loop.create_task(self._first_calibration(), name="router_plugin-first-calibration")
        try:
            await asyncio.shield(task)
        except Exception:
            pass
        self._ready = True

    async def _first_calibration(self) -> None:
        deadline = time.monotonic() + self.first_wait_s
        why = None
        try:
            why = await self._first_result(deadline)
        except asyncio.TimeoutError:
            why = f"no calibration result within {self.first_wait_s:g} s"
        except Exception as exc:
            why = f"{type(exc).__name__}: {exc}"
        finally:
            self._kick()
        self.first = why or "calibrated"
        if why:
            log.warning("router_plugin: admitting without calibration (%s); it is retried every %.0f s",
                        why, self.interval_s)

    async def _first_result(self, deadline: float) -> str | None:
        router = self._router()
        inst = _installed(router)
        if inst is None:
            return None
        model_list = _calibrated(_deployments(router))
        if not model_list:
            return None  # nothing to ask anyone
        settings = inst.settings
        store = self._quota_store(settings)
        memo = (repr(store.target) if hasattr(store, "target") else "", settings.key_prefix,
                tuple(sorted((ep.provider, ep.base_url, key_fingerprint(ep.api_key))
                             for p in roster.PROVIDERS for ep in roster.endpoints(model_list, p))))

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        doc = await asyncio.wait_for(self._read(store, settings.key_prefix), left())
        if self._fresh(doc):
            self._apply(router, inst, doc)
            return None
        if memo in _WAITED:
            return None  # this process already waited once for this fleet: not again
        got = await asyncio.wait_for(self._lease(store, settings.key_prefix), left())
        if got:
            refresh = asyncio.get_running_loop().create_task(self._lead(router, inst, store))
            await asyncio.wait_for(asyncio.shield(refresh), left())
            return None
        while left() > 0:  # another worker is refreshing: its result serves us
            await asyncio.sleep(min(POLL_S, left()))
            doc = await asyncio.wait_for(self._read(store, settings.key_prefix), max(left(), 0.001))
            if self._fresh(doc):
                self._apply(router, inst, doc)
                return None
        _WAITED.add(memo)
        return f"the worker refreshing it did not answer within {self.first_wait_s:g} s"

    # ---- periodic ---------------------------------------------------------------------------------------------

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
                await asyncio.sleep(self.interval_s)
                try:
                    if (await self.run_once()).skipped == "router gone":
                        return  # the router was replaced (the proxy rebuilt it) and collected: stop
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # keep the loop alive; the next interval tries again
                    self._log_error(f"{type(exc).__name__}: {exc}")
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    # The loop is shutting down (asyncio.run returning) and a client library swallowed the
                    # CancelledError: end now, or asyncio.run would wait for this task forever.
                    return
        finally:
            if self._store is not None:
                try:
                    await self._store.aclose()
                except Exception:
                    pass
                self._store = None

    # ---- one refresh ------------------------------------------------------------------------------------------

    def lock_key(self, prefix: str) -> str:
        return f"{prefix}calibration:lock"

    def result_key(self, prefix: str) -> str:
        return f"{prefix}calibration:result"

    def _quota_store(self, settings) -> Any:
        from .report import store_target
        from .store import QuotaStore

        if self._store is None:
            self._store = QuotaStore(store_target(settings), settings.key_prefix,
                                     arrival_margin_s=settings.arrival_margin_s)
        return self._store

    async def _lease(self, store: Any, prefix: str) -> bool:
        return bool(await store.client.set(self.lock_key(prefix), uuid.uuid4().hex, nx=True,
                                           px=max(1, int(self.lease_s * 1000))))

    async def _read(self, store: Any, prefix: str) -> dict | None:
        raw = await store.client.get(self.result_key(prefix))
        if not raw:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    def _fresh(self, doc: dict | None) -> bool:
        return bool(doc) and time.time() - float(doc.get("at", 0)) < self.interval_s

    async def run_once(self) -> CalibrationRun:
        """Take the fleet-wide lease and refresh, or apply the result another worker wrote."""
        router = self._router()
        inst = _installed(router)
        if inst is None:
            return CalibrationRun(False, "router gone")
        store = self._quota_store(inst.settings)
        if not await self._lease(store, inst.settings.key_prefix):
            doc = await self._read(store, inst.settings.key_prefix)
            if doc and float(doc.get("at", 0)) > self._applied_at:
                self._apply(router, inst, doc)
            result = CalibrationRun(False, "another worker calibrated within the interval")
        else:
            result = await self._lead(router, inst, store)
        return result

    def store_came_back_empty(self, reason: str) -> None:
        """The store's ``on_empty`` hook (store/resilient.py): the one process that found the marker missing
        refreshes at once, and its admissions wait (bounded) for the day counts to be put back. A store that is new
        at ``open`` needs nothing more: the first admission waits for the start-up refresh anyway. Sync callers
        (no running loop) are left to the periodic refresh."""
        if reason == "open":
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        log.warning("router_plugin: the quota store came back empty (%s); recalibrating from the providers' "
                    "free endpoints before admitting again", reason)
        task = loop.create_task(self.recalibrate_now())
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)

    async def recalibrate_now(self) -> CalibrationRun:
        """Refresh at once whatever the lease says (the store came back empty: store/ ``on_empty`` hook). The
        key endpoint's day counts go back into the fresh counters before the next admission."""
        router = self._router()
        inst = _installed(router)
        if inst is None:
            return CalibrationRun(False, "router gone")
        # Admissions from now wait (bounded, as at start) for this refresh's result instead of admitting blind.
        self._ready = False
        self._first = weakref.WeakKeyDictionary()
        _WAITED.clear()
        store = self._quota_store(inst.settings)
        await store.client.set(self.lock_key(inst.settings.key_prefix), uuid.uuid4().hex,
                               px=max(1, int(self.lease_s * 1000)))
        return await self._lead(router, inst, store)

    async def _lead(self, router: Any, inst: Any, store: Any) -> CalibrationRun:
        result = await self._refresh(router, inst, store)
        self.runs = (self.runs + [result])[-10:]
        return result

    def _apply(self, router: Any, inst: Any, doc: dict) -> None:
        """What a result means for this process's plans: account grouping, learnt tiers, live context windows."""
        if not doc.get("ok", True) and not doc.get("creators") and not doc.get("contexts"):
            self._applied_at = float(doc.get("at", 0))
            return
        inst.plans.learn(_deployments(router), openrouter_creators=doc.get("creators") or {},
                         openrouter_rpd_by_key=doc.get("rpd") or {}, live_context=doc.get("contexts") or {})
        self._applied_at = float(doc.get("at", 0))

    def _log_error(self, text: str) -> None:
        now = time.monotonic()
        if now - self._error_logged_at >= self.interval_s or not self._error_logged_at:
            self._error_logged_at = now
            log.warning("router_plugin: calibration: %s (changed nothing; next try in %.0f s)", text,
                        self.interval_s)

    async def _refresh(self, router: Any, inst: Any, store: Any) -> CalibrationRun:
        result = CalibrationRun(True)
        model_list = _calibrated(_deployments(router))
        settings = inst.settings
        keys: dict[str, roster.KeyInfo] = {}  # key fingerprint -> what /key said
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=True) as client:
            key_jobs = [self._key(client, ep, keys, result)
                        for ep in roster.endpoints(model_list, "openrouter")
                        if any(roster.is_openrouter_free_model(c.model) for c in ep.deployments)]
            roster_job = roster.fetch_rosters(model_list, timeout_s=self.timeout_s)
            *_, rosters = await asyncio.gather(*key_jobs, roster_job)
        for r in rosters:
            if r.error:
                result.errors.append(r.error)
        contexts: dict[str, int] = {}
        for r in rosters:
            if r.usable:
                for m in r.models.values():
                    if m.context:
                        contexts[m.model] = m.context
        wanted = {str((d.get("litellm_params") or {}).get("model", "")) for d in model_list}
        doc = {"at": time.time(), "ok": not result.errors,
               "errors": result.errors[:5],
               "creators": {fp: info.account for fp, info in keys.items() if info.account},
               "rpd": {fp: info.limit for fp, info in keys.items() if info.daily_limit or info.is_free_tier is not None},
               "contexts": {m: c for m, c in contexts.items() if m in wanted}}
        self._apply(router, inst, doc)  # regroup first: the day counts go to the account pools
        await self._calibrate_days(router, inst, store, keys, result)
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
        await store.client.set(self.result_key(settings.key_prefix), json.dumps(doc),
                               px=max(1000, int(max(self.interval_s, 1) * 2000)))
        if result.errors:
            self._log_error("; ".join(result.errors[:3]))
        return result

    async def _key(self, client, ep: roster.Endpoint, keys: dict, result: CalibrationRun) -> None:
        try:
            keys[key_fingerprint(ep.api_key)] = await roster.fetch_key(client, ep.base_url, ep.api_key)
        except roster.KeyLookupError as exc:
            result.errors.append(str(exc))

    async def _calibrate_days(self, router: Any, inst: Any, store: Any, keys: dict, result: CalibrationRun) -> None:
        """Per account: the highest count its keys reported goes into the account's ``day`` counter."""
        best: dict[str, tuple[Any, roster.KeyInfo]] = {}
        for d in _calibrated(_deployments(router)):
            params = d.get("litellm_params") or {}
            if not roster.is_openrouter_free_model(str(params.get("model", ""))):
                continue
            from ._plans import effective_api_key

            info = keys.get(key_fingerprint(effective_api_key(params)))
            if info is None or info.remaining is None:
                continue
            plan = inst.plans.plan(d)
            seen = best.get(plan.slot)
            if seen is None or info.remaining < seen[1].remaining:
                best[plan.slot] = (plan, info)
        for plan, info in best.values():
            fact = roster.day_fact(info)
            if fact is not None:
                await store.calibrate(plan, [fact])
                result.day_used[plan.slot] = info.limit - fact.remaining
            override = inst.settings.limits.get("openrouter")
            configured = override.rpd if override and override.rpd else \
                roster.OPENROUTER_FREE_RPD[inst.settings.openrouter_tier]
            warning = roster.tier_disagreement(configured, info, inst.settings.openrouter_tier,
                                               override.rpd if override else None)
            if warning and ("tier:" + plan.slot) not in self._warned:
                self._warned.add("tier:" + plan.slot)
                log.warning("router_plugin: OpenRouter %s: %s", plan.pool_label, warning)


def _installed(router: Any) -> Any:
    if router is None:
        return None
    from .adapter.installer import installed

    return installed(router)


def calibrator_of(router: Any) -> Calibrator | None:
    """The router's calibrator (None when calibration is off)."""
    inst = _installed(router)
    if inst is None:
        return None
    return next((o for o in inst.events.observers if isinstance(o, Calibrator)), None)


async def recalibrate_now(router: Any) -> CalibrationRun | None:
    """For the store's ``on_empty`` hook (issue 14): refresh from the free endpoints before admitting again."""
    calibrator = calibrator_of(router)
    return await calibrator.recalibrate_now() if calibrator is not None else None


def learnt_inputs(settings: Any) -> dict:
    """What the fleet's last calibration result says, as :meth:`PlanBook.learn` arguments (CLI: ``status`` and
    ``reset`` see the pools the workers use). Empty when there is none or the store does not answer."""
    try:
        from .report import open_store

        raw = open_store(settings).client.get(f"{settings.key_prefix}calibration:result")
        doc = json.loads(raw) if raw else {}
    except Exception:
        return {}
    if not isinstance(doc, dict):
        return {}
    return {"openrouter_creators": doc.get("creators") or {}, "openrouter_rpd_by_key": doc.get("rpd") or {},
            "live_context": doc.get("contexts") or {}}


def _deployments(router: Any) -> list:
    """The router's deployments through the adapter (the public API of the running LiteLLM line)."""
    from .adapter.router_api import all_deployments

    return all_deployments(router)
