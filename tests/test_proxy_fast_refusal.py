"""Fast refusals in front of the proxy app (issue 18 item 3), through the REAL proxy (1 worker), raw httpx, the
simulator and a real redis-server.

A caller LiteLLM has authenticated for a model group once (its request reached the plugin's pre-call hook) gets
its next refusals for that group from the layer in front of LiteLLM's app (adapter/proxy.py ``FastRefusals``):
same status, headers and JSON body as the hook's refusal, counted by the plugin's metrics, decided from the store
at that moment (never from a remembered answer). Everyone else, and every request the hook must decide itself,
goes through LiteLLM as before. ``router_plugin: {proxy: {fast_refusals: false}}`` turns the layer off.

Whether LiteLLM saw a request is observed with a second callback (``counter.py`` next to the config, listed before
the plugin's handler): its pre-call hook runs after LiteLLM's auth, for every request that got that far.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import redis

from router_plugin.errors import ConfigError
from router_plugin.store.binary import start_redis_server, stop_redis_server
from tests.proxy_harness import ProxyProcess, free_port, redis7_binary, strong_master_key

pytestmark = pytest.mark.integration

SOLO, OTHER = "solo", "other"
OR_MODEL = "openrouter/meta-llama/llama-3.3-70b-instruct:free"
GQ_MODEL = "groq/openai/gpt-oss-20b"

CONFIG = f"""
model_list:
  - model_name: {SOLO}
    litellm_params: {{model: {OR_MODEL}, api_key: sim-openrouter-key, api_base: os.environ/SIM_OPENROUTER_BASE}}
  - model_name: {OTHER}
    litellm_params: {{model: {GQ_MODEL}, api_key: sim-groq-key, api_base: os.environ/SIM_GROQ_BASE}}
litellm_settings:
  callbacks: [counter.handler, router_plugin.proxy_handler]
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
router_plugin:
  redis_url: os.environ/REDIS_URL
  limits: {{openrouter: {{rpd: 1}}}}   # one request a day: then every request for {SOLO} is refused
  metrics: {{enabled: true, port: METRICS_PORT}}
  PROXY_SECTION
