"""The callbacks' booking decisions (router_plugin.booking), fed plain values: no LiteLLM, no Redis. What the store
then does with them is covered end to end in tests/test_router_integration.py and tests/test_reliability.py."""

from __future__ import annotations

import pytest

from router_plugin import booking
from router_plugin.booking import Block, Cool
from router_plugin.config import Cooldowns
from router_plugin.limits import LimitOverride, PlanInputs, plan_for
from router_plugin.providers.facts import (ContextTooLong, CreditsExhausted, Exhausted, ModelBusy, ModelGone, Rejected,
                                          ServerError, Unknown)

OR = plan_for({"model_name": "chat", "litellm_params": {"model": "openrouter/meta-llama/llama-3.3-70b-instruct:free",
                                                        "api_key": "k1"}, "model_info": {"id": "or"}},
              PlanInputs(limits={"openrouter": LimitOverride(rpm=20, rpd=50)}))
GQ = plan_for({"model_name": "chat", "litellm_params": {"model": "groq/openai/gpt-oss-120b", "api_key": "k2"},
               "model_info": {"id": "gq"}}, PlanInputs())
CD = Cooldowns()
STATE = {"deployment_id": "gq", "metered": True, "tokens": 900, "reserved_at_ms": 5, "attempts": 1}


def classify_never():
    raise AssertionError("an unsent attempt is not classified")


def failure(state=STATE, *, handed_off=True, fact=ServerError(502, "bad gateway"), stream_started=False,
            failures=None, previous=()):
    return booking.failure(GQ, state, handed_off=handed_off, detail="connect refused", classify=lambda: fact,
                           stream_started=stream_started, failures=failures, previous=previous)


# ---- which attempt is booked how ------------------------------------------------------------------------------

def test_an_unsent_attempt_refunds_its_request_and_sets_nothing_aside():
    verdict = booking.failure(GQ, {**STATE, "sent": False}, handed_off=False, detail="connect refused",
                              classify=classify_never, stream_started=False, failures=None, previous=())
    assert verdict == booking.Failure(Rejected(None, "not sent: connect refused"), "Unsent", set_aside=False,
                                      refund_requests=True, note="groq/openai/gpt-oss-120b failed before the "
                                      "request was sent (connect refused); refunded, nothing set aside")


@pytest.mark.parametrize("state,handed_off", [({**STATE, "sent": True}, False), ({**STATE, "sent": False}, True),
                                              (STATE, False)])
def test_a_sent_attempt_is_classified_refunded_tokens_only_and_set_aside(state, handed_off):
    verdict = failure(state, handed_off=handed_off)
    assert verdict == booking.Failure(ServerError(502, "bad gateway"), "ServerError", set_aside=True)
    assert not verdict.refund_requests  # providers count failed attempts: the request stays counted


def test_a_first_500_of_a_deployment_is_retried_once_before_it_is_set_aside():
    first = failure(fact=ServerError(500, "oops"), failures=[{"deployment_id": "or", "attempt": 0}])
    assert not first.set_aside and first.note == "groq/openai/gpt-oss-120b answered 500; one retry on it before it " \
                                                 "is set aside"
    again = failure({**STATE, "attempts": 2}, fact=ServerError(500, "oops"),
                    failures=[{"deployment_id": "gq", "attempt": 1}])
    assert again.set_aside
    # The sync path keeps no record: LiteLLM's breadcrumbs tell.
    assert failure(fact=ServerError(500, "oops"), previous=["gq"]).set_aside
    assert not failure(fact=ServerError(500, "oops"), previous=["or"]).set_aside
    assert failure(fact=ServerError(502, "oops")).set_aside  # only a 500 gets the retry


def test_a_bare_429_inside_a_started_stream_is_a_busy_model_not_a_spent_pool():
    pool = Exhausted("minute", 2e9, "Rate limit exceeded")
    assert failure(fact=pool, stream_started=True).fact == ModelBusy("Rate limit exceeded")
    assert failure(fact=pool, stream_started=False).fact == pool
    named = Exhausted("minute", 2e9, "Rate limit exceeded: free-models-per-min")
    assert failure(fact=named, stream_started=True).fact == named


