"""The priority / pace / share policy (router_plugin/priority.py): what it asks of the one atomic reservation.

Pure unit tests; the store's side (the ceilings and extra counters enforced in the same Lua call, with several
processes) is in tests/test_priority_store.py and the proxy's in tests/test_priority_proxy.py.
"""

from __future__ import annotations

import calendar
import math

import pytest

from router_plugin.config import Pace, Policy, Shares, parse_settings
from router_plugin.limits import DAY_S, LimitOverride, PlanInputs, plan_for
from router_plugin.priority import Admission, PriorityError, priority_from_headers, priority_of, priority_problem
from router_plugin.store import Blocked

OR = plan_for({"model_name": "chat", "litellm_params": {"model": "openrouter/meta-llama/llama-3.3-70b-instruct:free",
                                                        "api_key": "k1"}, "model_info": {"id": "or"}},
              PlanInputs(limits={"openrouter": LimitOverride(rpm=1000, rpd=50)}))
GQ = plan_for({"model_name": "chat", "litellm_params": {"model": "groq/openai/gpt-oss-120b", "api_key": "k2"},
               "model_info": {"id": "gq"}}, PlanInputs())
NOON = calendar.timegm((2026, 12, 8, 12, 0, 0)) + 0.0  # half of the UTC day gone


def caps(plan):
    return {c.key: c.limit.capacity for c in plan.counters}


# ---- the request's priority -----------------------------------------------------------------------------------

@pytest.mark.parametrize("metadata, expected", [
    (None, 0), ({}, 0), ({"priority": 0}, 0), ({"priority": 3}, 3), ({"priority": "2"}, 2), ({"priority": " 1 "}, 1),
    ({"priority": 2.0}, 2),
    ({"priority": 0, "user_api_key_metadata": {"router_plugin_priority": 2}}, 2),  # the key's floor wins
    ({"priority": 5, "user_api_key_metadata": {"router_plugin_priority": 2}}, 5),  # a request may ask for less
    ({"user_api_key_team_metadata": {"router_plugin_priority": 1}, "user_api_key_metadata": None}, 1),
])
def test_priority_of(metadata, expected):
    assert priority_of(metadata) == expected


@pytest.mark.parametrize("metadata, words", [
    ({"priority": -1}, "'metadata.priority' must be an integer >= 0 (0 = interactive, the default; higher = less "
                       "urgent), got -1"),
    ({"priority": "high"}, "'metadata.priority' must be an integer >= 0"),
    ({"priority": True}, "got True"),
    ({"priority": 1.5}, "got 1.5"),
    ({"priority": [1]}, "got [1]"),
    ({"priority": "x", "router_plugin_priority_source": "header"}, "header x-router-plugin-priority must be"),
    ({"user_api_key_metadata": {"router_plugin_priority": "low"}}, "the virtual key's metadata router_plugin_priority"),
])
def test_a_bad_priority_is_one_clear_line(metadata, words):
    with pytest.raises(PriorityError) as err:
        priority_of(metadata)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert priority_problem(metadata) == str(err.value)


def test_priority_header_any_case():
    assert priority_from_headers({"X-Router-Plugin-Priority": "2"}) == "2"
    assert priority_from_headers({"x-other": "2"}) is None and priority_from_headers(None) is None


def test_a_bad_priority_is_refused_before_anything_is_reserved():
    from router_plugin.request_shape import problem

    found = problem([{"role": "user", "content": "hi"}], {"metadata": {"priority": "urgent"}})
    assert found and "'metadata.priority' must be an integer >= 0" in found
    assert problem([{"role": "user", "content": "hi"}], {"metadata": {"priority": 1}}) is None


# ---- the reserve ----------------------------------------------------------------------------------------------

def test_no_policy_asks_nothing_more():
    ask = Admission().ask(OR, 10, {"priority": 5}, NOON)
    assert ask.plan is OR and ask.tokens == 10 and not ask.ceilings and not ask.extra


def test_reserve_lowers_every_counter_for_lower_priorities_only():
    admission = Admission(Policy(reserve=0.2))
    low = admission.ask(GQ, 10, {"priority": 1}, NOON)
    assert low.ceilings == pytest.approx({k: v * 0.8 for k, v in caps(GQ).items()})  # minute and day, both units
    assert admission.ask(GQ, 10, {}, NOON).ceilings == {}  # priority 0 may use everything
    assert admission.ask(OR, 1, {"priority": 1}, NOON).ceilings == pytest.approx({"minute": 800, "day": 40})


