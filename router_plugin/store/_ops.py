"""The blocking store operations, written once over three primitives a store provides.

``SyncQuotaStore`` (Redis) and ``LocalQuotaStore`` (the in-process twin of the scripts, used during a Redis outage)
differ only in how they run a script; everything above that is here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..limits import Counter, DeploymentPlan
from ..providers.facts import Remaining
from . import _codec
from ._codec import Ask, Blocked, KeySpace, Reservation


class SyncOperations:
    """Mixin: needs ``keys`` (a ``KeySpace``), ``margin_ms``, ``_run_reserve(keys, args)`` (one reserve.lua call),
    ``_adjust(plan, ops)`` and ``_mark(key, args)``; ``cluster`` (True: one call per slot group)."""

    keys: KeySpace
    margin_ms: int
    cluster = False

    def _run_reserve(self, keys: list, args: list) -> list:  # pragma: no cover - provided by the store
        raise NotImplementedError

    def reserve(self, plan: DeploymentPlan, tokens: int, dry: bool = False,
                counters_only: bool = False) -> Reservation | Blocked:
        keys, args, ask = _codec.reserve_call(self.keys, plan, tokens, self.margin_ms, dry, counters_only)
        return _codec.parse_one(ask, self._run_reserve(keys, args))

    def reserve_first(self, asks: Sequence[Ask]) -> Reservation | list[Blocked]:
        """Reserve the first candidate that fits, in order (all its counters, all or none): one script call (one
        per slot group on a cluster). None fits: every candidate's Blocked, in order."""
        blocked: list[Blocked] = []
        for group in (_codec.slot_groups(asks) if self.cluster else ([list(asks)] if asks else [])):
            keys, args = _codec.first_call(self.keys, group, self.margin_ms)
            outcome = _codec.parse_first(group, self._run_reserve(keys, args))
            if isinstance(outcome, Reservation):
                return outcome
            blocked += outcome
        return blocked

    def _adjust(self, plan: DeploymentPlan, ops: list) -> None:  # pragma: no cover - provided by the store
        raise NotImplementedError

    def _mark(self, key: str, args: list) -> tuple[int, int]:  # pragma: no cover - provided by the store
        raise NotImplementedError

    def peek(self, plan: DeploymentPlan, counters_only: bool = False) -> Reservation | Blocked:
        return self.reserve(plan, 0, dry=True, counters_only=counters_only)

    def settle(self, reservation: Reservation, actual_tokens: int, seen: Iterable[Remaining] = ()) -> None:
        self._adjust(reservation.plan, _codec.settle_ops(reservation, actual_tokens, seen))

    def refund(self, reservation: Reservation, requests: bool = False) -> None:
        self._adjust(reservation.plan, _codec.refund_ops(reservation, requests))

    def calibrate(self, plan: DeploymentPlan, facts: Iterable[Remaining]) -> None:
        self._adjust(plan, _codec.calibrate_ops(plan, facts))

    def block(self, plan: DeploymentPlan, counter: Counter, until_ms: int, why: str, for_ms: int = 0) -> int:
        return self._mark(self.keys.counter(plan, counter), _codec.block_args(until_ms, why, for_ms))[0]

    def cool(
        self, plan: DeploymentPlan, why: str, base_s: float, max_s: float, escalate: bool = True, until_ms: int = 0
    ) -> int:
        args = _codec.mark_args(until_ms, int(base_s * 1000), escalate, int(max_s * 1000), why)
        return self._mark(self.keys.model(plan), args)[1]
