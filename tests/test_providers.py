"""router_plugin.providers: provider replies -> typed facts.

Fixtures are the captures quoted in /work/shared/docs/providers.md, copied verbatim (section cited on each).
"""

from __future__ import annotations

import json
import math
import os

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router_plugin import providers
from router_plugin.providers import (
    ContextTooLong,
    CreditsExhausted,
    Exhausted,
    ModelBusy,
    ModelGone,
    Rejected,
    Remaining,
    RequestTooLarge,
    ServerError,
    Unknown,
    groq,
    openrouter,
)
from router_plugin.providers._common import first_json_object, scrub
from tests.fake_keys import OPENAI_STYLE, groq_key, openrouter_key

FACT_TYPES = (
    Exhausted,
    ModelBusy,
    ModelGone,
    CreditsExhausted,
    ServerError,
    ContextTooLong,
    RequestTooLarge,
    Rejected,
    Unknown,
)

# 2026-05-20 23:00:00Z: one hour before the 1779321600000 (2026-05-21 00:00:00Z) daily reset of §1.1.
NOW = 1779318000.0

# ============================================================================================ OpenRouter fixtures

# providers.md §1.3 "Platform per-day" (OBS Gitlawb/openclaude#936, litellm#9035) — verbatim.
OR_PER_DAY = """{"error":{"message":"Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day","code":429,
 "metadata":{"headers":{"X-RateLimit-Limit":"50","X-RateLimit-Remaining":"0","X-RateLimit-Reset":"1779321600000"},"provider_name":null}},
 "user_id":"user_..."}"""

