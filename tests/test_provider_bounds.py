"""Issue 11 item 3 end to end: a provider value no limit can mean blocks a pool only as long as the limit can mean.

A hostile OpenRouter (real HTTP on 127.0.0.1) answers a per-MINUTE 429 whose reset is a week ahead, through the real
LiteLLM Router and a real Redis: the account's minute must be blocked at most to the end of the next minute, the
clamp logged with its dates, and counted for ``router-plugin status``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import router_plugin
from router_plugin.demo import DEMO_CHAIN, demo_config
from router_plugin.report import render_status, take_snapshot
from router_plugin.store import Blocked, StoreTarget, SyncQuotaStore
from tests.test_reliability import GarbageServer, _ask_and_let_callbacks_run
from router_plugin.adapter.router_api import all_deployments

OR_A, GQ_A = DEMO_CHAIN[0], DEMO_CHAIN[2]


def _minute_429_a_week_ahead() -> bytes:
    reset_ms = str(int((time.time() + 7 * 86_400) * 1000))
    headers = {"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset_ms}
    body = json.dumps({"error": {"message": "Rate limit exceeded: free-models-per-min. ", "code": 429,
                                 "metadata": {"headers": headers, "provider_name": None}}}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n" + head.encode()
            + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _groq_rpm_429_two_days() -> bytes:
    body = json.dumps({"error": {"message": "Rate limit reached for model `openai/gpt-oss-120b` in organization "
                                            "`org_1` service tier `on_demand` on requests per minute (RPM): Limit 30, "
                                            "Used 30, Requested 1. Please try again in 47h59m0s.",
                                 "type": "requests", "code": "rate_limit_exceeded"}}).encode()
    return (b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 172000\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class WeekAheadServer(GarbageServer):
    KINDS = {"week-ahead": _minute_429_a_week_ahead(), "groq-two-days": _groq_rpm_429_two_days()}


def _one_failed_request(server, config, redis_url, caplog):
    """One request against the hostile upstream, its failure recorded: (store, plan, what the store now says)."""
    router = router_plugin.build_router(config)
    with caplog.at_level(logging.WARNING, logger="router_plugin"):
        outcome, _ = asyncio.run(asyncio.wait_for(_ask_and_let_callbacks_run(router), 60))
    assert isinstance(outcome, Exception) and server.hits >= 1
    inst = router_plugin.adapter.installer.installed(router)
    plan = inst.plans.plan(all_deployments(router)[0])
    store = SyncQuotaStore(StoreTarget(url=redis_url), inst.settings.key_prefix)
    return store, plan, store.peek(plan)


def test_a_minute_429_with_a_reset_a_week_ahead_blocks_the_pool_two_minutes_at_most(redis_url, caplog):
    server = WeekAheadServer("week-ahead")
    try:
        config = demo_config(server.base, redis_url=redis_url, chain=(OR_A,))
        config["model_list"][0]["litellm_params"].update(api_base=server.base.replace("/openai/v1", "/api/v1"),
                                                         max_retries=0)
        store, plan, blocked = _one_failed_request(server, config, redis_url, caplog)
        assert isinstance(blocked, Blocked) and blocked.counter.key == "minute", blocked
        # blocked, but no later than the end of the next clock minute (not for 168 h)
        assert blocked.until_ms <= ((blocked.now_ms // 60_000) + 2) * 60_000, (blocked.until_ms - blocked.now_ms)
        said = [r.getMessage() for r in caplog.records if "OpenRouter said the minute resets at" in r.getMessage()]
        assert said and "(7 days); a per-minute limit resets by" in said[0] and said[0].endswith("using that")
        snap = take_snapshot(store, [plan])
        assert snap.clamped_today == 1 and snap.as_dict()["provider_values_clamped_today"] == 1
        assert "provider values clamped today: 1" in render_status(snap)
        store.close()
    finally:
        server.stop()


def test_groq_try_again_in_two_days_blocks_requests_per_minute_for_a_minute_at_most(redis_url, caplog):
    server = WeekAheadServer("groq-two-days")
    try:
        config = demo_config(server.base, redis_url=redis_url, chain=(GQ_A,))
        config["model_list"][0]["litellm_params"].update(max_retries=0)
        store, plan, blocked = _one_failed_request(server, config, redis_url, caplog)
        assert isinstance(blocked, Blocked) and blocked.counter.key == "rpm", blocked
        assert blocked.until_ms - blocked.now_ms <= 60_000  # Groq's rpm bucket refills within 60 s, not 48 h
        said = [r.getMessage() for r in caplog.records if "Groq said requests per minute frees in" in r.getMessage()]
        assert said and "47h59m0s" in said[0] and "refills within 60 s" in said[0]
        assert take_snapshot(store, [plan]).clamped_today == 1
        store.close()
    finally:
        server.stop()
