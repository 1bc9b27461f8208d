"""Prometheus metrics: what the router did, and the quota left in every pool as all workers see it.

    import router_plugin.metrics
    router_plugin.metrics.enable(router)              # counters join prometheus_client's default registry
    router_plugin.metrics.enable(router, port=9464)   # ... and are served on http://127.0.0.1:9464/metrics
    router_plugin.metrics.enable(router, port=9464, addr="0.0.0.0")   # ... on every interface

or in the config: ``router_plugin: {metrics: {enabled: true, port: 9464, host: 127.0.0.1}}`` (``build_router`` /
``install`` / the proxy hook then call ``enable`` for you). ``host`` defaults to 127.0.0.1: the pools, models and
quota left are not for the whole network unless you say so.

Counters and the histogram (one increment per event, in the process that saw it):

    router_plugin_requests_total{group, deployment, outcome}     one per attempt sent to a provider; outcome is
        success | rate_limited | busy | gone | credits | server_error | context_too_long | too_large |
        rejected | unknown
    router_plugin_fallbacks_total{group, deployment}             attempts > 1 that got a deployment (the fallback)
    router_plugin_refusals_total{group}                          requests refused before anything was sent
    router_plugin_refusal_reasons_total{group, pool, reason}     each distinct (pool, reason) of each refusal:
        requests_per_minute | requests_per_day | tokens_per_minute | tokens_per_day | larger_than_limit |
        cooling_down | quarantined | context_window | failed_earlier
    router_plugin_provider_429s_total{deployment, limit}         429s the providers sent: limit is the counter
        the 429 named (minute, day, rpm, rpd, tpm, tpd) or upstream_busy. Everything but upstream_busy is
        quota the router should have known about: the number it exists to keep at zero.
    router_plugin_reserve_seconds{provider}                      histogram of one reservation round trip

Gauges read from the shared store at scrape time (so they are right whatever the number of workers):

    router_plugin_quota_remaining{pool, limit} / router_plugin_quota_limit{pool, limit}
    router_plugin_quota_resets_in_seconds{pool, limit}          0 when nothing is used
    router_plugin_deployment_available{group, deployment}       0 while cooling down or quarantined
    router_plugin_store_up                                       0 when the store could not be read

Several worker processes: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before they start (before
``prometheus_client`` is imported); the counters are then written there and whoever serves ``/metrics``
aggregates every worker's files. ``port`` in multiprocess mode serves exactly that (the first worker to bind
it serves for all; the others log that it is taken), plus the quota gauges.

LiteLLM proxy: its own ``/metrics`` (``litellm_settings: callbacks: ["prometheus"]``) renders the default
registry, so without ``PROMETHEUS_MULTIPROC_DIR`` every router_plugin series appears there too. With
``PROMETHEUS_MULTIPROC_DIR`` LiteLLM's ``/metrics`` aggregates the counters but builds a fresh registry per scrape,
so the quota gauges are only on our ``port``.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

from .events import Observer
from .providers.facts import (
    ContextTooLong,
    CreditsExhausted,
    Exhausted,
    ModelBusy,
    ModelGone,
    Rejected,
    RequestTooLarge,
    ServerError,
)

log = logging.getLogger("router_plugin")

RESERVE_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

_lock = threading.RLock()
_instruments: "_Instruments | None" = None
_collector: "QuotaCollector | None" = None
_servers: dict[int, Any] = {}


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


class _Instruments:
    """The process-wide counters (prometheus_client allows one of each name per registry)."""

    def __init__(self) -> None:
        try:
            from prometheus_client import Counter, Histogram
        except ImportError:  # pragma: no cover - an install without it
            raise ImportError("router_plugin metrics need prometheus-client: pip install \"router_plugin[metrics]\" "
                              "(or set router_plugin.metrics.enabled: false)") from None

        self.requests = Counter("router_plugin_requests", "Attempts sent to a provider deployment, by outcome",
                                ["group", "deployment", "outcome"])
        self.fallbacks = Counter("router_plugin_fallbacks", "Attempts after the first that got a deployment",
                                 ["group", "deployment"])
        self.refusals = Counter("router_plugin_refusals", "Requests refused at once (nothing sent): no quota",
                                ["group"])
        self.refusal_reasons = Counter("router_plugin_refusal_reasons",
                                       "Each distinct (pool, reason) of each refused request",
                                       ["group", "pool", "reason"])
        self.provider_429s = Counter("router_plugin_provider_429s", "HTTP 429 answers received from providers",
                                     ["deployment", "limit"])
        self.reserve_seconds = Histogram("router_plugin_reserve_seconds", "One reservation round trip to the store",
                                         ["provider"], buckets=RESERVE_BUCKETS)


def instruments() -> _Instruments:
    global _instruments
    with _lock:
        if _instruments is None:
            _instruments = _Instruments()
        return _instruments


_OUTCOMES = (
    (Exhausted, "rate_limited"), (ModelBusy, "busy"), (ModelGone, "gone"), (CreditsExhausted, "credits"),
    (ServerError, "server_error"), (ContextTooLong, "context_too_long"), (RequestTooLarge, "too_large"),
    (Rejected, "rejected"),
)
_REASONS = {"minute": "requests_per_minute", "rpm": "requests_per_minute", "day": "requests_per_day",
            "rpd": "requests_per_day", "tpm": "tokens_per_minute", "tpd": "tokens_per_day"}


def outcome_of(fact: Any) -> str:
    return next((name for cls, name in _OUTCOMES if isinstance(fact, cls)), "unknown")


def refusal_reasons(blocked: Sequence[Any], skipped: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
    """(pool, reason) pairs of one refusal."""
    out = set()
    for b in blocked:
        if b.counter is None:
            why = str(b.why or "")
            out.add((b.plan.model, "quarantined" if why.startswith("quarantined") else "cooling_down"))
        elif b.never:
            out.add((b.plan.pool_label, "larger_than_limit"))
        else:
            out.add((b.plan.pool_label, _REASONS.get(b.counter.limit.name, b.counter.limit.name)))
    for model, why in skipped:
        if "context window" in why:
            out.add((model, "context_window"))
        elif "failed earlier" in why:
            out.add((model, "failed_earlier"))
        else:
            out.add((model, "skipped"))
    return out


class MetricsObserver(Observer):
    """Turns the router's events into the counters above. Cheap: a label lookup and an increment."""

    def __init__(self) -> None:
        self.m = instruments()

    def routed(self, group, plan, attempt, skipped, reservation) -> None:
        if attempt > 1:
            self.m.fallbacks.labels(group, plan.model).inc()

    def refused(self, group, blocked, skipped, retry_after_s) -> None:
        self.m.refusals.labels(group).inc()
        for pool, reason in refusal_reasons(blocked, skipped):
            self.m.refusal_reasons.labels(group, pool, reason).inc()

    def reserve_timed(self, plan, seconds) -> None:
        self.m.reserve_seconds.labels(plan.provider or "other").observe(seconds)

    def succeeded(self, plan, total_tokens) -> None:
        self.m.requests.labels(plan.model_name, plan.model, "success").inc()

    def failed(self, plan, fact) -> None:
        self.m.requests.labels(plan.model_name, plan.model, outcome_of(fact)).inc()
        if isinstance(fact, Exhausted):
            self.m.provider_429s.labels(plan.model, fact.limit).inc()
        elif isinstance(fact, ModelBusy):
            self.m.provider_429s.labels(plan.model, "upstream_busy").inc()