def test_admission_from_settings():
    settings = parse_settings({"priority": {"reserve": 0.25}})
    assert Admission.from_settings(settings).ask(OR, 1, {"priority": 2}, NOON).ceilings["day"] == pytest.approx(37.5)


# ---- the pace -------------------------------------------------------------------------------------------------

def test_pace_of_a_utc_day_releases_it_evenly_after_a_burst():
    admission = Admission(Policy(pace={"openrouter": Pace(burst=3)}))
    midnight = NOON - DAY_S / 2
    assert admission.ask(OR, 1, {}, midnight).ceilings == pytest.approx({"day": 3})
    assert admission.ask(OR, 1, {}, NOON).ceilings == pytest.approx({"day": 3 + 25})
    assert admission.ask(OR, 1, {}, NOON + 6 * 3600).ceilings == pytest.approx({"day": 3 + 37.5})
    assert admission.ask(OR, 1, {}, midnight + DAY_S - 1).ceilings == {}  # the burst reaches the whole day


def test_pace_default_burst_is_an_hour_of_the_day():
    admission = Admission(Policy(pace={"openrouter": Pace()}))
    assert admission.ask(OR, 1, {}, NOON - DAY_S / 2).ceilings == pytest.approx({"day": math.ceil(50 / 24)})


def test_priority_zero_borrows_beyond_the_pace_up_to_the_reserve():
    admission = Admission(Policy(reserve=0.2, pace={"openrouter": Pace(burst=2)}))
    p0 = admission.ask(OR, 1, {}, NOON).ceilings
    p1 = admission.ask(OR, 1, {"priority": 1}, NOON).ceilings
    assert p0 == pytest.approx({"day": 2 + 25 + 10})  # pace + reserve x capacity
    assert p1 == pytest.approx({"minute": 800, "day": 2 + 25})  # the pace (below the reserve's 40)
    late = admission.ask(OR, 1, {"priority": 1}, NOON + 7 * 3600).ceilings
    assert late["day"] == pytest.approx(40)  # the pace passed the reserve: the reserve holds


def test_pace_of_a_rolling_day_caps_the_level_at_the_burst():
    admission = Admission(Policy(pace={"groq/openai/gpt-oss-120b": Pace(burst=40)}))
    assert admission.ask(GQ, 10, {}, NOON).ceilings == {"rpd": 40}  # rpd refills at 1000 / 24 h after that
    assert admission.ask(OR, 1, {}, NOON).ceilings == {}  # another pool: not paced


# ---- shares ---------------------------------------------------------------------------------------------------

