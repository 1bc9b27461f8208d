"""The stream guard's state machine (router_plugin.guard.stream), fed plain values: no LiteLLM, no Redis, no clock.
The end-to-end behaviour over the simulator is tests/test_streams.py."""

from __future__ import annotations

import pytest

from router_plugin.config import Timeouts
from router_plugin.guard.deadlines import FAILED_KEY
from router_plugin.guard.stream import NEXT, RESTATE, Broke, Hop, Stop, StreamCall, TakeOver, Wait, describe, plain
from router_plugin.prefill import CONTINUE_INSTRUCTION
from router_plugin.providers.facts import ServerError

T0 = 1_000_000.0
LIMITS = Timeouts(connect_s=5, first_token_s=8, stream_idle_s=3, total_s=60)
ASK = [{"role": "user", "content": "Tell me a story"}]


def call(**kw) -> StreamCall:
    return StreamCall("chat", list(ASK), LIMITS, T0 + LIMITS.total_s, **kw)


def hop(deployment_id="a", model="groq/m1", first_token_by=None) -> Hop:
    return Hop({"deployment_id": deployment_id, "model": model, "attempts": 1}, first_token_by)


def relay(machine: StreamCall, h: Hop, *texts: str) -> None:
    for text in texts:
        machine.chunk(h, content=text, finish_known=True)


class Cut(Exception):
    pass


# ---- relaying and breaking off --------------------------------------------------------------------------------------

def test_a_cut_after_some_text_continues_on_the_next_deployment_with_the_relayed_text_as_prefill():
    machine, h = call(), hop()
    relay(machine, h, "Once upon ", "a time")
    broke = machine.failed(h, Cut("connection reset"))
    assert broke.fact is None and broke.why == "stream from groq/m1 broke off after 16 characters: Cut: connection reset"
    machine.broke(h, broke)
    assert machine.after(broke, T0 + 1) == TakeOver(continuation=True)
    messages, caps = machine.request(True, False, {"max_tokens": 100, "max_completion_tokens": True, "stream": True})
    assert messages == ASK + [{"role": "assistant", "content": "Once upon a time"}]
    assert caps == {"max_tokens": 98}  # two chunks delivered; a bool is no cap
    assert machine.excluded == [{"deployment_id": "a", "why": broke.why}]
    assert machine.hops == [{"model": "groq/m1", "outcome": "broke off", "chars": 16, "why": broke.why}]
    assert ASK == [{"role": "user", "content": "Tell me a story"}]  # the caller's list is untouched


def test_a_model_that_takes_no_prefill_gets_the_partial_answer_back_and_the_instruction():
    machine, h = call(), hop()
    relay(machine, h, "Once")
    messages, _ = machine.request(True, True, {})
    assert messages[-2:] == [{"role": "assistant", "content": "Once"}, {"role": "user", "content": CONTINUE_INSTRUCTION}]


def test_nothing_delivered_restarts_the_request_unchanged():
    machine, h = call(), hop()
    with pytest.raises(Broke) as err:
        machine.chunk(h, finish="error", provider_finish="error", finish_known=True)
    machine.broke(h, err.value)
    assert machine.after(err.value, T0) == TakeOver(continuation=False)
    assert machine.request(False, False, {"max_tokens": 100}) == (ASK, {})


@pytest.mark.parametrize("finish,said", [("error", None), ("stop", "error")])
def test_an_error_chunk_breaks_the_hop_and_the_next_deployment_takes_over(finish, said):
    machine, h = call(), hop()
    relay(machine, h, "abc")
    with pytest.raises(Broke) as err:
        machine.chunk(h, finish=finish, provider_finish=said, finish_known=True)
    assert err.value.why == "stream from groq/m1 ended with finish_reason 'error' after 3 characters"
    assert err.value.fact == ServerError(None, "finish_reason error") and err.value.cool
    assert h.finish is None
    machine.broke(h, err.value)
    assert machine.after(err.value, T0) == TakeOver(continuation=True)


