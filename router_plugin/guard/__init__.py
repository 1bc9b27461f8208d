"""The guard's pure parts (no LiteLLM): deadlines.py (the time limits), stream.py (the stream guard's state machine).
The adapter applies them through LiteLLM's hooks."""
