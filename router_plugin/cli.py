"""``router-plugin``: the operator's command line.

    router-plugin status --config F [--json] [--watch]   what every worker sees: pools, resets, cooldowns
    router-plugin check F                                 every problem of a config, with its key and a fix
    router-plugin models [--config F] [--write FILE]      the live free roster; which deployments are gone
    router-plugin key [--config F]                        the OpenRouter tier and today's count; sync the counter
    router-plugin demo                                    a burst from several workers (simulator + embedded Valkey)

None of them spends a completion request: they read the shared store and the providers' free endpoints only.
Exit codes: 0 fine; 1 the answer is bad news (check found errors, models found configured deployments gone);
2 the command could not run (no config, store or provider unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import _env  # noqa: F401

CONFIG_ENV = "ROUTER_PLUGIN_CONFIG"
CLEAR = "\x1b[H\x1b[2J"  # cursor home + clear screen: --watch redraws in place


class CliError(Exception):
    """A command could not run; printed as ``router-plugin: error: ...`` with exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"router-plugin: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover - interactive
        return 130


def _wrap(text: str, width: int = 100) -> str:
    """Fill prose paragraphs; keep indented lines (examples) as they are."""
    out = []
    for para in text.split("\n\n"):
        if any(line.startswith("  ") for line in para.splitlines()):
            out.append(para)
        else:
            out.append(textwrap.fill(" ".join(para.split()), width))
    return "\n\n".join(out)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


