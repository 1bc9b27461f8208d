"""Shared fixtures: a real redis-server on a free loopback port, and the provider simulator on 127.0.0.1."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from tests.servers import RedisServer  # noqa: E402


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """A clean database on the session's redis-server."""
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture(scope="session")
def sim_server():
    from router_plugin.sim import start_sim

    sim = start_sim(port=0)
    yield sim
    sim.stop()


@pytest.fixture
def sim(sim_server):
    sim_server.reset()
    return sim_server


# ---- the proxy tests (marker `proxy`): the SDK run on a newer LiteLLM deselects them (`pytest -m "not proxy"`) ----
# They run the LiteLLM proxy, which installs only on the 1.108 line (litellm[proxy]; README "Support table").
PROXY_FILES = {"test_proxy_e2e.py", "test_streams_proxy.py", "test_proxy_paths.py", "test_proxy_early.py",
               "test_priority_proxy.py", "test_proxy_fast_refusal.py",
               "test_bench.py"}  # the bench runs the proxy (part 5) and stock LiteLLM 1.108's strategies
PROXY_TESTS = {
    "test_the_proxy_refuses_a_bad_config_with_one_line",  # test_config.py
    "test_through_the_proxy_a_bad_request_is_a_400_without_retry_after_and_no_attempt",  # test_requests.py
    "test_four_proxy_workers_on_the_embedded_default_serve_capacity_without_provider_429s",  # test_store_checks.py
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in PROXY_FILES or getattr(item, "originalname", item.name) in PROXY_TESTS:
            item.add_marker(pytest.mark.proxy)
