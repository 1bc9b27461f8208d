"""What the router tells observers (metrics, logs, tests): one call per routing decision and per outcome.

The strategy and the callbacks report here and nowhere else; an observer implements the methods it cares
about. ``Events`` fans out and never lets an observer's exception reach a request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .limits import DeploymentPlan
    from .providers.facts import Fact
    from .store import Blocked, Reservation

log = logging.getLogger("router_plugin")


class Observer:
    """Override what you need. Every method is called in the request path: keep it fast, never block."""

    def routed(self, group: str, plan: "DeploymentPlan", attempt: int, skipped: Sequence[tuple[str, str]],
               reservation: "Reservation | None") -> None:
        """A deployment got its reservation for this attempt. ``skipped``: (model, why) of those passed over."""

    def refused(self, group: str, blocked: Sequence["Blocked"], skipped: Sequence[tuple[str, str]],
                retry_after_s: float | None) -> None:
        """No deployment could take the request; the plugin refused it without sending anything."""

    def reserve_timed(self, plan: "DeploymentPlan", seconds: float) -> None:
        """One reservation round trip to the store took ``seconds``."""

    def succeeded(self, plan: "DeploymentPlan", total_tokens: int) -> None:
        """A provider answered and the reservation was settled."""

    def failed(self, plan: "DeploymentPlan", fact: "Fact") -> None:
        """A provider attempt failed; ``fact`` is what the providers/ parsers made of it."""


class Events(Observer):
    """Fan-out to the registered observers."""

    def __init__(self, observers: Sequence[Observer] = ()):
        self.observers: list[Observer] = list(observers)

    def add(self, observer: Observer) -> None:
        if observer not in self.observers:
            self.observers.append(observer)

    def _each(self, name: str, *args) -> None:
        if not self.observers:  # the common case without metrics: nothing to look up per request
            return
        for observer in self.observers:
            try:
                getattr(observer, name)(*args)
            except Exception as exc:  # an observer must never break a request
                log.debug("router_plugin: observer %r failed in %s: %s", observer, name, exc)

    def routed(self, *args) -> None:
        self._each("routed", *args)

    def refused(self, *args) -> None:
        self._each("refused", *args)

    def reserve_timed(self, *args) -> None:
        self._each("reserve_timed", *args)

    def succeeded(self, *args) -> None:
        self._each("succeeded", *args)

    def failed(self, *args) -> None:
        self._each("failed", *args)
