"""What the stream and time-limit tests share: fast time limits, the simulator's request counts, and an observer
that records what a Router's plugin reported (routes, failures, completions; see events.py)."""

from __future__ import annotations

from router_plugin.events import Observer
from router_plugin.adapter.installer import installed
from router_plugin.sim.wire import reply_pieces


#: Time limits small enough that a silent or stalled deployment is left within a test's patience.
FAST = {"timeouts": {"connect_s": 1.0, "first_token_s": 1.5, "stream_idle_s": 1.0, "total_s": 10.0}}


def bare(model: str) -> str:
    """``openrouter/deepseek/deepseek-r1:free`` -> ``deepseek/deepseek-r1:free`` (the simulator's model name)."""
    return model.split("/", 1)[1]


def sent(sim, model: str) -> int:
    """Requests the simulator received for ``model`` (a generic ``openai/<id>`` deployment is served by the
    simulator's OpenAI-compatible Groq surface, ``/openai/v1``)."""
    provider = model.split("/", 1)[0]
    return sim.stats()["requests"]["groq" if provider == "openai" else provider].get(bare(model), 0)


def half(model: str, n: int = 16) -> str:
    """What a faulty simulated stream delivers before it breaks: the first half of its content events (a Groq
    stream's first event is the role chunk, with no text)."""
    events = ([""] if model.startswith("groq/") else []) + reply_pieces(bare(model), n)
    return "".join(events[: max(1, len(events) // 2)])


def whole(model: str, n: int = 16) -> str:
    """``model``'s whole simulated reply; also what a broken stream of it reads once continued elsewhere (the
    simulator continues a given partial answer word for word)."""
    return "".join(reply_pieces(bare(model), n))


class Recorder(Observer):
    def __init__(self):
        self.routes: list[str] = []  # the deployment each attempt was routed to
        self.fails: list[tuple[str, str]] = []  # (deployment, kind of failure)
        self.wins: list[str] = []  # deployments that completed an answer

    def routed(self, group, plan, attempt, skipped, reservation):
        self.routes.append(plan.model)

    def failed(self, plan, fact):
        self.fails.append((plan.model, type(fact).__name__))

    def succeeded(self, plan, total_tokens):
        self.wins.append(plan.model)


def observe(router) -> Recorder:
    recorder = Recorder()
    installed(router).events.add(recorder)
    return recorder


# ---- what a LiteLLM line cannot do (README "Support table"): the test is skipped there, with the table's words ----
def needs_108(row: str, why: str):
    """Skip on the core lines (1.109.3+/1.110.2+): ``row`` is the README support-table row, ``why`` its limit."""
    import pytest

    from router_plugin.adapter.line import detect

    line = detect()
    return pytest.mark.skipif(line.core, reason=f"LiteLLM {line.version}: {row}: {why} (README Support table)")