# providers.md §1.3: >=10-credit accounts, message "Rate limit exceeded: free-models-per-day-high-balance. " with
# Limit "1000" (OBS Gitlawb/openclaude#1549); envelope as in the per-day capture, reset 1788220800000 (§1.1 OBS).
OR_PER_DAY_HIGH = {
    "error": {
        "message": "Rate limit exceeded: free-models-per-day-high-balance. ",
        "code": 429,
        "metadata": {
            "headers": {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1788220800000"},
            "provider_name": None,
        },
    },
    "user_id": "user_...",
}
NOW_HIGH = 1788220800.0 - 5 * 3600

# providers.md §1.3 "Per-minute": "Rate limit exceeded: free-models-per-min. " with Limit "20"/"16", Reset = next
# minute boundary; §1.1 OBS minute reset 1783519380000 (14:03:00Z).
OR_PER_MIN = {
    "error": {
        "message": "Rate limit exceeded: free-models-per-min. ",
        "code": 429,
        "metadata": {
            "headers": {"X-RateLimit-Limit": "16", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1783519380000"},
            "provider_name": None,
        },
    },
    "user_id": "user_...",
}
NOW_MIN = 1783519380.0 - 17.5

# providers.md §1.3 "Per-model shared capacity" (OBS) — message verbatim, metadata.headers Limit "8", provider_name null.
OR_LIMIT_RPM = {
    "error": {
        "message": "Rate limit exceeded: limit_rpm/qwen/qwen3-coder-480b-a35b-07-25/<uuid>. High demand for "
        "qwen/qwen3-coder:free on OpenRouter - limited to 8 requests per minute. Please retry shortly.",
        "code": 429,
        "metadata": {
            "headers": {"X-RateLimit-Limit": "8", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1783519380000"},
            "provider_name": None,
        },
    }
}

# providers.md §1.3 older per-model: "limit_rpd/google/gemini-2.0-flash-thinking-exp-01-21/<uuid>" Limit "80",
# provider_name "Google AI Studio" (litellm#9035); reset = the §1.1 daily reset of that issue (1741305600000).
OR_LIMIT_RPD = {
    "error": {
        "message": "Rate limit exceeded: limit_rpd/google/gemini-2.0-flash-thinking-exp-01-21/<uuid>",
        "code": 429,
        "metadata": {
            "headers": {"X-RateLimit-Limit": "80", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1741305600000"},
            "provider_name": "Google AI Studio",
        },
    }
}
NOW_RPD = 1741305600.0 - 7200

# providers.md §1.3 "Upstream-provider 429" (OBS open-webui/computer#293; verbatim 2026 capture).
OR_UPSTREAM_2026 = """{"error":{"message":"Provider returned error","code":429,"metadata":{
 "raw":"deepseek/deepseek-v4-pro-0813 is temporarily rate-limited upstream. Please retry shortly, or add your own key to accumulate your rate limits: https://openrouter.ai/settings/integrations",
 "provider_name":"DeepInfra","is_byok":false,"provider_error_code":"engine_overloaded",
 "limit_source":"upstream_provider_shared_pool","remedy_hint":"Retry shortly, add your own provider key (...), or route to another provider with provider routing: ..."}},"user_id":"..."}"""

# providers.md §1.3: older raw could be non-JSON, {"raw":"error code: 1015","provider_name":"Kluster"} (litellm#8448).
OR_UPSTREAM_1015 = {
    "error": {
        "message": "Provider returned error",
        "code": 429,
        "metadata": {"raw": "error code: 1015", "provider_name": "Kluster"},
    }
}

# providers.md §1.3 DOC generic platform 429 example (limits.mdx) — verbatim.
OR_GENERIC_429 = """{"error":{"code":429,"message":"Rate limit exceeded","metadata":{"error_type":"rate_limit_exceeded"}}}"""

# providers.md §1.3: 2026 bodies add metadata.limit_source "openrouter_free_tier_daily" and remedy_hint
# "Wait for the daily reset" (OBS Avarok-Cybersecurity/atlas#543); message without "per-day", no headers.
OR_FREE_TIER_DAILY_2026 = {
    "error": {
        "message": "Rate limit exceeded",
        "code": 429,
        "metadata": {"limit_source": "openrouter_free_tier_daily", "remedy_hint": "Wait for the daily reset"},
    }
}

# providers.md §1.3 "Other statuses" — 402 (OBS astrio-labs/forall#76), verbatim.
OR_402_MAX_TOKENS = """{"error":{"message":"This request requires more credits, or fewer max_tokens. You requested up to 64000 tokens, but can only afford 2666. To increase, visit https://openrouter.ai/settings/credits and upgrade to a paid account","code":402,"metadata":{"provider_name":null}},"user_id":"..."}"""
# providers.md §1.3: 402 "Insufficient credits. Add more using https://openrouter.ai/settings/credits" (litellm#37592).
OR_402_INSUFFICIENT = {
    "error": {"message": "Insufficient credits. Add more using https://openrouter.ai/settings/credits", "code": 402}
}

# providers.md §1.3: 404 free model gone (OBS OpenHands#11874, chatboxai/chatbox#2743), verbatim; and its variants.
OR_404_GONE = """{"error":{"message":"No endpoints found for x-ai/grok-4-fast:free.","code":404},"user_id":"..."}"""
OR_404_TOOLS = {
    "error": {
        "message": "No endpoints found that support tool use. To learn more about provider routing, visit: "
        "https://openrouter.ai/docs/provider-routing",
        "code": 404,
    }
}
OR_404_POLICY = {"error": {"message": "No endpoints found matching your data policy ...", "code": 404}}

# providers.md §1.3: 400 unknown model (DOC), 400 context (OBS OpenHands#9937; error_type DOC).
OR_400_BAD_ID = {"error": {"message": "acme/fake-1.0 is not a valid model ID", "code": 400}}
OR_400_CONTEXT_MSG = (
    "This endpoint's maximum context length is 131072 tokens. However, you requested about 138956 tokens "
    '(7884 of text input, 131072 in the output). Please reduce the length of either one, or use the "middle-out" '
    "transform to compress your prompt automatically."
)
OR_400_CONTEXT = {"error": {"message": OR_400_CONTEXT_MSG, "code": 400}}
OR_400_CONTEXT_TYPED = {
    "error": {"message": "context", "code": 400, "metadata": {"error_type": "context_length_exceeded"}}
}

# providers.md §1.3: 401 "No auth credentials found" (OBS) / "Missing Authentication header" (openapi).
OR_401 = {"error": {"message": "No auth credentials found", "code": 401}}
OR_401_HEADER = {"error": {"message": "Missing Authentication header", "code": 401}}

# providers.md §1.3: 502 "Provider returned error" (openapi); 503 "There is no available model provider that meets
# your routing requirements" (DOC).
OR_502 = {"error": {"message": "Provider returned error", "code": 502}}
OR_503 = {"error": {"message": "There is no available model provider that meets your routing requirements", "code": 503}}

# providers.md §1.3 "HTTP 200 carrying an error" (OBS litellm#8448): top-level error, empty choices.
OR_200_ERROR = {
    "id": "gen-1",
    "object": "chat.completion",
    "choices": [],
    "error": {"message": "Provider returned error", "code": 502, "metadata": {"provider_name": "Chutes"}},
}

# providers.md §1.3 "Mid-stream" (DOC) — verbatim SSE line.
OR_STREAM_ERROR = 'data: {"id":"gen-abc123","object":"chat.completion.chunk","created":1234567890,"model":"openai/gpt-4o","provider":"OpenAI","error":{"code":429,"message":"Rate limit exceeded","metadata":{"error_type":"rate_limit_exceeded"}},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}'

# litellm-1.108-notes §3 / LiteLLM's exception mapping: the provider body embedded after a prefix.
LITELLM_PREFIX = "litellm.RateLimitError: RateLimitError: OpenrouterException - "

# ============================================================================================ Groq fixtures

# providers.md §2.2 header set (DOC; values illustrative) — verbatim.
GROQ_HEADERS = {
    "retry-after": "2",
    "x-ratelimit-limit-requests": "14400",
    "x-ratelimit-remaining-requests": "14370",
    "x-ratelimit-reset-requests": "2m59.56s",
    "x-ratelimit-limit-tokens": "18000",
    "x-ratelimit-remaining-tokens": "17997",
    "x-ratelimit-reset-tokens": "7.66s",
}

# providers.md §2.3 429 TPM (OBS) — verbatim.
GROQ_TPM = """{"error":{"message":"Rate limit reached for model `llama-3.1-8b-instant` in organization `org_01...` service tier `on_demand` on tokens per minute (TPM): Limit 6000, Used 4093, Requested 3531. Please try again in 16.239999999s. Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing","type":"tokens","code":"rate_limit_exceeded"}}"""


def _groq_429(tail: str, kind: str) -> dict:
    """The §2.3 envelope around the quoted RPM/RPD/TPD message tails."""
    return {
        "error": {
            "message": "Rate limit reached for model `llama-3.1-8b-instant` in organization `org_01...` service tier "
            "`on_demand` " + tail,
            "type": kind,
            "code": "rate_limit_exceeded",
        }
    }


# providers.md §2.3 RPM / RPD / TPD message tails — verbatim.
GROQ_RPM = _groq_429("on requests per minute (RPM): Limit 30, Used 30, Requested 1. Please try again in 1.5s.", "requests")
GROQ_RPD = _groq_429(
    "on requests per day (RPD): Limit 1000, Used 1000, Requested 1. Please try again in 1m26.4s.", "requests"
)
GROQ_TPD = _groq_429(
    "on tokens per day (TPD): Limit 200000, Used 199336, Requested 1524. Please try again in 6m11.52s.", "tokens"
)

# providers.md §2.3 413 (single request > TPM) — verbatim.
GROQ_413 = """{"error":{"message":"Request too large for model `llama-3.1-8b-instant` in organization `org_...` service tier `on_demand` on tokens per minute (TPM): Limit 6000, Requested 15041, please reduce your message size and try again. Need more tokens? ...","type":"tokens","code":"rate_limit_exceeded"}}"""

# providers.md §2.3 404 model_not_found — verbatim error object.
GROQ_404 = """{"error":{"message":"The model `X` does not exist or you do not have access to it.","type":"invalid_request_error","code":"model_not_found"}}"""
# providers.md §2.3: 400 model_decommissioned; 401 invalid_api_key "Invalid API Key"; 498 capacity_exceeded; 503.
GROQ_400_DECOMMISSIONED = {
    "error": {
        "message": "The model `llama-3.3-70b-versatile` has been decommissioned and is no longer supported.",
        "type": "invalid_request_error",
        "code": "model_decommissioned",
    }
}
GROQ_401 = {"error": {"message": "Invalid API Key", "type": "invalid_request_error", "code": "invalid_api_key"}}
GROQ_498 = {"error": {"message": "Capacity exceeded for flex tier", "type": "capacity_exceeded", "code": "capacity_exceeded"}}
GROQ_503 = {"error": {"message": "Service Unavailable", "type": "internal_server_error"}}
GROQ_400_CONTEXT = {
    "error": {
        "message": "Please reduce the length of the messages or completion.",
        "type": "invalid_request_error",
        "code": "context_length_exceeded",
    }
}


# ============================================================================================ OpenRouter classify


def test_or_per_day_exhausts_the_account_day_until_the_reset():
    fact = openrouter.classify(429, None, OR_PER_DAY, NOW)
    assert fact == Exhausted(
        "day",
        1779321600.0,
        "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day",
        capacity=50,
    )


def test_or_per_day_high_balance():
    fact = openrouter.classify(429, {}, OR_PER_DAY_HIGH, NOW_HIGH)
    assert isinstance(fact, Exhausted)
    assert (fact.limit, fact.until, fact.capacity, fact.model_only) == ("day", 1788220800.0, 1000, False)


def test_or_per_minute_uses_the_reset_from_headers():
    headers = httpx.Headers(
        {"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1783519380000"}
    )
    body = {"error": {"message": "Rate limit exceeded: free-models-per-min. ", "code": 429}}
    fact = openrouter.classify(429, headers, body, NOW_MIN)
    assert isinstance(fact, Exhausted)
    assert (fact.limit, fact.until, fact.capacity) == ("minute", 1783519380.0, 20)
    assert fact.detail == "Rate limit exceeded: free-models-per-min."


def test_or_per_minute_body_mirror():
    fact = openrouter.classify(429, None, OR_PER_MIN, NOW_MIN)
    assert isinstance(fact, Exhausted)
    assert (fact.limit, fact.until, fact.capacity) == ("minute", 1783519380.0, 16)


def test_or_platform_without_reset_uses_clock_defaults():
    minute = {"error": {"message": "Rate limit exceeded: free-models-per-min. ", "code": 429}}
    day = {"error": {"message": "Rate limit exceeded: free-models-per-day. ", "code": 429}}
    now = 1783519300.25  # 14:01:40.25Z
    assert openrouter.classify(429, None, minute, now).until == 1783519320.0
    fact = openrouter.classify(429, None, day, now)
    assert (fact.limit, fact.until) == ("day", 1783555200.0)  # next 00:00:00Z


@pytest.mark.parametrize(
    ("reset_ms", "now", "limit"),
    [
        ("1779321600000", 1779321600.0 - 30, "day"),  # a UTC midnight, even if close
        ("1783519380000", 1783519380.0 - 200, "day"),  # > 120 s away
        ("1783519380000", 1783519380.0 - 45, "minute"),
    ],
)
def test_or_platform_window_decided_from_the_reset(reset_ms, now, limit):
    headers = {"x-ratelimit-limit": "20", "x-ratelimit-remaining": "0", "x-ratelimit-reset": reset_ms}
    fact = openrouter.classify(429, headers, {"error": {"message": "Rate limit exceeded", "code": 429}}, now)
    assert isinstance(fact, Exhausted) and fact.limit == limit
    assert fact.until == int(reset_ms) / 1000


def test_or_limit_source_free_tier_daily():
    fact = openrouter.classify(429, None, OR_FREE_TIER_DAILY_2026, NOW)
    assert isinstance(fact, Exhausted)
    assert (fact.limit, fact.until, fact.model_only) == ("day", 1779321600.0, False)


def test_or_limit_rpm_exhausts_only_the_model():
    fact = openrouter.classify(429, None, OR_LIMIT_RPM, NOW_MIN)
    assert isinstance(fact, Exhausted)
    assert (fact.limit, fact.until, fact.capacity, fact.model_only) == ("minute", 1783519380.0, 8, True)
    assert "limited to 8 requests per minute" in fact.detail


def test_or_limit_rpm_capacity_from_text_and_default_reset():
    body = {"error": {"message": OR_LIMIT_RPM["error"]["message"], "code": 429}}
    fact = openrouter.classify(429, None, body, 1783519300.0)
    assert (fact.limit, fact.capacity, fact.model_only, fact.until) == ("minute", 8, True, 1783519320.0)


def test_or_limit_rpd_with_provider_name_is_model_only_day():
    fact = openrouter.classify(429, None, OR_LIMIT_RPD, NOW_RPD)
    assert isinstance(fact, Exhausted)
    assert (fact.limit, fact.until, fact.capacity, fact.model_only) == ("day", 1741305600.0, 80, True)


def test_or_upstream_2026_is_model_busy():
    fact = openrouter.classify(429, None, OR_UPSTREAM_2026, NOW)
    assert isinstance(fact, ModelBusy)
    assert fact.detail.startswith("DeepInfra: deepseek/deepseek-v4-pro-0813 is temporarily rate-limited upstream.")
    assert len(fact.detail) <= 300
    assert fact.retry_after is None


def test_or_upstream_non_json_raw_and_retry_after():
    fact = openrouter.classify(429, {"Retry-After": "7"}, OR_UPSTREAM_1015, NOW)
    assert fact == ModelBusy("Kluster: error code: 1015", retry_after=7.0)


def test_or_upstream_json_raw_keeps_only_its_message():
    raw = json.dumps({"error": {"message": "Resource has been exhausted (e.g. check quota).", "code": 429}})
    body = {"error": {"message": "Provider returned error", "code": 429, "metadata": {"raw": raw, "provider_name": "Google"}}}
    assert openrouter.classify(429, None, body, NOW) == ModelBusy("Google: Resource has been exhausted (e.g. check quota).")


def test_or_upstream_wins_over_stray_ratelimit_headers_but_not_over_a_platform_message():
    headers = {"x-ratelimit-limit": "20", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1783519380000"}
    assert isinstance(openrouter.classify(429, headers, OR_UPSTREAM_1015, NOW_MIN), ModelBusy)
    platform = json.loads(OR_PER_DAY)
    platform["error"]["metadata"]["provider_name"] = "Chutes"
    assert isinstance(openrouter.classify(429, headers, platform, NOW_MIN), Exhausted)


def test_or_generic_429_is_the_minute_until_the_end_of_the_clock_minute():
    fact = openrouter.classify(429, None, OR_GENERIC_429, 1783519300.5)
    assert fact == Exhausted("minute", 1783519320.0, "Rate limit exceeded")


def test_or_bare_429_without_anything_is_model_busy():
    fact = openrouter.classify(429, None, None, NOW)
    assert isinstance(fact, ModelBusy)


@pytest.mark.parametrize("body", [OR_402_MAX_TOKENS, OR_402_INSUFFICIENT])
def test_or_402_credits_exhausted(body):
    fact = openrouter.classify(402, None, body, NOW)
    assert isinstance(fact, CreditsExhausted)
    assert "credits" in fact.detail.lower()


def test_or_404_no_endpoints_is_model_gone():
    assert openrouter.classify(404, None, OR_404_GONE, NOW) == ModelGone("No endpoints found for x-ai/grok-4-fast:free.")


@pytest.mark.parametrize("body", [OR_404_TOOLS, OR_404_POLICY])
def test_or_404_variants_are_rejections_not_gone(body):
    fact = openrouter.classify(404, None, body, NOW)
    assert isinstance(fact, Rejected) and fact.status == 404


@pytest.mark.parametrize("code", ["free_variant_ended", "no_endpoints"])
def test_or_availability_codes_mean_gone(code):
    body = {"error": {"error_type": "not_found", "http_status": 404, "message": "gone", "availability": {"code": code}}}
    assert isinstance(openrouter.classify(404, None, body, NOW), ModelGone)
    assert isinstance(openrouter.classify(200, None, body, NOW), ModelGone)


def test_or_400s():
    assert openrouter.classify(400, None, OR_400_BAD_ID, NOW) == ModelGone("acme/fake-1.0 is not a valid model ID")
    ctx = openrouter.classify(400, None, OR_400_CONTEXT, NOW)
    assert isinstance(ctx, ContextTooLong) and ctx.detail.startswith("This endpoint's maximum context length is 131072")
    assert isinstance(openrouter.classify(400, None, OR_400_CONTEXT_TYPED, NOW), ContextTooLong)
    assert openrouter.classify(400, None, {"error": {"message": "bad", "code": 400}}, NOW) == Rejected(400, "bad")


@pytest.mark.parametrize("body", [OR_401, OR_401_HEADER])
def test_or_401_rejected(body):
    assert openrouter.classify(401, None, body, NOW) == Rejected(401, body["error"]["message"])


@pytest.mark.parametrize("status", [403, 413, 422])
def test_or_other_client_errors_rejected(status):
    assert isinstance(openrouter.classify(status, None, {"error": {"message": "x", "code": status}}, NOW), Rejected)


@pytest.mark.parametrize(("status", "body"), [(502, OR_502), (503, OR_503), (408, None), (524, None), (529, None), (599, "")])
def test_or_server_errors(status, body):
    fact = openrouter.classify(status, {"retry-after": "3"}, body, NOW)
    assert isinstance(fact, ServerError)
    assert (fact.status, fact.retry_after) == (status, 3.0)


def test_or_503_detail():
    assert openrouter.classify(503, None, OR_503, NOW).detail == OR_503["error"]["message"]


def test_or_200_with_error_classified_by_code():
    fact = openrouter.classify(200, None, OR_200_ERROR, NOW)
    assert fact == ServerError(502, "Provider returned error")
    no_code = {"choices": [], "error": {"message": "boom"}}
    assert openrouter.classify(200, None, no_code, NOW) == ServerError(None, "boom")
    rl = {"choices": [], "error": json.loads(OR_PER_DAY)["error"]}
    assert isinstance(openrouter.classify(200, None, rl, NOW), Exhausted)


def test_or_success_is_none():
    assert openrouter.classify(200, None, {"id": "x", "choices": [{"message": {"content": "hi"}}]}, NOW) is None
    assert openrouter.classify(200, None, None, NOW) is None
    assert openrouter.classify("200", {}, b"", NOW) is None
    assert isinstance(openrouter.classify(None, None, None, NOW), Unknown)


def test_status_normalisation():
    assert isinstance(openrouter.classify("429", None, OR_PER_DAY, NOW), Exhausted)
    assert isinstance(groq.classify(b"404", None, None, NOW), ModelGone)
    # not a status (bool, out of range, float text): the body's error.code decides, or nothing is known
    assert isinstance(openrouter.classify(True, None, OR_PER_DAY, NOW), Exhausted)
    assert isinstance(openrouter.classify(5000, None, None, NOW), Unknown)
    assert isinstance(groq.classify(-503, None, None, NOW), Unknown)
    assert isinstance(providers.classify("other", "5e2", None, None, NOW), Unknown)


def test_or_litellm_wrapped_body():
    fact = openrouter.classify(429, None, LITELLM_PREFIX + OR_PER_DAY, NOW)
    assert isinstance(fact, Exhausted) and (fact.limit, fact.until, fact.capacity) == ("day", 1779321600.0, 50)
    gone = openrouter.classify(404, None, "litellm.NotFoundError: NotFoundError: OpenrouterException - " + OR_404_GONE, NOW)
    assert gone == ModelGone("No endpoints found for x-ai/grok-4-fast:free.")
    busy = openrouter.classify(429, None, (LITELLM_PREFIX + OR_UPSTREAM_2026).encode(), NOW)
    assert isinstance(busy, ModelBusy) and busy.detail.startswith("DeepInfra:")


def test_or_litellm_stream_error_repr():
    """LiteLLM raises stream errors as "Message: ..., Metadata: {python repr}" (no JSON)."""
    text = (
        LITELLM_PREFIX + "Message: Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model "
        "requests per day, Metadata: {'headers': {'X-RateLimit-Limit': '50', 'X-RateLimit-Remaining': '0', "
        "'X-RateLimit-Reset': '1779321600000'}, 'provider_name': None}, User ID: "
    )
    fact = openrouter.classify(429, None, text, NOW)
    assert isinstance(fact, Exhausted)
    assert (fact.limit, fact.until, fact.capacity) == ("day", 1779321600.0, 50)
    assert fact.detail.startswith("Rate limit exceeded: free-models-per-day.") and "Metadata" not in fact.detail
    assert openrouter.remaining(None, text, NOW) == [Remaining("day", 0, 50, 1779321600.0)]


# ============================================================================================ OpenRouter remaining


def test_or_remaining_from_body_mirror_and_headers():
    assert openrouter.remaining(None, OR_PER_DAY, NOW) == [Remaining("day", 0, 50, 1779321600.0)]
    headers = [("X-RateLimit-Limit", "20"), ("X-RateLimit-Remaining", "3"), ("X-RateLimit-Reset", "1783519380000")]
    assert openrouter.remaining(headers, None, NOW_MIN) == [Remaining("minute", 3, 20, 1783519380.0)]


def test_or_remaining_ignores_per_model_and_upstream_and_garbage():
    assert openrouter.remaining(None, OR_LIMIT_RPM, NOW_MIN) == []
    assert openrouter.remaining(None, OR_UPSTREAM_2026, NOW) == []
    assert openrouter.remaining({}, None, NOW) == []
    assert openrouter.remaining({"x-ratelimit-remaining": "-1"}, None, NOW) == []
    bad_reset = {"x-ratelimit-remaining": "5", "x-ratelimit-limit": "NaN", "x-ratelimit-reset": "inf"}
    assert openrouter.remaining(bad_reset, None, NOW) == [Remaining("minute", 5, None, None)]


# ============================================================================================ OpenRouter streams


def test_or_stream_error_chunk_is_model_busy():
    fact = openrouter.classify_stream_chunk(OR_STREAM_ERROR)
    assert fact == ModelBusy("Rate limit exceeded")
    payload = OR_STREAM_ERROR[len("data: ") :]
    assert openrouter.classify_stream_chunk(payload.encode()) == fact
    assert openrouter.classify_stream_chunk(json.loads(payload)) == fact


def test_or_stream_platform_limit_is_exhausted():
    chunk = {"id": "gen-1", "choices": [{"finish_reason": "error"}], "error": json.loads(OR_PER_DAY)["error"]}
    fact = openrouter.classify_stream_chunk(chunk, NOW)
    assert isinstance(fact, Exhausted) and (fact.limit, fact.until) == ("day", 1779321600.0)


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        ({"error": {"code": 502, "message": "Provider returned error"}}, ServerError(502, "Provider returned error")),
        ({"error": {"message": "weird"}}, ServerError(None, "weird")),
        ({"choices": [{"finish_reason": "error"}]}, ServerError),
        ({"error": {"code": 402, "message": "Insufficient credits"}}, CreditsExhausted("Insufficient credits")),
        ({"error": {"code": 301, "message": "moved"}}, ServerError(301, "moved")),
    ],
)
def test_or_stream_other_errors(chunk, expected):
    fact = openrouter.classify_stream_chunk(chunk, NOW)
    if isinstance(expected, type):
        assert isinstance(fact, expected)
    else:
        assert fact == expected


@pytest.mark.parametrize(
    "chunk",
    [
        'data: {"id":"gen-1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}',
        ": OPENROUTER PROCESSING",
        "data: [DONE]",
        '{"error": ',
        b"\xff\xfe",
        "",
        {"choices": [{"finish_reason": "stop"}]},
        {"error": None},
    ],
)
def test_or_stream_normal_or_garbage_is_none(chunk):
    assert openrouter.classify_stream_chunk(chunk) is None


# ============================================================================================ Groq


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7.66s", 7.66),
        ("2m59.56s", 179.56),
        ("16.239999999s", 16.239999999),
        ("1m0.363142857s", 60.363142857),
        ("820ms", 0.82),
        ("1h2m3s", 3723.0),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("0s", 0.0),
        ("2", 2.0),
        (b"1.5s", 1.5),
        (" 6m11.52s ", 371.52),
    ],
)
def test_parse_duration(text, seconds):
    assert groq.parse_duration(text) == pytest.approx(seconds, abs=1e-9)


@pytest.mark.parametrize("text", ["-1s", "-2", "", "s", "1x", "1.2.3s", "abc", "NaN", "inf", "1e5s", None, [], True, "5s5"])
def test_parse_duration_rejects_garbage(text):
    assert groq.parse_duration(text) is None


def test_groq_remaining_from_doc_headers():
    now = 1000.0
    assert groq.remaining(GROQ_HEADERS, now) == [
        Remaining("rpd", 14370, 14400, pytest.approx(1179.56)),
        Remaining("tpm", 17997, 18000, pytest.approx(1007.66)),
    ]


def test_groq_remaining_httpx_headers_and_litellm_prefixed_forms():
    h = httpx.Headers({k.upper(): v for k, v in GROQ_HEADERS.items()})
    assert [r.limit for r in groq.remaining(h, 0.0)] == ["rpd", "tpm"]
    prefixed = {"llm_provider-" + k: v for k, v in GROQ_HEADERS.items()}
    assert groq.remaining(prefixed, 0.0)[1] == Remaining("tpm", 17997, 18000, pytest.approx(7.66))


def test_groq_remaining_omits_garbled_entries():
    h = dict(GROQ_HEADERS, **{"x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-tokens": "soon"})
    assert groq.remaining(h, 0.0) == [Remaining("tpm", 17997, 18000, None)]
    assert groq.remaining(None, 0.0) == []


@pytest.mark.parametrize(
    ("body", "limit", "wait", "capacity"),
    [
        (GROQ_TPM, "tpm", 16.239999999, 6000),
        (GROQ_RPM, "rpm", 1.5, 30),
        (GROQ_RPD, "rpd", 86.4, 1000),
        (GROQ_TPD, "tpd", 371.52, 200000),
    ],
)
def test_groq_429_bodies(body, limit, wait, capacity):
    now = 1_700_000_000.0
    fact = groq.classify(429, GROQ_HEADERS, body, now)
    assert isinstance(fact, Exhausted)
    assert (fact.limit, fact.capacity, fact.model_only) == (limit, capacity, False)
    assert fact.until - now == pytest.approx(wait, abs=1e-6)
    assert "Need more tokens" not in fact.detail and "org_01..." in fact.detail


def test_groq_429_wait_falls_back_to_retry_after_then_formula():
    now = 100.0
    no_wait = {
        "error": {
            "message": "Rate limit reached for model `m` on tokens per minute (TPM): Limit 9000, Used 0, Requested 16008.",
            "code": "rate_limit_exceeded",
        }
    }
    assert groq.classify(429, {"retry-after": "47"}, no_wait, now).until == 147.0
    # providers.md §2.2 INF: litellm#3274 9000/0/16008 -> 46.72 s
    assert groq.classify(429, {}, no_wait, now).until == pytest.approx(146.72)
    # the TPM reset header, when there is no body wait and no retry-after
    assert groq.classify(429, {"x-ratelimit-reset-tokens": "7.66s"}, no_wait, now).until == pytest.approx(107.66)


def test_groq_429_unreadable_body():
    fact = groq.classify(429, {"retry-after": "2"}, b"<html>oops", 50.0)
    assert isinstance(fact, Exhausted) and (fact.limit, fact.until, fact.capacity) == ("rpm", 52.0, None)
    assert groq.classify(429, None, None, 50.0).until == 110.0  # nothing at all: 60 s


def test_groq_413_and_2024_429_request_too_large():
    assert groq.classify(413, None, GROQ_413, 0.0) == RequestTooLarge(
        "Request too large for model `llama-3.1-8b-instant` in organization `org_...` service tier `on_demand` on "
        "tokens per minute (TPM): Limit 6000, Requested 15041, please reduce your message size and try again.",
        limit=6000,
    )
    fact = groq.classify(429, GROQ_HEADERS, GROQ_413, 0.0)
    assert isinstance(fact, RequestTooLarge) and fact.limit == 6000


def test_groq_gone_context_rejected_server():
    assert groq.classify(404, None, GROQ_404, 0.0) == ModelGone(
        "The model `X` does not exist or you do not have access to it."
    )
    assert isinstance(groq.classify(400, None, GROQ_400_DECOMMISSIONED, 0.0), ModelGone)
    assert isinstance(groq.classify(400, None, GROQ_400_CONTEXT, 0.0), ContextTooLong)
    text_only = {"error": {"message": "Please reduce the length of the messages", "type": "invalid_request_error"}}
    assert isinstance(groq.classify(400, None, text_only, 0.0), ContextTooLong)
    assert groq.classify(401, None, GROQ_401, 0.0) == Rejected(401, "Invalid API Key")
    assert groq.classify(422, None, {"error": {"message": "bad"}}, 0.0) == Rejected(422, "bad")
    assert groq.classify(498, None, GROQ_498, 0.0) == ServerError(498, "Capacity exceeded for flex tier")
    assert groq.classify(503, {"retry-after": "4"}, GROQ_503, 0.0) == ServerError(503, "Service Unavailable", 4.0)
    assert isinstance(groq.classify(408, None, None, 0.0), ServerError)


def test_groq_200_with_error_and_success():
    assert groq.classify(200, GROQ_HEADERS, {"choices": [{"message": {"content": "x"}}]}, 0.0) is None
    assert isinstance(groq.classify(200, None, json.loads(GROQ_404), 0.0), ModelGone)
    fact = groq.classify(200, None, json.loads(GROQ_TPM), 10.0)
    assert isinstance(fact, Exhausted) and fact.until == pytest.approx(26.239999999)
    assert groq.classify(200, None, {"error": {"message": "odd"}}, 0.0) == ServerError(None, "odd")


def test_groq_litellm_wrapped_and_stream_chunk():
    fact = groq.classify(429, None, "litellm.RateLimitError: RateLimitError: GroqException - " + GROQ_TPM, 0.0)
    assert isinstance(fact, Exhausted) and fact.limit == "tpm" and fact.capacity == 6000
    assert isinstance(groq.classify_stream_chunk("data: " + GROQ_TPM, 0.0), Exhausted)
    assert groq.classify_stream_chunk('data: {"choices":[{"delta":{"content":"x"}}]}') is None
    assert groq.classify_stream_chunk("data: [DONE]") is None


# ============================================================================================ package level


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("openrouter/deepseek/deepseek-r1:free", "openrouter"),
        ("groq/openai/gpt-oss-120b", "groq"),
        ("openai/gpt-4o", None),
        ("groq", None),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_provider_of(model, provider):
    assert providers.provider_of(model) == provider


def test_dispatch_and_generic_classification():
    assert isinstance(providers.classify("openrouter", 429, None, OR_PER_DAY, NOW), Exhausted)
    assert isinstance(providers.classify("groq", 429, None, GROQ_TPM, NOW), Exhausted)
    assert isinstance(providers.classify("other", 429, None, OR_PER_DAY, NOW), ModelBusy)
    assert isinstance(providers.classify("other", 404, None, None, NOW), ModelGone)
    assert isinstance(providers.classify("other", 500, None, None, NOW), ServerError)
    assert isinstance(providers.classify(None, 400, None, None, NOW), Rejected)
    assert providers.classify("other", 200, None, None, NOW) is None
    assert providers.remaining("groq", GROQ_HEADERS, None, 0.0)[0].limit == "rpd"
    assert providers.remaining("openrouter", None, OR_PER_DAY, NOW)[0].limit == "day"
    assert providers.remaining("other", GROQ_HEADERS, None, 0.0) == []
    assert providers.classify_stream_chunk("openrouter", OR_STREAM_ERROR) == ModelBusy("Rate limit exceeded")


# --- fake exceptions mimicking LiteLLM's (litellm-1.108-notes §3) ---


class RateLimitError(Exception):
    def __init__(self, message, headers=None, status_code=429):
        super().__init__(message)
        self.status_code = status_code
        self.message = "litellm.RateLimitError: " + message
        self.litellm_response_headers = headers
        self.headers = None


class BrokenResponseError(Exception):
    """An exception whose ``.response`` property raises, as some LiteLLM exceptions' does."""

    status_code = 404

    @property
    def response(self):
        raise RuntimeError("response is not available on this exception")

    @property
    def message(self):
        return "litellm.NotFoundError: NotFoundError: OpenrouterException - " + OR_404_GONE


class APITimeoutError(Exception):
    pass


class Timeout(APITimeoutError):
    def __init__(self):
        super().__init__("litellm.Timeout: Connection timed out after 600.0 seconds.")
        self.status_code = 408


class APIConnectionError(Exception):
    status_code = 500


class MidStreamFallbackError(Exception):
    status_code = 503

    def __init__(self, original):
        super().__init__("litellm.MidStreamFallbackError: boom")
        self.original_exception = original


class StrRaises(Exception):
    def __str__(self):
        raise RuntimeError("no str")


def test_classify_exception_openrouter_429_with_httpx_headers():
    headers = httpx.Headers({"x-ratelimit-limit": "50", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1779321600000"})
    exc = RateLimitError("RateLimitError: OpenrouterException - " + OR_PER_DAY, headers)
    fact = providers.classify_exception("openrouter", exc, NOW)
    assert isinstance(fact, Exhausted) and (fact.limit, fact.until, fact.capacity) == ("day", 1779321600.0, 50)
    assert providers.exception_remaining("openrouter", exc, NOW) == [Remaining("day", 0, 50, 1779321600.0)]


def test_classify_exception_groq_429_headers():
    exc = RateLimitError("RateLimitError: GroqException - " + GROQ_TPM, httpx.Headers(GROQ_HEADERS))
    fact = providers.classify_exception("groq", exc, 10.0)
    assert isinstance(fact, Exhausted) and fact.limit == "tpm" and fact.until == pytest.approx(26.239999999)
    assert [r.limit for r in providers.exception_remaining("groq", exc, 10.0)] == ["rpd", "tpm"]


def test_classify_exception_with_raising_response_property():
    exc = BrokenResponseError()
    assert providers.classify_exception("openrouter", exc, NOW) == ModelGone("No endpoints found for x-ai/grok-4-fast:free.")
    assert providers.exception_remaining("openrouter", exc, NOW) == []


def test_classify_exception_timeouts_and_connection_errors():
    fact = providers.classify_exception("groq", Timeout(), NOW)
    assert isinstance(fact, ServerError) and fact.status == 408
    conn = providers.classify_exception("openrouter", APIConnectionError("litellm.APIConnectionError: refused"), NOW)
    assert isinstance(conn, ServerError) and conn.status is None
    # LiteLLM also raises APIConnectionError around bodies it could not map; the body wins then.
    mapped = providers.classify_exception("openrouter", APIConnectionError("APIConnectionError: " + OR_404_GONE), NOW)
    assert isinstance(mapped, ModelGone)


def test_classify_exception_unwraps_midstream_fallback_and_survives_odd_exceptions():
    inner = RateLimitError("RateLimitError: OpenrouterException - " + OR_UPSTREAM_2026)
    assert isinstance(providers.classify_exception("openrouter", MidStreamFallbackError(inner), NOW), ModelBusy)
    assert isinstance(providers.classify_exception("openrouter", StrRaises(), NOW), Unknown)
    assert isinstance(providers.classify_exception("groq", ValueError("x"), NOW), Unknown)
    assert isinstance(providers.classify_exception("groq", KeyboardInterrupt(), float("nan")), Unknown)
    assert providers.exception_remaining("groq", StrRaises(), NOW) == []


def test_classify_exception_with_real_litellm_exceptions():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    litellm = pytest.importorskip("litellm")
    resp = httpx.Response(429, headers={"x-ratelimit-reset": "1779321600000"}, request=httpx.Request("POST", "http://x"))
    exc = litellm.RateLimitError(
        message="RateLimitError: OpenrouterException - " + OR_PER_DAY, llm_provider="openrouter", model="m", response=resp
    )
    fact = providers.classify_exception("openrouter", exc, NOW)
    assert isinstance(fact, Exhausted) and (fact.limit, fact.until) == ("day", 1779321600.0)
    timeout = litellm.Timeout(message="timed out", model="m", llm_provider="groq")
    assert providers.classify_exception("groq", timeout, NOW) == ServerError(408, "litellm.Timeout: timed out")
    ctx = litellm.ContextWindowExceededError(message="too long", model="m", llm_provider="groq")
    assert isinstance(providers.classify_exception("groq", ctx, NOW), ContextTooLong)


# ============================================================================================ secrets / bounds


@pytest.mark.parametrize(
    "secret",
    [openrouter_key("abcdef0123456789abcdef"), groq_key("ABCdef0123456789xyz"), OPENAI_STYLE + "abcdefghijklmnopqrstu",
     "Bearer tok.en-123"],
)
def test_details_never_contain_api_keys(secret):
    body = {"error": {"message": f"Invalid key {secret} for org_01abc", "code": 401}}
    for fact in (
        openrouter.classify(401, None, body, NOW),
        groq.classify(401, None, body, NOW),
        providers.classify("other", 401, None, json.dumps(body), NOW),
        providers.classify_exception("openrouter", RateLimitError(f"key {secret} rejected", status_code=401), NOW),
    ):
        assert secret not in fact.detail
        assert secret.split()[-1][-8:] not in fact.detail
    assert "org_01abc" in openrouter.classify(401, None, body, NOW).detail


def test_detail_is_short_and_single_line():
    body = {"error": {"message": "x\n" * 5000, "code": 500}}
    fact = openrouter.classify(500, None, body, NOW)
    assert len(fact.detail) <= 300 and "\n" not in fact.detail
    assert scrub("a" * 1000).endswith("…") and len(scrub("a" * 1000)) == 300


def test_json_extraction_is_bounded_to_the_first_64k():
    assert first_json_object("x" * 70_000 + '{"error":{"code":429}}') is None
    assert first_json_object("y" * 1000 + '{"error":{"code":429}}') == {"error": {"code": 429}}
    assert first_json_object("{" * 200_000) is None
    assert first_json_object('{"a": ' * 100_000) is None  # deep nesting: RecursionError is contained
    assert first_json_object("{'a': [1, None, True]}") == {"a": [1, None, True]}
    assert first_json_object("{oops} {\"b\": 1}") == {"b": 1}


# ============================================================================================ fuzz

_WEIRD_NUMBERS = st.sampled_from(
    ["-1", "-1779321600000", "NaN", "nan", "inf", "-inf", "1e400", "9" * 400, "0", "", " ", "١٢٣", "1.5", "0x10",
     "1779321600000", "99999999999999999999", "2m59.56s", "-3s", "∞"]
)
_TEXT = st.one_of(st.text(max_size=60), _WEIRD_NUMBERS, st.text(min_size=5000, max_size=6000, alphabet="9{\"'-a"))
_HEADER_NAMES = st.sampled_from(
    ["X-RateLimit-Limit", "x-ratelimit-remaining", "X-RATELIMIT-RESET", "retry-after", "Retry-After",
     "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
     "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
     "llm_provider-x-ratelimit-reset-tokens", "x_ratelimit_remaining_requests"]
)
_HEADER_VALUES = st.one_of(_TEXT, st.integers(), st.floats(), st.binary(max_size=20), st.none())
_HEADERS = st.one_of(
    st.none(),
    st.dictionaries(st.one_of(_HEADER_NAMES, st.text(max_size=10)), _HEADER_VALUES, max_size=8),
    st.lists(st.tuples(_HEADER_NAMES, _TEXT), max_size=6),
    st.lists(st.one_of(st.integers(), st.text(), st.tuples(st.text())), max_size=3),
    st.integers(),
    st.text(max_size=20),
)
_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _TEXT)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)),
    max_leaves=20,
)
_ERROR_BODY = st.fixed_dictionaries(
    {
        "error": st.fixed_dictionaries(
            {
                "message": st.one_of(
                    _TEXT,
                    st.sampled_from(
                        ["Rate limit exceeded: free-models-per-day. ", "Provider returned error",
                         "Rate limit exceeded: limit_rpm/a/b/c. limited to 8 requests per minute",
                         "No endpoints found for x", "No endpoints found that support tool use",
                         "Rate limit reached for model `m` on tokens per day (TPD): Limit 0, Used 9, Requested 9. "
                         "Please try again in 99999999999h.", "Request too large ... Limit -5"]
                    ),
                ),
                "code": st.one_of(st.integers(-1000, 100000), _TEXT, st.none(), st.sampled_from(
                    [429, 404, 400, 402, 200, "rate_limit_exceeded", "model_not_found", "capacity_exceeded"])),
                "type": st.one_of(st.none(), st.sampled_from(["tokens", "requests"]), _JSON),
                "metadata": st.one_of(
                    _JSON,
                    st.fixed_dictionaries(
                        {
                            "headers": _HEADERS,
                            "provider_name": st.one_of(st.none(), _TEXT, st.integers()),
                            "raw": _JSON,
                            "limit_source": st.one_of(st.sampled_from(
                                ["openrouter_free_tier_daily", "openrouter_shared_capacity", "upstream_provider_shared_pool"]
                            ), _JSON),
                            "error_type": st.one_of(st.just("rate_limit_exceeded"), _JSON),
                        }
                    ),
                ),
                "availability": st.one_of(_JSON, st.fixed_dictionaries({"code": st.sampled_from(
                    ["free_variant_ended", "no_endpoints", "capacity_exhausted", "model_not_found"])})),
            }
        ),
        "choices": st.one_of(st.none(), _JSON, st.just([{"finish_reason": "error"}])),
    }
)