"""

COUNTER = '''
import os
from litellm.integrations.custom_logger import CustomLogger


class Counter(CustomLogger):
    """One line per request that reached the pre-call hooks (after LiteLLM's auth)."""

    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        with open(os.environ["HOOK_COUNT_FILE"], "a") as f:
            f.write(f"{data.get('model')}\\n")
        return data


handler = Counter()
'''


class Stack:
    def __init__(self, proxy: ProxyProcess, store: redis.Redis, sim, key: str, count_file: Path, metrics_port: int):
        self.proxy, self.store, self.sim, self.key = proxy, store, sim, key
        self.count_file, self.metrics_port = count_file, metrics_port

    address = "10.0.0.1"
    callers = 1

    def fresh(self) -> None:
        """Fresh counters, and a caller the layer does not know yet (same key, another client address: the layer
        tells callers apart by their Authorization header and address)."""
        self.store.flushall()
        self.sim.reset()
        self.new_caller()

    def new_caller(self) -> None:
        self.callers += 1
        self.address = f"10.0.0.{self.callers}"

    def hooks(self) -> int:
        """Requests that reached LiteLLM's pre-call hooks so far."""
        try:
            return len(self.count_file.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def post(self, body: dict | None = None, key: str | None = "default", path: str = "/v1/chat/completions",
             headers: dict | None = None) -> httpx.Response:
        body = body if body is not None else {"model": SOLO, "max_tokens": 16,
                                              "messages": [{"role": "user", "content": "hello"}]}
        sent = {"x-forwarded-for": self.address, **(headers or {})}
        if key is not None:
            sent["Authorization"] = f"Bearer {self.key if key == 'default' else key}"
        return httpx.post(self.proxy.url + path, json=body, headers=sent, timeout=60)

    def refusals_counted(self) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).text
        found = re.search(r'^router_plugin_refusals_total\{group="%s"\} (\S+)$' % SOLO, text, re.M)
        return float(found.group(1)) if found else 0.0

    def spend_the_day(self) -> None:
        """Fresh counters, then the pool's one request of the day (every later request for SOLO is refused), then
        a caller the layer does not know yet (any request that reached the hook, served or not, makes it known)."""
        self.fresh()
        served = self.post()
        assert served.status_code == 200, served.text[:300]
        self.new_caller()


def _stack(tmp_path_factory, sim_server, name: str, proxy_section: str):
    binary = redis7_binary()
    if binary is None:
        pytest.skip("the proxy tests need redis-server >= 7")
    work = tmp_path_factory.mktemp(name)
    port = free_port()
    server = start_redis_server(["--save", "", "--appendonly", "no", "--dir", str(work)], port, binary=binary)
    metrics_port = free_port()
    (work / "config.yaml").write_text(CONFIG.replace("METRICS_PORT", str(metrics_port))
                                      .replace("PROXY_SECTION", proxy_section))
    (work / "counter.py").write_text(COUNTER)
    count_file = work / "hooks.txt"
    key = strong_master_key()
    env = {"LITELLM_MASTER_KEY": key, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "HOOK_COUNT_FILE": str(count_file),
           "SIM_OPENROUTER_BASE": sim_server.openrouter_base, "SIM_GROQ_BASE": sim_server.groq_base}
    sim_server.reset()
    proxy = ProxyProcess(work / "config.yaml", workers=1, env=env, log_dir=work, cwd=work)
    return proxy, server, Stack(proxy, redis.Redis(host="127.0.0.1", port=port), sim_server, key, count_file,
                                metrics_port)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sim_server):
    proxy, server, made = _stack(tmp_path_factory, sim_server, "fast-on", "")
    try:
        proxy.start()
        yield made
    finally:
        proxy.stop()
        stop_redis_server(server)
        sim_server.reset()


def _headers(r: httpx.Response) -> dict[str, str]:
    """The reply's headers, without those that differ for every reply (the call id, the date)."""
    return {k: v for k, v in r.headers.items() if k not in ("x-litellm-call-id", "date")}


def _same(text: str) -> str:
    return re.sub(r"\d+", "N", text)  # a Retry-After, or "in 19h55m", may tick between two replies


# ---- who the layer answers ---------------------------------------------------------------------------------------


def test_a_wrong_or_missing_key_gets_litellm_s_own_auth_error_never_the_429(stack):
    stack.spend_the_day()
    for _ in range(3):  # the right key is refused (and remembered for SOLO)
        assert stack.post().status_code == 429
    for key, headers in (("sk-wrong-" + "x" * 40, None), (None, None), (stack.key + "x", None),
                         ("default", {"x-api-key": "sk-other"})):
        r = stack.post(key=key, headers=headers)
        if key == "default":  # another auth header next to the right Authorization: LiteLLM decides, as before
            assert r.status_code == 429 and "router_plugin" in r.text
            continue
        # LiteLLM's own answer (here, without a database: 400 "No connected db" for an unknown key, 500 for none)
        assert r.status_code >= 400 and r.status_code != 429, (key, r.status_code, r.text[:300])
        assert "router_plugin" not in r.text
        assert "x-router-plugin-deployment" not in r.headers


def test_the_first_refusal_goes_through_the_hook_the_next_come_from_the_layer_with_the_same_reply(stack):
    stack.spend_the_day()
    counted = stack.refusals_counted()
    before = stack.hooks()
    first = stack.post()
    assert first.status_code == 429, first.text[:300]
    assert stack.hooks() == before + 1  # LiteLLM authenticated it and ran the pre-call hooks
    later = [stack.post() for _ in range(5)]
    assert stack.hooks() == before + 1, "the later refusals never reached LiteLLM's auth and hooks"
    for r in later:
        assert r.status_code == first.status_code == 429
        assert _same(json.dumps(sorted(_headers(r).items()))) == _same(json.dumps(sorted(_headers(first).items())))
        assert _same(r.text) == _same(first.text)
        assert r.json()["error"]["code"] == "429" and "router_plugin: no deployment of 'solo'" in r.text
        assert int(r.headers["retry-after"]) > 60 and r.headers["x-should-retry"] == "false"
        assert r.headers["x-router-plugin-deployment"] == "none" and r.headers["x-litellm-call-id"]
    assert len({r.headers["x-litellm-call-id"] for r in [first, *later]}) == 6
    assert stack.refusals_counted() == counted + 6  # the plugin's metrics count every refusal, fast or not
    assert sum(stack.sim.stats()["requests"].get("openrouter", {}).values()) == 1  # only the day's one request


def test_a_streamed_request_is_refused_by_the_layer_as_by_the_hook(stack):
    stack.spend_the_day()
    body = {"model": SOLO, "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    before = stack.hooks()
    first = stack.post(body)
    assert first.status_code == 429 and stack.hooks() == before + 1
    later = stack.post(body)
    assert stack.hooks() == before + 1  # from the layer
    assert later.status_code == 429
    assert _same(json.dumps(sorted(_headers(later).items()))) == _same(json.dumps(sorted(_headers(first).items())))
    assert _same(later.text) == _same(first.text)


def test_freed_quota_is_served_by_the_very_next_request_never_refused_from_memory(stack):
    stack.spend_the_day()
    for _ in range(3):
        assert stack.post().status_code == 429
    before = stack.hooks()
    assert stack.post().status_code == 429 and stack.hooks() == before  # refused by the layer
    stack.store.flushall()  # the day's counter is gone: the pool can take a request again
    served = stack.post()
    assert served.status_code == 200, served.text[:300]
    assert served.headers["x-router-plugin-deployment"] == OR_MODEL
    refused = stack.post()  # and the pool is spent again
    assert refused.status_code == 429


# ---- what the layer leaves to LiteLLM ----------------------------------------------------------------------------


def test_requests_the_hook_must_decide_go_through_litellm_as_before(stack):
    stack.spend_the_day()
    for _ in range(3):
        assert stack.post().status_code == 429
    before = stack.hooks()
    # a per-request fallback: the Router tries the other group, which serves
    body = {"model": SOLO, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}], "fallbacks": [OTHER]}
    r = stack.post(body)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["x-router-plugin-deployment"] == GQ_MODEL
    # another group, and another path (the text completions endpoint): LiteLLM answers
    assert stack.post({**body, "model": OTHER, "fallbacks": None}).status_code == 200
    text = stack.post({"model": SOLO, "prompt": "hi", "max_tokens": 16}, path="/v1/completions")
    assert text.status_code == 429 and "router_plugin" in text.text
    # a body that is not JSON: LiteLLM's own answer, not a refusal
    broken = httpx.post(stack.proxy.url + "/v1/chat/completions", content=b"{not json",
                        headers={"Authorization": f"Bearer {stack.key}", "content-type": "application/json"})
    assert broken.status_code != 429 and "router_plugin" not in broken.text
    assert stack.hooks() == before + 3  # the fallback request, the other group, the text completion
    # its last reply for SOLO was not a refusal (the fallback served it): the next refusal goes through the hook
    # again, the one after comes from the layer
    assert stack.post().status_code == 429 and stack.hooks() == before + 4
    assert stack.post().status_code == 429 and stack.hooks() == before + 4


# ---- the opt-out -------------------------------------------------------------------------------------------------


def test_fast_refusals_false_leaves_every_refusal_to_the_hook(tmp_path_factory, sim_server):
    proxy, server, stack = _stack(tmp_path_factory, sim_server, "fast-off", "proxy: {fast_refusals: false}")
    try:
        proxy.start()
        stack.spend_the_day()
        before = stack.hooks()
        replies = [stack.post() for _ in range(4)]
        assert [r.status_code for r in replies] == [429] * 4
        assert stack.hooks() == before + 4  # each refusal went through LiteLLM and the hook
    finally:
        proxy.stop()
        stop_redis_server(server)
        sim_server.reset()


def test_a_bad_fast_refusals_value_is_one_line_naming_the_key():
    import router_plugin

    models = [{"model_name": OTHER, "litellm_params": {"model": GQ_MODEL, "api_key": "sim-groq-key"}}]
    for section, words in (({"proxy": {"fast_refusals": "yes"}}, "router_plugin.proxy.fast_refusals"),
                           ({"proxy": {"fast": True}}, "router_plugin.proxy.fast"),
                           ({"proxy": True}, "router_plugin.proxy")):
        with pytest.raises(ConfigError) as caught:
            router_plugin.load_config({"model_list": models, "router_plugin": section})
        text = str(caught.value)
        assert words in text and "\n" not in text
    assert router_plugin.load_config({"model_list": models, "router_plugin": {}}).settings.fast_refusals is True
    off = {"model_list": models, "router_plugin": {"proxy": {"fast_refusals": False}}}
    assert router_plugin.load_config(off).settings.fast_refusals is False
