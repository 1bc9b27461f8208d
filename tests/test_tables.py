"""Built-in tables (what is served now, with dates) and OpenRouter account grouping: pure, no servers."""

from __future__ import annotations

from router_plugin._plans import PlanBook
from router_plugin.checks import check
from router_plugin.demo import DEMO_CHAIN
from router_plugin.limits import CONTEXT_WINDOWS, PlanInputs, key_fingerprint, openrouter_accounts, retired


def test_tables_know_the_2026_removals_and_windows():
    for gone in ("deepseek/deepseek-r1:free", "deepseek/deepseek-r1-0528:free", "google/gemini-2.0-flash-exp:free",
                 "arcee-ai/trinity-large-preview:free", "google/gemma-3-27b-it:free",
                 "deepseek/deepseek-v4-flash:free", "z-ai/glm-4.5-air:free"):
        assert retired("openrouter/" + gone), gone
    for gone in ("llama-3.1-8b-instant", "qwen/qwen3-32b", "meta-llama/llama-4-scout-17b-16e-instruct",
                 "meta-llama/llama-4-maverick-17b-128e-instruct", "moonshotai/kimi-k2-instruct",
                 "moonshotai/kimi-k2-instruct-0905"):
        assert retired("groq/" + gone), gone
    assert CONTEXT_WINDOWS["qwen/qwen3.6-27b"] == 131_072 and CONTEXT_WINDOWS["allam-2-7b"] == 4_096
    assert CONTEXT_WINDOWS["meta-llama/llama-3.3-70b-instruct:free"] == 65_536
    assert [m for m in DEMO_CHAIN if retired(m)] == []  # the drop-in chain starts with models that exist


def test_check_warns_about_retired_models():
    config = {"model_list": [
        {"model_name": "c", "litellm_params": {"model": "openrouter/deepseek/deepseek-r1:free", "api_key": "k"}},
        {"model_name": "c", "litellm_params": {"model": "groq/llama-3.1-8b-instant", "api_key": "g"}}]}
    text = check(config).render()
    assert "model_list[0].litellm_params.model: openrouter/deepseek/deepseek-r1:free has left" in text
    assert "groq/llama-3.1-8b-instant is retired on Groq (shut down 2026-08-16" in text
    assert "groq/openai/gpt-oss-20b" in text


def test_openrouter_keys_of_one_config_are_one_account_until_told_otherwise():
    a, b, c = (key_fingerprint(k) for k in ("key-a", "key-b", "key-c"))
    one = openrouter_accounts([(a, None), (b, None)])
    assert one[a] == one[b] and one[a] not in (a, b)
    assert openrouter_accounts([(a, None)]) == {a: a}  # one key: the id it always had
    split = openrouter_accounts([(a, None), (b, None), (c, None)], {a: "u1", b: "u2"})
    assert split[a] != split[b] and split[c] in (split[a], split[b])  # the unreported key joins the largest
    same = openrouter_accounts([(a, None), (b, None)], {a: "u1", b: "u1"})
    assert same == one  # the endpoint agrees: the pool keeps its id (and its counts)
    named = openrouter_accounts([(a, "work"), (b, "home"), (c, None)])
    assert len({named[a], named[b], named[c]}) == 3


def test_plans_share_a_pool_and_learn_the_tier_and_live_context():
    model_list = [
        {"model_name": "g", "litellm_params": {"model": "openrouter/qwen/qwen3-coder:free", "api_key": "key-a"},
         "model_info": {"id": "1"}},
        {"model_name": "g", "litellm_params": {"model": "openrouter/meta-llama/llama-3.3-70b-instruct:free",
                                               "api_key": "key-b"}, "model_info": {"id": "2"}},
    ]
    book = PlanBook(PlanInputs())
    book.learn(model_list)
    p1, p2 = (book.plan(d) for d in model_list)
    assert p1.slot == p2.slot and p1.pool_label == p2.pool_label
    assert "key-a" not in p1.slot + p1.pool_label and "key-b" not in p2.slot
    fa = key_fingerprint("key-a")
    book.learn(model_list, openrouter_rpd_by_key={fa: 1000},
               live_context={"openrouter/qwen/qwen3-coder:free": 262_000})
    p1 = book.plan(model_list[0])
    assert next(c for c in p1.counters if c.key == "day").limit.capacity == 1000
    assert p1.context_window == 262_000