def _serialised(obj):
    return json.dumps(obj, default=str)


_BODIES = st.one_of(
    st.none(),
    _TEXT,
    st.binary(max_size=200),
    _JSON,
    _ERROR_BODY,
    _ERROR_BODY.map(_serialised),
    _ERROR_BODY.map(lambda b: LITELLM_PREFIX + _serialised(b)),
    _ERROR_BODY.map(lambda b: (LITELLM_PREFIX + repr(b)).encode("utf-8", "replace")),
    st.integers(1, 3000).map(lambda n: '{"error": ' * n + "1" + "}" * n),
    st.integers(1, 3000).map(lambda n: "x" * n + "{'error': {'code': 429" + "[" * n),
)
_STATUS = st.one_of(
    st.none(),
    st.integers(-(10**6), 10**6),
    st.sampled_from([200, 400, 402, 404, 408, 413, 429, 498, 503, 524]),
    st.text(max_size=5),
    st.booleans(),
    st.floats(),
)
_NOW = st.one_of(st.floats(0, 4e9), st.sampled_from([NOW, 0.0, float("nan"), float("inf"), -1.0]))

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def _check_fact(fact, *, allow_none=True):
    if fact is None:
        assert allow_none
        return
    assert isinstance(fact, FACT_TYPES)
    assert isinstance(fact.detail, str) and len(fact.detail) <= 300
    if isinstance(fact, Exhausted):
        assert fact.limit in ("minute", "day", "rpm", "rpd", "tpm", "tpd")
        assert isinstance(fact.until, float) and math.isfinite(fact.until)
        assert fact.capacity is None or (isinstance(fact.capacity, int) and fact.capacity >= 0)
    for name in ("retry_after",):
        v = getattr(fact, name, None)
        assert v is None or (isinstance(v, float) and math.isfinite(v) and v >= 0)
    if isinstance(fact, (ServerError, Rejected)):
        assert fact.status is None or isinstance(fact.status, int)