def test_the_transports_synthetic_stop_is_a_stream_with_no_finish_reason():
    machine, h = call(), hop()
    relay(machine, h, "abc")
    with pytest.raises(Broke, match="ended after 3 characters with no finish reason"):
        machine.chunk(h, finish="stop", provider_finish=None, finish_known=True)
    # Where the line itself raises on such a stream (no inner wrapper), the finish reason is trusted.
    other = hop()
    machine.chunk(other, finish="stop", finish_known=False)
    assert other.finish == "stop"


def test_a_body_that_ends_is_complete_only_after_a_finish_reason():
    machine, h = call(), hop()
    relay(machine, h, "abc")
    with pytest.raises(Broke) as err:
        machine.ended(h)
    assert err.value.fact == ServerError(None, "stream ended without a finish reason")
    machine.chunk(h, finish="stop", provider_finish="stop", finish_known=True, usage_tokens=42)
    machine.ended(h)  # complete: no error
    machine.complete(h)
    assert h.usage_tokens == 42
    assert machine.hops == [{"model": "groq/m1", "outcome": "complete", "chars": 3}]


# ---- waits, stalls and the budget ---------------------------------------------------------------------------

def test_waits_first_token_then_idle_then_the_finish_grace():
    machine, h = call(), hop(first_token_by=T0 + 5)
    assert machine.wait(h, T0 + 1) == Wait(4, False, "first token")
    assert machine.wait(hop(), T0) == Wait(8, False, "first token")  # no deadline from the strategy: the limit
    relay(machine, h, "x")
    assert machine.wait(h, T0 + 2) == Wait(3, False, "chunk")
    machine.chunk(h, finish="stop", provider_finish="stop", finish_known=True)
    assert machine.wait(h, T0 + 2) == Wait(1.0, False, "end of stream")


def test_a_stall_breaks_the_hop_and_cools_the_model():
    machine, h = call(), hop()
    relay(machine, h, "abc")
    wait = machine.wait(h, T0 + 10)
    with pytest.raises(Broke) as err:
        machine.silent(h, wait)
    assert err.value.why == "stream from groq/m1 sent no chunk within 3 s (stalled)"
    assert err.value.fact == ServerError(None, "stream silent for 3 s (chunk)")
    assert err.value.cool and not err.value.budget


def test_silence_after_the_finish_chunk_ends_the_answer_complete():
    machine, h = call(), hop()
    machine.chunk(h, content="done", finish="stop", provider_finish="stop", finish_known=True)
    machine.silent(h, machine.wait(h, T0))  # returns: the adapter books the completion


def test_budget_spent_stops_with_the_original_failure_and_the_budget_named():
    machine, h = call(), hop()
    relay(machine, h, "abc")
    wait = machine.wait(h, T0 + LIMITS.total_s - 0.5)
    assert wait == Wait(0.5, True, "chunk")
    with pytest.raises(Broke) as err:
        machine.silent(h, wait)
    assert err.value.budget and not err.value.cool  # the budget is no fault of the model
    machine.broke(h, err.value)
    step = machine.after(err.value, T0 + LIMITS.total_s)
    assert step == Stop("the 60 s budget ran out while groq/m1 was streaming; the 60 s budget ran out before "
                        "another deployment could finish the answer", budget=True)


def test_a_cut_after_the_deadline_stops_on_the_budget_naming_the_cut():
    machine, h = call(), hop()
    broke = machine.failed(h, Cut("reset"))
    machine.broke(h, broke)
    step = machine.after(broke, T0 + LIMITS.total_s)
    assert isinstance(step, Stop) and step.budget and step.text.startswith(broke.why)


def test_a_tool_call_is_never_moved_to_another_model():
    machine, h = call(), hop()
    machine.chunk(h, tool_calls=True, finish_known=True)
    broke = machine.failed(h, Cut("reset"))
    machine.broke(h, broke)
    step = machine.after(broke, T0)
    assert isinstance(step, Stop) and not step.budget and step.exc is broke.exc
    assert step.text.endswith("; a tool call cannot be continued on another model")


