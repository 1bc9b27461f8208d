"""Is this a request a provider could accept at all? Checked before anything is reserved. Pure: no LiteLLM, no I/O.

A malformed request must cost nothing: no counter charged, no deployment set aside, no attempt sent. The strategy
calls :func:`problem` first and answers a non-None result with a 400 (``litellm.BadRequestError``) that says what
was wrong. Only shapes no provider accepts are refused (the OpenAI chat format, which OpenRouter and Groq both
speak); anything this check does not foresee and LiteLLM rejects locally is still free (the strategy refunds and
sets nothing aside for an attempt that failed before it was sent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .priority import priority_problem

ROLES = ("system", "user", "assistant", "tool", "function", "developer")
#: Request fields that must be positive integers when given (``None`` means "not given").
POSITIVE_INTS = ("max_tokens", "max_completion_tokens", "n")
#: Request fields that must be lists of objects when given.
OBJECT_LISTS = ("tools", "functions")


def _kind(value: Any) -> str:
    """What ``value`` is, for a message: its type, and the value itself when it is short and scalar."""
    if isinstance(value, (bool, int, float)) or value is None:
        return repr(value)
    if isinstance(value, str):
        return f"the string {value[:20]!r}" + ("…" if len(value) > 20 else "")
    return f"a {type(value).__name__}"


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray))


def _as_mapping(value: Any) -> Any:
    """A pydantic object (``litellm.Message``, an OpenAI SDK message passed back in) as the dict it is sent as."""
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        try:
            dumped = dump()
        except Exception:
            return value
        return dumped if isinstance(dumped, Mapping) else value
    return value


def _message_problem(i: int, message: Any) -> str | None:
    where = f"messages[{i}]"
    message = _as_mapping(message)
    if not isinstance(message, Mapping):
        return f"{where} must be an object with 'role' and 'content', got {_kind(message)}"
    role = message.get("role")
    if role is None:
        return f"{where} has no 'role' (one of {', '.join(ROLES)})"
    if not isinstance(role, str) or role not in ROLES:
        return f"{where}.role must be one of {', '.join(ROLES)}, got {_kind(role)}"
    content = message.get("content")
    calls = message.get("tool_calls") or message.get("function_call")
    if content is None:
        if role == "assistant" and calls:
            pass  # an assistant turn that only calls tools
        else:
            return f"{where} ({role}) has no 'content'"
    elif _is_list(content):
        for j, part in enumerate(content):
            if isinstance(part, (str, int)) and not isinstance(part, bool):
                continue  # a text-completion prompt (strings, token ids) arrives as a user message's content
            part = _as_mapping(part)
            if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                return f"{where}.content[{j}] must be a content part object with a 'type', got {_kind(part)}"
    elif not isinstance(content, str):
        return f"{where}.content must be a string or a list of content parts, got {_kind(content)}"
    tool_calls = message.get("tool_calls")
    if tool_calls is not None and not (_is_list(tool_calls)
                                       and all(isinstance(_as_mapping(c), Mapping) for c in tool_calls)):
        return f"{where}.tool_calls must be a list of objects, got {_kind(tool_calls)}"
    return None


def problem(messages: Any, request: Mapping[str, Any], chat: bool = True) -> str | None:
    """What is wrong with a chat request, in one phrase; None when its shape is acceptable.

    ``messages`` is what LiteLLM handed the strategy; ``request`` the call's keyword arguments. ``chat`` False
    (embeddings, text completion: no ``messages``) checks only the request fields.
    """
    if chat:
        if not _is_list(messages):
            return f"'messages' must be a list of {{role, content}} objects, got {_kind(messages)}"
        if len(messages) == 0:
            return "'messages' is empty: send at least one {role, content} message"
        for i, message in enumerate(messages):
            found = _message_problem(i, message)
            if found:
                return found
    for name in POSITIVE_INTS:
        value = request.get(name)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return f"'{name}' must be a positive integer, got {_kind(value)}"
    for name in OBJECT_LISTS:
        value = request.get(name)
        if value is not None and not (_is_list(value) and all(isinstance(_as_mapping(v), Mapping) for v in value)):
            return f"'{name}' must be a list of objects, got {_kind(value)}"
    found = priority_problem(request.get("metadata") or request.get("litellm_metadata"))
    if found:  # the request's priority (priority.py): refused before anything is reserved
        return found
    fmt = request.get("response_format")
    if fmt is not None and not isinstance(fmt, (Mapping, type)):
        return f"'response_format' must be an object such as {{\"type\": \"json_object\"}}, got {_kind(fmt)}"
    return None


__all__ = ["ROLES", "problem"]
