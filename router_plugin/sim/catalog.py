"""The model rosters the simulator serves (static data; what is "gone" is a runtime switch in :mod:`.state`).

OpenRouter roster: the ``:free`` models seen in public sources (providers.md §1.8) with their context lengths,
the ``openrouter/free`` router (200 000), and a few paid models. Groq roster and free-plan limits: the
"current" rows of providers.md §2.1; context windows / max completion tokens as ``GET /openai/v1/models``
reports them (§2.4). ``llama-3.3-70b-versatile`` and ``deepseek-r1-distill-llama-70b`` are retired (§2.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .limits import GroqCaps

__all__ = ["OpenRouterModel", "GroqModel", "OPENROUTER_MODELS", "GROQ_MODELS", "GROQ_RETIRED",
           "OPENROUTER_FREE_ROUTER", "is_openrouter_free"]

OPENROUTER_FREE_ROUTER = "openrouter/free"

_DEFAULT_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "frequency_penalty", "presence_penalty", "seed",
                   "response_format", "structured_outputs")
_TOOL_PARAMS = ("tools", "tool_choice")
_REASONING_PARAMS = ("reasoning", "include_reasoning")


@dataclass(frozen=True)
class OpenRouterModel:
    id: str
    name: str
    context_length: int
    provider: str  # the upstream provider_name reported in responses and upstream errors
    prompt_price: str = "0"
    completion_price: str = "0"
    max_completion_tokens: int | None = None
    created: int = 1_740_000_000
    tokenizer: str = "Other"
    supported_parameters: tuple[str, ...] = field(default=_DEFAULT_PARAMS)

    @property
    def free(self) -> bool:
        return is_openrouter_free(self.id)

    @property
    def canonical_slug(self) -> str:
        return self.id.removesuffix(":free")


def is_openrouter_free(model_id: str) -> bool:
    """Free-tier models share the account pool: ids ending ``:free`` and the ``openrouter/free`` router."""
    return model_id.endswith(":free") or model_id == OPENROUTER_FREE_ROUTER


def _or(id_: str, name: str, ctx: int, provider: str, **kw) -> OpenRouterModel:
    return OpenRouterModel(id_, name, ctx, provider, **kw)


OPENROUTER_MODELS: dict[str, OpenRouterModel] = {m.id: m for m in (
    _or("deepseek/deepseek-r1:free", "DeepSeek: R1 (free)", 163_840, "Chutes", tokenizer="DeepSeek",
        supported_parameters=_DEFAULT_PARAMS + _REASONING_PARAMS, created=1_737_381_095),
    _or("deepseek/deepseek-r1-0528:free", "DeepSeek: R1 0528 (free)", 163_840, "Chutes", tokenizer="DeepSeek",
        supported_parameters=_DEFAULT_PARAMS + _REASONING_PARAMS, created=1_748_455_170),
    # listed at 65,536 since 2026 (providers.md §1.8 update 2026-12; was 131,072)
    _or("meta-llama/llama-3.3-70b-instruct:free", "Meta: Llama 3.3 70B Instruct (free)", 65_536, "Venice",
        tokenizer="Llama3", supported_parameters=_DEFAULT_PARAMS + _TOOL_PARAMS, created=1_733_506_137),
    _or("qwen/qwen3-coder:free", "Qwen: Qwen3 Coder 480B A35B (free)", 262_144, "Chutes", tokenizer="Qwen3",
        supported_parameters=_DEFAULT_PARAMS + _TOOL_PARAMS, created=1_753_230_546),
    _or("google/gemma-3-27b-it:free", "Google: Gemma 3 27B (free)", 131_072, "Google AI Studio",
        max_completion_tokens=8_192, tokenizer="Gemini", created=1_741_756_359),
    _or("openai/gpt-oss-120b:free", "OpenAI: gpt-oss-120b (free)", 131_072, "Chutes", tokenizer="GPT",
        supported_parameters=_DEFAULT_PARAMS + _TOOL_PARAMS + _REASONING_PARAMS, created=1_754_414_231),
    _or("openai/gpt-oss-20b:free", "OpenAI: gpt-oss-20b (free)", 131_072, "Chutes", tokenizer="GPT",
        supported_parameters=_DEFAULT_PARAMS + _TOOL_PARAMS + _REASONING_PARAMS, created=1_754_414_229),
    _or("z-ai/glm-4.5-air:free", "Z.AI: GLM 4.5 Air (free)", 131_072, "Z.AI", tokenizer="Other",
        supported_parameters=_DEFAULT_PARAMS + _TOOL_PARAMS + _REASONING_PARAMS, created=1_753_471_258),
    _or("meta-llama/llama-3.2-3b-instruct:free", "Meta: Llama 3.2 3B Instruct (free)", 131_072, "Venice",
        tokenizer="Llama3", created=1_727_222_400),
    _or("google/gemini-2.0-flash-exp:free", "Google: Gemini 2.0 Flash Experimental (free)", 1_048_576,
        "Google AI Studio", max_completion_tokens=8_192, tokenizer="Gemini",
        supported_parameters=_DEFAULT_PARAMS + _TOOL_PARAMS, created=1_733_937_523),
    _or("google/gemma-4-31b-it:free", "Google: Gemma 4 31B (free)", 131_072, "Google AI Studio",
        tokenizer="Gemini", supported_parameters=_DEFAULT_PARAMS + _TOOL_PARAMS, created=1_775_000_000),
    _or(OPENROUTER_FREE_ROUTER, "Free Models Router", 200_000, "OpenRouter", tokenizer="Router",
        supported_parameters=_DEFAULT_PARAMS + _TOOL_PARAMS + _REASONING_PARAMS, created=1_769_000_000),
    _or("openai/gpt-4o-mini", "OpenAI: GPT-4o-mini", 128_000, "OpenAI", prompt_price="0.00000015",
        completion_price="0.0000006", max_completion_tokens=16_384, tokenizer="GPT",
        supported_parameters=_DEFAULT_PARAMS + _TOOL_PARAMS, created=1_721_260_800),
    _or("deepseek/deepseek-r1", "DeepSeek: R1", 163_840, "DeepInfra", prompt_price="0.0000004",
        completion_price="0.000002", tokenizer="DeepSeek", supported_parameters=_DEFAULT_PARAMS + _REASONING_PARAMS,
        created=1_737_381_095),
    _or("meta-llama/llama-3.3-70b-instruct", "Meta: Llama 3.3 70B Instruct", 131_072, "DeepInfra",
        prompt_price="0.00000013", completion_price="0.00000039", tokenizer="Llama3",
        supported_parameters=_DEFAULT_PARAMS + _TOOL_PARAMS, created=1_733_506_137),
)}


@dataclass(frozen=True)
class GroqModel:
    id: str
    owned_by: str
    context_window: int
    max_completion_tokens: int
    caps: GroqCaps
    created: int = 1_740_000_000


GROQ_MODELS: dict[str, GroqModel] = {m.id: m for m in (
    GroqModel("openai/gpt-oss-120b", "OpenAI", 131_072, 65_536, GroqCaps(30, 1_000, 8_000, 200_000), 1_754_408_224),
    GroqModel("openai/gpt-oss-20b", "OpenAI", 131_072, 65_536, GroqCaps(30, 1_000, 8_000, 200_000), 1_754_407_957),
    GroqModel("openai/gpt-oss-safeguard-20b", "OpenAI", 131_072, 65_536, GroqCaps(30, 1_000, 8_000, 200_000),
              1_761_708_789),
    GroqModel("llama-3.1-8b-instant", "Meta", 131_072, 131_072, GroqCaps(30, 14_400, 6_000, 500_000), 1_693_721_698),
    GroqModel("qwen/qwen3-32b", "Alibaba Cloud", 131_072, 40_960, GroqCaps(60, 1_000, 6_000, 500_000), 1_748_396_646),
    GroqModel("meta-llama/llama-4-scout-17b-16e-instruct", "Meta", 131_072, 8_192,
              GroqCaps(30, 1_000, 30_000, 500_000), 1_743_874_824),
    GroqModel("meta-llama/llama-4-maverick-17b-128e-instruct", "Meta", 131_072, 8_192,
              GroqCaps(30, 1_000, 6_000, 500_000), 1_743_877_158),
    GroqModel("moonshotai/kimi-k2-instruct", "Moonshot AI", 131_072, 16_384, GroqCaps(60, 1_000, 10_000, 300_000),
              1_752_435_491),
    GroqModel("groq/compound", "Groq", 131_072, 8_192, GroqCaps(30, 250, 70_000, None), 1_756_949_530),
    GroqModel("groq/compound-mini", "Groq", 131_072, 8_192, GroqCaps(30, 250, 70_000, None), 1_756_949_707),
    # Aug 2026 free-plan row (providers.md §2.1); context window 131,072 (§2.1 update 2026-12).
    GroqModel("qwen/qwen3.6-27b", "Alibaba Cloud", 131_072, 40_960, GroqCaps(30, 1_000, 8_000, 200_000),
              1_785_000_000),
    GroqModel("allam-2-7b", "SDAIA", 4_096, 4_096, GroqCaps(30, 7_000, 6_000, 500_000), 1_737_672_203),
)}

#: Shut down on Groq (providers.md §2.1): answered with 400 ``model_decommissioned``.
GROQ_RETIRED: frozenset[str] = frozenset({"llama-3.3-70b-versatile", "deepseek-r1-distill-llama-70b"})
