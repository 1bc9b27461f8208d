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
