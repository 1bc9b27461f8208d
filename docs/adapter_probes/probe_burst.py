"""The 4 x 25 burst through the adapter prototype on the running line; prints what each provider answered.

    python docs/adapter_probes/probe_burst.py [installer]   # 'installer': the current installer.build_router instead
"""
import pathlib
import sys
import tempfile
import time
import importlib.metadata as md

import router_plugin.demo as demo
from router_plugin.adapter import burst
from router_plugin.sim import start_sim
from tests.servers import RedisServer


def main():
    use_installer = "installer" in sys.argv[1:]
    rs = RedisServer(pathlib.Path(tempfile.mkdtemp()))
    rs.start()
    try:
        with start_sim(port=0) as sim:
            cfg = demo.demo_config(sim.base_url, redis_url=rs.url, redis_timeout_s=15)
            run = demo.run_burst if use_installer else burst.run_burst
            r = run(cfg, workers=4, per_worker=25, min_minute_left_s=30)
            st = sim.stats()
            print(f"[{md.version('litellm')}] via={'installer' if use_installer else 'adapter'} served={len(r.served)} "
                  f"by={dict(r.served_by())} refused={len(r.refused)} failed={len(r.failed)} "
                  f"duration={r.ended - r.started:.1f}s rate_limited={st['rate_limited']} responses={st['responses']}")
            print("  served after >1 attempt:", r.fallbacks(), " max attempts:", max((o.attempts for o in r.outcomes), default=0))
        for f in r.failed[:3]:
                print("  failed:", f.error_type, (f.error or "")[:200])
    finally:
        rs.stop()


if __name__ == "__main__":
    main()