def test_reservation_and_tokens_to_settle():
    assert booking.reservation(GQ, {"metered": False, "tokens": 9}) is None
    held = booking.reservation(GQ, STATE)
    assert (held.plan, held.tokens, held.now_ms) == (GQ, 900, 5)
    assert booking.tokens_to_settle(321, held) == 321
    assert booking.tokens_to_settle(0, held) == 900  # no usage reported: keep the estimate, never settle to 0
    assert booking.tokens_to_settle(None, held) == 900
    assert booking.tokens_to_settle(None, None) == 0


# ---- what a fault sets aside ---------------------------------------------------------------------------------

def test_an_account_429_blocks_the_pool_counter_until_the_stated_reset():
    aside = booking.set_aside(OR, Exhausted("minute", 1_700_000_060.0, "free-models-per-min"), CD, 1_700_000_000.0)
    (block,) = aside.actions
    assert isinstance(block, Block) and block.counter.limit.name == "minute"
    assert (block.until_ms, block.for_ms) == (1_700_000_060_000, 0)  # OpenRouter: the absolute reset, as given
    assert "exhausted minute until 2023-11-14 22:14:20 UTC" in aside.warning


def test_a_groq_reset_is_recorded_as_a_duration():
    counter = GQ.counters[0]
    aside = booking.set_aside(GQ, Exhausted(counter.limit.name, 107.5, "tokens per minute"), CD, 100.0)
    assert aside.actions == [Block(counter, 107_500, "exhausted (provider 429)", for_ms=7_500)]


def test_a_model_only_429_cools_that_model_for_the_stated_time():
    aside = booking.set_aside(OR, Exhausted("minute", 1_700_000_030.0, "limit_rpm/x", model_only=True), CD, 1.0)
    assert aside.actions == [Cool("minute limit: limit_rpm/x", 0, 0, escalate=False, until_ms=1_700_000_030_000)]


@pytest.mark.parametrize("fact,cool", [
    (ModelBusy("busy"), Cool("busy upstream: busy", CD.busy_s, CD.busy_max_s)),
    (ModelBusy("busy", retry_after=42), Cool("busy upstream: busy (retry after 42 s)", 42, 42, escalate=False)),
    (ModelBusy("busy", retry_after=9999), Cool("busy upstream: busy (retry after 300 s)", 300, 300, escalate=False)),
    (ServerError(503, "down", retry_after=7), Cool("failing: down (retry after 7 s)", 7, 7, escalate=False)),
    (ServerError(502, "down"), Cool("failing: down", CD.server_error_s, CD.server_error_max_s)),
    (Unknown("??"), Cool("failing: ??", CD.server_error_s, CD.server_error_max_s)),
])
def test_busy_and_failing_models_cool_escalating_unless_the_provider_named_the_wait(fact, cool):
    assert booking.set_aside(GQ, fact, CD).actions == [cool]


def test_a_gone_model_is_quarantined_and_said_loudly_once():
    (cool,) = booking.set_aside(OR, ModelGone("No endpoints found"), CD).actions
    assert (cool.base_s, cool.max_s, cool.escalate) == (CD.gone_s, CD.gone_s, False)
    assert cool.error_if_first.endswith("quarantined for 6 h for every worker — remove it from the config")


def test_a_negative_balance_blocks_every_counter_of_the_pool():
    aside = booking.set_aside(OR, CreditsExhausted("negative"), CD)
    assert [a.counter for a in aside.actions] == list(OR.counters) and len(aside.actions) == 2
    assert all(a.for_ms == 900_000 and a.until_ms == 0 for a in aside.actions)
    assert "pool blocked for 900 s" in aside.error


@pytest.mark.parametrize("fact", [ContextTooLong("too long"), Rejected(400, "bad")])
def test_the_requests_own_problem_sets_nothing_aside(fact):
    assert booking.set_aside(GQ, fact, CD) == booking.SetAside()


def test_a_clamped_provider_value_is_passed_on_to_be_said_and_counted():
    aside = booking.set_aside(GQ, ModelBusy("busy", retry_after=5, clamped="retry-after 9e9 s bounded"), CD)
    assert aside.clamped == "retry-after 9e9 s bounded"


def test_a_stated_wait_must_be_a_positive_number():
    assert booking.stated_wait(ModelBusy("x", retry_after=3)) == 3.0
    assert booking.stated_wait(ModelBusy("x", retry_after=0)) is None
    assert booking.stated_wait(ModelBusy("x")) is None
    assert booking.stated_wait(ModelGone("x")) is None
