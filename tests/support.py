"""An observer that records what a Router's plugin reported: routes, failures, completions (see events.py)."""

from __future__ import annotations

from router_plugin.events import Observer
from router_plugin.installer import installed


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
