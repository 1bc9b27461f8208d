"""Priorities and fair shares through the REAL LiteLLM proxy (2 workers, a real Redis, the simulator).

Two LiteLLM virtual keys (a custom auth function of the config: no database needed) share one OpenRouter account of
20 requests a day, with ``shares: {per: key, openrouter: 0.5}``: the key that floods gets its 10 and a refusal that
names its share; the other key still gets all of its 10; the simulator never answers 429; no key (not even LiteLLM's
hash of it) is in Redis. The ``x-router-plugin-priority`` header and a bad value of it are checked the same way.
"""

from __future__ import annotations

import asyncio

import openai
import pytest
import redis

from router_plugin.store.binary import start_redis_server, stop_redis_server
from tests.proxy_harness import ProxyProcess, free_port, redis7_binary, strong_master_key

pytestmark = pytest.mark.integration

GROUP = "free-chat"
OR_A = "openrouter/meta-llama/llama-3.3-70b-instruct:free"
DAY = 20
FLOOD_KEY, CALM_KEY = "sk-flood-" + "f" * 24, "sk-calm-" + "c" * 24
PRIORITY_KEY = "sk-batch-" + "b" * 24  # a key whose metadata says router_plugin_priority: 1

AUTH = f'''
from litellm.proxy._types import UserAPIKeyAuth

KEYS = {{"{FLOOD_KEY}": ("flood-user", {{}}), "{CALM_KEY}": ("calm-user", {{}}),
        "{PRIORITY_KEY}": ("batch-user", {{"router_plugin_priority": 1}})}}


async def user_api_key_auth(request, api_key):
    user, metadata = KEYS[api_key]  # an unknown key: an error, a 401
    return UserAPIKeyAuth(api_key=api_key, user_id=user, metadata=metadata)
'''

CONFIG = f"""
model_list:
  - model_name: {GROUP}
    litellm_params: {{model: {OR_A}, api_key: sim-openrouter-key, api_base: os.environ/SIM_OPENROUTER_BASE}}
litellm_settings:
  callbacks: router_plugin.proxy_handler
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
  custom_auth: priority_auth.user_api_key_auth
router_plugin:
  redis_url: os.environ/REDIS_URL
  calibration: {{interval_s: 0}}
  limits:
    openrouter: {{rpm: 1000, rpd: {DAY}}}
  priority: {{reserve: 0.2}}
  shares: {{per: key, openrouter: 0.5}}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sim_server):
    binary = redis7_binary()
    if binary is None:
        pytest.skip("the proxy tests need redis-server >= 7")
    work = tmp_path_factory.mktemp("priority-proxy")
    port = free_port()
    server = start_redis_server(["--save", "", "--appendonly", "no", "--dir", str(work)], port, binary=binary)
    (work / "config.yaml").write_text(CONFIG)
    (work / "priority_auth.py").write_text(AUTH)
    env = {"LITELLM_MASTER_KEY": strong_master_key(), "REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "SIM_OPENROUTER_BASE": sim_server.openrouter_base}
    proxy = ProxyProcess(work / "config.yaml", workers=2, env=env, log_dir=work, cwd=work)
    try:
        proxy.start()
        yield proxy, redis.Redis(host="127.0.0.1", port=port), sim_server
    finally:
        proxy.stop()
        stop_redis_server(server)
        sim_server.reset()


def fresh(store, sim):
    store.flushall()
    sim.reset()
    sim.configure({"openrouter": {"accounts": {"sim-openrouter-key": {"daily_limit": DAY, "minute_limit": 1000}}}})


async def _ask(client, n, **extra):
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=GROUP, messages=[{"role": "user", "content": f"request {n}"}], max_tokens=8, **extra)
        return raw.status_code, raw.headers, ""
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.headers, str(exc)


def send(proxy, key, count, **extra):
    async def main():
        async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, timeout=120) as client:
            return await asyncio.gather(*(_ask(client, n, **extra) for n in range(count)))

    return asyncio.run(main())


def test_a_flooding_key_gets_its_share_and_the_other_key_still_gets_its_own(stack):
    proxy, store, sim = stack
    fresh(store, sim)
    flood = send(proxy, FLOOD_KEY, 16)
    served = [r for r in flood if r[0] == 200]
    refused = [r for r in flood if r[0] == 429]
    assert len(served) == DAY // 2 and len(refused) == 6, [r[:1] + (r[2][:200],) for r in flood]
    assert all("share of the OpenRouter day (10 of 10)" in text for _, _, text in refused), refused[0][2]
    calm = send(proxy, CALM_KEY, DAY // 2)
    assert [r[0] for r in calm] == [200] * (DAY // 2), [r[2][:200] for r in calm if r[0] != 200]
    assert sum(sim.stats()["rate_limited"].values()) == 0
    assert sum(sim.stats()["requests"]["openrouter"].values()) == DAY
    keys = b" ".join(store.keys("rp:*"))  # the plugin's keys (LiteLLM's own, in the same Redis, use its key hash)
    assert b":c:share:key:" in keys
    from litellm.proxy._types import hash_token

    for secret in (FLOOD_KEY, CALM_KEY, hash_token(FLOOD_KEY), hash_token(CALM_KEY)):
        assert secret.encode() not in keys  # a one-way hash of the identity, never the key nor LiteLLM's hash


def test_priority_from_the_header_and_the_key_and_a_bad_header_is_a_400(stack):
    proxy, store, sim = stack
    fresh(store, sim)
    code, _, text = send(proxy, CALM_KEY, 1, extra_headers={"x-router-plugin-priority": "soon"})[0]
    assert code == 400 and "header x-router-plugin-priority must be an integer >= 0" in text, text
    # Fill the day to the reserve's 16 with priority-0 requests of two keys, then a priority-1 request is refused
    # whether it says so in the header or its key says so (the key's priority is a floor the body cannot lower).
    assert [r[0] for r in send(proxy, CALM_KEY, 8) + send(proxy, FLOOD_KEY, 8)] == [200] * 16
    for code, headers, text in (send(proxy, PRIORITY_KEY, 1, extra_body={"metadata": {"priority": 0}})
                                + send(proxy, PRIORITY_KEY, 1, extra_headers={"x-router-plugin-priority": "1"})):
        assert code == 429 and "kept for priority-0 requests (reserve 20%)" in text, text
    code, _, text = send(proxy, PRIORITY_KEY, 1, extra_headers={"x-router-plugin-priority": "0"})[0]
    assert code == 429  # still the key's priority 1
    assert [r[0] for r in send(proxy, CALM_KEY, 2)] == [200, 200]  # priority 0 takes the reserve
    assert sum(sim.stats()["rate_limited"].values()) == 0
