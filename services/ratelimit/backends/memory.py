"""In-process counters with the same semantics as the Redis script (the embedded default)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections.abc import Callable, Sequence

from services.ratelimit.backends import Check, CounterOp, Outcome

__all__ = ["MemoryBackend"]


class _Counter:
    __slots__ = ("buckets", "expires_ms")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.expires_ms = 0


class MemoryBackend:
    """Counters in a dict; idle counters are dropped by an expiry wheel swept twice a second.

    Single-threaded asyncio makes each `apply` atomic. Only for one process: replicas need Redis.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counters: dict[str, _Counter] = {}
        # expiry second → keys that may expire then; a key's true expiry is on its _Counter.
        self._wheel: dict[int, set[str]] = {}
        self._seconds: list[int] = []  # heap of the wheel's keys
        self._sweeper: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._counters)

    async def apply(
        self, counters: Sequence[CounterOp], checks: Sequence[Check], *, timeout: float = 0
    ) -> Outcome:
        # Never waits: the timeout has nothing to bound.
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        now = int(self._clock() * 1000)
        used: list[int] = []
        oldest: list[int] = []
        for op in counters:
            total, first_seen = self._count(op, now)
            used.append(total)
            oldest.append(first_seen)
        admitted = True
        for check in checks:
            need = counters[check.counter].addend or 1
            if check.enforce and used[check.counter] + need > check.limit:
                admitted = False
                break
        if admitted:
            for op in counters:
                if op.addend > 0:
                    self._add(op, now)
        return Outcome(now_ms=now, admitted=admitted, used=used, oldest=oldest)

    def _count(self, op: CounterOp, now: int) -> tuple[int, int]:
        counter = self._counters.get(op.key)
        if counter is None:
            return 0, -1
        first = now // op.bucket_ms - op.span
        total, first_seen = 0, -1
        for index in list(counter.buckets):
            if index < first:
                del counter.buckets[index]
            else:
                total += counter.buckets[index]
                if first_seen < 0 or index < first_seen:
                    first_seen = index
        return total, first_seen

    def _add(self, op: CounterOp, now: int) -> None:
        counter = self._counters.get(op.key)
        if counter is None:
            counter = self._counters[op.key] = _Counter()
        bucket = now // op.bucket_ms
        counter.buckets[bucket] = counter.buckets.get(bucket, 0) + op.addend
        expires = (bucket + op.span + 1) * op.bucket_ms
        if expires > counter.expires_ms:
            second = expires // 1000
            if second != counter.expires_ms // 1000:
                slot = self._wheel.get(second)
                if slot is None:
                    slot = self._wheel[second] = set()
                    heapq.heappush(self._seconds, second)
                slot.add(op.key)
            counter.expires_ms = expires

    def sweep(self) -> None:
        """Drop counters whose every bucket has left its window."""
        now = int(self._clock() * 1000)
        while self._seconds and self._seconds[0] <= now // 1000:
            for key in self._wheel.pop(heapq.heappop(self._seconds)):
                counter = self._counters.get(key)
                if counter is not None and counter.expires_ms <= now:
                    del self._counters[key]

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.sweep()

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
