"""Groq calibration on every reply: a plain (non-streamed) reply's x-ratelimit-* headers reach the counters."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import router_plugin
from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config
from router_plugin.adapter.installer import installed
from router_plugin.report import open_store, take_snapshot
from tests.support import bare
from router_plugin.adapter.router_api import all_deployments

pytestmark = pytest.mark.integration

GQ_A = DEMO_CHAIN[2]


def test_a_plain_groq_reply_calibrates_the_day_from_its_headers(sim, redis_url):
    # Another client of the same organisation spends 10 requests: only Groq knows.
    for _ in range(10):
        r = httpx.post(f"{sim.groq_base}/chat/completions", headers={"Authorization": "Bearer sim-groq-key"},
                       json={"model": bare(GQ_A), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200 and r.headers["x-ratelimit-remaining-requests"]  # every reply carries them
    router = router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, chain=(GQ_A,)))

    async def ask():
        metadata: dict = {}
        await router.acompletion(model=DEMO_GROUP, messages=[{"role": "user", "content": "hello"}], max_tokens=8,
                                 metadata=metadata)  # plain, not streamed
        # LiteLLM runs success callbacks (the settle) in its logging worker after the caller has its answer
        for _ in range(200):
            if installed(router).callbacks and rpd_used() >= 11:
                break
            await asyncio.sleep(0.05)
        return metadata["router_plugin"]

    inst = installed(router)
    store = open_store(inst.settings)

    def rpd_used() -> int:
        snap = take_snapshot(store, [inst.plans.plan(d) for d in all_deployments(router)])
        return next(lim for pool in snap.pools for lim in pool.limits if lim.counter == "rpd").used

    assert asyncio.run(ask())["model"] == GQ_A
    assert rpd_used() == 11  # the provider's count: 10 by the other client + this one