# ---- the hop that should take over fails ----------------------------------------------------------------------

class BadRequest(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.message = message


def broken(machine: StreamCall, text: str = "abcd") -> Broke:
    h = hop()
    relay(machine, h, text)
    broke = machine.failed(h, Cut("reset"))
    machine.broke(h, broke)
    return broke


def test_a_refused_prefill_is_asked_again_without_one_then_a_refused_continuation_moves_on():
    machine = call()
    original = broken(machine)
    state = {"deployment_id": "b", "model": "openrouter/m2"}
    refusal = BadRequest("litellm.BadRequestError: BadRequestError: prefill not supported")
    assert machine.take_over_failed(original, refusal, state, continuation=True, restate=False, rejects=True) == RESTATE
    assert machine.restate_ids == {"b"}
    assert machine.hops[-1] == {"model": "openrouter/m2", "outcome": "refused the prefill", "chars": 0,
                                "why": "BadRequest: prefill not supported"}
    assert machine.take_over_failed(original, refusal, state, continuation=True, restate=True, rejects=True) == NEXT
    assert machine.no_continuation == ["openrouter/m2"]
    assert machine.excluded[-1] == {"deployment_id": "b", "why": "does not accept a continuation"}
    assert machine.out_of_call([{"deployment_id": "c"}, "junk"]) == {"a", "b", "c"}
    # Then nobody is left: the error names the cut first, what the caller has, and who could not continue.
    stop = machine.nobody_took_over(original, BadRequest("router_plugin: every deployment of chat is spent"))
    assert stop.text == (f"{original.why}; the caller has the first 4 characters; no other deployment could take it "
                         "over (every deployment of chat is spent); no continuation support on: openrouter/m2")


def test_a_rejection_of_a_restarted_request_stops_there():
    machine = call()
    h = hop()
    original = machine.failed(h, Cut("reset"))
    machine.broke(h, original)
    verdict = machine.take_over_failed(original, BadRequest("malformed"), {"deployment_id": "b"},
                                       continuation=False, restate=False, rejects=True)
    assert verdict == Stop(f"{original.why}; taking it over failed too (BadRequest: malformed)", exc=original.exc)


def test_any_other_failure_of_the_take_over_stops_naming_the_original_failure():
    machine = call()
    original = broken(machine)
    verdict = machine.take_over_failed(original, Cut("boom"), {"deployment_id": "b"}, continuation=True,
                                       restate=False, rejects=False)
    assert isinstance(verdict, Stop) and verdict.text.startswith(original.why)
    assert verdict.text.endswith("; the caller has the first 4 characters; taking it over failed too (Cut: boom)")


def test_forget_failure_drops_only_that_attempt():
    kept = [{"deployment_id": "b", "attempt": 1}, {"deployment_id": "a", "attempt": 2}]
    one, two = {FAILED_KEY: kept + [{"deployment_id": "b", "attempt": 2}]}, {FAILED_KEY: list(kept)}
    StreamCall.forget_failure((one, two, {}), "b", 2)
    assert one[FAILED_KEY] == kept and two[FAILED_KEY] == kept


def test_the_callers_summary():
    machine = call(attempts=3)
    broken(machine)
    summary = machine.summary({"owner": "x", "first_token_by": 1.0, "model": "groq/m1", "attempts": 1})
    assert summary == {"model": "groq/m1", "attempts": 3, "hops": machine.hops, "continued": True}
    assert call().summary(None) == {"attempts": 0, "hops": []}


def test_wording_strips_litellms_prefixes_and_scrubs_keys():
    exc = BadRequest("litellm.APIError: APIError: upstream said no\nLiteLLM: model group chat ...")
    assert plain(exc) == "upstream said no"
    assert describe(exc) == "BadRequest: upstream said no"
    assert "sk-or-v1-" not in describe(Cut("key sk-or-v1-" + "a" * 64 + " refused"))
