"""Metrics after real routed traffic (simulator + redis-server), multi-process aggregation, and the routing log."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import urllib.request

import litellm
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families

import router_plugin
from router_plugin import metrics
from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config
from router_plugin.adapter.installer import installed
from tests.fake_keys import groq_key, openrouter_key
from tests.servers import free_port
from tests.support import bare

pytestmark = pytest.mark.integration

OR_A, OR_B, GQ_A, GQ_B = DEMO_CHAIN
MSG = [{"role": "user", "content": "hello"}]
FAKE_OR_KEY = openrouter_key("FAKE-log-test-" + "0123456789abcdef" * 2)
FAKE_GROQ_KEY = groq_key("FAKElogtest" + "0123456789" + "abcdefghijklmnopqrstuvwxyzAB")


async def ask(router) -> dict:
    metadata: dict = {}
    await router.acompletion(model=DEMO_GROUP, messages=MSG, max_tokens=16, metadata=metadata)
    return metadata["router_plugin"]


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(port: int) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return samples(response.read().decode())


def L(**labels) -> tuple:
    return tuple(sorted(labels.items()))


def test_metrics_count_what_happened_to_real_traffic(sim, redis_url):
    # OR_A has left the roster (404); then the account's day is spent elsewhere (OR_B answers 429
    # free-models-per-day); GQ_A allows 2 requests a minute.
    sim.configure({"models": {bare(OR_A): {"gone": True}}})
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, redis_timeout_s=5,
                                                    chain=(OR_A, OR_B, GQ_A), limits={GQ_A: {"rpm": 2}},
                                                    calibration={"interval_s": 0}))  # the 404 path
    port = free_port()
    observer = metrics.enable(router, port=port)
    assert metrics.enable(router) is observer  # idempotent: one observer per router
    pool = installed(router).plans.plan(router.model_list[0]).pool_label
    counted = [
        ("router_plugin_requests_total", dict(group=DEMO_GROUP, deployment=OR_A, outcome="gone")),
        ("router_plugin_requests_total", dict(group=DEMO_GROUP, deployment=OR_B, outcome="success")),
        ("router_plugin_requests_total", dict(group=DEMO_GROUP, deployment=OR_B, outcome="rate_limited")),
        ("router_plugin_requests_total", dict(group=DEMO_GROUP, deployment=GQ_A, outcome="success")),
        ("router_plugin_fallbacks_total", dict(group=DEMO_GROUP, deployment=OR_B)),
        ("router_plugin_fallbacks_total", dict(group=DEMO_GROUP, deployment=GQ_A)),
        ("router_plugin_provider_429s_total", dict(deployment=OR_B, limit="day")),
        ("router_plugin_refusals_total", dict(group=DEMO_GROUP)),
        ("router_plugin_refusal_reasons_total", dict(group=DEMO_GROUP, pool=OR_A, reason="quarantined")),
        ("router_plugin_refusal_reasons_total", dict(group=DEMO_GROUP, pool=pool, reason="requests_per_day")),
        ("router_plugin_refusal_reasons_total", dict(group=DEMO_GROUP, pool=GQ_A, reason="requests_per_minute")),
        ("router_plugin_reserve_seconds_count", dict(provider="openrouter")),
        ("router_plugin_reserve_seconds_count", dict(provider="groq")),
    ]
    before = {(n, L(**lab)): value(n, **lab) for n, lab in counted}

    async def traffic():
        first = await ask(router)  # OR_A 404 -> OR_B
        sim.configure({"openrouter": {"accounts": {"sim-openrouter-key": {"used_today": 50}}}})
        second = await ask(router)  # OR_A quarantined, OR_B 429 per-day -> GQ_A
        third = await ask(router)  # the pool is blocked to midnight: GQ_A at once
        with pytest.raises(router_plugin.QuotaExhaustedError):
            await ask(router)  # GQ_A's 2/min are spent: refused, nothing sent
        return [(i["model"], i["attempts"]) for i in (first, second, third)]

    assert asyncio.run(traffic()) == [(OR_B, 2), (GQ_A, 2), (GQ_A, 1)]
    delta = {key: value(key[0], **dict(key[1])) - was for key, was in before.items()}
    assert list(delta.values())[:-2] == [1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1], delta
    # one histogram sample per reservation round trip, i.e. per walk of the chain (issue 18: one call per routing
    # decision), labelled by the deployment chosen (or, refused, the first asked): request 1 walked twice to
    # OpenRouter (OR_A, then OR_B), request 2 once to OR_B then once to GQ_A, request 3 once to GQ_A, request 4 was
    # refused (first asked: OR_A)
    assert list(delta.values())[-2:] == [4, 2], delta
    assert sim.stats()["rate_limited"]["openrouter"] == 1  # the one 429 the metric counted

    got = scrape(port)  # our port: counters + the quota read from Redis at scrape time
    assert got[("router_plugin_provider_429s_total", L(deployment=OR_B, limit="day"))] >= 1
    assert got[("router_plugin_quota_limit", L(pool=pool, limit="requests/day"))] == 50
    assert got[("router_plugin_quota_remaining", L(pool=pool, limit="requests/day"))] == 0  # blocked to midnight
    assert 0 < got[("router_plugin_quota_resets_in_seconds", L(pool=pool, limit="requests/day"))] <= 86400
    assert got[("router_plugin_quota_remaining", L(pool=GQ_A, limit="requests/min"))] == 0
    assert got[("router_plugin_quota_remaining", L(pool=GQ_A, limit="requests/day"))] == 998
    assert got[("router_plugin_deployment_available", L(group=DEMO_GROUP, deployment=OR_A))] == 0  # quarantined
    assert got[("router_plugin_deployment_available", L(group=DEMO_GROUP, deployment=GQ_A))] == 1
    assert got[("router_plugin_store_up", ())] == 1

    # LiteLLM's own /metrics (callbacks: ["prometheus"]) renders the default registry with this very function:
    from litellm.integrations.prometheus_metrics_endpoint import parse_scrape_request, render_scrape

    litellm_view = samples(render_scrape(REGISTRY, parse_scrape_request("", "", ())).decode())
    assert litellm_view[("router_plugin_quota_limit", L(pool=pool, limit="requests/day"))] == 50
    assert ("router_plugin_provider_429s_total", L(deployment=OR_B, limit="day")) in litellm_view


def test_metrics_from_settings_and_a_store_that_is_down(sim, redis_url):
    port = free_port()
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, redis_timeout_s=5,
                                                    chain=(GQ_B,), metrics={"enabled": True, "port": port}))
    assert any(isinstance(o, metrics.MetricsObserver) for o in installed(router).events.observers)
    asyncio.run(ask(router))
    got = scrape(port)
    assert got[("router_plugin_quota_remaining", L(pool=GQ_B, limit="requests/day"))] == 999
    assert got[("router_plugin_quota_limit", L(pool=GQ_B, limit="tokens/min"))] == 8000

    down = router_plugin.build_router(demo_config(sim.base_url, redis_url="redis://127.0.0.1:1/0", chain=(GQ_A,)))
    metrics.enable(down)
    got = scrape(port)  # the scrape still answers; the store that did not is flagged
    assert got[("router_plugin_store_up", ())] == 0
    assert ("router_plugin_quota_limit", L(pool=GQ_B, limit="tokens/min")) in got
    metrics.disable(down)  # a router one is done with leaves /metrics (LiteLLM itself never frees a Router)
    got = scrape(port)
    assert got[("router_plugin_store_up", ())] == 1
    assert not any(isinstance(o, metrics.MetricsObserver) for o in installed(down).events.observers)

    plain = litellm.Router(model_list=[{"model_name": "x", "litellm_params": {"model": GQ_A, "api_key": "k"}}])
    with pytest.raises(ValueError, match="install the plugin first"):
        metrics.enable(plain)


def _mp_worker(config, n, start, queue):  # a separate worker process, like a gunicorn worker
    try:
        import router_plugin as rp
        from router_plugin import metrics as m

        router = rp.build_router(config)  # metrics: {enabled: true} -> metrics.enable(router)
        start.wait(60)

        async def go():
            served = [await ask(router) for _ in range(n)]
            # LiteLLM runs success callbacks as tasks after the reply: let them land before the loop closes
            counter = m.instruments().requests.labels(DEMO_GROUP, OR_A, "success")
            for _ in range(200):
                if counter._value.get() >= n:
                    break
                await asyncio.sleep(0.02)
            return len(served)

        queue.put(asyncio.run(go()))
    except BaseException as exc:  # report to the parent instead of hanging it
        queue.put(f"{type(exc).__name__}: {exc}")


def test_worker_processes_are_aggregated_in_multiprocess_mode(sim, redis_url, tmp_path, monkeypatch):
    import multiprocessing as mp

    directory = tmp_path / "prom"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))  # inherited by the spawned workers
    config = demo_config(sim.base_url, redis_url=redis_url, redis_timeout_s=5, metrics={"enabled": True})
    ctx = mp.get_context("spawn")
    start, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_mp_worker, args=(config, 3, start, queue), daemon=True) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    assert [queue.get(timeout=120) for _ in procs] == [3, 3]
    for p in procs:
        p.join(30)

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    reg_samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in registry.collect() for s in family.samples}
    assert reg_samples[("router_plugin_requests_total", L(group=DEMO_GROUP, deployment=OR_A, outcome="success"))] == 6
    assert reg_samples[("router_plugin_reserve_seconds_count", L(provider="openrouter"))] == 6
    assert len(list(directory.glob("counter_*.db"))) == 2  # one file per worker, summed at scrape time

    # What our port serves in this mode: every worker's counters plus the quota, read from Redis once.
    router = router_plugin.build_router(config)
    metrics.enable(router)
    from prometheus_client import generate_latest

    served = samples(generate_latest(metrics.registry()).decode())
    pool = installed(router).plans.plan(router.model_list[0]).pool_label
    assert served[("router_plugin_requests_total", L(group=DEMO_GROUP, deployment=OR_A, outcome="success"))] == 6
    assert served[("router_plugin_quota_remaining", L(pool=pool, limit="requests/day"))] == 44


# ---- the routing log ------------------------------------------------------------------------------------------

class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


def test_one_log_line_per_routing_decision_never_a_secret(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"gone": True}}})
    router = router_plugin.build_router(demo_config(
        sim.base_url, redis_url=redis_url, redis_timeout_s=5, openrouter_key=FAKE_OR_KEY, groq_key=FAKE_GROQ_KEY,
        chain=(OR_A, GQ_A), limits={GQ_A: {"rpm": 1}}, calibration={"interval_s": 0}))  # the 404 path
    # How an operator turns it on (README "Logs"): LiteLLM's handler, level INFO for "router_plugin".
    from litellm._logging import JsonFormatter, handler as litellm_handler

    capture = Capture()
    logger = logging.getLogger("router_plugin")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(capture)
    try:
        async def traffic():
            await ask(router)  # OR_A 404 -> GQ_A: two routing decisions
            with pytest.raises(router_plugin.QuotaExhaustedError):
                await ask(router)  # OR_A quarantined, GQ_A's 1/min spent: refused

        asyncio.run(traffic())
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
    lines = [r.getMessage() for r in capture.records]
    routes = [r for r in capture.records if r.getMessage().startswith("router_plugin route ")]
    assert [r.levelno for r in routes] == [logging.INFO, logging.INFO]
    assert re.fullmatch(rf"router_plugin route group={DEMO_GROUP} chosen={re.escape(OR_A)} attempt=1 tokens~\d+ "
                        r"skipped=\[\]", routes[0].getMessage())
    assert re.match(rf"router_plugin route group={DEMO_GROUP} chosen={re.escape(GQ_A)} attempt=2 tokens~\d+ "
                    rf"skipped=\[{re.escape(OR_A)}: failed earlier in this request", routes[1].getMessage())
    refusal = next(m for m in lines if m.startswith("router_plugin refuse "))
    assert f"{OR_A} set aside (quarantined: No endpoints found" in refusal and f"{GQ_A} requests/min exhausted" in refusal
    assert any(r.levelno == logging.ERROR and "is gone" in r.getMessage() for r in capture.records)
    for record in capture.records:  # every router_plugin record at every level
        text = record.getMessage() + json.dumps(record.__dict__, default=str)
        assert FAKE_OR_KEY not in text and FAKE_GROQ_KEY not in text
        assert FAKE_OR_KEY[:20] not in text and FAKE_GROQ_KEY[:16] not in text
    # Through LiteLLM's conventions: its JSON_LOGS formatter and its handler (secret redaction filters) take it.
    as_json = json.loads(JsonFormatter().format(routes[1]))
    assert as_json["message"] == routes[1].getMessage() and as_json["level"] == "INFO"
    assert all(f.filter(routes[1]) for f in litellm_handler.filters)


def test_documented_proxy_log_config_shows_the_routing_lines(sim, redis_url):
    """docs/log_config.yaml (``litellm --log_config``): its router_plugin logger, handler and redaction filter."""
    import io
    import logging.config
    from pathlib import Path

    import yaml

    documented = yaml.safe_load((Path(__file__).parents[1] / "docs" / "log_config.yaml").read_text())
    stream = io.StringIO()
    handler = dict(documented["handlers"]["router_plugin"], stream=stream)
    logger = logging.getLogger("router_plugin")
    saved = (logger.level, logger.propagate, list(logger.handlers))
    logging.config.dictConfig({
        "version": 1, "disable_existing_loggers": False, "formatters": documented["formatters"],
        "filters": documented["filters"], "handlers": {"router_plugin": handler},
        "loggers": {"router_plugin": documented["loggers"]["router_plugin"]},
    })
    try:
        router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, redis_timeout_s=5,
                                                        openrouter_key=FAKE_OR_KEY, chain=(OR_B,)))
        asyncio.run(ask(router))
        logger.warning("a careless line with %s in it", FAKE_OR_KEY)  # the filter is the second belt
    finally:
        for h in list(logger.handlers):
            logger.removeHandler(h)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        for h in saved[2]:
            logger.addHandler(h)
    lines = stream.getvalue().splitlines()
    routed = [line for line in lines if " router_plugin route " in line]  # (the start also logs the overrides)
    assert len(routed) == 1, lines
    assert re.search(rf" INFO router_plugin pid=\d+ router_plugin route group={DEMO_GROUP} chosen={re.escape(OR_B)} "
                     r"attempt=1 tokens~\d+ skipped=\[\]$", routed[0]), lines
    assert lines[-1].endswith("a careless line with REDACTED in it")
    assert FAKE_OR_KEY not in stream.getvalue()


def test_the_metrics_port_binds_this_machine_only_unless_a_host_is_set(sim, redis_url):
    """Issue 11 item 8: the quota, pools and models on /metrics are not for the whole network by default."""
    from router_plugin.config import parse_settings
    from router_plugin.errors import ConfigError

    port = free_port()
    router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, chain=(GQ_B,),
                                           metrics={"enabled": True, "port": port}))
    assert metrics._servers[port][0].server_address[0] == "127.0.0.1"
    other = free_port()
    router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, chain=(GQ_B,),
                                           metrics={"enabled": True, "port": other, "host": "127.0.0.2"}))
    assert metrics._servers[other][0].server_address[0] == "127.0.0.2"
    for bad in (12, "", "a b", ["0.0.0.0"]):
        with pytest.raises(ConfigError, match=r"router_plugin\.metrics\.host") as err:
            parse_settings({"metrics": {"enabled": True, "port": 9464, "host": bad}})
        assert "\n" not in str(err.value) and "127.0.0.1" in str(err.value)
