"""What a simulated model answers: text, a tool call, JSON, ``n`` choices, or the rest of a continued answer.

Both providers answer the OpenAI chat-completions parameters the way OpenRouter and Groq do:

* ``tools`` (and ``tool_choice`` other than ``"none"``): one call of the named tool (``{"type": "function",
  "function": {"name": ...}}``) or else of the first tool; its ``arguments`` are JSON filled from the tool's
  ``parameters`` schema (strings ``"sim"``, numbers ``1``, booleans ``true``, the first ``enum`` value);
  ``finish_reason: "tool_calls"``; streamed as OpenAI does: the first delta carries the call's id and name, the
  next ones pieces of ``arguments``.
* ``response_format`` ``{"type": "json_object"}``: ``{"answer": "<the text reply>"}``; ``json_schema``: an object
  filled from the schema as above. Streamed in pieces of the JSON text.
* ``n``: that many choices (``index`` 0..n-1), each the same answer; streamed chunk by chunk, one choice a chunk.
* a continuation — the last message is the assistant's (a prefill), or an assistant message followed by a user
  message asking to continue "from exactly" where it stops — answers the rest of the simulated reply after the
  words already given, so partial + continuation read as one reply.
"""

from __future__ import annotations

import json
from typing import Any

from .wire import NATURAL_REPLY_TOKENS, completion_tokens, reply_pieces

__all__ = ["Answer"]


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


def _continued(messages: list[Any]) -> str | None:
    """The partial answer being continued, or None."""
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    if last.get("role") == "assistant":
        return _text_of(last.get("content"))
    if len(messages) >= 2 and last.get("role") == "user" and isinstance(messages[-2], dict) \
            and messages[-2].get("role") == "assistant":
        ask = _text_of(last.get("content")).lower()
        if "continue" in ask and "exactly" in ask:
            return _text_of(messages[-2].get("content"))
    return None


def _example(schema: Any, depth: int = 0) -> Any:
    """A value that fits ``schema`` (a JSON schema), deterministic."""
    if not isinstance(schema, dict) or depth > 6:
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "object" or (kind is None and isinstance(schema.get("properties"), dict)):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        return {name: _example(sub, depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [_example(schema.get("items"), depth + 1)]
    return {"string": "sim", "integer": 1, "number": 1, "boolean": True}.get(str(kind))


def _split(text: str, parts: int = 6) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


class Answer:
    """The answer of ``model`` to a request ``body`` (one choice; ``n`` copies of it)."""

    def __init__(self, body: dict[str, Any], model: str, max_tokens: int | None, call_id: str = "call_sim0"):
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        n = body.get("n")
        self.n = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 8 else 1
        self.tool_call: dict[str, Any] | None = None
        self.finish = "stop"
        tool = self._tool(body)
        fmt = body.get("response_format") if isinstance(body.get("response_format"), dict) else {}
        if tool is not None:
            args = json.dumps(_example(tool.get("parameters")) or {}, separators=(",", ":"))
            self.tool_call = {"id": call_id, "type": "function", "function": {"name": str(tool.get("name")),
                                                                              "arguments": args}}
            self.pieces = _split(args)
            self.finish = "tool_calls"
        elif fmt.get("type") in ("json_object", "json_schema"):
            text = "".join(reply_pieces(model, completion_tokens(max_tokens)))
            if fmt.get("type") == "json_schema":
                schema = (fmt.get("json_schema") or {}).get("schema") if isinstance(fmt.get("json_schema"), dict) \
                    else None
                value = _example(schema) if isinstance(schema, dict) else {"answer": text}
            else:
                value = {"answer": text}
            self.pieces = _split(json.dumps(value, separators=(",", ":")))
        else:
            given = _continued(messages)
            if given is None:
                self.pieces = reply_pieces(model, completion_tokens(max_tokens))
            else:  # the words after those already given, as one reply of NATURAL_REPLY_TOKENS words
                done = len(given.split())
                words = reply_pieces(model, NATURAL_REPLY_TOKENS)[done:]
                words = words[: max(1, max_tokens)] if max_tokens is not None else words
                self.pieces = words
        self.text = None if self.tool_call is not None else "".join(self.pieces)

    @staticmethod
    def _tool(body: dict[str, Any]) -> dict[str, Any] | None:
        tools = body.get("tools")
        choice = body.get("tool_choice")
        if not isinstance(tools, list) or not tools or choice == "none":
            return None
        functions = [t.get("function") for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
        if not functions:
            return None
        if isinstance(choice, dict):
            wanted = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
            for f in functions:
                if f.get("name") == wanted:
                    return f
        return functions[0]

    @property
    def completion_tokens(self) -> int:
        """Tokens used, all choices (one per piece, at least one)."""
        return max(1, len(self.pieces)) * self.n

    def message(self) -> dict[str, Any]:
        if self.tool_call is not None:
            return {"role": "assistant", "content": None, "tool_calls": [self.tool_call]}
        return {"role": "assistant", "content": self.text}

    def deltas(self, role_first: bool) -> list[dict[str, Any]]:
        """One choice's stream deltas (no finish). ``role_first``: the first delta is a bare role delta (Groq)."""
        out: list[dict[str, Any]] = [{"role": "assistant", "content": ""}] if role_first else []
        if self.tool_call is not None:
            fn = self.tool_call["function"]
            out.append({"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": self.tool_call["id"], "type": "function",
                 "function": {"name": fn["name"], "arguments": ""}}]})
            out += [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in self.pieces]
            return out
        if role_first:
            return out + [{"content": p} for p in self.pieces]
        return out + [{"role": "assistant", "content": p} for p in self.pieces]

    def stream(self, role_first: bool) -> list[tuple[int, dict[str, Any]]]:
        """(choice index, delta) for every choice, interleaved as a provider streams ``n`` choices."""
        one = self.deltas(role_first)
        return [(i, d) for d in one for i in range(self.n)]