def _check_remaining(items):
    assert isinstance(items, list)
    for r in items:
        assert isinstance(r, Remaining)
        assert isinstance(r.remaining, int) and r.remaining >= 0
        assert r.capacity is None or (isinstance(r.capacity, int) and r.capacity >= 0)
        assert r.reset_at is None or (isinstance(r.reset_at, float) and math.isfinite(r.reset_at))


def _bound(provider: str, limit: str, now: float) -> float:
    """The latest reset that ``limit`` of ``provider`` can mean, seen at ``now`` (issue 11 item 3)."""
    if provider == "openrouter":
        return (math.floor(now / 60) + 2) * 60 if limit == "minute" else (math.floor(now / 86_400) + 1) * 86_400
    return now + (60.0 if limit in ("rpm", "tpm") else 86_400.0)


def _check_bounded(provider: str, fact, items, now) -> None:
    """Whatever the reply says, a reset stays inside its limit's bound and a busy wait within 120 s; a reset no
    limit can mean says so in ``clamped``."""
    if not (isinstance(now, float) and math.isfinite(now)):
        return  # the parsers use the wall clock then
    if isinstance(fact, Exhausted):
        assert now - 121 <= fact.until <= _bound(provider, fact.limit, now) + 1e-6, (fact, now)
    if isinstance(fact, (ModelBusy, ServerError)) and provider in ("openrouter", "groq"):
        assert fact.retry_after is None or fact.retry_after <= 120.0
    for r in items:
        assert r.reset_at is None or r.reset_at <= _bound(provider, r.limit, now) + 1e-6, (r, now)
    for f in (fact, *items):
        note = getattr(f, "clamped", "")
        assert isinstance(note, str) and ("\n" not in note) and (not note or " UTC" in note)


