"""Benchmarks of router_plugin against stock LiteLLM 1.108 (issue 6). Run: ``python -m bench [--quick]``."""