class QuotaCollector:
    """Reads every enabled router's pools from the shared store at scrape time (no state of its own)."""

    def __init__(self) -> None:
        self._routers: list[weakref.ref] = []
        self._stores: dict[tuple, Any] = {}

    def add(self, router: Any) -> None:
        with _lock:
            self._routers = [r for r in self._routers if r() is not None]
            if not any(r() is router for r in self._routers):
                self._routers.append(weakref.ref(router))

    def remove(self, router: Any) -> None:
        with _lock:
            self._routers = [r for r in self._routers if r() is not None and r() is not router]

    def describe(self) -> list:
        return list(self._families())

    @staticmethod
    def _families() -> Iterator:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily("router_plugin_quota_remaining", "Units left in a pool's limit (shared store)",
                                labels=["pool", "limit"])
        yield GaugeMetricFamily("router_plugin_quota_limit", "Capacity of a pool's limit", labels=["pool", "limit"])
        yield GaugeMetricFamily("router_plugin_quota_resets_in_seconds", "Seconds until the limit is fully back",
                                labels=["pool", "limit"])
        yield GaugeMetricFamily("router_plugin_deployment_available",
                                "1 unless the deployment is cooling down or quarantined",
                                labels=["group", "deployment"])
        yield GaugeMetricFamily("router_plugin_store_up", "1 if the quota store answered this scrape")

    def _store(self, settings) -> Any:
        from .report import open_store

        key = (settings.redis_url, settings.embedded_path, settings.key_prefix, settings.redis_timeout_s)
        store = self._stores.get(key)
        if store is None:
            store = self._stores[key] = open_store(settings)
        return store

    def collect(self) -> Iterator:
        from .adapter.installer import installed
        from .adapter.router_api import all_deployments
        from .report import take_snapshot

        remaining, limit, resets, available, up = self._families()
        seen_limits: set[tuple] = set()
        seen_deployments: set[tuple] = set()
        ok = True
        with _lock:
            routers = [r() for r in self._routers]
        for router in routers:
            inst = installed(router) if router is not None else None
            if inst is None:
                continue
            try:
                store = self._store(inst.settings)
                snap = take_snapshot(store, [inst.plans.plan(d) for d in all_deployments(router)])
            except Exception as exc:  # a scrape must answer even when Redis does not
                ok = False
                log.debug("router_plugin: metrics could not read the quota store: %s", exc)
                continue
            for pool in snap.pools:
                for lim in pool.limits:
                    key = (snap.store, snap.key_prefix, pool.id, lim.counter)
                    if key in seen_limits:
                        continue
                    seen_limits.add(key)
                    labels = [pool.label, lim.name]
                    remaining.add_metric(labels, lim.remaining)
                    limit.add_metric(labels, lim.limit)
                    resets.add_metric(labels, max(0.0, (lim.resets_at or snap.now) - snap.now))
            for d in snap.deployments:
                key = (snap.store, snap.key_prefix, d.group, d.model)
                if key in seen_deployments:
                    continue
                seen_deployments.add(key)
                available.add_metric([d.group, d.model], 0 if d.state in ("cooling", "quarantined") else 1)
        up.add_metric([], 1 if ok else 0)
        yield from (remaining, limit, resets, available, up)


