"""pytest plugin: run the EXISTING integration tests with every router built through the adapter prototype.

    python -m pytest -p docs.adapter_probes.use_adapter tests/test_streams.py   # (PYTHONPATH = worktree)

Rebinds router_plugin.build_router and router_plugin.demo.run_burst before the test modules import them; the
tests themselves are unchanged. Measurement only (docs/adapter.md); not part of the suite.
"""
import router_plugin
import router_plugin.demo
from router_plugin.adapter import burst, prototype

router_plugin.build_router = prototype.build_router
router_plugin.demo.run_burst = burst.run_burst
