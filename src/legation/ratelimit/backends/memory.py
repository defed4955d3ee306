"""In-process counters with the same semantics as the Redis script (the embedded default)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from collections.abc import Callable, Sequence

from legation.ratelimit.backends import Outcome

__all__ = ["MemoryBackend"]


class _Counter:
    """Buckets oldest first, with their running total: counting is O(expired buckets)."""

    __slots__ = ("buckets", "expires_ms", "total")

    def __init__(self) -> None:
        self.buckets: deque[list[int]] = deque()  # [bucket index, hits]
        self.total = 0
        self.expires_ms = 0

    def count(self, first: int) -> tuple[int, int]:
        buckets = self.buckets
        while buckets and buckets[0][0] < first:
            self.total -= buckets.popleft()[1]
        return self.total, buckets[0][0] if buckets else -1

    def add(self, bucket: int, hits: int) -> None:
        buckets = self.buckets
        if buckets and buckets[-1][0] >= bucket:
            buckets[-1][1] += hits  # same bucket (or a clock step back: count it in the newest)
        else:
            buckets.append([bucket, hits])
        self.total += hits


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
        self, keys: Sequence[str], params: Sequence[int], checks: Sequence[int], *, timeout: float = 0
    ) -> Outcome:
        # Never waits: the timeout has nothing to bound.
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        now = int(self._clock() * 1000)
        counters = self._counters
        used: list[int] = []
        oldest: list[int] = []
        for i, key in enumerate(keys):
            counter = counters.get(key)
            if counter is None:
                used.append(0)
                oldest.append(-1)
            else:
                total, first_seen = counter.count(now // params[3 * i] - params[3 * i + 1])
                used.append(total)
                oldest.append(first_seen)
        for j in range(0, len(checks), 3):
            i = checks[j]
            if checks[j + 2] and used[i] + (params[3 * i + 2] or 1) > checks[j + 1]:
                return Outcome(now, False, used, oldest)
        for i, key in enumerate(keys):
            addend = params[3 * i + 2]
            if addend > 0:
                self._add(key, params[3 * i], params[3 * i + 1], addend, now)
        return Outcome(now, True, used, oldest)

    def _add(self, key: str, bucket_ms: int, span: int, addend: int, now: int) -> None:
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = _Counter()
        bucket = now // bucket_ms
        counter.add(bucket, addend)
        expires = (bucket + span + 1) * bucket_ms
        if expires > counter.expires_ms:
            second = expires // 1000
            if second != counter.expires_ms // 1000:
                slot = self._wheel.get(second)
                if slot is None:
                    slot = self._wheel[second] = set()
                    heapq.heappush(self._seconds, second)
                slot.add(key)
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
