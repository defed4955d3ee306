"""Which resources made an Envoy NACK: a bisection over the suspects, as a pure state machine.

The suspects are the resources of the rejected snapshot that the Envoy does not run yet (new or
changed since what it accepted), of the kinds the rejected type carries. Each round serves that
Envoy alone a probe: the snapshot without some of them (`probe`), and its ACK or NACK (`result`)
narrows them down. Invariant: with `deferred` and `guilty` left out, everything outside `pool` is
fine together, and adding all of `pool` is rejected. So leaving out one half of the pool and
getting an ACK puts a culprit in that half; a NACK puts one in the other half (the first half is
deferred, to be tried again once a culprit is found). One culprit among n suspects takes
ceil(log2 n) rounds; several take that per culprit. Names Envoy's message mentions are tried
first, as a whole: a message that names the culprit finds it in one round.

When the pool is down to one resource it is guilty. If some were deferred, they are tried back
(everything but the guilty): an ACK ends the search, a NACK makes them the new pool.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from legation.api.v1alpha1 import ResourceId

__all__ = ["Bisection", "Outcome"]

Outcome = Literal["probe", "found", "failed"]
"""`probe`: serve `probe` next; `found`: `guilty` is the answer; `failed`: give up."""


@dataclass
class Bisection:
    """One search for the resources one node rejects (see the module)."""

    node: str
    error: str
    """Envoy's message, as first received."""
    pool: list[ResourceId]
    mentioned: frozenset[ResourceId] = frozenset()
    guilty: list[ResourceId] = field(default_factory=list)
    deferred: list[ResourceId] = field(default_factory=list)
    rounds: int = 0
    max_rounds: int = 0
    """0: computed from the number of suspects (generous: several culprits, retries)."""
    outcome: Outcome = "probe"
    """Where the search stands: after `start` and after each `result`."""
    _half: list[ResourceId] = field(default_factory=list)
    _verifying: bool = False

    @classmethod
    def start(
        cls, node: str, error: str, suspects: Sequence[ResourceId], *, mentioned: Collection[ResourceId] = ()
    ) -> Bisection:
        pool = sorted(set(suspects))
        named = frozenset(mentioned) & frozenset(pool)
        search = cls(node=node, error=error, pool=pool, mentioned=named)
        search.max_rounds = 4 * max(1, math.ceil(math.log2(len(pool) + 1))) + 4
        search.outcome = search._plan()
        return search

    @property
    def probe(self) -> frozenset[ResourceId]:
        """What the next probe leaves out."""
        if self._verifying:
            return frozenset(self.guilty)
        return frozenset([*self.guilty, *self.deferred, *self._half])

    def result(self, accepted: bool) -> Outcome:
        """The node's answer to `probe`."""
        self.outcome = self._next(accepted)
        return self.outcome

    def _next(self, accepted: bool) -> Outcome:
        if self.outcome != "probe":
            return self.outcome
        if self.rounds >= self.max_rounds:
            return "failed"  # nothing quarantined: a search that does not converge finds nothing
        self.rounds += 1
        if self._verifying:  # everything back but the guilty
            self._verifying = False
            if accepted:
                return "found"
            self.pool, self.deferred = self.deferred, []
        elif accepted:  # a culprit among those left out
            self.pool = self._half
        else:  # one among those kept in; the half left out waits
            self.deferred += self._half
            self.pool = [r for r in self.pool if r not in self._half]
        return self._plan()

    def _plan(self) -> Outcome:
        """The next probe, or the end."""
        self._half = []
        if not self.pool:
            return "failed" if not self.guilty else "found"
        if len(self.pool) == 1:
            self.guilty.append(self.pool.pop())
            if not self.deferred:
                return "found"
            self._verifying = True
            return "probe"
        named = [r for r in self.pool if r in self.mentioned]
        self.mentioned = frozenset()  # tried once, as a whole
        if named and len(named) < len(self.pool):
            self._half = named
        else:
            self._half = self.pool[: len(self.pool) // 2]
        return "probe"
