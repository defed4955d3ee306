"""Rate limit decisions: descriptors in, statuses out. Knows nothing of gRPC or of Redis.

Per request: look up each descriptor's limits in the current RuleSet, turn them into counter
operations (one per distinct counter key, hits summed), let the backend check-and-count them
atomically in one call, and read every descriptor's status off the outcome.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from services.ratelimit.backends import BackendError, Check, CounterBackend, CounterOp, Outcome
from services.ratelimit.rules import Limit, RuleSet, make_limit

__all__ = [
    "Decision",
    "DescriptorRequest",
    "DescriptorStatus",
    "FailureMode",
    "Limiter",
    "LimiterUnavailable",
    "Observer",
    "counter_key",
]

FailureMode = Literal["unavailable", "allow", "deny"]

# A counter key longer than this is replaced by a digest (keys stay bounded in Redis).
MAX_KEY_BODY = 160
# No single request may add more than this; a bigger addend is over any limit anyway.
MAX_ADDEND = 2**31

_UNIT_SECONDS = {1: 1, 2: 60, 3: 3600, 4: 86400, 5: 30 * 86400, 6: 365 * 86400, 7: 7 * 86400}


class LimiterUnavailable(Exception):
    """No decision could be made in time and the failure mode says to report it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class DescriptorRequest:
    entries: tuple[tuple[str, str], ...]
    addend: int | None = None  # per-descriptor hits_addend; None = the request's
    override: tuple[int, int] | None = None  # (requests_per_unit, unit) sent by Envoy


@dataclass(frozen=True, slots=True)
class DescriptorStatus:
    over: bool
    limit: Limit | None = None  # the limit reported back (the strictest), None = no limit
    remaining: int = 0
    reset_ms: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    over: bool
    statuses: Sequence[DescriptorStatus]


class Observer(Protocol):
    """Told about every decided limit (metrics); must be cheap."""

    def decided(self, domain: str, limit: Limit, code: str, values: Sequence[tuple[str, str]]) -> None: ...

    def backend(self, seconds: float, error: str | None) -> None: ...


class _NullObserver:
    def decided(self, domain: str, limit: Limit, code: str, values: Sequence[tuple[str, str]]) -> None:
        return None

    def backend(self, seconds: float, error: str | None) -> None:
        return None


_OK = DescriptorStatus(over=False)


def counter_key(domain: str, limit: Limit, entries: Sequence[tuple[str, str]]) -> str:
    """`lg:{domain}:s60000:<entries>`: the hash tag keeps one request's keys in one slot."""
    body = "".join(f"{len(k)}.{k}{len(v)}.{v}" for k, v in entries)
    if len(body) > MAX_KEY_BODY:
        body = "#" + hashlib.blake2b(body.encode(), digest_size=16).hexdigest()
    if len(domain) > 64 or "{" in domain or "}" in domain:
        domain = "#" + hashlib.blake2b(domain.encode(), digest_size=8).hexdigest()
    return f"lg:{{{domain}}}:{limit.key_tag}:{body}"


