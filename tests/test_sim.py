"""Tests for router_plugin.sim — real HTTP against ``start_sim(port=0)``.

Every test that depends on "the same minute" or on refill uses the injected ManualClock, so nothing here depends
on wall-clock timing. Expected bodies and headers are the ones providers.md quotes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import time

import httpx
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from router_plugin.sim import (ConfigError, ManualClock, SimState, build_app, go_duration, key_hash,  # noqa: E402
                               parse_go_duration, start_sim)
from tests.fake_keys import openrouter_key  # noqa: E402

T0 = 1_800_000_005.0  # 5 s into a clock minute (1_800_000_000 is a minute boundary), 2027-01-15 08:00:05Z
NEXT_MINUTE_MS = 1_800_000_060_000
NEXT_MIDNIGHT_MS = 1_800_057_600_000  # 2027-01-16T00:00:00Z
KEY = openrouter_key("secret-test-key")
MSG = [{"role": "user", "content": "hi"}]  # 1 message, 2 chars -> ceil(2/4) + 4 = 5 prompt tokens
UPGRADE = "Upgrade to Dev Tier today at https://console.groq.com/settings/billing"


# -- fixtures & helpers -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clock():
    return ManualClock(T0)


@pytest.fixture(scope="module")
def server(clock):
    with start_sim(port=0, clock=clock) as handle:
        yield handle


@pytest.fixture
def sim(server, clock):
    server.reset()
    clock.set(T0)
    yield server
    server.reset()


@pytest.fixture
def http():
    with httpx.Client(timeout=10) as c:
        yield c


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def or_chat(http, sim, model, key=KEY, **body):
    return http.post(f"{sim.openrouter_base}/chat/completions", headers=auth(key),
                     json={"model": model, "messages": body.pop("messages", MSG), **body})


def groq_chat(http, sim, model, key=KEY, **body):
    return http.post(f"{sim.groq_base}/chat/completions", headers=auth(key),
                     json={"model": model, "messages": body.pop("messages", MSG), **body})


def text_of(n_chars: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": "a" * n_chars}]


def sse(raw: str) -> list[tuple[str, str]]:
    """Split an SSE body into ("comment", text) / ("data", payload) items, in order."""
    out = []
    for block in raw.split("\n\n"):
        for line in block.splitlines():
            if line.startswith(":"):
                out.append(("comment", line[1:].strip()))
            elif line.startswith("data: "):
                out.append(("data", line[len("data: "):]))
    return out


def stream_raw(http, url, body, key=KEY):
    """Read a whole streamed reply; returns (response, text, exception raised while reading or None)."""
    pieces, error = [], None
    with http.stream("POST", url, headers=auth(key), json=body) as r:
        try:
            for part in r.iter_text():
                pieces.append(part)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout) as e:
            error = e
    return r, "".join(pieces), error


def lower_headers(r) -> set[str]:
    return {k.lower() for k in r.headers}


# -- Go durations ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds,text", [
    (7.66, "7.66s"), (179.56, "2m59.56s"), (3723.5, "1h2m3.5s"), (0.82, "820ms"), (0, "0s"), (60, "1m0s"),
    (3600, "1h0m0s"), (46.72, "46.72s"), (371.52, "6m11.52s"), (0.0000015, "1.5µs"), (2e-9, "2ns"),
    (16.239999999, "16.239999999s"), (60.363142857, "1m0.363142857s"), (28800, "8h0m0s"),
])
def test_go_duration_matches_go_and_parses_back(seconds, text):
    assert go_duration(seconds) == text
    assert parse_go_duration(text) == pytest.approx(seconds, abs=1e-9)


def test_parse_go_duration_rejects_garbage():
    for bad in ("", "7.66", "s", "1x", "1m 2s"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)


# -- OpenRouter free-tier account pool (providers.md §1.1-1.3) --------------------------------------------------
def test_openrouter_minute_pool_is_shared_by_all_free_models_of_an_account(sim, http, clock):
    for i in range(20):
        model = "deepseek/deepseek-r1:free" if i % 2 else "qwen/qwen3-coder:free"
        r = or_chat(http, sim, model)
        assert r.status_code == 200, r.text
        assert not any(h.startswith("x-ratelimit") for h in lower_headers(r)), "success carries no X-RateLimit"
    r = or_chat(http, sim, "google/gemma-3-27b-it:free")
    assert r.status_code == 429
    body = r.json()
    headers = {"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(NEXT_MINUTE_MS)}
    assert body["error"] == {"message": "Rate limit exceeded: free-models-per-min. ", "code": 429,
                             "metadata": {"headers": headers, "provider_name": None}}
    assert body["user_id"].startswith("user_") and KEY not in r.text
    for name, value in headers.items():
        assert r.headers[name] == value
    assert "retry-after" not in lower_headers(r)
    # another account, and a paid model on the same account, are not limited
    assert or_chat(http, sim, "google/gemma-3-27b-it:free", key="other-key").status_code == 200
    assert or_chat(http, sim, "openai/gpt-4o-mini").status_code == 200
    # a streamed request gets the same 429 as JSON, before any stream starts
    r = or_chat(http, sim, "deepseek/deepseek-r1:free", stream=True)
    assert r.status_code == 429 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["message"] == "Rate limit exceeded: free-models-per-min. "
    # the fixed window ends at the clock minute, not 60 s after the first request
    clock.set(NEXT_MINUTE_MS / 1000 - 0.001)
    assert or_chat(http, sim, "deepseek/deepseek-r1:free").status_code == 429
    clock.set(NEXT_MINUTE_MS / 1000)
    assert or_chat(http, sim, "deepseek/deepseek-r1:free").status_code == 200
    stats = sim.stats()
    assert stats["rate_limited"]["openrouter"] == 3
    assert stats["openrouter_day_used"][key_hash(KEY)] == 21


def test_openrouter_configurable_minute_limit(sim, http):
    sim.configure({"openrouter": {"accounts": {KEY: {"minute_limit": 16}}}})
    codes = [or_chat(http, sim, "z-ai/glm-4.5-air:free").status_code for _ in range(17)]
    assert codes == [200] * 16 + [429]


def test_openrouter_day_limit_with_used_today_and_utc_midnight(sim, http, clock):
    sim.configure({"openrouter": {"accounts": {KEY: {"used_today": 45}}}})
    for _ in range(5):
        assert or_chat(http, sim, "deepseek/deepseek-r1:free").status_code == 200
    r = or_chat(http, sim, "meta-llama/llama-3.3-70b-instruct:free")
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["message"] == ("Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model "
                              "requests per day")
    assert err["metadata"]["headers"] == {"X-RateLimit-Limit": "50", "X-RateLimit-Remaining": "0",
                                          "X-RateLimit-Reset": str(NEXT_MIDNIGHT_MS)}
    assert err["metadata"]["provider_name"] is None
    assert r.headers["X-RateLimit-Reset"] == str(NEXT_MIDNIGHT_MS) and r.headers["X-RateLimit-Limit"] == "50"
    key = http.get(f"{sim.openrouter_base}/key", headers=auth()).json()["data"]
    assert key["free_model_daily_requests"] == {"used": 50, "limit": 50, "remaining": 0}
    assert key["is_free_tier"] is True
    # a new clock minute does not help; the next UTC day does
    clock.set(NEXT_MIDNIGHT_MS / 1000 - 1)
    assert or_chat(http, sim, "deepseek/deepseek-r1:free").status_code == 429
    clock.set(NEXT_MIDNIGHT_MS / 1000)
    assert or_chat(http, sim, "deepseek/deepseek-r1:free").status_code == 200
    key = http.get(f"{sim.openrouter_base}/key", headers=auth()).json()["data"]
    assert key["free_model_daily_requests"] == {"used": 1, "limit": 50, "remaining": 49}


def test_failed_attempts_count_toward_the_day(sim, http):
    sim.configure({"openrouter": {"accounts": {KEY: {"used_today": 46}}},
                   "models": {"qwen/qwen3-coder:free": {"gone": True},
                              "google/gemma-3-27b-it:free": {"busy": True},
                              "z-ai/glm-4.5-air:free": {"status": 502}}})
    r = or_chat(http, sim, "qwen/qwen3-coder:free")
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "No endpoints found for qwen/qwen3-coder:free.", "code": 404},
                        "user_id": "user_sim" + key_hash(KEY)}
    assert or_chat(http, sim, "google/gemma-3-27b-it:free").status_code == 429
    assert or_chat(http, sim, "z-ai/glm-4.5-air:free").status_code == 502
    assert sim.stats()["openrouter_day_used"][key_hash(KEY)] == 49
    assert or_chat(http, sim, "deepseek/deepseek-r1:free").status_code == 200
    r = or_chat(http, sim, "deepseek/deepseek-r1:free")
    assert r.status_code == 429 and "free-models-per-day" in r.json()["error"]["message"]
    stats = sim.stats()
    assert stats["openrouter_day_used"][key_hash(KEY)] == 50
    assert stats["rate_limited"]["openrouter"] == 1  # the upstream 'busy' 429 is not a limit


def test_funded_account_gets_1000_and_high_balance_message(sim, http):
    sim.configure({"openrouter": {"accounts": {KEY: {"daily_limit": 1000, "used_today": 999}, "f2": {"funded": True}}}})
    assert or_chat(http, sim, "deepseek/deepseek-r1:free").status_code == 200
    r = or_chat(http, sim, "deepseek/deepseek-r1:free")
    assert r.status_code == 429
    assert r.json()["error"]["message"] == "Rate limit exceeded: free-models-per-day-high-balance. "
    assert r.headers["X-RateLimit-Limit"] == "1000"
    k = http.get(f"{sim.openrouter_base}/key", headers=auth()).json()["data"]
    assert k["is_free_tier"] is False and k["free_model_daily_requests"]["limit"] == 1000
    k2 = http.get(f"{sim.openrouter_base}/key", headers=auth("f2")).json()["data"]
    assert k2["free_model_daily_requests"] == {"used": 0, "limit": 1000, "remaining": 1000}


def test_default_account_settings_apply_to_every_key(sim, http):
    sim.configure({"openrouter": {"accounts": {"*": {"daily_limit": 2}}}})
    assert [or_chat(http, sim, "deepseek/deepseek-r1:free", key="x").status_code for _ in range(3)] == [200, 200, 429]
    with pytest.raises(ConfigError):
        sim.configure({"openrouter": {"accounts": {"*": {"used_today": 1}}}})


def test_key_endpoint_shape_and_it_does_not_count(sim, http):
    assert or_chat(http, sim, "deepseek/deepseek-r1:free").status_code == 200
    for _ in range(25):
        r = http.get(f"{sim.openrouter_base}/key", headers=auth())
        assert r.status_code == 200
    data = r.json()["data"]
    assert data["free_model_daily_requests"] == {"used": 1, "limit": 50, "remaining": 49}
    assert data["rate_limit"] == {"requests": -1, "interval": "10s", "note": "deprecated"}
    assert data["limit"] is None and data["limit_remaining"] is None and data["usage"] == 0
    assert KEY not in r.text
    assert or_chat(http, sim, "deepseek/deepseek-r1:free").status_code == 200  # 25 /key calls used no minute quota
    assert http.get(f"{sim.openrouter_base}/key").status_code == 401


def test_openrouter_free_router_counts_and_serves_a_healthy_free_model(sim, http):
    r = or_chat(http, sim, "openrouter/free")
    assert r.status_code == 200 and r.json()["model"] == "deepseek/deepseek-r1:free"
    sim.configure({"models": {"deepseek/deepseek-r1:free": {"gone": True}}})
    r = or_chat(http, sim, "openrouter/free")
    assert r.status_code == 200 and r.json()["model"] == "deepseek/deepseek-r1-0528:free"
    assert sim.stats()["openrouter_day_used"][key_hash(KEY)] == 2


def test_openrouter_validation_errors(sim, http):
    r = or_chat(http, sim, "acme/fake-1.0")
    assert r.status_code == 400 and r.json()["error"] == {"message": "acme/fake-1.0 is not a valid model ID",
                                                          "code": 400}
    r = or_chat(http, sim, "deepseek/deepseek-r1:free", messages=text_of(400), max_tokens=163_840)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        "This endpoint's maximum context length is 163840 tokens. However, you requested about 163944 tokens "
        "(104 of text input, 163840 in the output). Please reduce the length of either one, or use the "
        '"middle-out" transform to compress your prompt automatically.')
    r = http.post(f"{sim.openrouter_base}/chat/completions", json={"model": "deepseek/deepseek-r1:free",
                                                                   "messages": MSG})
    assert r.status_code == 401 and r.json() == {"error": {"message": "No auth credentials found", "code": 401}}
    assert sim.stats()["openrouter_day_used"].get(key_hash(KEY), 0) == 0  # refused requests are not attempts


def test_openrouter_success_body(sim, http):
    r = or_chat(http, sim, "deepseek/deepseek-r1:free", max_tokens=4)
    body = r.json()
    assert body["id"].startswith("gen-") and body["provider"] == "Chutes"
    assert body["model"] == "deepseek/deepseek-r1:free" and body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "sim reply from deepseek/deepseek-r1:free:"
    assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == 9
    # deterministic: same request, same content
    assert or_chat(http, sim, "deepseek/deepseek-r1:free", max_tokens=4).json()["choices"] == body["choices"]


# -- OpenRouter switches ---------------------------------------------------------------------------------------
def test_openrouter_busy_is_an_upstream_429_without_ratelimit_headers(sim, http):
    sim.configure({"models": {"deepseek/deepseek-r1:free": {"busy": True}}})
    r = or_chat(http, sim, "deepseek/deepseek-r1:free")
    assert r.status_code == 429
    assert not any(h.startswith("x-ratelimit") for h in lower_headers(r))
    err = r.json()["error"]
    assert err["message"] == "Provider returned error" and err["code"] == 429
    meta = err["metadata"]
    assert meta["provider_name"] == "Chutes" and meta["is_byok"] is False
    assert meta["provider_error_code"] == "engine_overloaded"
    assert meta["limit_source"] == "upstream_provider_shared_pool"
    assert meta["raw"].startswith("deepseek/deepseek-r1 is temporarily rate-limited upstream.")
    assert "headers" not in meta
    assert or_chat(http, sim, "qwen/qwen3-coder:free").status_code == 200  # only that model is busy
    assert sim.stats()["rate_limited"]["openrouter"] == 0


def test_openrouter_gone_model_leaves_the_catalog(sim, http):
    ids = {m["id"] for m in http.get(f"{sim.openrouter_base}/models").json()["data"]}
    assert "qwen/qwen3-coder:free" in ids
    sim.configure({"models": {"qwen/qwen3-coder:free": {"gone": True}}})
    ids = {m["id"] for m in http.get(f"{sim.openrouter_base}/models").json()["data"]}
    assert "qwen/qwen3-coder:free" not in ids and "deepseek/deepseek-r1:free" in ids
    sim.configure({"models": {"qwen/qwen3-coder:free": {"gone": None}}})  # null deletes the switch
    assert or_chat(http, sim, "qwen/qwen3-coder:free").status_code == 200


def test_status_switch_with_count_then_healthy(sim, http):
    sim.configure({"models": {"deepseek/deepseek-r1:free": {"status": 503, "status_count": 2}}})
    r1 = or_chat(http, sim, "deepseek/deepseek-r1:free")
    assert sim.configure({})["models"]["deepseek/deepseek-r1:free"]["status_count"] == 1
    r2 = or_chat(http, sim, "deepseek/deepseek-r1:free")
    r3 = or_chat(http, sim, "deepseek/deepseek-r1:free")
    assert [r1.status_code, r2.status_code, r3.status_code] == [503, 503, 200]
    assert r1.json()["error"]["code"] == 503
    assert r1.json()["error"]["metadata"]["error_type"] == "provider_overloaded"
    # without a count: every time; on Groq with Groq's envelope
    sim.configure({"models": {"openai/gpt-oss-20b": {"status": 500}}})
    codes = [groq_chat(http, sim, "openai/gpt-oss-20b").status_code for _ in range(3)]
    assert codes == [500, 500, 500]
    r = groq_chat(http, sim, "openai/gpt-oss-20b")
    assert r.json() == {"error": {"message": "Internal Server Error", "type": "internal_server_error"}}
    sim.configure({"models": {"openai/gpt-oss-20b": {"status": None}}})
    r = groq_chat(http, sim, "openai/gpt-oss-20b")
    assert r.status_code == 200
    assert r.headers["x-ratelimit-remaining-requests"] == "999"  # forced 5xx were not charged


def test_error_200_switch(sim, http):
    sim.configure({"models": {"deepseek/deepseek-r1:free": {"error_200": True}, "qwen/qwen3-32b": {"error_200": 503}}})
    r = or_chat(http, sim, "deepseek/deepseek-r1:free")
    assert r.status_code == 200
    body = r.json()
    assert "choices" not in body and body["error"]["message"] == "Provider returned error"
    assert body["error"]["code"] == 502 and body["error"]["metadata"]["provider_name"] == "Chutes"
    r = groq_chat(http, sim, "qwen/qwen3-32b")
    assert r.status_code == 200 and "choices" not in r.json()
    assert r.json()["error"] == {"message": "Service Unavailable", "type": "internal_server_error"}


def test_balance_negative_gives_402_for_every_model_of_that_key(sim, http):
    sim.configure({"openrouter": {"accounts": {KEY: {"balance_negative": True}}}})
    for model in ("deepseek/deepseek-r1:free", "openai/gpt-4o-mini"):
        r = or_chat(http, sim, model)
        assert r.status_code == 402
        assert r.json()["error"] == {"message": "Insufficient credits. Add more using "
                                                "https://openrouter.ai/settings/credits",
                                     "code": 402, "metadata": {"provider_name": None}}
    assert or_chat(http, sim, "deepseek/deepseek-r1:free", key="someone-else").status_code == 200


def test_latency_switch_delays_the_reply(sim, http):
    sim.configure({"models": {"openai/gpt-oss-120b": {"latency_ms": 300}}})
    t = time.monotonic()
    assert groq_chat(http, sim, "openai/gpt-oss-120b").status_code == 200
    assert time.monotonic() - t >= 0.25  # a lower bound only: asyncio.sleep never returns early


# -- Groq limits (providers.md §2.1-2.3) -----------------------------------------------------------------------
def test_groq_rpm_is_per_model_and_refills(sim, http, clock):
    for _ in range(30):
        r = groq_chat(http, sim, "openai/gpt-oss-120b", max_tokens=10)
        assert r.status_code == 200
    r = groq_chat(http, sim, "openai/gpt-oss-120b", max_tokens=10)
    assert r.status_code == 429
    org = "org_01sim" + key_hash(KEY)
    assert r.json() == {"error": {
        "message": f"Rate limit reached for model `openai/gpt-oss-120b` in organization `{org}` service tier "
                   "`on_demand` on requests per minute (RPM): Limit 30, Used 30, Requested 1. Please try again in 2s. "
                   f"Need more requests? {UPGRADE}",
        "type": "requests", "code": "rate_limit_exceeded"}}
    assert r.headers["retry-after"] == "2"
    assert r.headers["x-ratelimit-remaining-requests"] == "970"  # the header reports the DAY
    assert groq_chat(http, sim, "openai/gpt-oss-20b").status_code == 200  # other model: own limits
    assert groq_chat(http, sim, "openai/gpt-oss-120b", key="other-org").status_code == 200
    clock.advance(1.9)
    assert groq_chat(http, sim, "openai/gpt-oss-120b", max_tokens=10).status_code == 429
    clock.advance(0.1)
    assert groq_chat(http, sim, "openai/gpt-oss-120b", max_tokens=10).status_code == 200
    assert sim.stats()["rate_limited"]["groq"] == 2


def test_groq_headers_on_200_are_day_requests_and_minute_tokens(sim, http):
    msgs = text_of(396)  # ceil(396/4) + 4 = 103 prompt tokens; + max_tokens 97 = 200 reserved
    r = groq_chat(http, sim, "llama-3.1-8b-instant", messages=msgs, max_tokens=97)
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == 103 and r.json()["usage"]["completion_tokens"] == 16
    h = r.headers
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("14400", "14399")
    assert parse_go_duration(h["x-ratelimit-reset-requests"]) == pytest.approx(86400 / 14400)
    assert (h["x-ratelimit-limit-tokens"], h["x-ratelimit-remaining-tokens"]) == ("6000", "5800")
    assert parse_go_duration(h["x-ratelimit-reset-tokens"]) == pytest.approx(200 * 60 / 6000)
    assert "retry-after" not in lower_headers(r)
    # settled to real usage (103 + 16 = 119) before the next reservation of 200
    h = groq_chat(http, sim, "llama-3.1-8b-instant", messages=msgs, max_tokens=97).headers
    assert h["x-ratelimit-remaining-tokens"] == str(6000 - 119 - 200)
    assert h["x-ratelimit-reset-tokens"] == "3.19s" and h["x-ratelimit-reset-requests"] == "12s"


def test_groq_tpm_429_body_headers_and_refill(sim, http, clock):
    big = text_of(4 * 3996)  # 4000 prompt tokens; + max_tokens 16 = 4016 (= actual usage)
    assert groq_chat(http, sim, "llama-3.1-8b-instant", messages=big, max_tokens=16).status_code == 200
    r = groq_chat(http, sim, "llama-3.1-8b-instant", messages=big, max_tokens=16)
    assert r.status_code == 429
    err = r.json()["error"]
    org = "org_01sim" + key_hash(KEY)
    assert err == {"message": f"Rate limit reached for model `llama-3.1-8b-instant` in organization `{org}` service "
                              "tier `on_demand` on tokens per minute (TPM): Limit 6000, Used 4016, Requested 4016. "
                              f"Please try again in 20.32s. Need more tokens? {UPGRADE}",
                   "type": "tokens", "code": "rate_limit_exceeded"}
    # the same grammar as the capture in providers.md §2.3
    m = re.fullmatch(r"Rate limit reached for model `(.+)` in organization `(org_\w+)` service tier `on_demand` on "
                     r"tokens per minute \(TPM\): Limit (\d+), Used (\d+), Requested (\d+)\. Please try again in "
                     r"(\S+)\. Need more tokens\? .*", err["message"])
    assert m is not None
    limit, used, requested = int(m[3]), int(m[4]), int(m[5])
    assert parse_go_duration(m[6]) == pytest.approx((used + requested - limit) * 60 / limit)
    assert r.headers["retry-after"] == str(math.ceil(20.32))
    assert r.headers["x-ratelimit-remaining-tokens"] == "1984"
    assert parse_go_duration(r.headers["x-ratelimit-reset-tokens"]) == pytest.approx(40.16)
    clock.advance(20)
    r = groq_chat(http, sim, "llama-3.1-8b-instant", messages=big, max_tokens=16)
    assert r.status_code == 429 and "Please try again in 320ms." in r.json()["error"]["message"]
    assert r.headers["retry-after"] == "1"
    clock.advance(0.32)
    assert groq_chat(http, sim, "llama-3.1-8b-instant", messages=big, max_tokens=16).status_code == 200


def test_groq_default_max_tokens_is_reserved(sim, http):
    r = groq_chat(http, sim, "openai/gpt-oss-120b")  # no max_tokens: 5 + 1024 reserved
    assert r.headers["x-ratelimit-remaining-tokens"] == str(8000 - 1029)
    r = groq_chat(http, sim, "openai/gpt-oss-120b", max_completion_tokens=100)
    assert r.headers["x-ratelimit-remaining-tokens"] == str(8000 - (5 + 16) - (5 + 100))


def test_groq_request_larger_than_tpm_is_413_and_not_counted(sim, http):
    r = groq_chat(http, sim, "llama-3.1-8b-instant", messages=text_of(4 * 7000), max_tokens=100)
    assert r.status_code == 413
    org = "org_01sim" + key_hash(KEY)
    assert r.json() == {"error": {
        "message": f"Request too large for model `llama-3.1-8b-instant` in organization `{org}` service tier "
                   "`on_demand` on tokens per minute (TPM): Limit 6000, Requested 7104, please reduce your message "
                   f"size and try again. Need more tokens? {UPGRADE}",
        "type": "tokens", "code": "rate_limit_exceeded"}}
    r = groq_chat(http, sim, "llama-3.1-8b-instant", max_tokens=1)
    assert r.headers["x-ratelimit-remaining-requests"] == "14399"


def test_groq_rpd_and_tpd_with_overridden_limits(sim, http):
    sim.configure({"groq": {"limits": {"openai/gpt-oss-20b": {"rpd": 3}, "qwen/qwen3-32b": {"tpd": 1000}}}})
    assert [groq_chat(http, sim, "openai/gpt-oss-20b", max_tokens=5).status_code for _ in range(3)] == [200] * 3
    r = groq_chat(http, sim, "openai/gpt-oss-20b", max_tokens=5)
    assert r.status_code == 429 and r.json()["error"]["type"] == "requests"
    assert ("on requests per day (RPD): Limit 3, Used 3, Requested 1. Please try again in 8h0m0s."
            in r.json()["error"]["message"])
    assert r.headers["retry-after"] == "28800" and r.headers["x-ratelimit-limit-requests"] == "3"
    half = text_of(4 * 480)  # 484 prompt + 16 = 500 tokens
    for _ in range(2):
        assert groq_chat(http, sim, "qwen/qwen3-32b", messages=half, max_tokens=16).status_code == 200
    r = groq_chat(http, sim, "qwen/qwen3-32b", messages=half, max_tokens=16)
    assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
    assert ("on tokens per day (TPD): Limit 1000, Used 1000, Requested 500. Please try again in 12h0m0s."
            in r.json()["error"]["message"])


def test_groq_model_errors_and_auth(sim, http):
    r = groq_chat(http, sim, "llama-3.3-70b-versatile")
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_decommissioned"
    r = groq_chat(http, sim, "acme/nope")
    assert r.status_code == 404
    assert r.json() == {"error": {"message": "The model `acme/nope` does not exist or you do not have access to it.",
                                  "type": "invalid_request_error", "code": "model_not_found"}}
    sim.configure({"models": {"qwen/qwen3-32b": {"gone": True}}})
    assert groq_chat(http, sim, "qwen/qwen3-32b").json()["error"]["code"] == "model_not_found"
    r = groq_chat(http, sim, "openai/gpt-oss-120b", messages=text_of(4 * 65_600), max_tokens=65_536)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = groq_chat(http, sim, "meta-llama/llama-4-scout-17b-16e-instruct", max_tokens=8193)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    r = http.post(f"{sim.groq_base}/chat/completions", json={"model": "openai/gpt-oss-120b", "messages": MSG})
    assert r.status_code == 401
    assert r.json() == {"error": {"message": "Invalid API Key", "type": "invalid_request_error",
                                  "code": "invalid_api_key"}}


def test_groq_busy_is_503_and_not_charged(sim, http):
    sim.configure({"models": {"moonshotai/kimi-k2-instruct": {"busy": True}}})
    r = groq_chat(http, sim, "moonshotai/kimi-k2-instruct")
    assert r.status_code == 503 and "over capacity" in r.json()["error"]["message"]
    sim.configure({"models": {"moonshotai/kimi-k2-instruct": {"busy": False}}})
    r = groq_chat(http, sim, "moonshotai/kimi-k2-instruct")
    assert r.status_code == 200 and r.headers["x-ratelimit-remaining-requests"] == "999"
    assert sim.stats()["rate_limited"]["groq"] == 0


def test_groq_success_body_has_groq_extras(sim, http):
    body = groq_chat(http, sim, "openai/gpt-oss-120b", max_tokens=3).json()
    assert body["model"] == "openai/gpt-oss-120b" and body["service_tier"] == "on_demand"
    assert body["x_groq"]["id"].startswith("req_") and body["system_fingerprint"].startswith("fp_")
    assert set(body["usage"]) >= {"queue_time", "prompt_tokens", "prompt_time", "completion_tokens",
                                  "completion_time", "total_tokens", "total_time"}
    assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"], body["usage"]["total_tokens"]) == (5, 3, 8)
    assert body["choices"][0]["message"]["content"] == "sim reply from"


# -- streaming -------------------------------------------------------------------------------------------------
def test_openrouter_stream_format(sim, http):
    r, raw, err = stream_raw(http, f"{sim.openrouter_base}/chat/completions",
                             {"model": "deepseek/deepseek-r1:free", "messages": MSG, "stream": True, "max_tokens": 5})
    assert err is None and r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert not any(h.startswith("x-ratelimit") for h in lower_headers(r))
    events = sse(raw)
    assert events[0] == ("comment", "OPENROUTER PROCESSING")
    assert events[-1] == ("data", "[DONE]")
    chunks = [json.loads(p) for kind, p in events[1:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"].startswith("gen-") for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "sim reply from deepseek/deepseek-r1:free: this"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1]["usage"]["completion_tokens"] == 5 and chunks[-1]["usage"]["prompt_tokens"] == 5


@pytest.mark.parametrize("include_usage", [False, True])
def test_groq_stream_format(sim, http, include_usage):
    body = {"model": "openai/gpt-oss-120b", "messages": MSG, "stream": True, "max_tokens": 4}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    r, raw, err = stream_raw(http, f"{sim.groq_base}/chat/completions", body)
    assert err is None and r.status_code == 200
    assert r.headers["x-ratelimit-remaining-requests"] == "999" and "x-ratelimit-reset-tokens" in r.headers
    events = sse(raw)
    assert events[-1] == ("data", "[DONE]") and all(kind == "data" for kind, _ in events)
    chunks = [json.loads(p) for _, p in events[:-1]]
    assert chunks[0]["x_groq"]["id"].startswith("req_")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "sim reply from openai/gpt-oss-120b:"
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] == "stop"]
    assert len(finish) == 1 and finish[0]["x_groq"]["usage"]["completion_tokens"] == 4
    usage_chunks = [c for c in chunks if "usage" in c]
    assert len(usage_chunks) == (1 if include_usage else 0)
    if include_usage:
        assert usage_chunks[0]["choices"] == [] and usage_chunks[0]["usage"]["total_tokens"] == 9


def test_errors_come_before_the_stream_starts(sim, http):
    sim.configure({"models": {"qwen/qwen3-coder:free": {"gone": True}, "openai/gpt-oss-20b": {"busy": True}}})
    r, raw, _ = stream_raw(http, f"{sim.openrouter_base}/chat/completions",
                           {"model": "qwen/qwen3-coder:free", "messages": MSG, "stream": True})
    assert r.status_code == 404 and json.loads(raw)["error"]["code"] == 404
    r, raw, _ = stream_raw(http, f"{sim.groq_base}/chat/completions",
                           {"model": "openai/gpt-oss-20b", "messages": MSG, "stream": True})
    assert r.status_code == 503 and r.headers["content-type"].startswith("application/json")
    for _ in range(30):
        groq_chat(http, sim, "openai/gpt-oss-120b", max_tokens=1)
    r, raw, _ = stream_raw(http, f"{sim.groq_base}/chat/completions",
                           {"model": "openai/gpt-oss-120b", "messages": MSG, "stream": True, "max_tokens": 1})
    assert r.status_code == 429 and r.headers["retry-after"] == "2"
    assert json.loads(raw)["error"]["code"] == "rate_limit_exceeded"


PROVIDER_STREAMS = [("openrouter", "deepseek/deepseek-r1:free"), ("groq", "openai/gpt-oss-120b")]


def _stream_with_fault(sim, http, provider, model, fault, **extra):
    sim.configure({"models": {model: {"stream_fault": fault, **extra}}})
    base = sim.openrouter_base if provider == "openrouter" else sim.groq_base
    return stream_raw(http, f"{base}/chat/completions", {"model": model, "messages": MSG, "stream": True})


def _data_events(raw):
    return [p for kind, p in sse(raw) if kind == "data"]


@pytest.mark.parametrize("provider,model", PROVIDER_STREAMS)
def test_stream_fault_cut(sim, http, provider, model):
    r, raw, err = _stream_with_fault(sim, http, provider, model, "cut")
    assert isinstance(err, httpx.RemoteProtocolError)  # connection closed mid-body
    data = _data_events(raw)
    assert data and "[DONE]" not in data
    chunks = [json.loads(p) for p in data]
    assert any(c["choices"][0]["delta"].get("content") for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


@pytest.mark.parametrize("provider,model", PROVIDER_STREAMS)
def test_stream_fault_stall(sim, http, provider, model):
    sim.configure({"models": {model: {"stream_fault": "stall", "stall_s": 30}}})
    base = sim.openrouter_base if provider == "openrouter" else sim.groq_base
    with httpx.Client(timeout=httpx.Timeout(10, read=0.5)) as slow:
        r, raw, err = stream_raw(slow, f"{base}/chat/completions", {"model": model, "messages": MSG, "stream": True})
    assert isinstance(err, httpx.ReadTimeout)  # some chunks, then 30 s of silence
    data = _data_events(raw)
    assert data and "[DONE]" not in data and all(json.loads(p)["choices"][0]["finish_reason"] is None for p in data)


@pytest.mark.parametrize("provider,model", PROVIDER_STREAMS)
def test_stream_fault_error_chunk(sim, http, provider, model):
    r, raw, err = _stream_with_fault(sim, http, provider, model, "error_chunk")
    assert err is None and r.status_code == 200
    data = _data_events(raw)
    assert "[DONE]" not in data
    last = json.loads(data[-1])
    if provider == "openrouter":
        assert last["error"] == {"code": 429, "message": "Rate limit exceeded",
                                 "metadata": {"error_type": "rate_limit_exceeded"}}
        assert last["choices"] == [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]
        assert last["object"] == "chat.completion.chunk" and last["provider"] == "Chutes"
    else:
        assert last == {"error": {"message": "Service Unavailable", "type": "internal_server_error"}}
    before = [json.loads(p) for p in data[:-1]]
    assert any(c["choices"][0]["delta"].get("content") for c in before)  # some content came first
    assert all(c["choices"][0]["finish_reason"] is None for c in before)


@pytest.mark.parametrize("provider,model", PROVIDER_STREAMS)
def test_stream_fault_malformed(sim, http, provider, model):
    r, raw, err = _stream_with_fault(sim, http, provider, model, "malformed")
    assert err is None
    data = _data_events(raw)
    assert data[-1] == "[DONE]" and data.count("{not json") == 1
    bad = data.index("{not json")
    assert 0 < bad < len(data) - 2
    for p in data[:-1]:
        if p != "{not json":
            json.loads(p)


@pytest.mark.parametrize("provider,model", PROVIDER_STREAMS)
def test_stream_fault_no_done(sim, http, provider, model):
    r, raw, err = _stream_with_fault(sim, http, provider, model, "no_done")
    assert err is None
    data = _data_events(raw)
    assert "[DONE]" not in data
    chunks = [json.loads(p) for p in data]
    assert any(c["choices"] and c["choices"][0]["finish_reason"] == "stop" for c in chunks)
    if provider == "openrouter":
        assert "usage" in chunks[-1]
    else:
        assert "usage" in chunks[-1]["x_groq"]


@pytest.mark.parametrize("provider,model", PROVIDER_STREAMS)
def test_stream_fault_malformed_list_and_slow_first(sim, http, provider, model):
    r, raw, err = _stream_with_fault(sim, http, provider, model, "malformed_list")
    data = _data_events(raw)
    assert err is None and data[-1] == "[DONE]" and data.count("[1,2,3]") == 1
    with httpx.Client(timeout=httpx.Timeout(10, read=5)) as patient:
        sim.configure({"models": {model: {"stream_fault": "slow_first", "stall_s": 0.3}}})
        base = sim.openrouter_base if provider == "openrouter" else sim.groq_base
        r, raw, err = stream_raw(patient, f"{base}/chat/completions", {"model": model, "messages": MSG, "stream": True})
    data = _data_events(raw)
    assert err is None and data[-1] == "[DONE]"  # late, then whole


ANSWER_PATHS = [("openrouter", "deepseek/deepseek-r1:free"), ("groq", "openai/gpt-oss-120b")]
WEATHER = [{"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
           {"type": "function", "function": {"name": "get_weather", "parameters": {
               "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                                "unit": {"type": "string", "enum": ["c", "f"]}}}}}]


def _post(http, sim, provider, model, **body):
    chat = or_chat if provider == "openrouter" else groq_chat
    return chat(http, sim, model, **body)


def _stream_chunks(http, sim, provider, model, **body):
    base = sim.openrouter_base if provider == "openrouter" else sim.groq_base
    r, raw, err = stream_raw(http, f"{base}/chat/completions", {"model": model, "messages": MSG, "stream": True,
                                                                 **body})
    assert err is None and r.status_code == 200
    return [json.loads(p) for p in _data_events(raw) if p != "[DONE]"]


@pytest.mark.parametrize("provider,model", ANSWER_PATHS)
def test_tools_are_answered_with_a_tool_call_plain_and_streamed(sim, http, provider, model):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    body = _post(http, sim, provider, model, tools=WEATHER, tool_choice=choice).json()
    msg, finish = body["choices"][0]["message"], body["choices"][0]["finish_reason"]
    assert finish == "tool_calls" and msg["content"] is None and len(msg["tool_calls"]) == 1
    call = msg["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_") and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "sim", "days": 1, "unit": "c"}
    assert _post(http, sim, provider, model, tools=WEATHER).json()["choices"][0]["message"]["tool_calls"][0][
        "function"]["name"] == "noop"  # no tool_choice: the first tool
    assert _post(http, sim, provider, model, tools=WEATHER, tool_choice="none").json()["choices"][0]["message"][
        "content"].startswith("sim reply")

    chunks = _stream_chunks(http, sim, provider, model, tools=WEATHER, tool_choice=choice)
    deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
              if c.get("choices") and c["choices"][0]["delta"].get("tool_calls")]
    assert deltas[0]["id"].startswith("call_") and deltas[0]["type"] == "function"
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""}  # first the call, then its arguments
    assert len(deltas) > 2 and all(d["index"] == 0 for d in deltas)
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == json.loads(call["function"]["arguments"])
    assert [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and
            c["choices"][0]["finish_reason"]] == ["tool_calls"]


@pytest.mark.parametrize("provider,model", ANSWER_PATHS)
def test_json_mode_and_n_choices(sim, http, provider, model):
    body = _post(http, sim, provider, model, response_format={"type": "json_object"}).json()
    assert json.loads(body["choices"][0]["message"]["content"])["answer"].startswith(f"sim reply from {model}")
    schema = {"type": "json_schema", "json_schema": {"name": "r", "schema": {
        "type": "object", "properties": {"ok": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}}}}}}
    body = _post(http, sim, provider, model, response_format=schema).json()
    assert json.loads(body["choices"][0]["message"]["content"]) == {"ok": True, "tags": ["sim"]}
    chunks = _stream_chunks(http, sim, provider, model, response_format={"type": "json_object"})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert json.loads(text)["answer"].startswith("sim reply")

    body = _post(http, sim, provider, model, n=2, max_tokens=4).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["choices"][0]["message"] == body["choices"][1]["message"]
    assert body["usage"]["completion_tokens"] == 8  # both choices
    chunks = _stream_chunks(http, sim, provider, model, n=2, max_tokens=4)
    per: dict = {}
    for c in chunks:
        for ch in c.get("choices") or []:
            per.setdefault(ch["index"], []).append(ch)
    assert sorted(per) == [0, 1]
    assert ["".join(ch["delta"].get("content") or "" for ch in per[i]) for i in (0, 1)] == \
        [body["choices"][0]["message"]["content"]] * 2
    assert [[ch["finish_reason"] for ch in per[i] if ch["finish_reason"]] for i in (0, 1)] == [["stop"], ["stop"]]


@pytest.mark.parametrize("provider,model", ANSWER_PATHS)
def test_a_continuation_continues_the_given_answer(sim, http, provider, model):
    partial = "sim reply from another/model: this is a"
    prefill = MSG + [{"role": "assistant", "content": partial}]
    body = _post(http, sim, provider, model, messages=prefill).json()
    assert body["choices"][0]["message"]["content"] == " deterministic offline answer used by tests demos and benchmarks"
    restated = prefill + [{"role": "user", "content": "Continue it from exactly where it stops."}]
    assert _post(http, sim, provider, model, messages=restated, max_tokens=2).json()["choices"][0]["message"][
        "content"] == " deterministic offline"
    chunks = _stream_chunks(http, sim, provider, model, messages=prefill)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")) == \
        " deterministic offline answer used by tests demos and benchmarks"


def test_stream_error_200_becomes_an_error_event(sim, http):
    sim.configure({"models": {"deepseek/deepseek-r1:free": {"error_200": True}}})
    r, raw, err = stream_raw(http, f"{sim.openrouter_base}/chat/completions",
                             {"model": "deepseek/deepseek-r1:free", "messages": MSG, "stream": True})
    assert r.status_code == 200 and err is None
    data = _data_events(raw)
    assert len(data) == 1 and json.loads(data[0])["error"]["code"] == 502


# -- catalogs --------------------------------------------------------------------------------------------------
def test_openrouter_models_catalog(sim, http):
    r = http.get(f"{sim.openrouter_base}/models")
    assert r.status_code == 200
    models = {m["id"]: m for m in r.json()["data"]}
    expected = {"deepseek/deepseek-r1:free": 163_840, "meta-llama/llama-3.3-70b-instruct:free": 65_536,
                "qwen/qwen3-coder:free": 262_144, "google/gemma-3-27b-it:free": 131_072,
                "openai/gpt-oss-120b:free": 131_072, "openai/gpt-oss-20b:free": 131_072,
                "z-ai/glm-4.5-air:free": 131_072, "openrouter/free": 200_000}
    for mid, ctx in expected.items():
        m = models[mid]
        assert m["context_length"] == ctx and m["top_provider"]["context_length"] == ctx
        assert m["pricing"]["prompt"] == "0" and m["pricing"]["completion"] == "0"
        for field in ("canonical_slug", "name", "created", "architecture", "supported_parameters", "per_request_limits",
                      "default_parameters", "links"):
            assert field in m
        assert set(m["top_provider"]) == {"context_length", "max_completion_tokens", "is_moderated"}
    assert models["deepseek/deepseek-r1:free"]["canonical_slug"] == "deepseek/deepseek-r1"
    paid = models["openai/gpt-4o-mini"]["pricing"]
    assert float(paid["prompt"]) > 0 and float(paid["completion"]) > 0


def test_groq_models_catalog(sim, http):
    assert http.get(f"{sim.groq_base}/models").status_code == 401
    body = http.get(f"{sim.groq_base}/models", headers=auth()).json()
    assert body["object"] == "list"
    models = {m["id"]: m for m in body["data"]}
    expected = {"openai/gpt-oss-120b": (131_072, 65_536), "openai/gpt-oss-20b": (131_072, 65_536),
                "llama-3.1-8b-instant": (131_072, 131_072), "qwen/qwen3-32b": (131_072, 40_960),
                "meta-llama/llama-4-scout-17b-16e-instruct": (131_072, 8_192),
                "moonshotai/kimi-k2-instruct": (131_072, 16_384)}
    for mid, (ctx, out) in expected.items():
        m = models[mid]
        assert (m["context_window"], m["max_completion_tokens"]) == (ctx, out)
        assert m["object"] == "model" and m["active"] is True and m["public_apps"] is None and m["owned_by"]
    assert "llama-3.3-70b-versatile" not in models
    sim.configure({"models": {"llama-3.1-8b-instant": {"gone": True}}})
    ids = {m["id"] for m in http.get(f"{sim.groq_base}/models", headers=auth()).json()["data"]}
    assert "llama-3.1-8b-instant" not in ids and "openai/gpt-oss-120b" in ids


# -- stats, admin, config ---------------------------------------------------------------------------------------
def test_stats_counts_and_never_shows_keys(sim, http):
    sim.configure({"openrouter": {"accounts": {KEY: {"minute_limit": 2}}},
                   "models": {"qwen/qwen3-coder:free": {"busy": True}}})
    for _ in range(3):
        or_chat(http, sim, "deepseek/deepseek-r1:free")
    or_chat(http, sim, "qwen/qwen3-coder:free")
    groq_chat(http, sim, "openai/gpt-oss-20b")
    groq_chat(http, sim, "acme/nope")
    s = sim.stats()
    assert s["requests"] == {"openrouter": {"deepseek/deepseek-r1:free": 3, "qwen/qwen3-coder:free": 1},
                             "groq": {"openai/gpt-oss-20b": 1, "acme/nope": 1}}
    assert s["responses"] == {"openrouter": {"200": 2, "429": 2}, "groq": {"200": 1, "404": 1}}
    assert s["rate_limited"] == {"openrouter": 2, "groq": 0}  # the minute was gone before 'busy' could apply
    assert s["openrouter_day_used"] == {key_hash(KEY): 2}
    assert [e["status"] for e in s["log"]] == [200, 200, 429, 429, 200, 404]
    assert [e["reason"] for e in s["log"]][2:4] == ["minute", "minute"]
    assert all(e["key_hash"] == key_hash(KEY) and e["t"] == T0 for e in s["log"])
    assert KEY not in json.dumps(s) and KEY not in json.dumps(sim.configure({}))


def test_admin_http_endpoints(sim, http):
    r = http.post(f"{sim.base_url}/_sim/config", json={"models": {"x": {"gnoe": True}}})
    assert r.status_code == 400 and "gnoe" in r.json()["error"]
    r = http.post(f"{sim.base_url}/_sim/config", json={"models": {"x": {"stream_fault": "explode"}}})
    assert r.status_code == 400
    r = http.post(f"{sim.base_url}/_sim/config",
                  json={"openrouter": {"accounts": {KEY: {"daily_limit": 1}}}, "latency_ms": 0})
    assert r.status_code == 200 and KEY not in r.text
    assert r.json()["config"]["openrouter"]["accounts"] == {key_hash(KEY): {"daily_limit": 1}}
    assert or_chat(http, sim, "deepseek/deepseek-r1:free").status_code == 200
    assert or_chat(http, sim, "deepseek/deepseek-r1:free").status_code == 429
    stats = http.get(f"{sim.base_url}/_sim/stats").json()
    assert stats["responses"]["openrouter"] == {"200": 1, "429": 1}
    assert http.post(f"{sim.base_url}/_sim/reset").status_code == 200
    assert http.get(f"{sim.base_url}/_sim/config").json() == {}
    assert http.get(f"{sim.base_url}/_sim/stats").json()["log"] == []
    assert or_chat(http, sim, "deepseek/deepseek-r1:free").status_code == 200


def test_configure_rejects_bad_patches_atomically(sim):
    with pytest.raises(ConfigError, match="daily_limit"):
        sim.configure({"openrouter": {"accounts": {KEY: {"daily_limit": "lots"}}}})
    with pytest.raises(ConfigError, match="unknown key"):
        sim.configure({"modles": {}})
    assert sim.configure({}) == {}


def test_state_is_usable_without_http_and_build_app_wires_routes():
    clock = ManualClock(T0)
    state = SimState(clock=clock, config={"openrouter": {"accounts": {"k": {"daily_limit": 1}}}})
    assert state.openrouter_admit(key_hash("k"))[0] is None
    block, _ = state.openrouter_admit(key_hash("k"))
    assert block.window == "day" and block.reset_ms == NEXT_MIDNIGHT_MS
    paths = {r.resource.canonical for r in build_app(state).router.routes()}
    assert {"/api/v1/chat/completions", "/api/v1/models", "/api/v1/key", "/openai/v1/chat/completions",
            "/openai/v1/models", "/_sim/reset", "/_sim/config", "/_sim/stats"} <= paths


# -- concurrency: check-and-reserve is atomic ------------------------------------------------------------------
def test_concurrent_requests_never_overshoot_a_limit(sim):
    import aiohttp  # httpx's async pool is slow to open hundreds of connections; aiohttp is not

    async def burst():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=300), headers=auth()) as s:
            async def post(url, model):
                async with s.post(url, json={"model": model, "messages": MSG, "max_tokens": 1}) as r:
                    await r.read()
                    return r.status
            groq = [post(f"{sim.groq_base}/chat/completions", "llama-3.1-8b-instant") for _ in range(200)]
            orr = [post(f"{sim.openrouter_base}/chat/completions", "qwen/qwen3-coder:free") for _ in range(100)]
            return await asyncio.gather(*groq, *orr)

    codes = asyncio.run(burst())
    groq_codes, or_codes = codes[:200], codes[200:]
    assert groq_codes.count(200) == 30 and groq_codes.count(429) == 170
    assert or_codes.count(200) == 20 and or_codes.count(429) == 80
    assert sim.stats()["rate_limited"] == {"openrouter": 80, "groq": 170}


# -- LiteLLM parses the wire format ------------------------------------------------------------------------------
def test_litellm_parses_both_providers(sim):
    import litellm

    async def run():
        out = {}
        for model, base in (("openrouter/deepseek/deepseek-r1:free", sim.openrouter_base),
                            ("groq/openai/gpt-oss-120b", sim.groq_base)):
            r = await litellm.acompletion(model=model, api_base=base, api_key="k", messages=MSG, max_tokens=5)
            stream = await litellm.acompletion(model=model, api_base=base, api_key="k", messages=MSG, max_tokens=5,
                                               stream=True, stream_options={"include_usage": True})
            chunks = [c async for c in stream]
            out[model] = (r, chunks)
        return out

    results = asyncio.run(run())
    for model, served in (("openrouter/deepseek/deepseek-r1:free", "deepseek/deepseek-r1:free"),
                          ("groq/openai/gpt-oss-120b", "openai/gpt-oss-120b")):
        r, chunks = results[model]
        expected_text = f"sim reply from {served}: this"
        assert r.choices[0].message.content == expected_text
        assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 5, 10)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == expected_text
        built = litellm.stream_chunk_builder(chunks)
        assert (built.usage.prompt_tokens, built.usage.completion_tokens) == (5, 5)
    s = sim.stats()["responses"]
    assert s == {"openrouter": {"200": 2}, "groq": {"200": 2}}


def test_litellm_sees_rate_limit_errors(sim):
    import litellm

    sim.configure({"openrouter": {"accounts": {"k": {"used_today": 50}}}})

    async def call():
        return await litellm.acompletion(model="openrouter/deepseek/deepseek-r1:free", api_base=sim.openrouter_base,
                                         api_key="k", messages=MSG)

    with pytest.raises(litellm.RateLimitError) as info:
        asyncio.run(call())
    assert "free-models-per-day" in str(info.value)
    assert info.value.litellm_response_headers["x-ratelimit-reset"] == str(NEXT_MIDNIGHT_MS)

    sim.configure({"groq": {"limits": {"openai/gpt-oss-120b": {"rpm": 1}}}})

    async def groq():
        return await litellm.acompletion(model="groq/openai/gpt-oss-120b", api_base=sim.groq_base, api_key="k",
                                         messages=MSG, max_tokens=5)

    asyncio.run(groq())
    with pytest.raises(litellm.RateLimitError) as info:
        asyncio.run(groq())
    headers = info.value.litellm_response_headers
    assert headers["retry-after"] == "60" and headers["x-ratelimit-remaining-requests"] == "999"
    assert "requests per minute (RPM): Limit 1, Used 1, Requested 1" in str(info.value)


# -- CLI ----------------------------------------------------------------------------------------------------------
def test_cli_help_and_serve():
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    out = subprocess.run([sys.executable, "-m", "router_plugin.sim", "--help"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0 and "--port" in out.stdout and "--host" in out.stdout
    proc = subprocess.Popen([sys.executable, "-m", "router_plugin.sim", "--host", "127.0.0.1", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        m = re.search(r"(http://127\.0\.0\.1:\d+)/api/v1", lines[1])
        assert m and lines[2].strip().endswith(m[1] + "/openai/v1")
        r = httpx.get(m[1] + "/api/v1/models", timeout=10)
        assert r.status_code == 200 and r.json()["data"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
