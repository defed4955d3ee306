"""Counter backends: where sliding-window counts live.

A backend applies one request's counters atomically: it reads every counter, decides whether all
enforced checks pass, and only then adds the hits (a denied request consumes nothing). The
limiter prepares the batch; the backend knows nothing of descriptors, domains or gRPC. Two
implementations share these semantics: `memory` (one process) and `redis` (one Lua script).

The batch is flat, in the Lua script's own argument layout, so the Redis backend passes it on
untouched (profiling showed per-request object building to matter at these rates):

- `keys[i]`: counter i;
- `params[3i:3i+3]`: bucket_ms, span, addend of counter i (addend 0 = check only);
- `checks[3j:3j+3]`: counter index (0-based), limit, mode: check j fails when
  `used + max(addend, 1) > limit`. Mode 1 (enforced): a failing check denies. Mode 0 (shadow):
  never denies. Mode 2 + d (quota_mode, descriptor d): denies only when every quota descriptor
  of the request has a failing check; when admitted, the counters of quota descriptors that
  are over are not counted (they granted nothing).

Counting, for a counter with bucket size g and span k: the current bucket is b = now // g, and
buckets b-k … b count. Sliding windows use g = W/20, k = 20; fixed windows use g = W, k = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

__all__ = ["BackendError", "CounterBackend", "Outcome", "verdict"]


class BackendError(Exception):
    """The backend could not decide (down, slow, refusing). `reason` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Outcome(NamedTuple):
    now_ms: int
    admitted: bool
    used: Sequence[int]  # per counter: hits counted before this request
    oldest: Sequence[int]  # per counter: oldest counted bucket index, -1 if none


class CounterBackend(Protocol):
    async def apply(
        self, keys: Sequence[str], params: Sequence[int], checks: Sequence[int], *, timeout: float
    ) -> Outcome:
        """Check and (if every enforced check passes) count, atomically, within `timeout`
        seconds. Raises BackendError (reason "timeout" when out of time)."""
        ...

    async def ping(self) -> None:
        """Raise BackendError unless the backend answers now."""
        ...

    async def close(self) -> None: ...


def verdict(params: Sequence[int], checks: Sequence[int], used: Sequence[int]) -> set[int] | None:
    """The checks' verdict, as window.lua gives it: None = denied, else the counters not to count
    (those of quota descriptors that are over)."""
    quota_over: dict[int, bool] = {}
    for j in range(0, len(checks), 3):
        i, mode = checks[j], checks[j + 2]
        fails = used[i] + (params[3 * i + 2] or 1) > checks[j + 1]
        if mode == 1 and fails:
            return None
        if mode >= 2:
            quota_over[mode] = quota_over.get(mode, False) or fails
    if quota_over and all(quota_over.values()):
        return None
    return {checks[j] for j in range(0, len(checks), 3) if quota_over.get(checks[j + 2], False)}