def build_parser() -> argparse.ArgumentParser:
    fmt = _Formatter
    parser = argparse.ArgumentParser(
        prog="router-plugin", formatter_class=fmt,
        description=_wrap("Operator tools for router_plugin: quota status, config check, live roster, "
                          "OpenRouter tier."),
        epilog=__doc__.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(p: argparse.ArgumentParser, required_hint: str) -> None:
        p.add_argument("--config", "-c", default=os.environ.get(CONFIG_ENV),
                       help=f"LiteLLM config YAML with the router_plugin section (default: ${CONFIG_ENV}); "
                            f"{required_hint}")

    status = commands.add_parser(
        "status", formatter_class=fmt, help="quota left in every pool, resets, cooldowns and quarantines",
        description=_wrap("Read the shared quota store named by the config (the same Redis keys every worker uses) and "
                    "show, per pool: used / limit per minute and per day, tokens, when each resets (UTC and "
                    "'in 3h12m', by the Redis clock); per deployment: cooling down or quarantined, until when, and "
                    "why. Never sends a request."),
        epilog=_wrap("The config's API keys must be resolvable (environment variables set): a pool is found by a hash "
               "of its key; the key itself is never printed or stored.\n\n"
               "--json prints one document (schema router_plugin.status/1, see router_plugin/report.py);\n"
               "--watch --json prints one document per line per refresh."))
    config_arg(status, "required")
    status.add_argument("--json", action="store_true", help="print JSON (schema router_plugin.status/1)")
    status.add_argument("--watch", "-w", action="store_true", help="refresh in place until Ctrl-C")
    status.add_argument("--interval", "-n", type=float, default=2.0, help="seconds between refreshes (default 2)")
    status.add_argument("--count", type=int, default=0, help="with --watch: stop after this many refreshes")
    status.set_defaults(func=cmd_status)

    check = commands.add_parser(
        "check", formatter_class=fmt, help="validate a config: every problem with its key and a fix",
        description=_wrap("Validate a config without starting anything (no Redis, no network): print every error with "
                    "its key and a fix, and warn about retired models, chains with no Groq fallback, Groq models "
                    "missing from the limits table and limits that no deployment uses. WARN/NOTE lines also name "
                    "every LiteLLM setting the plugin overrides (with why) and the Redis it takes as its store. "
                    "Reads .env from the working directory and the config's directory."),
        epilog=_wrap("Exit code 1 when there are errors, 0 otherwise (warnings included)."))
    check.add_argument("config", help="the LiteLLM config YAML to check")
    check.add_argument("--ignore-env", action="store_true",
                       help="report unset environment variables (API keys kept out of CI) as warnings")
    check.add_argument("--json", action="store_true", help="print the problems as JSON")
    check.set_defaults(func=cmd_check)

    models = commands.add_parser(
        "models", formatter_class=fmt, help="the live free roster (OpenRouter and Groq) with context windows",
        description=_wrap("List the free models live: OpenRouter GET /api/v1/models (free = ':free' or zero price) and "
                    "Groq GET /openai/v1/models (needs a key), with their context windows. With a config, mark "
                    "its deployments and list those the roster no longer has (gone)."),
        epilog=_wrap("Base URLs come from the deployments' api_base, else https://openrouter.ai/api/v1 and "
               "https://api.groq.com/openai/v1. Without --config the keys come from OPENROUTER_API_KEY and "
               "GROQ_API_KEY.\n\n--write FILE writes a YAML roster: router_plugin.limits context overrides "
               "(merge them into the config) and the roster itself.\n\nExit code 1 when a configured "
               "deployment is gone, 2 when a roster could not be fetched."))
    config_arg(models, "optional")
    models.add_argument("--provider", choices=("openrouter", "groq"), help="only this provider")
    models.add_argument("--write", metavar="FILE", help="write the roster file (YAML)")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.add_argument("--timeout", type=float, default=15.0, help="HTTP timeout in seconds (default 15)")
    models.set_defaults(func=cmd_models)

    key = commands.add_parser(
        "key", formatter_class=fmt, help="the OpenRouter tier and today's free requests; sync the shared counter",
        description=_wrap("Ask OpenRouter GET /api/v1/key for each account of the config: is_free_tier and "
                    "free_model_daily_requests (used / limit). Raise the shared day counter of the account pool to "
                    "what OpenRouter has counted (so the counters start true after a restart or use by another "
                    "app), and warn when router_plugin.openrouter.tier disagrees with the key (50 vs 1000 a day)."),
        epilog=_wrap("Without --config: the key in OPENROUTER_API_KEY, reported only (no store to sync)."))
    config_arg(key, "optional")
    key.add_argument("--json", action="store_true", help="print JSON")
    key.add_argument("--timeout", type=float, default=15.0, help="HTTP timeout in seconds (default 15)")
    key.set_defaults(func=cmd_key)

    reset = commands.add_parser(
        "reset", formatter_class=fmt, help="clear a pool's block, a model's cooldown or quarantine, for every worker",
        description=_wrap("Clear what the workers share in Redis: a model's cooldown or quarantine (--model), a "
                    "pool's blocks (--pool: 'openrouter' or a model; with --counts also its counts), or everything "
                    "of the config (--all). Names each thing it cleared. Use it when a block is wrong (a model is "
                    "back, an account was topped up); the next provider answer sets a right one again."))
    config_arg(reset, "required")
    reset.add_argument("--model", action="append", default=[], metavar="MODEL",
                       help="a deployment's model (e.g. openrouter/qwen/qwen3-coder:free) or a model group; repeatable")
    reset.add_argument("--pool", action="append", default=[], metavar="POOL",
                       help="'openrouter' (every OpenRouter account pool) or a Groq model; repeatable")
    reset.add_argument("--counts", action="store_true", help="with --pool/--all: also forget the pool's counts")
    reset.add_argument("--all", action="store_true", help="every cooldown, quarantine and block of the config")
    reset.set_defaults(func=cmd_reset)

    demo = commands.add_parser(
        "demo", formatter_class=fmt, help="run a burst through the chain against the offline simulator",
        description=_wrap("Start the provider simulator and the embedded Valkey, send a burst of requests from several "
                    "worker processes through two OpenRouter :free models and two Groq models, and show which "
                    "deployment served each request, the fallbacks taken, the refusals and the quota left."),
        epilog=_wrap("Watch it from another terminal:\n"
               "  router-plugin demo --redis-url redis://127.0.0.1:6379/0 --write-config /tmp/demo.yaml\n"
               "  router-plugin status --config /tmp/demo.yaml --watch"))
    demo.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    demo.add_argument("--requests", type=int, default=25, help="requests per worker, all at once (default 25)")
    demo.add_argument("--gone", action="store_true",
                      help="make the first OpenRouter model answer 404 'No endpoints found' "
                           "(shows quarantine + fallback)")
    demo.add_argument("--redis-url", help="use this Redis instead of a fresh embedded one")
    demo.add_argument("--redis-timeout", type=float, metavar="S",
                      help="router_plugin.redis_timeout_s of the workers (default 2.0); raise it on a loaded machine, "
                           "where a slower Redis reply would make them fall back to per-process limits")
    demo.add_argument("--write-config", metavar="FILE",
                      help="write the demo's config (YAML) so `router-plugin status --config FILE` can watch it")
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    demo.add_argument("--quiet", action="store_true", help="omit the per-request lines")
    demo.set_defaults(func=cmd_demo)
    return parser


# ---- shared ---------------------------------------------------------------------------------------------------

def _load(path: str | None, required: bool = True):
    from .config import load_config
    from .errors import ConfigError

    if not path:
        if required:
            raise CliError(f"no config: pass --config FILE or set {CONFIG_ENV}")
        return None
    try:
        return load_config(path)
    except ConfigError as exc:
        raise CliError(f"{exc}\n(`router-plugin check {path}` lists every problem)") from None


def _plans(cfg) -> list:
    from ._plans import PlanBook

    from .calibration import learnt_inputs

    book = PlanBook(cfg.settings.plan_inputs)
    book.learn(cfg.model_list, **learnt_inputs(cfg.settings))  # the account pools as the workers group them
    return [book.plan(d) for d in cfg.model_list]


def _store_errors() -> tuple[type[BaseException], ...]:
    import redis

    from .errors import StoreError

    return (StoreError, redis.RedisError, OSError)


def _dump(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=False)


# ---- status ---------------------------------------------------------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    try:
        return _status(args)
    except BrokenPipeError:  # `router-plugin status ... | head`: the reader has gone, which is no error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # and no second traceback when Python flushes stdout at exit
        return 0


def _status(args: argparse.Namespace) -> int:
    from .report import open_store, render_status, take_snapshot

    cfg = _load(args.config)
    store = open_store(cfg.settings)
    plans = _plans(cfg)
    errors = _store_errors()

    def snapshot():
        return take_snapshot(store, plans, config=cfg.source, settings=cfg.settings)

    if not args.watch:
        try:
            snap = snapshot()
        except errors as exc:
            raise CliError(_store_message(store, exc)) from None
        print(_dump(snap.as_dict()) if args.json else render_status(snap))
        return 0
    frames = 0
    try:
        while True:
            try:
                snap = snapshot()
                body = _dump(snap.as_dict()).replace("\n", "") if args.json else render_status(snap)
            except errors as exc:
                body = json.dumps({"error": _store_message(store, exc)}) if args.json else _store_message(store, exc)
            if args.json:
                print(body, flush=True)
            else:
                sys.stdout.write(f"{CLEAR}{body}\n\nevery {args.interval:g}s — Ctrl-C to stop\n")
                sys.stdout.flush()
            frames += 1
            if args.count and frames >= args.count:
                break
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    return 0


def _store_message(store, exc: BaseException) -> str:
    text = str(exc)
    if "quota store" in text:
        return text
    return (f"quota store {store.target.describe()} could not be read: {type(exc).__name__}: {text}. "
            "Check that Redis is running and that router_plugin.redis_url is the one the workers use.")


# ---- reset ----------------------------------------------------------------------------------------------------

def cmd_reset(args: argparse.Namespace) -> int:
    from .report import open_store

    if not (args.model or args.pool or args.all):
        raise CliError("reset: say what to clear: --model MODEL, --pool POOL (openrouter or a Groq model) or --all")
    cfg = _load(args.config)
    store = open_store(cfg.settings)
    plans = _plans(cfg)
    names = {p.model for p in plans} | {p.model_name for p in plans} | {p.model.split("/", 1)[-1] for p in plans}
    for wanted in args.model + [p for p in args.pool if p != "openrouter"]:
        if wanted not in names:
            raise CliError(f"reset: {wanted!r} is not a model or group of {cfg.source}; "
                           f"configured: {', '.join(sorted({p.model for p in plans}))}")

    def picked(plan, values) -> bool:
        return args.all or any(v in (plan.model, plan.model_name, plan.model.split("/", 1)[-1]) or
                               (v == "openrouter" and plan.provider == "openrouter") for v in values)

    cleared: list[str] = []
    try:
        client, seen = store.client, set()
        for plan in plans:
            if not plan.metered:
                continue
            if picked(plan, args.model) or (args.all and not args.pool):
                key = store.keys.model(plan)
                why = client.hget(key, "why")
                if _active(client.hget(key, "until")) and key not in seen:
                    client.delete(key)
                    cleared.append(f"{plan.model}: cleared {_text(why) or 'cooldown'}")
                seen.add(key)
            if picked(plan, args.pool) or args.all:
                for counter in plan.counters:
                    key = store.keys.counter(plan, counter)
                    if key in seen:
                        continue
                    seen.add(key)
                    if args.counts:
                        if client.delete(key):
                            cleared.append(f"{counter.label}: cleared its counts and block")
                    elif _active(client.hget(key, "until")):
                        why = client.hget(key, "why")
                        client.hdel(key, "until", "why")
                        cleared.append(f"{counter.label}: cleared block ({_text(why) or 'blocked'})")
    except _store_errors() as exc:
        raise CliError(_store_message(store, exc)) from None
    print("\n".join(cleared) if cleared else "nothing to clear: no cooldown, quarantine or block matched")
    return 0


def _active(until: Any) -> bool:
    try:
        return until is not None and float(until) > time.time() * 1000
    except ValueError:
        return False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


# ---- check ----------------------------------------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    from .checks import check

    result = check(args.config, ignore_env=args.ignore_env)
    print(_dump(result.as_dict()) if args.json else result.render())
    return 0 if result.ok else 1


# ---- models ---------------------------------------------------------------------------------------------------

def cmd_models(args: argparse.Namespace) -> int:
    import yaml

    from .report import render_table
    from .roster import PROVIDERS, configured, fetch_rosters, gone_deployments, roster_document

    cfg = _load(args.config, required=False)
    model_list = cfg.model_list if cfg else None
    providers = (args.provider,) if args.provider else PROVIDERS
    rosters = asyncio.run(fetch_rosters(model_list, providers, timeout_s=args.timeout))
    gone = gone_deployments(model_list, rosters) if model_list else []
    uses: dict[str, list[str]] = {}
    for c in configured(model_list or []):
        uses.setdefault(c.model, []).append(f"{c.key} ({c.group})")
    errors = [r.error for r in rosters if r.error]

    if args.write:
        doc = roster_document(rosters, model_list)
        header = (f"# router_plugin roster, written by `router-plugin models` at {doc['roster']['fetched_at']}.\n"
                  "# router_plugin.limits: context windows of the live roster; merge them into your config's\n"
                  "# router_plugin.limits (LiteLLM's `include:` would replace the whole router_plugin section).\n"
                  "# roster: every free model listed, for reference (and `gone`: configured deployments missing).\n")
        Path(args.write).write_text(header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=120))

    if args.json:
        print(_dump({
            "rosters": [{"provider": r.provider, "base_url": r.base_url, "error": r.error,
                         "models": [{"id": m.id, "model": m.model, "context": m.context,
                                     "max_completion_tokens": m.max_completion, "configured": uses.get(m.model, [])}
                                    for m in sorted(r.models.values(), key=lambda m: m.id)]} for r in rosters],
            "gone": [{"key": c.key, "group": c.group, "model": c.model} for c in gone],
            "written": args.write,
        }))
    else:
        table: list[tuple] = [("provider", "model", "context", "max output", "configured")]
        for r in rosters:
            for m in sorted(r.models.values(), key=lambda m: m.id):
                table.append((r.provider, m.id, m.context or "?", m.max_completion or "-",
                              ", ".join(uses.get(m.model, []))))
        for r in rosters:
            state = f"ERROR {r.error}" if r.error else f"{len(r.models)} free models"
            print(f"{r.provider:<10}  {r.base_url}/models: {state}")
        print()
        if len(table) > 1:
            print(render_table(table))
        if model_list:
            print()
            if gone:
                print("configured deployments the live roster no longer lists (GONE):")
                for c in gone:
                    print(f"  GONE  {c.key}  {c.model}  (group {c.group}) — remove or replace it; the router "
                          "quarantines it on its first 404")
            elif not errors:
                print("every configured deployment is in the live roster")
        if args.write:
            print(f"\nwrote {args.write}")
    if errors and not any(r.models for r in rosters):
        return 2
    if gone:
        return 1
    return 2 if errors else 0


