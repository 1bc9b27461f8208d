"""Offline-safe defaults, set before LiteLLM is first imported.

Without ``LITELLM_LOCAL_MODEL_COST_MAP`` LiteLLM fetches its cost map from the network at import; without
``HF_HUB_OFFLINE`` the first stream stalls ~23 s retrying huggingface.co for a tokenizer. Users can still
override either by setting the variable themselves.
"""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
