"""LiteLLM proxy paths that used to go around the plugin (issue 12), through the REAL proxy (3 workers) and the
official ``openai`` SDK, against the simulator:

* ``GET /health`` sends nothing upstream (answered from the plugin's shared state), so a burst after it still gets
  exactly the chain's capacity and no provider 429;
* the official SDK with its default retries gets a refusal at once (``x-should-retry: false``);
* every deployment down: each is tried once in all (every failed attempt is recorded for every worker), later
  requests get 503 with a short ``Retry-After``, not a quota 429;
* ``router_settings.fallbacks`` to another group: that group goes through the plugin too (headers name the
  deployment that served, with its real remaining counts), and a streamed reply names it in every chunk.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter

import httpx
import openai
import pytest
import redis

from router_plugin.demo import wait_for_fresh_minute
from router_plugin.store.binary import start_redis_server, stop_redis_server
from tests.proxy_harness import ProxyProcess, free_port, redis7_binary, strong_master_key
from router_plugin.adapter.router_api import all_deployments

pytestmark = pytest.mark.integration

GROUP, BACKUP = "free-chat", "backup-chat"
OR_ONLY = "or-only"  # one deployment on the same OpenRouter account: a fixed clock minute, no refill
OR_A, OR_B = "openrouter/deepseek/deepseek-r1:free", "openrouter/meta-llama/llama-3.3-70b-instruct:free"
GQ_A, GQ_B = "groq/openai/gpt-oss-120b", "groq/openai/gpt-oss-20b"
GQ_BACKUP = "groq/llama-3.1-8b-instant"
BACKUP_RPM = 5  # the plugin's limit for the backup group's model (lower than the simulator's 30)
WORKERS = 3

CONFIG = f"""
model_list:
  - model_name: {GROUP}
    litellm_params: {{model: {OR_A}, api_key: sim-openrouter-key, api_base: os.environ/SIM_OPENROUTER_BASE}}
  - model_name: {GROUP}
    litellm_params: {{model: {OR_B}, api_key: sim-openrouter-key, api_base: os.environ/SIM_OPENROUTER_BASE}}
  - model_name: {GROUP}
    litellm_params: {{model: {GQ_A}, api_key: sim-groq-key, api_base: os.environ/SIM_GROQ_BASE}}
  - model_name: {GROUP}
    litellm_params: {{model: {GQ_B}, api_key: sim-groq-key, api_base: os.environ/SIM_GROQ_BASE}}
  - model_name: {BACKUP}
    litellm_params: {{model: {GQ_BACKUP}, api_key: sim-groq-key, api_base: os.environ/SIM_GROQ_BASE}}
  - model_name: {OR_ONLY}
    litellm_params: {{model: {OR_A}, api_key: sim-openrouter-key, api_base: os.environ/SIM_OPENROUTER_BASE}}
litellm_settings:
  callbacks: router_plugin.proxy_handler
router_settings:
  fallbacks: [{{"{GROUP}": ["{BACKUP}"]}}]
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  background_health_checks: true   # every worker runs LiteLLM's health check every few seconds
  health_check_interval: 5
router_plugin:
  redis_url: os.environ/REDIS_URL
  openrouter: {{tier: free}}
  limits:
    {GQ_BACKUP}: {{rpm: {BACKUP_RPM}}}