@FUZZ
@given(status=_STATUS, headers=_HEADERS, body=_BODIES, now=_NOW)
def test_fuzz_classify_never_raises(status, headers, body, now):
    for module in (openrouter, groq):
        _check_fact(module.classify(status, headers, body, now))
    for provider in ("openrouter", "groq", "other"):
        _check_fact(providers.classify(provider, status, headers, body, now))
        _check_remaining(providers.remaining(provider, headers, body, now))
    _check_remaining(openrouter.remaining(headers, body, now))
    _check_remaining(groq.remaining(headers, now))
    _check_bounded("openrouter", openrouter.classify(status, headers, body, now),
                   openrouter.remaining(headers, body, now), now)
    _check_bounded("groq", groq.classify(status, headers, body, now), groq.remaining(headers, now), now)


_RESETS = st.one_of(
    _WEIRD_NUMBERS, st.integers(-(10**15), 10**15).map(str), st.floats().map(str),
    st.sampled_from(["600000", "604800000", "172000", "1e9", "1795000000", "1795000000000", "47h59m0s", "-0", ""]),
)
_OR_MESSAGES = st.sampled_from(
    ["Rate limit exceeded: free-models-per-min. ", "Rate limit exceeded: free-models-per-day. ", "Rate limit exceeded",
     "Rate limit exceeded: limit_rpm/a/b/c. limited to 8 requests per minute", "Rate limit exceeded: limit_rpd/a/b",
     "Provider returned error"]
)
_GROQ_MESSAGES = st.builds(
    lambda kind, wait: f"Rate limit reached for model `m` in organization `org_1` on {kind}: Limit 30, Used 30, "
                       f"Requested 1. Please try again in {wait}.",
    st.sampled_from(["requests per minute (RPM)", "tokens per minute (TPM)", "requests per day (RPD)",
                     "tokens per day (TPD)"]),
    st.one_of(_RESETS, st.sampled_from(["47h59m0s", "99999999999h", "2m59.56s", "1.5s", "0s", "170000s"])),
)


