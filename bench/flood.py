"""Part 5 -- a refusal flood through the real LiteLLM proxy (issue 18 item 3).

One ``litellm --config ... --num_workers 2`` proxy per setup, against the simulator (answers at once, limits out of
reach) and one redis-server. Two model groups:

    serve   groq/openai/gpt-oss-120b, limits out of reach: every request is served
    flood   one OpenRouter ``:free`` deployment whose pool is out of quota (plugin: the account's day is spent;
            stock: ``rpm: 1`` with ``enforce_model_rate_limits`` and ``num_retries: 0``, LiteLLM's own local
            refusal answered at once, spent first)

Each phase sends ``n`` requests, ``concurrency`` in flight, from one client process (raw HTTP, no SDK retries), and
counts what came back: **served requests/s** (phase ``serve``) and **refusals/s** (phase ``flood``: every reply a
429 that was never sent upstream). Setups: ``plugin`` (``callbacks: router_plugin.proxy_handler``) and ``stock``
(LiteLLM 1.108's default simple-shuffle, no plugin). The two setups run in the same bench run, one after the other;
the phases alternate (serve, flood, serve, flood) and the rates are each phase's best of its repeats, so a burst of
load from other processes on the machine lands on one repeat, not on the ratio.

Target (issue 18): plugin refusals/s >= 2x plugin served requests/s -- a refusal costs a small fraction of a
served request. Also reported: the proxy workers' CPU per request (from /proc) in each phase.

    python -m bench.flood [--n 1500] [--concurrency 32] [--setups plugin,stock]   # standalone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import configs

HUGE = 10**9
SPENT = 10
SERVE, FLOOD = "serve", "flood"
SERVE_MODEL = "groq/openai/gpt-oss-120b"
FLOOD_MODEL = "openrouter/meta-llama/llama-3.3-70b-instruct:free"
SIM_LIMITS = {
    # the flood pool: an OpenRouter account with 10 requests a day, spent before the flood
    "openrouter": {"accounts": {"*": {"minute_limit": 20, "daily_limit": SPENT}}},
    # Groq resets carried in headers must stay >= 1 ms (see bench/overhead.py): tpm 600,000
    "groq": {"limits": {"openai/gpt-oss-120b": {"rpm": HUGE, "rpd": 10_000_000, "tpm": 600_000, "tpd": HUGE}}},
}
SETUPS = ("plugin", "stock")
LABELS = {"plugin": "router_plugin proxy", "stock": "stock LiteLLM proxy (simple-shuffle)"}
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "LITELLM_TELEMETRY": "False"}


def config_yaml(setup: str, sim_base: str, redis_url: str) -> str:
    serve = (f"{{model: {SERVE_MODEL}, api_key: {configs.GROQ_KEY}, api_base: {sim_base}/openai/v1"
             + (", rpm: 1000000000" if setup == "stock" else "") + "}")
    flood = (f"{{model: {FLOOD_MODEL}, api_key: {configs.OPENROUTER_KEY}, api_base: {sim_base}/api/v1"
             + (", rpm: 1" if setup == "stock" else "") + "}")
    text = f"""model_list:
  - model_name: {SERVE}
    litellm_params: {serve}
  - model_name: {FLOOD}
    litellm_params: {flood}
general_settings:
  master_key: os.environ/LITELLM_MASTER_KEY
"""
    if setup == "plugin":
        text += f"""litellm_settings:
  callbacks: router_plugin.proxy_handler
router_plugin:
  redis_url: {redis_url}
  openrouter: {{tier: free}}
  limits:
    {SERVE_MODEL}: {{rpm: {HUGE}, rpd: 10000000, tpm: 600000, tpd: {HUGE}}}
"""
    else:
        # num_retries 0: LiteLLM would otherwise retry its own rate-limit refusal with backoff sleeps (and honour
        # a Retry-After up to 60 s) -- a stock user who wants refusals answered at once sets this
        text += """router_settings:
  optional_pre_call_checks: ["enforce_model_rate_limits"]
  num_retries: 0
