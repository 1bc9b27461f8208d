"""The time limits' pure parts (no LiteLLM): deadlines.py. The adapter applies them through LiteLLM's hooks."""
