"""Counter backends: where sliding-window counts live.

A backend applies one request's counters atomically: it reads every counter, decides whether all
enforced checks pass, and only then adds the hits (a denied request consumes nothing). The
limiter prepares the batch; the backend knows nothing of descriptors, domains or gRPC. Two
implementations share these semantics: `memory` (one process) and `redis` (one Lua script).

Counting, for a counter with bucket size g and span k: the current bucket is b = now // g, and
buckets b-k … b count. Sliding windows use g = W/20, k = 20; fixed windows use g = W, k = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["BackendError", "Check", "CounterBackend", "CounterOp", "Outcome"]


class BackendError(Exception):
    """The backend could not decide (down, slow, refusing). `reason` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CounterOp:
    """One distinct counter touched by a request."""

    key: str
    bucket_ms: int
    span: int
    addend: int  # 0 = check only


@dataclass(frozen=True, slots=True)
class Check:
    """`used + max(addend, 1) <= limit` must hold for counter `counter` (an index into the ops)."""

    counter: int
    limit: int
    enforce: bool  # False for shadow-mode limits: evaluated, never denies


@dataclass(frozen=True, slots=True)
class Outcome:
    now_ms: int
    admitted: bool
    used: Sequence[int]  # per counter: hits counted before this request
    oldest: Sequence[int]  # per counter: oldest counted bucket index, -1 if none


class CounterBackend(Protocol):
    async def apply(
        self, counters: Sequence[CounterOp], checks: Sequence[Check], *, timeout: float
    ) -> Outcome:
        """Check and (if every enforced check passes) count, atomically, within `timeout`
        seconds. Raises BackendError (reason "timeout" when out of time)."""
        ...

    async def ping(self) -> None:
        """Raise BackendError unless the backend answers now."""
        ...

    async def close(self) -> None: ...
