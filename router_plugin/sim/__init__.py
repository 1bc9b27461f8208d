"""router_plugin.sim — an offline simulator of OpenRouter and Groq for tests, demos and benchmarks.

Same paths, limits, headers, error bodies and streaming format as the real services (see
``/work/shared/docs/providers.md``), deterministic and fast, on aiohttp::

    from router_plugin.sim import start_sim
    with start_sim(port=0) as sim:
        sim.configure({"models": {"qwen/qwen3-coder:free": {"gone": True}}})
        ...  # point clients at sim.openrouter_base / sim.groq_base
        print(sim.stats()["responses"])

Or from a shell: ``python -m router_plugin.sim --port 8090``.
"""

from .app import build_app
from .clock import ManualClock
from .config import ConfigError
from .gotime import go_duration, parse_go_duration
from .server import SimHandle, start_sim
from .state import SimState, key_hash

__all__ = ["start_sim", "SimHandle", "build_app", "SimState", "ManualClock", "ConfigError", "go_duration",
           "parse_go_duration", "key_hash"]