"""


class Stack:
    def __init__(self, proxy: ProxyProcess, store: redis.Redis, sim, key: str):
        self.proxy, self.store, self.sim, self.key = proxy, store, sim, key

    def fresh(self) -> None:
        """Forget every counter and cooldown (the plugin's and the simulator's)."""
        self.store.flushall()
        self.sim.reset()

    def sent(self) -> Counter:
        requests = self.sim.stats()["requests"]
        return Counter({f"{p}/{m}": n for p, models in requests.items() for m, n in models.items()})

    def provider_429s(self) -> int:
        return sum(self.sim.stats()["rate_limited"].values())

    def client(self, **kw) -> openai.AsyncOpenAI:
        kw.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(base_url=self.proxy.url + "/v1", api_key=self.key, timeout=120, **kw)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sim_server):
    binary = redis7_binary()
    if binary is None:
        pytest.skip("the proxy tests need redis-server >= 7")
    work = tmp_path_factory.mktemp("proxy-paths")
    port = free_port()
    server = start_redis_server(["--save", "", "--appendonly", "no", "--dir", str(work)], port, binary=binary)
    config = work / "config.yaml"
    config.write_text(CONFIG)
    key = strong_master_key()
    env = {"LITELLM_MASTER_KEY": key, "REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "SIM_OPENROUTER_BASE": sim_server.openrouter_base, "SIM_GROQ_BASE": sim_server.groq_base}
    sim_server.reset()
    proxy = ProxyProcess(config, workers=WORKERS, env=env, log_dir=work)
    try:
        proxy.start()
        yield Stack(proxy, redis.Redis(host="127.0.0.1", port=port), sim_server, key)
    finally:
        proxy.stop()
        stop_redis_server(server)
        sim_server.reset()


async def _ask(client: openai.AsyncOpenAI, n: int, model: str = GROUP):
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": f"request {n}: say hello"}], max_tokens=16)
        return raw.status_code, raw.headers, raw.parse().model
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.headers, str(exc)[:300]


def burst(stack: Stack, count: int):
    async def main():
        async with stack.client() as client:
            return await asyncio.gather(*(_ask(client, n) for n in range(count)))

    return asyncio.run(main())


# ---- /health -----------------------------------------------------------------------------------------------------


def test_health_sends_nothing_upstream_and_the_next_burst_gets_exactly_the_capacity(stack):
    stack.fresh()
    wait_for_fresh_minute(min_left_s=35)
    started = time.monotonic()
    health = httpx.get(stack.proxy.url + "/health", headers={"Authorization": f"Bearer {stack.key}"}, timeout=120)
    assert health.status_code == 200, health.text[:300]
    by_health = sum(stack.sent().values())
    body = health.json()
    listed = body["healthy_endpoints"] + body["unhealthy_endpoints"]
    assert len(listed) == 6, body  # every deployment is answered for
    replies = burst(stack, 100)
    duration = time.monotonic() - started
    served = [r for r in replies if r[0] == 200]
    print(f"\n/health sent {by_health} upstream; burst: {len(served)} served, provider 429s {stack.provider_429s()}")
    assert stack.provider_429s() == 0, [e for e in stack.sim.stats()["log"] if e["status"] == 429][:4]
    assert all(r[0] in (200, 429) for r in replies), [r for r in replies if r[0] not in (200, 429)][:3]
    # capacity: OpenRouter account 20/min + Groq 30 + 30 + the backup group's 5 (fallbacks); Groq refills
    # one request per 2 s per model and the backup one per 12 s, so a slow run may serve a few more.
    capacity = 20 + 30 + 30 + BACKUP_RPM
    allowance = 2 * math.ceil(duration / 2) + math.ceil(duration / 12)
    assert capacity <= len(served) + by_health <= capacity + allowance
    assert by_health == 0


def test_the_openai_sdk_with_default_retries_gets_the_refusal_at_once(stack):
    """The OpenRouter account's minute is spent (20 requests): the proxy refuses with Retry-After <= 60 s, which the
    SDK would sleep out and retry twice unless told not to."""
    if 60 - time.time() % 60 < 15:
        wait_for_fresh_minute(min_left_s=45)

    async def drain():
        async with stack.client() as client:
            return await asyncio.gather(*(_ask(client, n, OR_ONLY) for n in range(22)))

    drained = asyncio.run(drain())
    assert any(r[0] == 429 for r in drained)
    day_left = [int(r[1]["x-router-plugin-remaining-day"]) for r in drained if r[0] == 200]
    seen = []

    def count(request: httpx.Request) -> None:
        seen.append(request.url.path)
        if len(seen) > 1:
            raise AssertionError(f"the SDK retried a refusal: {seen}")

    http = httpx.Client(event_hooks={"request": [count]}, timeout=120)
    client = openai.OpenAI(base_url=stack.proxy.url + "/v1", api_key=stack.key, http_client=http)  # default retries
    assert client.max_retries == 2
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=OR_ONLY, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    headers = caught.value.response.headers
    assert headers["x-should-retry"] == "false"
    assert int(headers["retry-after"]) >= 1
    assert len(seen) == 1, seen
    # the refusal says what the account still has today (not 0): what the last served request left
    assert int(headers["x-router-plugin-remaining-day"]) == (min(day_left) if day_left else
                                                              int(headers["x-router-plugin-remaining-day"]) or -1)


# ---- every deployment down ---------------------------------------------------------------------------------------


def test_every_deployment_down_each_is_tried_once_and_later_requests_get_503_with_a_short_retry_after(stack):
    stack.fresh()
    down = {m.split("/", 1)[1]: {"status": 503, "status_count": 1000} for m in (OR_A, OR_B, GQ_A, GQ_B, GQ_BACKUP)}
    stack.sim.reset()
    stack.sim.configure({"models": down})
    replies = []

    async def main():
        async with stack.client() as client:
            for n in range(5):
                replies.append(await _ask(client, n))
                await asyncio.sleep(1)

    asyncio.run(main())
    sent = stack.sent()
    print(f"\nall down: sent {dict(sent)}; replies {[(r[0], r[1].get('retry-after')) for r in replies]}")
    assert set(sent.values()) == {1} and len(sent) == 5, sent  # each deployment tried once in all
    for status, headers, text in replies:
        assert status == 503, (status, text)
        assert "x-router-plugin-deployment" in headers
    for status, headers, text in replies[1:]:
        assert "cooling down" in text, text
        assert 1 <= int(headers["retry-after"]) <= 60, dict(headers)


# ---- fallbacks to another group ----------------------------------------------------------------------------------


def test_a_fallback_group_is_metered_and_named_in_the_headers_and_in_every_streamed_chunk(stack):
    stack.fresh()
    wait_for_fresh_minute(min_left_s=30)
    filled = burst(stack, 80)  # fills the free-chat chain for the minute (Groq refills a little meanwhile)
    assert sum(1 for r in filled if r[0] == 200) >= 80
    backup = [r for r in filled if r[0] == 200 and r[1].get("x-router-plugin-deployment") == GQ_BACKUP]

    async def more():
        async with stack.client() as client:
            return [await _ask(client, n) for n in range(3)]

    replies = asyncio.run(more())
    backup += [r for r in replies if r[0] == 200 and r[1].get("x-router-plugin-deployment") == GQ_BACKUP]
    assert backup, (filled[-3:], replies)
    for status, headers, model in backup:  # the backup group's own counter, not "unlimited"
        assert 0 <= int(headers["x-router-plugin-remaining-minute"]) < BACKUP_RPM, dict(headers)
        assert headers["x-router-plugin-remaining-day"] != "unlimited", dict(headers)

    stack.store.flushall()  # free the backup model's minute again (the simulator allows 30)
    stack.sim.configure({"models": {m.split("/", 1)[1]: {"status": 503, "status_count": 1000}
                                    for m in (OR_A, OR_B, GQ_A, GQ_B)}})
    with httpx.stream("POST", stack.proxy.url + "/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {stack.key}"},
                      json={"model": GROUP, "messages": [{"role": "user", "content": "stream hello"}],
                            "max_tokens": 16, "stream": True}) as response:
        body = response.read().decode()
    assert response.status_code == 200, body[:300]
    assert response.headers["x-router-plugin-deployment"] == GQ_BACKUP
    chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    assert chunks
    models = {c.get("model") for c in chunks}
    assert all(GQ_BACKUP.split("/", 1)[1] in str(m) for m in models), models


# ---- the pieces, without a proxy (fast) --------------------------------------------------------------------------


def _demo(tmp_path, sim, redis_url, **kw) -> str:
    import yaml

    from router_plugin.demo import demo_config

    kw.setdefault("redis_timeout_s", 5)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(demo_config(sim.base_url, redis_url=redis_url, **kw), sort_keys=False))
    return str(path)


def test_health_checks_are_answered_from_the_shared_counters_without_an_upstream_call(sim, redis_url, tmp_path):
    import litellm

    import router_plugin
    from router_plugin.demo import DEMO_CHAIN
    from router_plugin.adapter.proxy import ProxyHandler, guard_health_checks, health_from_store

    original = litellm.ahealth_check
    path = _demo(tmp_path, sim, redis_url)
    router = router_plugin.build_router(path)
    handler = ProxyHandler(config_path=path)
    try:
        installed = handler.ensure_installed(router)  # also routes litellm.ahealth_check through the plugin
        litellm_own = getattr(original, "__wrapped__", original)  # (an earlier test in this process may have wrapped it)
        assert litellm.ahealth_check.__wrapped__ is litellm_own
        guard_health_checks()  # idempotent
        assert litellm.ahealth_check.__wrapped__ is litellm_own
    finally:
        litellm.ahealth_check = original
    params = {d["litellm_params"]["model"]: dict(d["litellm_params"]) for d in all_deployments(router)}

    async def check(model):
        return await health_from_store(dict(params[model], max_tokens=1), handler)

    or_a, _, gq_a, _ = DEMO_CHAIN
    assert "can take a request" in asyncio.run(check(or_a))["router_plugin"]
    plans = {p.model: p for p in (installed.plans.plan(d) for d in all_deployments(router))}
    day = next(c for c in plans[or_a].counters if c.limit.name == "day")
    asyncio.run(installed.store.block(plans[or_a], day, int((time.time() + 3600) * 1000), "exhausted (provider 429)"))
    quota = asyncio.run(check(or_a))
    assert "error" not in quota and quota["router_plugin"].startswith("quota-limited:"), quota  # healthy, limited
    asyncio.run(installed.store.cool(plans[gq_a], "failing: HTTP 503", 20, 300))
    cooled = asyncio.run(check(gq_a))
    assert "set aside (failing: HTTP 503)" in cooled["error"], cooled
    assert asyncio.run(health_from_store({"model": "openai/not-a-deployment"}, handler)) is None
    assert sum(sum(c.values()) for c in sim.stats()["requests"].values()) == 0  # nothing went upstream



def test_status_shows_when_the_next_request_fits_a_refilling_groq_limit(sim, redis_url, tmp_path):
    import router_plugin
    from router_plugin.demo import DEMO_CHAIN
    from router_plugin.report import open_store, take_snapshot

    path = _demo(tmp_path, sim, redis_url)
    cfg = router_plugin.load_config(path)
    router = router_plugin.build_router(path)
    installed = router.__dict__["_router_plugin"]
    gq_a = DEMO_CHAIN[2]
    plan = next(p for p in (installed.plans.plan(d) for d in all_deployments(router)) if p.model == gq_a)

    async def drain():
        got = [await installed.store.reserve(plan, 10) for _ in range(31)]
        return got

    outcomes = asyncio.run(drain())
    assert type(outcomes[-1]).__name__ == "Blocked"  # 30/min spent
    snap = take_snapshot(open_store(cfg.settings), [plan])
    rpm = next(lim for lim in snap.pools[0].limits if lim.counter == "rpm")
    assert rpm.state == "exhausted"
    # one request drains every 2 s (30/min): the next one fits within a few seconds, not when the bucket is empty
    assert rpm.resets_at is not None and rpm.resets_at - snap.now <= 2 * 2 + 2.5, rpm.resets_at - snap.now


def test_status_piped_into_head_ends_quietly(sim, redis_url, tmp_path):
    import os
    import subprocess
    import sys

    path = _demo(tmp_path, sim, redis_url)
    cli = f"{sys.executable} -c 'import sys; from router_plugin.cli import main; sys.exit(main())'"
    done = subprocess.run(["bash", "-c", f"{cli} status --config {path} --json --watch -n 0.01 --count 300 | head -1;"
                                         f" {cli} status --config {path} | head -2"],
                          capture_output=True, text=True, timeout=120, env=os.environ)
    assert done.stdout.count("\n") == 3, done.stdout
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_the_quick_start_runs_the_proxy_the_way_the_tests_and_the_image_do():
    from tests.proxy_harness import REPO

    readme = (REPO / "README.md").read_text()
    section = readme.split("<!-- section:proxy -->", 1)[1].split("<!-- /section:proxy -->", 1)[0]
    quick = section.split("```bash", 1)[1].split("```", 1)[0]
    command = next(line for line in quick.splitlines() if line.startswith("litellm --config"))
    assert "--num_workers 4" in command and "--timeout_worker_healthcheck 30" in command
    assert "export LITELLM_LOCAL_MODEL_COST_MAP=True" in quick and "HF_HUB_OFFLINE=1" in quick
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in dockerfile and "HF_HUB_OFFLINE=1" in dockerfile
    assert '"--timeout_worker_healthcheck", "30"' in (REPO / "docker-compose.yml").read_text()


def test_x_should_retry_false_only_when_the_wait_is_longer_than_the_operators_bound():
    from router_plugin.config import Settings
    from router_plugin.adapter.proxy import ProxyHandler
    from router_plugin.adapter.strategy import ChainFailedError, QuotaExhaustedError

    def sent(handler, exc):
        data: dict = {}
        asyncio.run(handler.async_post_call_failure_hook(data, exc, None))
        return asyncio.run(handler.async_post_call_response_headers_hook(data, None, None))

    default = ProxyHandler(settings=Settings())  # max_wait_s 0: every refusal
    headers = sent(default, QuotaExhaustedError(GROUP, "nothing left", 12.2))
    assert headers["retry-after"] == "13" and headers["x-should-retry"] == "false"
    headers = sent(default, ChainFailedError(GROUP, "every deployment is cooling down after failures", 19.5))
    assert headers["retry-after"] == "20" and headers["x-should-retry"] == "false"
    patient = ProxyHandler(settings=Settings(max_wait_s=30))  # the operator lets callers wait up to 30 s
    assert "x-should-retry" not in sent(patient, QuotaExhaustedError(GROUP, "nothing left", 12.2))
    assert sent(patient, QuotaExhaustedError(GROUP, "nothing left", 45))["x-should-retry"] == "false"