def collector() -> QuotaCollector:
    """The process's quota collector; registered on the default registry unless in multiprocess mode."""
    global _collector
    with _lock:
        if _collector is None:
            _collector = QuotaCollector()
            if multiprocess_dir() is None:
                from prometheus_client import REGISTRY

                REGISTRY.register(_collector)
        return _collector


def registry():
    """What ``/metrics`` should render in this process: the default registry, or in multiprocess mode a fresh
    one aggregating every worker's files plus the quota gauges."""
    from prometheus_client import REGISTRY, CollectorRegistry

    path = multiprocess_dir()
    if path is None:
        collector()
        return REGISTRY
    from prometheus_client import multiprocess

    reg = CollectorRegistry()
    multiprocess.MultiProcessCollector(reg, path=path)
    reg.register(collector())
    return reg


def serve(port: int, addr: str = "127.0.0.1") -> Any | None:
    """Serve ``/metrics`` on ``port`` once per process; None when another process already holds the port."""
    from prometheus_client import start_http_server

    with _lock:
        if port in _servers:
            return _servers[port]
        try:
            started = start_http_server(port, addr=addr, registry=registry())
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            if multiprocess_dir():
                log.info("router_plugin: metrics port %d is served by another worker (multiprocess mode: it "
                         "reports every worker)", port)
            else:
                log.warning("router_plugin: metrics port %d is taken, so this process's counters are not served; "
                            "with several workers set PROMETHEUS_MULTIPROC_DIR (see router_plugin.metrics)", port)
            return None
        _servers[port] = started
        log.info("router_plugin: Prometheus metrics on http://%s:%d/metrics", addr, port)
        return started


def enable(router: Any, port: int | None = None, addr: str = "127.0.0.1") -> MetricsObserver:
    """Count this router's requests, fallbacks, refusals, provider 429s and reservation latency, and report its
    pools' quota at scrape time; with ``port``, also serve ``/metrics``. Idempotent per router."""
    from .adapter.installer import installed

    inst = installed(router)
    if inst is None:
        raise ValueError("router_plugin.metrics.enable: install the plugin first "
                         "(router_plugin.build_router(config) or router_plugin.install(router, settings))")
    observer = next((o for o in inst.events.observers if isinstance(o, MetricsObserver)), None)
    if observer is None:
        observer = MetricsObserver()
        inst.events.add(observer)
    collector().add(router)
    if port is not None:
        serve(port, addr)
    return observer


def disable(router: Any) -> None:
    """Stop counting ``router``'s requests and reporting its pools (a router you are done with: LiteLLM itself
    keeps every Router alive, so a dropped one would otherwise stay on ``/metrics``)."""
    from .adapter.installer import installed

    inst = installed(router)
    if inst is not None:
        inst.events.observers[:] = [o for o in inst.events.observers if not isinstance(o, MetricsObserver)]
    if _collector is not None:
        _collector.remove(router)