class Limiter:
    def __init__(
        self,
        *,
        rules: RuleSet,
        backend: CounterBackend,
        timeout: float = 0.05,
        failure_mode: FailureMode = "unavailable",
        max_inflight: int = 1024,
        observer: Observer | None = None,
    ) -> None:
        self.rules = rules
        self._backend = backend
        self._timeout = timeout
        self._failure_mode = failure_mode
        self._max_inflight = max_inflight
        self._inflight = 0
        self._observer: Observer = observer or _NullObserver()
        self._override_limits: dict[tuple[int, int], Limit] = {}

    async def should_rate_limit(
        self, domain: str, descriptors: Sequence[DescriptorRequest], hits_addend: int = 0
    ) -> Decision:
        rules = self.rules  # one RuleSet for the whole request, even if a reload lands meanwhile
        matched = [self._limits(rules, domain, d) for d in descriptors]
        if rules.has_replaces:
            matched = _apply_replaces(matched)
        default_addend = min(hits_addend or 1, MAX_ADDEND)
        ops: list[CounterOp] = []
        index: dict[str, int] = {}
        checks: list[Check] = []
        plan: list[list[tuple[Limit, int]]] = []  # per descriptor: (limit, counter index)
        for d, limits in zip(descriptors, matched, strict=True):
            addend = default_addend if d.addend is None else min(d.addend, MAX_ADDEND)
            placed: list[tuple[Limit, int]] = []
            for limit in limits:
                if limit.unlimited:
                    continue
                i = self._place(counter_key(domain, limit, d.entries), limit, addend, ops, index)
                checks.append(Check(counter=i, limit=limit.requests, enforce=not limit.shadow))
                placed.append((limit, i))
            plan.append(placed)
        if not checks:
            return Decision(over=False, statuses=[_OK] * len(descriptors))
        try:
            outcome = await self._apply(ops, checks)
        except LimiterUnavailable:
            if self._failure_mode == "unavailable":
                raise
            return self._failed(plan)
        return self._decide(domain, descriptors, plan, ops, outcome)

    def _limits(self, rules: RuleSet, domain: str, d: DescriptorRequest) -> tuple[Limit, ...]:
        if d.override is not None and domain in rules.domains:
            return (self._override(d.override),)
        return rules.lookup(domain, d.entries) or ()

    def _override(self, override: tuple[int, int]) -> Limit:
        limit = self._override_limits.get(override)
        if limit is None:
            requests, unit = override
            limit = make_limit(
                requests=requests,
                unit=unit,
                window_seconds=_UNIT_SECONDS.get(unit, 1),
                algorithm="sliding_window",
                rule="override",
            )
            if len(self._override_limits) < 1024:
                self._override_limits[override] = limit
        return limit

    @staticmethod
    def _place(key: str, limit: Limit, addend: int, ops: list[CounterOp], index: dict[str, int]) -> int:
        i = index.get(key)
        if i is None:
            index[key] = i = len(ops)
            ops.append(CounterOp(key=key, bucket_ms=limit.bucket_ms, span=limit.span, addend=addend))
        else:  # the same counter twice in one request: its hits add up
            op = ops[i]
            ops[i] = CounterOp(
                key=key, bucket_ms=op.bucket_ms, span=op.span, addend=min(op.addend + addend, MAX_ADDEND)
            )
        return i

    async def _apply(self, ops: list[CounterOp], checks: list[Check]) -> Outcome:
        if self._inflight >= self._max_inflight:
            self._observer.backend(0.0, "overloaded")
            raise LimiterUnavailable("overloaded", "too many rate limit decisions waiting on the backend")
        loop = asyncio.get_running_loop()
        start = loop.time()
        self._inflight += 1
        try:
            outcome = await self._backend.apply(ops, checks, timeout=self._timeout)
        except BackendError as exc:
            self._observer.backend(loop.time() - start, exc.reason)
            raise LimiterUnavailable(exc.reason, str(exc)) from exc
        finally:
            self._inflight -= 1
        self._observer.backend(loop.time() - start, None)
        return outcome

    def _failed(self, plan: list[list[tuple[Limit, int]]]) -> Decision:
        over = self._failure_mode == "deny"
        statuses = [DescriptorStatus(over=over, limit=placed[0][0]) if placed else _OK for placed in plan]
        return Decision(over=over and any(plan), statuses=statuses)

    def _decide(
        self,
        domain: str,
        descriptors: Sequence[DescriptorRequest],
        plan: list[list[tuple[Limit, int]]],
        ops: list[CounterOp],
        outcome: Outcome,
    ) -> Decision:
        now = outcome.now_ms
        statuses: list[DescriptorStatus] = []
        for d, placed in zip(descriptors, plan, strict=True):
            best: DescriptorStatus | None = None
            for limit, i in placed:
                op = ops[i]
                used = outcome.used[i]
                over = used + (op.addend or 1) > limit.requests
                if outcome.admitted:
                    used += op.addend
                code = ("shadow_over_limit" if limit.shadow else "over_limit") if over else "ok"
                self._observer.decided(domain, limit, code, d.entries)
                status = DescriptorStatus(
                    over=over and not limit.shadow,
                    limit=limit,
                    remaining=max(0, limit.requests - used),
                    reset_ms=_reset_ms(op, outcome.oldest[i], now, counted=outcome.admitted),
                )
                if best is None or _stricter(status, best):
                    best = status
            statuses.append(best or _OK)
        return Decision(over=not outcome.admitted, statuses=statuses)


def _reset_ms(op: CounterOp, oldest: int, now: int, *, counted: bool) -> int:
    """Time until the oldest counted bucket stops counting: when quota next comes back."""
    current = now // op.bucket_ms
    if oldest < 0 or (counted and op.addend > 0 and current < oldest):
        oldest = current
    return max(0, (oldest + op.span + 1) * op.bucket_ms - now)


def _stricter(a: DescriptorStatus, b: DescriptorStatus) -> bool:
    if a.over != b.over:
        return a.over
    if a.remaining != b.remaining:
        return a.remaining < b.remaining
    return a.reset_ms > b.reset_ms


def _apply_replaces(matched: list[tuple[Limit, ...]]) -> list[tuple[Limit, ...]]:
    replaced = {name for limits in matched for limit in limits for name in limit.replaces}
    if not replaced:
        return matched
    return [tuple(lim for lim in limits if not lim.name or lim.name not in replaced) for limits in matched]
