"""Streams through the SDK Router: every fault ends in one complete answer or a clear error, within the budget.

Real parts: a LiteLLM Router with the plugin, a real redis-server, the simulator on 127.0.0.1 with its fault
switches. Each test shows the outcome, the attempts per deployment (``sim.stats()["requests"]``) and the wall time
(as a generous behaviour bound: a 30 s stall must not hold the call anywhere near 30 s).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import litellm
import pytest

import router_plugin
from router_plugin.demo import DEMO_CHAIN, DEMO_GROUP, demo_config
from router_plugin.adapter.installer import installed
from router_plugin.sim.wire import reply_pieces
from router_plugin.adapter.streams import StreamInterruptedError
from tests.support import FAST, bare, half, observe, sent, whole
from router_plugin.adapter.router_api import all_deployments

pytestmark = pytest.mark.integration

OR_A, OR_B, GQ_A, GQ_B = DEMO_CHAIN
# Generic OpenAI-compatible upstreams (LiteLLM's openai/ path) on the simulator's /openai/v1
GEN_A, GEN_B = "openai/openai/gpt-oss-120b", "openai/openai/gpt-oss-20b"
MSG = [{"role": "user", "content": "hello"}]

@dataclass
class Outcome:
    text: str = ""
    finishes: list = field(default_factory=list)  # every finish_reason the caller saw, in order
    usage: object = None
    models: list = field(default_factory=list)  # chunk.model of each content chunk
    error: BaseException | None = None
    info: dict = field(default_factory=dict)
    elapsed: float = 0.0

    def add(self, chunk) -> None:
        """What the caller sees of one chunk."""
        if getattr(chunk, "usage", None) is not None:
            self.usage = chunk.usage
        if chunk.choices:
            choice = chunk.choices[0]
            if choice.delta.content:
                self.text += choice.delta.content
                self.models.append(chunk.model)
            if choice.finish_reason:
                self.finishes.append(choice.finish_reason)


async def _consume(router, max_tokens=16, messages=MSG, settled=None, **kw) -> Outcome:
    out, metadata = Outcome(), {}
    start = time.monotonic()
    try:
        stream = await router.acompletion(model=DEMO_GROUP, messages=messages, max_tokens=max_tokens, stream=True,
                                          stream_options={"include_usage": True}, metadata=metadata, **kw)
        async for chunk in stream:
            out.add(chunk)
    except Exception as exc:
        out.error = exc
    out.elapsed = time.monotonic() - start
    out.info = dict(metadata.get("router_plugin") or {})
    if settled is not None:  # LiteLLM books a finished stream in a background task of this loop: let it run
        end = time.monotonic() + 5
        while time.monotonic() < end and not settled():
            await asyncio.sleep(0.05)
    return out


def consume(router, **kw) -> Outcome:
    return asyncio.run(_consume(router, **kw))


def router_for(sim, redis_url, chain=DEMO_CHAIN, **settings):
    return router_plugin.build_router(demo_config(sim.base_url, redis_url=redis_url, chain=chain,
                                                  **{**FAST, **settings}))


# ------------------------------------------------------------------------------------------------ broken streams


@pytest.mark.parametrize("fault", ["cut", "truncate"])
def test_stream_broken_mid_answer_is_continued_on_the_next_deployment(sim, redis_url, fault):
    sim.configure({"models": {bare(OR_A): {"stream_fault": fault}}})
    router = router_for(sim, redis_url)
    events = observe(router)
    out = consume(router, settled=lambda: events.wins)

    assert out.error is None
    # One answer: A's partial text, then B continuing it (B was sent the partial answer as an assistant prefill,
    # with max_tokens reduced by what A delivered: 16 - 8).
    assert out.text == whole(OR_A)  # A's partial, then B continuing it word for word
    assert out.finishes == ["stop"]  # LiteLLM's synthetic "stop" of the truncated body never reached the caller
    assert out.usage is not None and out.usage.completion_tokens == 8
    assert out.usage.prompt_tokens > 6  # B's prompt held the conversation plus the partial answer
    assert out.models[-1] == bare(OR_B)
    assert (sent(sim, OR_A), sent(sim, OR_B), sent(sim, GQ_A), sent(sim, GQ_B)) == (1, 1, 0, 0)
    assert out.info["model"] == OR_B and out.info["attempts"] == 2 and out.info["continued"] is True
    assert [h["outcome"] for h in out.info["hops"]] == ["broke off", "complete"]
    assert out.elapsed < 5
    # Accounting: A's attempt is a failure, never a completion; B's is the one completion.
    assert events.wins == [OR_B]
    assert [m for m, _ in events.fails] == [OR_A]


def consume_sync(router, max_tokens=16, settled=None) -> Outcome:
    """The same, through the sync ``router.completion(stream=True)`` (a Celery task, a script)."""
    out, metadata = Outcome(), {}
    start = time.monotonic()
    try:
        stream = router.completion(model=DEMO_GROUP, messages=MSG, max_tokens=max_tokens, stream=True,
                                   stream_options={"include_usage": True}, metadata=metadata)
        for chunk in stream:
            out.add(chunk)
    except Exception as exc:
        out.error = exc
    out.elapsed = time.monotonic() - start
    out.info = dict(metadata.get("router_plugin") or {})
    end = time.monotonic() + 5
    while settled is not None and time.monotonic() < end and not settled():
        time.sleep(0.05)
    return out


@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_sync_stream_broken_or_stalled_is_continued_like_an_async_one(sim, redis_url, fault):
    sim.configure({"models": {bare(OR_A): {"stream_fault": fault, "stall_s": 30}}})
    router = router_for(sim, redis_url)
    events = observe(router)
    out = consume_sync(router, settled=lambda: events.wins)
    assert out.error is None
    assert out.text == whole(OR_A)  # A's partial, then B continuing it word for word
    assert out.finishes == ["stop"]
    assert (sent(sim, OR_A), sent(sim, OR_B), sent(sim, GQ_A)) == (1, 1, 0)
    assert out.info["model"] == OR_B and out.info["attempts"] == 2 and out.info["continued"] is True
    assert out.elapsed < 5  # stream_idle_s = 1, not the 30 s stall
    assert events.wins == [OR_B] and [m for m, _ in events.fails] == [OR_A]


def test_sync_stream_that_cannot_be_finished_raises_instead_of_ending(sim, redis_url):
    sim.configure({"models": {bare(m): {"stream_fault": "cut"} for m in DEMO_CHAIN}})
    router = router_for(sim, redis_url)
    out = consume_sync(router)
    assert isinstance(out.error, StreamInterruptedError), out.error
    assert out.finishes == []  # the iterator never ended as if the answer were complete


def test_stalled_stream_is_cut_at_the_idle_limit_and_continued(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"stream_fault": "stall", "stall_s": 30}}})
    router = router_for(sim, redis_url)
    events = observe(router)
    out = consume(router, settled=lambda: events.wins)
    assert out.error is None
    assert out.text == whole(OR_A)  # A's partial, then B continuing it word for word
    assert (sent(sim, OR_A), sent(sim, OR_B)) == (1, 1)
    assert out.elapsed < 5  # stream_idle_s = 1, not the 30 s stall
    assert "stalled" in out.info["hops"][0]["why"]
    assert events.wins == [OR_B]
    inst = installed(router)
    cooled = inst.sync_store.peek(inst.plans.plan(all_deployments(router)[0]))
    assert cooled.counter is None and "stream silent" in cooled.why  # set aside for every worker


def test_openrouter_error_chunk_mid_stream_is_continued_and_blames_only_that_model(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"stream_fault": "error_chunk"}}})
    router = router_for(sim, redis_url)
    inst = installed(router)
    plan_a, plan_b = (inst.plans.plan(d) for d in all_deployments(router)[:2])

    def a_cooled():
        return getattr(inst.sync_store.peek(plan_a), "counter", "x") is None

    out = consume(router, settled=a_cooled)
    assert out.error is None
    assert out.text == whole(OR_A)  # A's partial, then B continuing it word for word
    # The in-band 429 chunk means that model is busy; the account pool (shared with OR_B) is not spent.
    assert (sent(sim, OR_A), sent(sim, OR_B), sent(sim, GQ_A)) == (1, 1, 0)
    assert a_cooled() and "busy" in inst.sync_store.peek(plan_a).why  # A set aside as busy upstream ...
    assert not hasattr(inst.sync_store.peek(plan_b), "why")  # ... B (same account) still reservable


def test_groq_error_event_mid_stream_is_continued(sim, redis_url):
    sim.configure({"models": {bare(GQ_A): {"stream_fault": "error_chunk"}}})
    out = consume(router_for(sim, redis_url, chain=(GQ_A, GQ_B)))
    assert out.error is None
    assert out.text == whole(GQ_A)
    assert (sent(sim, GQ_A), sent(sim, GQ_B)) == (1, 1)


@pytest.mark.parametrize("chain", [(OR_A, OR_B), (GQ_A, GQ_B), (GEN_A, GEN_B)], ids=["openrouter", "groq", "openai"])
def test_a_fallback_that_refuses_a_prefill_continues_without_one_and_every_worker_remembers(sim, redis_url, chain):
    # A stream cut after 4 chunks; the only fallback answers 400 to an assistant prefill. It is asked again with
    # the partial answer as its own turn and an instruction to continue from exactly there: one complete answer.
    first, fallback = chain
    sim.configure({"models": {bare(first): {"stream_fault": "cut"}, bare(fallback): {"reject_prefill": True}}})
    brief = {"server_error_s": 0.1, "server_error_max_s": 0.1}  # the cut model is tried first again below
    out = consume(router_for(sim, redis_url, chain=chain, allow_paid=True, cooldowns=brief))
    assert out.error is None, out.error
    assert out.text == whole(first)  # the partial text + the continuation, read as one reply
    assert out.finishes == ["stop"]  # one finish reason
    assert out.models[-1] == bare(fallback)
    assert (sent(sim, first), sent(sim, fallback)) == (1, 2)  # the refused prefill, then the continuation
    assert [h["outcome"] for h in out.info["hops"]] == ["broke off", "refused the prefill", "complete"]
    assert out.info["model"] == fallback and out.info["attempts"] == 3

    # Another worker (its own Router, the same Redis) goes the working way at once: no prefill is tried again.
    time.sleep(0.3)
    out = consume(router_for(sim, redis_url, chain=chain, allow_paid=True, cooldowns=brief))
    assert out.error is None and out.text == whole(first) and out.finishes == ["stop"]
    assert (sent(sim, first), sent(sim, fallback)) == (2, 3)
    assert [h["outcome"] for h in out.info["hops"]] == ["broke off", "complete"]


def test_a_deployment_declared_without_prefill_support_is_continued_without_one_at_once(sim, redis_url):
    sim.configure({"models": {bare(GQ_A): {"stream_fault": "cut"}, bare(GQ_B): {"reject_prefill": True}}})
    config = demo_config(sim.base_url, redis_url=redis_url, chain=(GQ_A, GQ_B), **FAST)
    config["model_list"][1]["model_info"] = {"supports_assistant_prefill": False}
    out = consume(router_plugin.build_router(config))
    assert out.error is None and out.text == whole(GQ_A) and out.finishes == ["stop"]
    assert (sent(sim, GQ_A), sent(sim, GQ_B)) == (1, 1)
    assert [h["outcome"] for h in out.info["hops"]] == ["broke off", "complete"]


def test_continuation_skips_a_deployment_that_refuses_it_both_ways(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"stream_fault": "cut"},
                              bare(OR_B): {"reject_prefill": True, "status": 400}}})
    out = consume(router_for(sim, redis_url))
    assert out.error is None
    assert out.text == whole(OR_A)
    assert (sent(sim, OR_A), sent(sim, OR_B), sent(sim, GQ_A), sent(sim, GQ_B)) == (1, 2, 1, 0)
    assert out.info["model"] == GQ_A and out.info["attempts"] == 4
    assert [h["outcome"] for h in out.info["hops"]] == ["broke off", "refused the prefill", "refused the continuation",
                                                        "complete"]


def test_no_deployment_can_continue_ends_with_the_original_failure_never_a_truncated_success(sim, redis_url):
    sim.configure({"models": {bare(GQ_A): {"stream_fault": "cut"},
                              bare(GQ_B): {"reject_prefill": True, "status": 400}}})
    out = consume(router_for(sim, redis_url, chain=(GQ_A, GQ_B)))
    assert isinstance(out.error, StreamInterruptedError), out.error
    message = str(out.error)
    assert "groq/openai/gpt-oss-120b broke off" in message and "APIConnectionError" in message  # the original
    assert "prefill" not in message and not isinstance(out.error, litellm.BadRequestError)
    assert "no continuation support on: groq/openai/gpt-oss-20b" in message
    assert out.error.status_code == 503
    assert out.text == half(GQ_A) and out.finishes == []  # what arrived, and no finish: never "complete"
    assert (sent(sim, GQ_A), sent(sim, GQ_B)) == (1, 2)  # refused with a prefill, then without one
    assert out.elapsed < 5


def test_failure_before_any_content_restarts_cleanly_without_a_prefill(sim, redis_url):
    # GQ_A sends headers and then nothing; GQ_B would reject a prefill — a clean restart needs none.
    sim.configure({"models": {bare(GQ_A): {"stream_fault": "stall_first", "stall_s": 30},
                              bare(GQ_B): {"reject_prefill": True}}})
    out = consume(router_for(sim, redis_url, chain=(GQ_A, GQ_B)))
    assert out.error is None
    assert out.text == "".join(reply_pieces(bare(GQ_B), 16))
    assert (sent(sim, GQ_A), sent(sim, GQ_B)) == (1, 1)
    assert out.elapsed < 5  # first_token_s = 1.5, not the 30 s stall


def test_a_stream_broken_on_every_deployment_is_an_error_naming_the_first_failure(sim, redis_url):
    sim.configure({"models": {bare(m): {"stream_fault": "cut"} for m in (GQ_A, GQ_B)}})
    out = consume(router_for(sim, redis_url, chain=(GQ_A, GQ_B)))
    assert isinstance(out.error, StreamInterruptedError)
    assert str(out.error).startswith("litellm.ServiceUnavailableError: router_plugin: stream from "
                                     "groq/openai/gpt-oss-120b broke off")
    assert out.finishes == [] and (sent(sim, GQ_A), sent(sim, GQ_B)) == (1, 1)


# ------------------------------------------------------------------------------------------------ orderly faults


@pytest.mark.parametrize("fault", ["malformed", "malformed_list"], ids=["not-json", "json-list"])
@pytest.mark.parametrize("model", [OR_A, GQ_A, GEN_A], ids=["openrouter", "groq", "openai"])
def test_malformed_event_is_skipped_and_the_answer_is_whole(sim, redis_url, model, fault):
    # One "data: {not json" / "data: [1,2,3]" event mid-stream: a careful client skips it and reads on.
    sim.configure({"models": {bare(model): {"stream_fault": fault}}})
    out = consume(router_for(sim, redis_url, chain=(model, GQ_B), allow_paid=True))
    assert out.error is None and out.text == whole(model)
    assert out.finishes == ["stop"] and sent(sim, model) == 1 and sent(sim, GQ_B) == 0
    assert [h["outcome"] for h in out.info["hops"]] == ["complete"]


@pytest.mark.parametrize("model", [OR_A, GQ_A])
def test_stream_without_done_finishes_promptly_with_usage(sim, redis_url, model):
    sim.configure({"models": {bare(model): {"stream_fault": "no_done"}}})
    router = router_for(sim, redis_url, chain=(model,))
    events = observe(router)
    out = consume(router, settled=lambda: events.wins)
    assert out.error is None and out.text == "".join(reply_pieces(bare(model), 16))
    assert out.finishes == ["stop"] and out.usage is not None and out.usage.completion_tokens == 16
    assert out.elapsed < 3 and sent(sim, model) == 1
    assert events.wins == [model]


def test_http_200_with_an_error_in_a_stream_falls_over_before_anything_reached_the_caller(sim, redis_url):
    sim.configure({"models": {bare(OR_A): {"error_200": True}}})
    out = consume(router_for(sim, redis_url))
    assert out.error is None and out.text == "".join(reply_pieces(bare(OR_B), 16))
    assert (sent(sim, OR_A), sent(sim, OR_B)) == (1, 1)
    assert out.info["attempts"] == 2


# ------------------------------------------------------------------------------------------------ pass-through

TOOLS = [
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {
        "name": "get_weather", "description": "weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city"]}}},
]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "reply", "schema": {
    "type": "object", "properties": {"title": {"type": "string"}, "score": {"type": "number"}},
    "required": ["title", "score"]}}}


async def _choices(router, stream: bool, **kw) -> tuple[dict, int]:
    """{choice index: {text, tool (name), args, finish}} as the caller reads them, and how many chunks carried
    tool-call deltas."""
    response = await router.acompletion(model=DEMO_GROUP, messages=MSG, stream=stream, metadata={}, **kw)
    out: dict = {}
    deltas = 0
    if not stream:
        for c in response.choices:
            calls = c.message.tool_calls or []
            out[c.index] = {"text": c.message.content, "tool": calls[0].function.name if calls else None,
                            "args": calls[0].function.arguments if calls else None, "finish": c.finish_reason}
        return out, 0
    async for chunk in response:
        for c in chunk.choices:
            seen = out.setdefault(c.index, {"text": "", "tool": None, "args": "", "finish": None})
            seen["text"] += c.delta.content or ""
            for call in c.delta.tool_calls or []:
                deltas += 1
                seen["tool"] = call.function.name or seen["tool"]
                seen["args"] += call.function.arguments or ""
            seen["finish"] = c.finish_reason or seen["finish"]
    return out, deltas


PATHS = pytest.mark.parametrize("model", [OR_A, GQ_A, GEN_A], ids=["openrouter", "groq", "openai"])
STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])


@PATHS
@STREAMS
def test_tools_and_tool_choice_pass_through_with_streamed_tool_call_deltas(sim, redis_url, model, stream):
    import json

    router = router_for(sim, redis_url, chain=(model, GQ_B), allow_paid=True)
    choice = {"type": "function", "function": {"name": "get_weather"}}  # not the first tool: tool_choice arrived
    out, deltas = asyncio.run(_choices(router, stream, tools=TOOLS, tool_choice=choice, max_tokens=64))
    assert list(out) == [0] and out[0]["tool"] == "get_weather" and out[0]["finish"] == "tool_calls"
    assert json.loads(out[0]["args"]) == {"city": "sim", "days": 1}
    assert not stream or deltas > 2  # the call's name, then its arguments in pieces
    assert (sent(sim, model), sent(sim, GQ_B)) == (1, 0)


@PATHS
@STREAMS
@pytest.mark.parametrize("fmt", ["json_object", "json_schema"])
def test_json_mode_passes_through(sim, redis_url, model, stream, fmt):
    import json

    router = router_for(sim, redis_url, chain=(model,), allow_paid=True)
    response_format = {"type": "json_object"} if fmt == "json_object" else SCHEMA
    out, _ = asyncio.run(_choices(router, stream, response_format=response_format, max_tokens=16))
    value = json.loads(out[0]["text"])
    if fmt == "json_object":
        assert value == {"answer": whole(model)}
    else:
        assert value == {"title": "sim", "score": 1}
    assert out[0]["finish"] == "stop"


@PATHS
@STREAMS
def test_n_choices_pass_through(sim, redis_url, model, stream):
    router = router_for(sim, redis_url, chain=(model,), allow_paid=True)
    out, _ = asyncio.run(_choices(router, stream, n=2, max_tokens=16))
    assert sorted(out) == [0, 1]
    assert [out[i]["text"] for i in (0, 1)] == [whole(model)] * 2
    # LiteLLM 1.108's stream wrapper passes on one finish reason (choice 0's); stock LiteLLM does the same.
    assert [out[i]["finish"] for i in (0, 1)] == (["stop", None] if stream else ["stop", "stop"])
