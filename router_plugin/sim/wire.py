"""Wire helpers shared by both simulated providers: auth, request parsing, token counting, reply text.

Token counting is deliberately simple and deterministic (not a real tokenizer), so tests can predict it:
``prompt_tokens = ceil(characters of all message contents / 4) + 4 per message``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

__all__ = ["bearer_key", "read_json", "prompt_tokens", "max_tokens_of", "completion_tokens", "reply_pieces",
           "json_response", "DEFAULT_MAX_TOKENS", "NATURAL_REPLY_TOKENS"]

#: Groq reserves prompt + max_tokens up front (providers.md §2.2); absent max_tokens counts as this.
DEFAULT_MAX_TOKENS = 1024
#: Length of an unconstrained simulated reply, in (simulated) tokens.
NATURAL_REPLY_TOKENS = 16

_FILLER = ("this", "is", "a", "deterministic", "offline", "answer", "used", "by", "tests", "demos", "and",
           "benchmarks", "of", "router", "plugin", "ok")


def bearer_key(request: web.Request) -> str | None:
    """The API key from ``Authorization: Bearer <key>``; ``None`` when absent or empty."""
    auth = request.headers.get("Authorization", "")
    scheme, _, key = auth.partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


async def read_json(request: web.Request) -> dict[str, Any] | None:
    """The JSON object body, or ``None`` if it is not a JSON object."""
    try:
        body = json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts: count the text ones
        return sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    return 0


def prompt_tokens(messages: list[Any]) -> int:
    """``ceil(total characters of all message contents / 4) + 4 * len(messages)``."""
    chars = sum(_content_chars(m.get("content")) for m in messages if isinstance(m, dict))
    return math.ceil(chars / 4) + 4 * len(messages)


def max_tokens_of(body: dict[str, Any]) -> int | None:
    """``max_tokens`` or ``max_completion_tokens`` as the caller sent it (``None`` if absent)."""
    for name in ("max_tokens", "max_completion_tokens"):
        v = body.get(name)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def completion_tokens(max_tokens: int | None) -> int:
    """Tokens the simulated reply uses: ``min(max_tokens or 16, 16)``, at least 1."""
    return max(1, min(max_tokens or NATURAL_REPLY_TOKENS, NATURAL_REPLY_TOKENS))


def reply_pieces(model: str, n_tokens: int) -> list[str]:
    """The reply as ``n_tokens`` pieces (one per simulated token); joined it reads
    ``"sim reply from <model>: this is a deterministic offline answer ..."``."""
    words = ["sim", "reply", "from", f"{model}:", *_FILLER]
    return [w if i == 0 else " " + w for i, w in enumerate(words[:n_tokens])]


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(body, separators=(",", ":")).encode(),
                        content_type="application/json", headers=headers)


class ProviderHandler:
    """Base of one provider's request handlers: every reply is recorded in the simulator's stats as it is sent."""

    PROVIDER = ""

    def __init__(self, state: Any) -> None:
        self.state = state

    def _reply(self, status: int, body: Any, *, model: str | None, h: str | None, stream: bool = False,
               reason: str | None = None, headers: dict[str, str] | None = None) -> web.Response:
        self.state.record_response(self.PROVIDER, model, status, stream=stream, key_hash=h, reason=reason)
        return json_response(status, body, headers)