@FUZZ
@given(reset=_RESETS, retry=_RESETS, message=_OR_MESSAGES, groq_message=_GROQ_MESSAGES, now=_NOW,
       in_body=st.booleans())
def test_fuzz_any_reset_value_stays_inside_its_limits_bound(reset, retry, message, groq_message, now, in_body):
    """Issue 11 item 3: the reset values themselves fuzzed (seconds for ms, a week ahead, negative, NaN, junk) in the
    places providers put them: a 429 of any kind must block no longer than its limit can mean."""
    rl = {"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
    body = {"error": {"message": message, "code": 429, "metadata": {"headers": rl if in_body else {}}}}
    headers = {"retry-after": retry, **({} if in_body else rl)}
    _check_bounded("openrouter", openrouter.classify(429, headers, body, now),
                   openrouter.remaining(headers, body, now), now)
    gheaders = {"retry-after": retry, "x-ratelimit-reset-requests": reset, "x-ratelimit-reset-tokens": retry,
                "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "0"}
    gbody = {"error": {"message": groq_message, "type": "requests", "code": "rate_limit_exceeded"}}
    _check_bounded("groq", groq.classify(429, gheaders, gbody, now), groq.remaining(gheaders, now), now)
    _check_bounded("groq", groq.classify(429, gheaders, {"error": {"message": "x", "code": "rate_limit_exceeded"}},
                                         now), [], now)


# ---- issue 11 item 3: impossible provider values are bounded by what the limit can mean ---------------------------

WEEK = 7 * 86_400


def test_or_per_minute_reset_a_week_ahead_blocks_the_minute_until_the_end_of_the_next_minute_at_most():
    now = 1_796_677_440.0  # 2026-12-07 21:04:00 UTC
    rl = {"X-RateLimit-Limit": "16", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int((now + WEEK) * 1000))}
    body = {"error": {"message": "Rate limit exceeded: free-models-per-min. ", "code": 429,
                      "metadata": {"headers": rl}}}
    fact = openrouter.classify(429, None, body, now + 17)
    assert isinstance(fact, Exhausted) and fact.limit == "minute" and not fact.model_only
    assert fact.until == now + 120  # the end of the next minute, 21:06:00
    assert fact.clamped == ("OpenRouter said the minute resets at 2026-12-14 21:04:00 UTC (7 days); a per-minute "
                            "limit resets by 2026-12-07 21:06:00 UTC: using that")
    # the same from the HTTP headers, and a per-model limit: bounded the same way
    assert openrouter.classify(429, rl, {"error": {"message": "Rate limit exceeded", "code": 429}}, now).until \
        <= now + 120 + 86_400  # no message: a reset days ahead is read as the day (bounded below)
    per_model = openrouter.classify(429, rl, OR_LIMIT_RPM, now + 17)
    assert per_model.model_only and per_model.until == now + 120 and "of this model" in per_model.clamped
    # a reset just ahead is used as given
    ok = {**rl, "X-RateLimit-Reset": str(int((now + 60) * 1000))}
    good = openrouter.classify(429, ok, body, now + 17)
    assert (good.until, good.clamped) == (now + 60, "")


def test_or_day_reset_sent_in_seconds_instead_of_ms_blocks_only_until_utc_midnight():
    now = NOW  # 2026-05-20 23:00:00Z
    headers = {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "600000"}
    fact = openrouter.classify(429, headers, {"error": {"message": "Rate limit exceeded: free-models-per-day. ",
                                                        "code": 429}}, now)
    assert isinstance(fact, Exhausted) and fact.limit == "day"
    assert fact.until == 1779321600.0  # 2026-05-21 00:00:00Z, not 166 h later
    assert "2026-05-21 00:00:00 UTC" in fact.clamped and "(7 days)" in fact.clamped
    left = openrouter.remaining(headers, {"error": {"message": "free-models-per-day", "code": 429}}, now)
    assert left[0].reset_at == 1779321600.0 and left[0].clamped


@pytest.mark.parametrize("reset", ["-5", "NaN", "garbage", "0", str(int((NOW - 3 * 86_400) * 1000))])
def test_or_reset_in_the_past_or_unreadable_gets_the_limits_default(reset):
    headers = {"X-RateLimit-Limit": "16", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
    minute = openrouter.classify(429, headers, {"error": {"message": "free-models-per-min", "code": 429}}, NOW + 5)
    assert minute.limit == "minute" and minute.until == NOW + 60  # the end of this clock minute
    assert minute.clamped and "using 2026-05-20 23:01:00 UTC" in minute.clamped
    day = openrouter.classify(429, headers, {"error": {"message": "free-models-per-day", "code": 429}}, NOW)
    assert day.limit == "day" and day.until == (NOW if reset == "0" else 1779321600.0)  # "0": a delta, "now"


@pytest.mark.parametrize(
    ("message", "headers", "limit", "wait"),
    [
        ("on requests per minute (RPM): Limit 30, Used 30, Requested 1. Please try again in 47h59m0s.", {}, "rpm", 60),
        ("on requests per minute (RPM): Limit 30, Used 30, Requested 1.", {"retry-after": "172000"}, "rpm", 60),
        ("on tokens per minute (TPM): Limit 6000, Used 6000, Requested 9. Please try again in 170000s.", {}, "tpm", 60),
        ("on requests per day (RPD): Limit 1000, Used 1000, Requested 1.", {"retry-after": "172000"}, "rpd", 86_400),
        ("on tokens per day (TPD): Limit 9, Used 9, Requested 9. Please try again in 99999999999h.", {}, "tpd", 86_400),
    ],
)
def test_groq_waits_longer_than_the_bucket_window_are_bounded_by_it(message, headers, limit, wait):
    now = 1_796_677_440.0
    body = {"error": {"message": f"Rate limit reached for model `m` in organization `org_1` {message}",
                      "code": "rate_limit_exceeded"}}
    fact = groq.classify(429, headers, body, now)
    assert isinstance(fact, Exhausted) and fact.limit == limit
    assert fact.until == now + wait
    assert fact.clamped.startswith("Groq said ") and " UTC" in fact.clamped


def test_groq_remaining_resets_are_bounded_by_the_window():
    now = 1_796_677_440.0
    left = groq.remaining({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "47h59m0s",
                           "x-ratelimit-remaining-tokens": "5", "x-ratelimit-reset-tokens": "2m"}, now)
    assert [(r.limit, r.reset_at - now) for r in left] == [("rpd", 86_400.0), ("tpm", 60.0)]


def test_busy_and_server_retry_after_are_bounded():
    now = 1_796_677_440.0
    busy = openrouter.classify(429, {"retry-after": "172000"}, OR_UPSTREAM_2026, now)
    assert isinstance(busy, ModelBusy) and busy.retry_after == 120.0 and busy.clamped
    down = groq.classify(503, {"retry-after": "604800"}, {"error": {"message": "over capacity"}}, now)
    assert isinstance(down, ServerError) and down.retry_after == 120.0 and down.clamped
    fine = openrouter.classify(429, {"retry-after": "3"}, OR_UPSTREAM_2026, now)
    assert (fine.retry_after, fine.clamped) == (3.0, "")


@FUZZ
@given(chunk=st.one_of(_BODIES, _ERROR_BODY.map(lambda b: "data: " + _serialised(b))), now=st.one_of(st.none(), _NOW))
def test_fuzz_stream_chunks_never_raise(chunk, now):
    _check_fact(openrouter.classify_stream_chunk(chunk, now))
    _check_fact(groq.classify_stream_chunk(chunk, now))
    _check_fact(openrouter.classify_stream_chunk(chunk))


@FUZZ
@given(
    text=st.one_of(
        _TEXT,
        _HEADER_VALUES,
        st.from_regex(r"-?[0-9.]{0,6}(h|m|s|ms|us|µs|ns){0,2}[0-9.]{0,4}(s|m)?", fullmatch=True),
    )
)
def test_fuzz_parse_duration(text):
    d = groq.parse_duration(text)
    assert d is None or (isinstance(d, float) and math.isfinite(d) and d >= 0)


@FUZZ
@given(
    status=st.one_of(st.none(), st.integers(), st.text(max_size=4)),
    message=st.one_of(_BODIES.filter(lambda b: isinstance(b, str)), st.none(), st.integers()),
    headers=_HEADERS,
    now=_NOW,
)
def test_fuzz_classify_exception(status, message, headers, now):
    exc = RateLimitError("x")
    exc.status_code, exc.message, exc.litellm_response_headers = status, message, headers
    for provider in ("openrouter", "groq", "other", None):
        _check_fact(providers.classify_exception(provider, exc, now), allow_none=False)
        _check_remaining(providers.exception_remaining(provider, exc, now))


@FUZZ
@given(secret=st.from_regex(r"sk-or-v1-[a-f0-9]{8,64}|gsk_[A-Za-z0-9]{8,52}|sk-[A-Za-z0-9]{16,48}", fullmatch=True),
       prefix=st.text(max_size=100), status=st.sampled_from([400, 401, 429, 500, 200]))
def test_fuzz_secrets_scrubbed(secret, prefix, status):
    body = {"error": {"message": prefix + " " + secret + " tail", "code": status}}
    for provider in ("openrouter", "groq", "other"):
        fact = providers.classify(provider, status, None, body, NOW)
        if fact is not None:
            assert secret not in fact.detail