# ---- key ------------------------------------------------------------------------------------------------------

def cmd_key(args: argparse.Namespace) -> int:
    from .report import counter_status, open_store, when
    from .roster import KeyLookupError, day_fact, endpoints, fetch_key, is_openrouter_free_model, tier_disagreement

    cfg = _load(args.config, required=False)
    model_list = cfg.model_list if cfg else None
    eps = [ep for ep in endpoints(model_list, "openrouter")
           if not model_list or any(is_openrouter_free_model(c.model) for c in ep.deployments)]
    if not eps:
        raise CliError(f"{cfg.source}: no OpenRouter :free deployment, so no account to ask about")

    async def fetch_all():
        import httpx

        async with httpx.AsyncClient(timeout=args.timeout, follow_redirects=True) as client:
            return await asyncio.gather(*(fetch_key(client, ep.base_url, ep.api_key) for ep in eps),
                                        return_exceptions=True)

    infos = asyncio.run(fetch_all())
    store = open_store(cfg.settings) if cfg else None
    plans = _plans(cfg) if cfg else []
    reports, failed = [], False
    for ep, info in zip(eps, infos):
        report: dict[str, Any] = {"account": ep.account, "url": f"{ep.base_url}/key",
                                  "deployments": [c.key for c in ep.deployments]}
        reports.append(report)
        if isinstance(info, BaseException):
            if not isinstance(info, KeyLookupError):
                raise info
            report["error"] = str(info)
            failed = True
            continue
        report["key"] = info.as_dict()
        if store is None:
            continue
        free = next(c for c in ep.deployments if is_openrouter_free_model(c.model))
        plan = plans[free.index]
        day = next((c for c in plan.counters if c.limit.name == "day"), None)
        override = cfg.settings.limits.get("openrouter")
        report["config"] = {"tier": cfg.settings.openrouter_tier, "daily_limit": day.limit.capacity if day else None}
        report["warning"] = tier_disagreement(day.limit.capacity, info, cfg.settings.openrouter_tier,
                                              override.rpd if override else None) if day else None
        try:
            before, _ = counter_status(store, plan, day)
            fact = day_fact(info)
            if fact is not None:
                store.calibrate(plan, [fact])
            after, now = counter_status(store, plan, day)
        except _store_errors() as exc:
            raise CliError(_store_message(store, exc)) from None
        report["store"] = {"store": store.target.describe(), "day_used_before": before.used,
                           "day_used_after": after.used, "day_limit": after.limit, "resets_at": after.resets_at,
                           "synced": fact is not None}
        report["_resets"] = when(after.resets_at, now)
    if args.json:
        print(_dump({"accounts": [{k: v for k, v in r.items() if not k.startswith("_")} for r in reports]}))
        return 2 if failed else 0
    for r in reports:
        used_by = ", ".join(r["deployments"]) or "OPENROUTER_API_KEY"
        print(f"OpenRouter account {r['account']} ({used_by})  {r['url']}")
        if "error" in r:
            print(f"  ERROR {r['error']}")
            continue
        k = r["key"]
        bought = {True: "never bought credits", False: "has bought credits", None: "not reported"}[k["is_free_tier"]]
        print(f"  is_free_tier: {str(k['is_free_tier']).lower()} ({bought})")
        if k["daily_used"] is not None or k["daily_remaining"] is not None:
            print(f"  free_model_daily_requests: {k['daily_used']} used of {k['daily_limit']} "
                  f"({k['daily_remaining']} left)")
        else:
            print("  free_model_daily_requests: not reported "
                  f"(tier inferred from is_free_tier: {k['daily_limit']}/day)")
        print(f"  tier: {k['tier']} ({k['daily_limit']} free requests/day)")
        if "config" in r:
            c = r["config"]
            verdict = "agrees" if not r["warning"] else "DISAGREES"
            print(f"  config: router_plugin.openrouter.tier = {c['tier']} ({c['daily_limit']}/day) — {verdict}")
            if r["warning"]:
                print(f"  WARN  {r['warning']}")
            s = r["store"]
            if s["synced"]:
                raised = s["day_used_after"] != s["day_used_before"]
                change = ("raised from {day_used_before} to {day_used_after}" if raised
                          else "already {day_used_after} (at least what OpenRouter counted)").format(**s)
                print(f"  shared day counter in {s['store']}: {change} of {s['day_limit']}; resets {r['_resets']}")
            else:
                print(f"  shared day counter in {s['store']}: unchanged ({s['day_used_after']} of {s['day_limit']}): "
                      "the key did not report today's count")
    return 2 if failed else 0


