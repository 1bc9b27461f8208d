"""Server-sent events for ``"stream": true`` replies, and the ``stream_fault`` switch.

Both providers stream ``data: <json>`` events terminated by ``data: [DONE]`` (providers.md §1.3 "terminator",
§2.3). A provider hands :func:`send_stream` its events already built; the faults are applied here so they behave
the same for both providers:

* ``cut`` — some content events, then the TCP connection is closed mid-body (no finish chunk, no ``[DONE]``).
* ``stall`` — some content events, then silence for ``stall_s`` seconds, then the connection is closed.
* ``stall_first`` — headers (and OpenRouter's keep-alive comment), then silence for ``stall_s`` seconds before any
  content event, then the connection is closed (a slow start: no first token).
* ``truncate`` — some content events, then the body ends cleanly (terminating chunk sent) with no finish chunk,
  no usage and no ``[DONE]``: a mid-answer end that looks orderly on the wire.
* ``error_chunk`` — some content events, then the provider's mid-stream error event (OpenRouter: §1.3
  ``finish_reason: "error"`` chunk), then the body ends cleanly without ``[DONE]``.
* ``slow_first`` — headers at once, the first event only after ``stall_s`` seconds, then the whole stream (a slow
  start that does come).
* ``malformed`` — one ``data: {not json`` event in the middle; everything else sound, with ``[DONE]``.
* ``malformed_list`` — the same with ``data: [1,2,3]`` (valid JSON, not an event object).
* ``no_done`` — the complete stream (finish chunk, usage) without ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["StreamPlan", "send_stream"]


@dataclass
class StreamPlan:
    content: list[dict[str, Any]]          # one chunk per content piece
    tail: list[dict[str, Any]]             # finish chunk, usage chunk
    error_event: dict[str, Any]            # what ``error_chunk`` sends
    prelude: list[str] = field(default_factory=list)  # SSE comment lines, e.g. "OPENROUTER PROCESSING"
    headers: dict[str, str] = field(default_factory=dict)


def _data(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def send_stream(request: web.Request, plan: StreamPlan, fault: str | None = None,
                      stall_s: float = 30.0) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                   **plan.headers})
    await resp.prepare(request)
    for comment in plan.prelude:
        await resp.write(f": {comment}\n\n".encode())
    if fault == "stall_first":
        await asyncio.sleep(stall_s)
        _cut(request)
        return resp
    if fault == "slow_first":
        await asyncio.sleep(stall_s)
    half = max(1, len(plan.content) // 2)
    if fault in ("cut", "stall", "error_chunk", "truncate"):
        for chunk in plan.content[:half]:
            await resp.write(_data(chunk))
        if fault == "truncate":
            await resp.write_eof()
            return resp
        if fault == "error_chunk":
            await resp.write(_data(plan.error_event))
            await resp.write_eof()
            return resp
        if fault == "stall":
            await asyncio.sleep(stall_s)
        _cut(request)
        return resp
    for i, chunk in enumerate(plan.content):
        if fault in _MALFORMED and i == half:
            await resp.write(_MALFORMED[fault])
        await resp.write(_data(chunk))
    for chunk in plan.tail:
        await resp.write(_data(chunk))
    if fault != "no_done":
        await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


_MALFORMED = {"malformed": b"data: {not json\n\n", "malformed_list": b"data: [1,2,3]\n\n"}


def _cut(request: web.Request) -> None:
    """Close the connection without finishing the chunked body (what a dropped upstream looks like)."""
    transport = request.transport
    if transport is not None:
        transport.close()
