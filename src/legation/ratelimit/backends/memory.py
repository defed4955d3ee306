"""In-process counters with the same semantics as the Redis script (the embedded default)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import time
from collections import deque
from collections.abc import Callable, Sequence

from legation.ratelimit.backends import Outcome, verdict

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


# Default cap on counters: about 1.2 KB each with their bookkeeping, so ~120 MB at the cap.
DEFAULT_MAX_KEYS = 100_000


class MemoryBackend:
    """Counters in a dict; idle counters are dropped by an expiry wheel swept twice a second.

    Single-threaded asyncio makes each `apply` atomic. Only for one process: replicas need Redis.

    At most `max_keys` counters are held, so a flood of distinct keys cannot exhaust memory (an
    OOM-killed limiter fails open). A new key at the cap first drops expired counters, then the
    live ones that expire soonest (the least left to lose); `on_evict(reason, n)` is told.
    An evicted live counter starts again from zero: the cost of the cap is that a key flooded out
    of memory may be admitted up to its limit once more.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        max_keys: int = DEFAULT_MAX_KEYS,
        on_evict: Callable[[str, int], None] | None = None,
    ) -> None:
        self._clock = clock
        self._max_keys = max(1, max_keys)
        self._on_evict = on_evict
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
        skip = verdict(params, checks, used)
        if skip is None:
            return Outcome(now, False, used, oldest)
        for i, key in enumerate(keys):
            addend = params[3 * i + 2]
            if addend > 0 and i not in skip:
                self._add(key, params[3 * i], params[3 * i + 1], addend, now)
        return Outcome(now, True, used, oldest)

    def _add(self, key: str, bucket_ms: int, span: int, addend: int, now: int) -> None:
        counter = self._counters.get(key)
        if counter is None:
            if len(self._counters) >= self._max_keys:
                self._make_room()
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

    def _make_room(self) -> None:
        before = len(self._counters)
        self.sweep()
        expired = before - len(self._counters)
        evicted = 0
        while len(self._counters) >= self._max_keys and self._seconds:
            second = self._seconds[0]
            slot = self._wheel[second]
            while slot and len(self._counters) >= self._max_keys:
                key = slot.pop()
                counter = self._counters.get(key)
                if counter is not None and counter.expires_ms // 1000 == second:  # else a stale entry
                    del self._counters[key]
                    evicted += 1
            if not slot:
                heapq.heappop(self._seconds)
                del self._wheel[second]
        if self._on_evict is not None:
            if expired:
                self._on_evict("expired", expired)
            if evicted:
                self._on_evict("capacity", evicted)

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