KEY_A = {"user_api_key_hash": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b"}
KEY_B = {"user_api_key_hash": "0b0e54bc7e3ad6d0f0a2dca23ea6ad9d4e1b8d2a5a5ff1e1b1f3e0a6c3c2b1a0",
         "user_api_key_alias": "nightly-batch"}


def test_a_share_is_an_extra_counter_per_identity_in_the_pools_slot():
    admission = Admission(Policy(shares=Shares(per="key", fractions={"openrouter": 0.5})))
    a, b = admission.ask(OR, 1, KEY_A, NOON), admission.ask(OR, 1, KEY_B, NOON)
    (ca,), (cb,) = a.extra, b.extra
    assert ca.limit.capacity == 25 and ca.limit.kind == "fixed" and ca.limit.window_s == DAY_S
    assert ca.key != cb.key and ca.key.startswith("share:key:")
    assert KEY_A["user_api_key_hash"] not in ca.key + ca.label  # hashed again; never the key's own hash
    assert cb.label == "key nightly-batch's share of the OpenRouter day"
    assert admission.ask(OR, 1, {}, NOON).extra == ()  # no identity: no share
    assert admission.ask(GQ, 1, KEY_A, NOON).extra == ()  # a pool without a share


def test_shares_per_user_and_team():
    admission = Admission(Policy(shares=Shares(per="team", fractions={"groq": 0.1})))
    (share,) = admission.ask(GQ, 1, {"user_api_key_team_id": "research", **KEY_A}, NOON).extra
    assert share.limit.capacity == 100 and share.limit.kind == "refill" and "team research's share" in share.label
    assert Admission(Policy(shares=Shares(per="user", fractions={"groq": 0.1}))).ask(GQ, 1, KEY_A, NOON).extra == ()


# ---- refusals -------------------------------------------------------------------------------------------------

def blocked(plan, key, ceiling, now_s, until_ms=None, counter=None):
    counter = counter or next(c for c in plan.counters if c.key == key)
    now_ms = int(now_s * 1000)
    until_ms = until_ms if until_ms is not None else (int(now_s // DAY_S) + 1) * DAY_S * 1000
    return Blocked(plan, counter, until_ms, "ceiling" if ceiling is not None else "full", now_ms, ceiling)


def test_describe_the_reserve_the_pace_and_a_share():
    admission = Admission(Policy(reserve=0.2, pace={"openrouter": Pace(burst=2)},
                                 shares=Shares(fractions={"openrouter": 0.5})))
    assert admission.describe(blocked(OR, "minute", 800, NOON)) == "kept for priority-0 requests (reserve 20%)"
    assert admission.describe(blocked(OR, "day", 40, NOON + 7 * 3600)) == "kept for priority-0 requests (reserve 20%)"
    paced = blocked(OR, "day", 27, NOON)  # priority 1 at noon: 2 + 25, all used
    assert admission.describe(paced) == "paced: next slot at 12:28:48 UTC"  # one day's 50th later
    (share,) = admission.ask(OR, 1, KEY_B, NOON).extra
    assert admission.describe(blocked(OR, None, None, NOON, counter=share)) == \
        "key nightly-batch's share of the OpenRouter day (25 of 25)"
    full = Blocked(OR, OR.counters[1], 0, "full", 0)
    assert admission.describe(full) is None  # the pool is simply full


def test_retime_moves_a_paced_refusal_to_the_next_slot_not_the_reset():
    admission = Admission(Policy(reserve=0.2, pace={"openrouter": Pace(burst=2)}))
    paced = blocked(OR, "day", 27, NOON)
    moved = admission.retime(paced)
    assert moved.wait_s == pytest.approx(DAY_S / 50, abs=1)  # 28m48s, not the 12 h to midnight
    assert moved.why == "paced"  # the refusal reads "<label> paced until 12:28:48 UTC (in 28m48s)"
    reserve = blocked(OR, "day", 40, NOON + 7 * 3600)
    assert admission.retime(reserve).until_ms == reserve.until_ms  # the reserve opens at the day's reset
    p0 = blocked(OR, "day", 37, NOON)  # priority 0 borrowed its 10 too: next slot when the pace grows by one
    assert admission.retime(p0).wait_s == pytest.approx(DAY_S / 50, abs=1)
    late = blocked(OR, "day", 39.5, NOON + 6 * 3600)  # priority 1 at 18:00, the reserve's 40 already used
    object.__setattr__(late, "used", 40)
    assert admission.retime(late).until_ms == late.until_ms  # no lower-priority slot before the reset
    object.__setattr__(late, "used", 39)
    assert admission.retime(late).wait_s == pytest.approx(DAY_S / 100, abs=1)  # the pace reaches 40 in 14m24s


def test_the_proxy_hook_takes_the_header_unless_the_body_gives_a_priority():
    from router_plugin.adapter.proxy import priority_into_metadata

    data = {"metadata": {"router_plugin_priority_source": "forged"},
            "proxy_server_request": {"headers": {"X-Router-Plugin-Priority": "2"}}}
    priority_into_metadata(data)
    assert data["metadata"]["priority"] == "2" and data["metadata"]["router_plugin_priority_source"] == "header"
    assert priority_of(data["metadata"]) == 2
    data = {"metadata": {"priority": 0, "router_plugin_priority_source": "header"},
            "proxy_server_request": {"headers": {"x-router-plugin-priority": "3"}}}
    priority_into_metadata(data)
    assert data["metadata"] == {"priority": 0}  # the body wins; only the hook marks a header's value
    data = {"litellm_metadata": {"headers": {"x-router-plugin-priority": "1"}}}
    priority_into_metadata(data)
    assert data["litellm_metadata"]["priority"] == "1"
