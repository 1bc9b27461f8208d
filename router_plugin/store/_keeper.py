"""The embedded server's keeper: run as ``python -I _keeper.py BINARY CONF LOCK USERS PIDFILE IDLE_S`` (stdlib only,
imports nothing of router_plugin, so it starts in milliseconds and holds no LiteLLM in memory).

It detaches (fork + setsid: a proxy's process-group kill does not reach it), starts the server as its child and
watches the users file: every process that uses the embedded store holds a shared ``flock`` on it for its lifetime,
which the kernel drops when the process ends however it ends (SIGKILL included). When nobody has held it for
``IDLE_S`` seconds, the keeper stops the server with SIGTERM (it flushes the AOF) and exits. It does so holding the
start lock, so a process that is attaching at that moment waits and then starts a new server on the same files.
If the keeper itself is killed, the server gets SIGTERM too (Linux parent-death signal).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: the keeper's own SIGTERM handler still stops the server
        pass


def _try_lock(path: str, mode: int) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return fd
    except OSError:
        os.close(fd)
        return None


def main(argv: list[str]) -> int:
    binary, conf, lock_path, users_path, pid_path, idle_s = argv[:6]
    idle_s = float(idle_s)
    if os.fork():  # the starter waits for this parent only; the keeper lives on, reparented
        os._exit(0)
    os.setsid()
    server = subprocess.Popen([binary, conf], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent, close_fds=True)
    with open(pid_path + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {server.pid}\n")
    os.replace(pid_path + ".tmp", pid_path)

    def stop(*_: object) -> None:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

    def on_signal(*_: object) -> None:
        stop()
        _remove(pid_path)
        os._exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    idle_since: float | None = None
    while server.poll() is None:
        time.sleep(POLL_S)
        start_lock = _try_lock(lock_path, fcntl.LOCK_EX)
        if start_lock is None:  # someone is attaching right now: not idle
            idle_since = None
            continue
        try:
            users = _try_lock(users_path, fcntl.LOCK_EX)
            if users is None:
                idle_since = None
                continue
            os.close(users)
            now = time.monotonic()
            idle_since = idle_since or now
            if now - idle_since >= idle_s:
                stop()
                _remove(pid_path)
                return 0
        finally:
            os.close(start_lock)
    _remove(pid_path)
    return 0


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