# ---- demo -----------------------------------------------------------------------------------------------------

def cmd_demo(args: argparse.Namespace) -> int:
    import litellm
    import yaml

    from .config import load_config
    from .demo import DEMO_CHAIN, demo_config, run_burst
    from .report import open_store, render_status, render_table, rows_of, take_snapshot
    from .sim import start_sim

    litellm.suppress_debug_info = True
    sim = start_sim(port=0)
    workdir = Path(tempfile.mkdtemp(prefix="router-plugin-demo-"))
    try:
        if args.gone:
            sim.configure({"models": {DEMO_CHAIN[0].split("/", 1)[1]: {"gone": True}}})
        extra = {"redis_timeout_s": args.redis_timeout} if args.redis_timeout else {}
        config = demo_config(sim.base_url, redis_url=args.redis_url, embedded_path=str(workdir / "quota.rdb"),
                             **extra)
        say = (lambda *a: None) if args.json else print
        if args.write_config:
            Path(args.write_config).write_text(yaml.safe_dump(config, sort_keys=False))
            say(f"config written to {args.write_config} (router-plugin status --config {args.write_config} --watch)")
        say(f"simulator: {sim.base_url}   quota store: {args.redis_url or 'embedded Valkey in ' + str(workdir)}")
        say(f"chain 'free-chat': {' -> '.join(DEMO_CHAIN)}")
        say(f"burst: {args.workers} worker processes x {args.requests} requests, all at once\n")
        result = run_burst(config, args.workers, args.requests, min_minute_left_s=20)
        loaded = load_config(config)
        snap = take_snapshot(open_store(loaded.settings), _plans(loaded))  # the shared counters the workers left
        stats = sim.stats()
        provider_429s = sum(stats.get("rate_limited", {}).values())
        if args.json:
            print(json.dumps({
                "served": len(result.served), "refused": len(result.refused), "failed": len(result.failed),
                "served_by": dict(result.served_by()), "fallbacks": result.fallbacks(),
                "provider_429s": provider_429s, "quota": [r.as_dict() for r in rows_of(snap)],
                "status": snap.as_dict(), "outcomes": [o.__dict__ for o in result.outcomes],
            }, indent=2))
            return 0
        if not args.quiet:
            for o in sorted(result.outcomes, key=lambda o: (o.worker, o.latency_s)):
                what = (f"-> {o.model}" if o.ok else "refused" if o.error_type == "QuotaExhaustedError"
                        else f"FAILED {o.error_type}")
                print(f"  worker {o.worker}  {what:<52} attempts={o.attempts}  {o.latency_s * 1000:6.0f} ms")
            print()
        served_by = result.served_by()
        print(render_table([("deployment", "served")] + [(m, served_by.get(m, 0)) for m in DEMO_CHAIN]))
        print(f"\nserved {len(result.served)} / {len(result.outcomes)}   refused at once {len(result.refused)}   "
              f"other failures {len(result.failed)}   fallbacks taken {result.fallbacks()}   "
              f"429s sent by the providers {provider_429s}   burst {result.ended - result.started:.1f} s")
        reasons = Counter(_first_line(o.error) for o in result.refused + result.failed)
        if reasons:
            print("\nwhy requests were refused:")
            for reason, n in reasons.most_common(5):
                print(f"  {n:3d} x {reason}")
        print()
        print(render_status(snap, title="quota left (shared by every worker)"))
        return 0
    finally:
        sim.stop()


def _first_line(text: str | None) -> str:
    text = (text or "").strip().splitlines()[0] if text else ""
    return text.replace("litellm.RateLimitError: ", "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
