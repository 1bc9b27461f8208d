"""``router-plugin``: the operator's command line.

    router-plugin demo     a burst from several workers through a 4-deployment chain (simulator + embedded Redis)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from . import _env  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="router-plugin", description=__doc__.split("\n\n")[0].strip("`: "))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run a burst through the chain against the offline simulator",
        description="Start the provider simulator and the embedded Redis, send a burst of requests from several "
                    "worker processes through two OpenRouter :free models and two Groq models, and show which "
                    "deployment served each request, the fallbacks taken, the refusals and the quota left.",
    )
    demo.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    demo.add_argument("--requests", type=int, default=25, help="requests per worker, all at once (default 25)")
    demo.add_argument("--gone", action="store_true",
                      help="make the first OpenRouter model answer 404 'No endpoints found' (shows quarantine + fallback)")
    demo.add_argument("--redis-url", help="use this Redis instead of a fresh embedded one")
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    demo.add_argument("--quiet", action="store_true", help="omit the per-request lines")
    demo.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def cmd_demo(args: argparse.Namespace) -> int:
    import litellm

    from .demo import DEMO_CHAIN, demo_config, run_burst, wait_for_fresh_minute
    from .installer import build_router, installed
    from .report import quota_rows, render_rows, render_table
    from .sim import start_sim

    litellm.suppress_debug_info = True
    sim = start_sim(port=0)
    workdir = Path(tempfile.mkdtemp(prefix="router-plugin-demo-"))
    try:
        if args.gone:
            sim.configure({"models": {DEMO_CHAIN[0].split("/", 1)[1]: {"gone": True}}})
        config = demo_config(sim.base_url, redis_url=args.redis_url, embedded_path=str(workdir / "quota.rdb"))
        say = (lambda *a: None) if args.json else print
        say(f"simulator: {sim.base_url}   quota store: {args.redis_url or 'embedded Redis in ' + str(workdir)}")
        say(f"chain 'free-chat': {' -> '.join(DEMO_CHAIN)}")
        say(f"burst: {args.workers} worker processes x {args.requests} requests, all at once\n")
        wait_for_fresh_minute()
        result = run_burst(config, args.workers, args.requests)
        router = build_router(config)  # only to read the shared counters the workers left
        inst = installed(router)
        rows = quota_rows(inst.sync_store, [inst.plans.plan(d) for d in router.model_list])
        stats = sim.stats()
        provider_429s = sum(stats.get("rate_limited", {}).values())
        if args.json:
            print(json.dumps({
                "served": len(result.served), "refused": len(result.refused), "failed": len(result.failed),
                "served_by": dict(result.served_by()), "fallbacks": result.fallbacks(),
                "provider_429s": provider_429s, "quota": [r.as_dict() for r in rows],
                "outcomes": [o.__dict__ for o in result.outcomes],
            }, indent=2))
            return 0
        if not args.quiet:
            for o in sorted(result.outcomes, key=lambda o: (o.worker, o.latency_s)):
                what = f"-> {o.model}" if o.ok else f"refused" if o.error_type == "QuotaExhaustedError" else f"FAILED {o.error_type}"
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
        print("\nquota left (shared by every worker):")
        print(render_rows(rows))
        return 0
    finally:
        sim.stop()


def _first_line(text: str | None) -> str:
    text = (text or "").strip().splitlines()[0] if text else ""
    return text.replace("litellm.RateLimitError: ", "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
