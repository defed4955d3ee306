"""One decision over a Redis Cluster: its counters grouped by slot, the groups run in parallel.

Counter keys carry one descriptor as their hash tag (limiter.counter_key), so different users,
addresses and routes spread over the shards, while all limits of one descriptor share a slot
(and quota-mode counters share their domain's slot: they are decided together).

All-or-nothing across slots. Each group is checked and counted atomically by window.lua (one
round trip per group, the groups sent at once). The request is admitted only if every group
admits it. When one group denies while others admitted and counted, the hits those others
counted are taken back (refund.lua, after the answer, one more round trip per such group).
Hence:

- never over-admits: every admitted hit was checked against its counter in the same atomic step
  as it was counted; a refund only removes hits of a request that was denied;
- a denied request may hold quota in another slot until its refund lands (or, if the refund
  cannot be sent, until those hits leave the window): meanwhile, concurrent requests there may
  be denied. The error is always toward admitting less, never more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from redis.crc import key_slot

from legation.ratelimit.backends import Outcome, verdict

__all__ = ["SlotGroups"]

log = logging.getLogger("legation.ratelimit.redis")


class _Scripts(Protocol):
    async def run(self, keys: Sequence[str], args: Sequence[int], timeout: float) -> list[int]: ...

    async def refund(self, keys: Sequence[str], args: Sequence[int], timeout: float) -> None: ...


class _Group:
    """The counters of one slot, renumbered from 0, and the checks on them."""

    __slots__ = ("checks", "index", "keys", "params")

    def __init__(self) -> None:
        self.index: list[int] = []  # request counter index of each group counter
        self.keys: list[str] = []
        self.params: list[int] = []
        self.checks: list[int] = []

    def args(self) -> list[int]:
        args = list(self.params)
        for j in range(0, len(self.checks), 3):
            args += (self.checks[j] + 1, self.checks[j + 1], self.checks[j + 2])
        return args


class SlotGroups:
    def __init__(self, scripts: _Scripts) -> None:
        self._scripts = scripts
        self._refunds: set[asyncio.Task[None]] = set()

    async def apply(
        self, keys: Sequence[str], params: Sequence[int], checks: Sequence[int], *, timeout: float
    ) -> Outcome:
        groups = _group(keys, params, checks)
        calls = [asyncio.ensure_future(self._scripts.run(g.keys, g.args(), timeout)) for g in groups]
        try:
            replies = await asyncio.gather(*calls)
        except BaseException:
            for call in calls:
                call.cancel()
            raise
        now = max(int(r[0]) for r in replies)
        used, oldest = [0] * len(keys), [-1] * len(keys)
        for group, reply in zip(groups, replies, strict=True):
            for n, i in enumerate(group.index):
                used[i], oldest[i] = reply[2 + 2 * n], reply[3 + 2 * n]
        admitted = all(r[1] == 1 for r in replies)
        if not admitted:
            self._refund_admitted(groups, replies, timeout)
        return Outcome(now, admitted, used, oldest)

    def _refund_admitted(self, groups: list[_Group], replies: list[list[int]], timeout: float) -> None:
        for group, reply in zip(groups, replies, strict=True):
            if reply[1] != 1:
                continue
            skip = verdict(group.params, group.checks, reply[2::2]) or set()
            keys: list[str] = []
            args: list[int] = []
            for n, key in enumerate(group.keys):
                bucket_ms, addend = group.params[3 * n], group.params[3 * n + 2]
                if addend > 0 and n not in skip:
                    keys.append(key)
                    args += (int(reply[0]) // bucket_ms, addend)
            if keys:
                task = asyncio.ensure_future(self._scripts.refund(keys, args, max(timeout, 1.0)))
                self._refunds.add(task)
                task.add_done_callback(self._refunded)

    def _refunded(self, task: asyncio.Task[None]) -> None:
        self._refunds.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning(
                "refund failed; the hits leave with their window", extra={"error": str(task.exception())}
            )


def _group(keys: Sequence[str], params: Sequence[int], checks: Sequence[int]) -> list[_Group]:
    by_slot: dict[int, _Group] = {}
    where: list[tuple[_Group, int]] = []
    for i, key in enumerate(keys):
        group = by_slot.setdefault(key_slot(key.encode()), _Group())
        where.append((group, len(group.keys)))
        group.index.append(i)
        group.keys.append(key)
        group.params += params[3 * i : 3 * i + 3]
    for j in range(0, len(checks), 3):
        group, n = where[checks[j]]
        group.checks += (n, checks[j + 1], checks[j + 2])
    return list(by_slot.values())