"""
    return text


def _litellm() -> list[str]:
    here = Path(sys.executable).with_name("litellm")
    if here.exists():
        return [str(here)]
    found = shutil.which("litellm")
    if found:
        return [found]
    return [sys.executable, "-c", "from litellm.proxy.proxy_cli import run_server; run_server()"]


class Proxy:
    """``litellm --config C --num_workers W`` on a free port, its own process group; ``stop()`` ends that group."""

    def __init__(self, config_text: str, workers: int, env: dict[str, str]):
        from router_plugin.store.binary import free_port

        self.dir = Path(tempfile.mkdtemp(prefix="bench-flood-"))
        self.config = self.dir / "config.yaml"
        self.config.write_text(config_text)
        self.port = free_port()
        self.workers = workers
        self.key = "sk-" + secrets.token_urlsafe(32)
        self.env = {**os.environ, **OFFLINE_ENV, **env, "LITELLM_MASTER_KEY": self.key}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "proxy.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 240.0) -> "Proxy":
        import httpx

        log = open(self.log_path, "ab")
        cmd = [*_litellm(), "--config", str(self.config), "--host", "127.0.0.1", "--port", str(self.port),
               "--num_workers", str(self.workers), "--timeout_worker_healthcheck", "60"]
        self.proc = subprocess.Popen(cmd, cwd=self.dir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"proxy exited with {self.proc.returncode}: {self.tail()}")
                ready = self.log_path.read_text(errors="replace").count("Application startup complete")
                if ready >= self.workers:
                    try:
                        if httpx.get(self.url + "/health/liveliness", timeout=2).status_code == 200:
                            return self
                    except httpx.HTTPError:
                        pass
                time.sleep(0.25)
            raise RuntimeError(f"proxy not ready after {timeout_s:.0f}s: {self.tail()}")
        except BaseException:
            self.stop()
            raise

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """The proxy's processes (supervisor and workers): every pid of its process group."""
        if self.proc is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getpgid(int(entry.name)) == self.proc.pid:
                        pids.append(int(entry.name))
                except OSError:
                    pass
        return pids

    def cpu_s(self) -> float:
        """CPU seconds (user + system) of every process in the proxy's group so far."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.worker_pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
        return total / tick

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait(timeout=10)

    def __enter__(self) -> "Proxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def fire(url: str, key: str, group: str, n: int, concurrency: int) -> dict[str, Any]:
    """n chat completions for ``group``, ``concurrency`` in flight over keep-alive connections; statuses, seconds,
    one sample per status.

    The client writes one prepared HTTP/1.1 request per call and reads the reply itself (``_raw_call``): on this
    2-core machine an httpx client spent ~1.5 ms of CPU per request, more than a refusal costs the proxy, so it
    measured the client, not the proxy (``BENCH_FLOOD_CLIENT=httpx`` runs the former client)."""
    if os.environ.get("BENCH_FLOOD_CLIENT") == "httpx":
        return await _fire_httpx(url, key, group, n, concurrency)
    from urllib.parse import urlsplit

    where = urlsplit(url)
    body = json.dumps({"model": group, "max_tokens": 16,
                       "messages": [{"role": "user", "content": "flood request"}]}).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {where.hostname}:{where.port}\r\n"
               f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    statuses: dict[int, int] = {}
    samples: dict[int, dict] = {}
    left = {"n": n}

    async def one_loop() -> None:
        conn = None
        while left["n"] > 0:
            left["n"] -= 1
            try:
                if conn is None:
                    conn = await asyncio.open_connection(where.hostname, where.port)
                code, headers, text, keep = await asyncio.wait_for(_raw_call(*conn, request), 120)
                if not keep:
                    conn[1].close()
                    conn = None
                if code not in samples:
                    samples[code] = {"headers": {k: v for k, v in headers.items()
                                                 if k.startswith(("x-router", "retry-after", "x-should"))},
                                     "body": text[:300]}
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                code = 0
                samples.setdefault(0, {"body": repr(exc)[:300]})
                if conn is not None:
                    conn[1].close()
                conn = None
            statuses[code] = statuses.get(code, 0) + 1
        if conn is not None:
            conn[1].close()

    started = time.perf_counter()
    await asyncio.gather(*(one_loop() for _ in range(concurrency)))
    return {"statuses": statuses, "seconds": time.perf_counter() - started, "samples": samples}


async def _raw_call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> tuple[int, dict[str, str], str, bool]:
    """One request on an open keep-alive connection: (status, headers, body text, connection still usable)."""
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    code = int(head[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(p[:-2] for p in parts)
    else:
        body = await reader.read()
        return code, headers, body.decode("utf-8", "replace"), False
    keep = headers.get("connection", "").lower() != "close"
    return code, headers, body.decode("utf-8", "replace"), keep


async def _fire_httpx(url: str, key: str, group: str, n: int, concurrency: int) -> dict[str, Any]:
    import httpx

    statuses: dict[int, int] = {}
    samples: dict[int, dict] = {}
    left = {"n": n}
    body = {"model": group, "max_tokens": 16, "messages": [{"role": "user", "content": "flood request"}]}
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one_loop() -> None:
            while left["n"] > 0:
                left["n"] -= 1
                try:
                    r = await client.post("/v1/chat/completions", json=body, headers=headers)
                    code = r.status_code
                    if code not in samples:
                        samples[code] = {"headers": {k: v for k, v in r.headers.items()
                                                     if k.startswith(("x-router", "retry-after", "x-should"))},
                                         "body": r.text[:300]}
                except httpx.HTTPError as exc:
                    code = 0
                    samples.setdefault(0, {"body": repr(exc)[:300]})
                statuses[code] = statuses.get(code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(one_loop() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {"statuses": statuses, "seconds": seconds, "samples": samples}


def run_setup(setup: str, sim, redis_url: str, n: int, concurrency: int, repeats: int, workers: int,
              log=print) -> dict[str, Any]:
    sim.reset()
    sim.configure(SIM_LIMITS)
    import redis as redis_py

    client = redis_py.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    proxy = Proxy(config_yaml(setup, sim.base_url, redis_url), workers, {"REDIS_URL": redis_url})
    with proxy:
        warm = max(2 * concurrency, 50)
        # spend the flood pool (plugin: the OpenRouter account's 50/day; stock: rpm 1 per worker) and warm up
        asyncio.run(fire(proxy.url, proxy.key, FLOOD, 2 * SPENT if setup == "plugin" else 4 * workers, 4))
        asyncio.run(fire(proxy.url, proxy.key, SERVE, warm, concurrency))
        asyncio.run(fire(proxy.url, proxy.key, FLOOD, warm, concurrency))
        phases: dict[str, list[dict]] = {SERVE: [], FLOOD: []}
        for _ in range(repeats):
            for group in (SERVE, FLOOD):
                sent_before = _sim_sent(sim)
                cpu0 = proxy.cpu_s()
                spy = _profile(proxy, f"{setup}-{group}")
                out = asyncio.run(fire(proxy.url, proxy.key, group, n, concurrency))
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(timeout=60)
                out["proxy_cpu_s"] = proxy.cpu_s() - cpu0
                out["upstream_sent"] = _sim_sent(sim) - sent_before
                phases[group].append(out)
                ok = out["statuses"].get(200 if group == SERVE else 429, 0)
                log(f"      {setup} {group}: {ok}/{n} {'served' if group == SERVE else 'refused'} in "
                    f"{out['seconds']:.2f}s = {ok / out['seconds']:.0f}/s, proxy CPU "
                    f"{out['proxy_cpu_s'] / n * 1e6:.0f} us/request, statuses {out['statuses']}, "
                    f"upstream calls {out['upstream_sent']}")
    result: dict[str, Any] = {"setup": setup}
    for group, runs in phases.items():
        want = 200 if group == SERVE else 429
        rates = [r["statuses"].get(want, 0) / r["seconds"] for r in runs]
        best = max(range(len(runs)), key=lambda i: rates[i])
        result[group] = {"per_s": rates[best], "per_s_all": rates, "n": n, "ok": runs[best]["statuses"].get(want, 0),
                         "statuses": runs[best]["statuses"], "seconds": runs[best]["seconds"],
                         "cpu_us_per_request": runs[best]["proxy_cpu_s"] / n * 1e6,
                         "upstream_sent": sum(r["upstream_sent"] for r in runs),
                         "sample": runs[best]["samples"].get(want) or next(iter(runs[best]["samples"].values()), {})}
    result["ratio"] = result[FLOOD]["per_s"] / result[SERVE]["per_s"] if result[SERVE]["per_s"] else None
    return result


def _profile(proxy: Proxy, name: str) -> "subprocess.Popen | None":
    """``BENCH_FLOOD_PYSPY=DIR``: py-spy records one proxy worker during the phase (collapsed stacks in DIR)."""
    where = os.environ.get("BENCH_FLOOD_PYSPY")
    if not where or not shutil.which("py-spy"):
        return None
    workers = [p for p in proxy.worker_pids() if p != proxy.proc.pid]
    if not workers:
        return None
    Path(where).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["py-spy", "record", "-p", str(max(workers)), "-f", "raw", "-r", "200",
                             "-o", str(Path(where) / f"{name}.txt")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _sim_sent(sim) -> int:
    stats = sim.stats()
    return sum(n for models in stats.get("requests", {}).values() for n in models.values())


def run(bench, mode: dict) -> dict[str, Any]:
    """The bench part (``python -m bench --parts flood``): both setups in this run."""
    n, concurrency = mode.get("flood_n", 1500), mode.get("flood_concurrency", 32)
    repeats, workers = mode.get("flood_repeats", 2), mode.get("flood_workers", 2)
    bench.pool.drop(bench.pool.size)
    out: dict[str, Any] = {"n": n, "concurrency": concurrency, "repeats": repeats, "workers": workers, "runs": []}
    for setup in SETUPS:
        bench.log(f"    flood: {setup} proxy, {workers} workers, {n} requests per phase at {concurrency} in flight")
        out["runs"].append(run_setup(setup, bench.sim, bench.redis.url, n, concurrency, repeats, workers,
                                     log=bench.log))
    bench.redis.flush()
    bench.sim.reset()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1500)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--setups", default="plugin,stock")
    args = p.parse_args(argv)
    from router_plugin.sim import SimState, start_sim

    from .servers import RedisServer

    with RedisServer() as server:
        sim = start_sim(port=0, state=SimState(max_log=500_000))
        try:
            for setup in [s for s in args.setups.split(",") if s]:
                result = run_setup(setup, sim, server.url, args.n, args.concurrency, args.repeats, args.workers)
                print(json.dumps({k: v for k, v in result.items()}, default=str)[:3000])
        finally:
            sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
