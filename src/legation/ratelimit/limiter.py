"""Rate limit decisions: descriptors in, statuses out. Knows nothing of gRPC or of Redis.

Per request: look up each descriptor's limits in the current RuleSet, turn them into counter
operations (one per distinct counter key, hits summed), let the backend check-and-count them
atomically in one call, and read every descriptor's status off the outcome.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Protocol

from legation.core.memo import Memo
from legation.ratelimit.backends import BackendError, CounterBackend, Outcome
from legation.ratelimit.rules import Limit, Match, RuleSet, make_limit

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
# Descriptors whose limits and counter keys are remembered (cleared whole when full).
PLAN_CACHE_SIZE = 50_000
# A check's mode at or above this is a quota check of descriptor (mode - QUOTA); see backends.
QUOTA = 2

_UNIT_SECONDS = {1: 1, 2: 60, 3: 3600, 4: 86400, 5: 30 * 86400, 6: 365 * 86400, 7: 7 * 86400}


class LimiterUnavailable(Exception):
    """No decision could be made in time and the failure mode says to report it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DescriptorRequest(NamedTuple):
    entries: tuple[tuple[str, str], ...]
    addend: int | None = None  # per-descriptor hits_addend; None = the request's
    override: tuple[int, int] | None = None  # (requests_per_unit, unit) sent by Envoy


class DescriptorStatus(NamedTuple):
    over: bool
    limit: Limit | None = None  # the limit reported back (the strictest), None = no limit
    remaining: int = 0
    reset_ms: int = 0
    metadata: dict[str, Any] | None = None  # the matched descriptor's `metadata:`


class _Plan(NamedTuple):
    """One descriptor's limits with their counter keys, and its metric label and metadata."""

    counters: tuple[tuple[Limit, str], ...]
    stat_key: str | None = None
    metadata: dict[str, Any] | None = None


_NO_PLAN = _Plan(())


class Decision(NamedTuple):
    over: bool
    statuses: Sequence[DescriptorStatus]


class Observer(Protocol):
    """Told about every decided limit (metrics); must be cheap."""

    def decided(self, domain: str, limit: Limit, code: str, stat_key: str | None) -> None:
        """`stat_key`: the reference's stats key where it names runtime values, else None."""
        ...

    def backend(self, seconds: float, error: str | None) -> None: ...


class _NullObserver:
    def decided(self, domain: str, limit: Limit, code: str, stat_key: str | None) -> None:
        return None

    def backend(self, seconds: float, error: str | None) -> None:
        return None


_OK = DescriptorStatus(over=False)


def counter_key(
    domain: str,
    limit: Limit,
    entries: Sequence[tuple[str, str]],
    shared: Sequence[str | None] = (),
    *,
    colocate: bool = False,
) -> str:
    """`lg:{domain:<entries>}:s60000`: the hash tag is the descriptor, so in a Redis Cluster
    different users, addresses and routes land on different slots while one descriptor's limits
    (one per window) stay together. `colocate` (quota mode) tags with the domain alone,
    `lg:{domain}:s60000:<entries>`: quota descriptors are decided together, so they share a slot.

    An entry whose value shares its wildcard's counter (`shared[i]`, share_threshold) is written
    as `*` and the pattern, so it never collides with a literal value."""
    if shared:
        body = "".join(
            f"{len(k)}.{k}{len(v)}.{v}" if p is None else f"{len(k)}.{k}*{len(p)}.{p}"
            for (k, v), p in zip(entries, shared, strict=True)
        )
    else:
        body = "".join(f"{len(k)}.{k}{len(v)}.{v}" for k, v in entries)
    if len(body) > MAX_KEY_BODY or "}" in body:  # a `}` would end the hash tag early
        body = "#" + hashlib.blake2b(body.encode(), digest_size=16).hexdigest()
    if len(domain) > 64 or "{" in domain or "}" in domain or ":" in domain:
        domain = "#" + hashlib.blake2b(domain.encode(), digest_size=8).hexdigest()
    if colocate:
        return f"lg:{{{domain}}}:{limit.key_tag}:{body}"
    return f"lg:{{{domain}:{body}}}:{limit.key_tag}"


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
        quota_mode: bool = False,
    ) -> None:
        self.rules = rules
        self._backend = backend
        self._timeout = timeout
        self._failure_mode = failure_mode
        self._max_inflight = max_inflight
        self._inflight = 0
        self._observer: Observer = observer or _NullObserver()
        self._quota_mode = quota_mode  # every limit in quota mode (the reference's QUOTA_MODE)
        self._override_limits: dict[tuple[int, int], Limit] = {}
        self._plans: Memo[tuple[str, tuple[tuple[str, str], ...]], _Plan] = Memo(PLAN_CACHE_SIZE)
        self._plans_for: RuleSet | None = None

    async def should_rate_limit(
        self, domain: str, descriptors: Sequence[DescriptorRequest], hits_addend: int = 0
    ) -> Decision:
        rules = self.rules  # one RuleSet for the whole request, even if a reload lands meanwhile
        if self._plans_for is not rules:
            self._plans.clear()
            self._plans_for = rules
        plans = [self._plan(rules, domain, d) for d in descriptors]
        if rules.has_replaces:
            plans = _apply_replaces(plans)
        default_addend = min(hits_addend or 1, MAX_ADDEND)
        keys: list[str] = []
        params: list[int] = []
        checks: list[int] = []
        index: dict[str, int] = {}
        placed_all: list[list[tuple[Limit, int]]] = []
        for n, (d, plan) in enumerate(zip(descriptors, plans, strict=True)):
            addend = default_addend if d.addend is None else min(d.addend, MAX_ADDEND)
            placed: list[tuple[Limit, int]] = []
            for limit, key in plan.counters:
                if limit.unlimited:
                    continue
                i = index.get(key)
                if i is None:
                    i = index[key] = len(keys)
                    keys.append(key)
                    params += (limit.bucket_ms, limit.span, addend)
                else:  # the same counter twice in one request: its hits add up
                    params[3 * i + 2] = min(params[3 * i + 2] + addend, MAX_ADDEND)
                checks += (i, limit.requests, self._enforce(limit, n))
                placed.append((limit, i))
            placed_all.append(placed)
        if not keys:
            return Decision(False, [_OK] * len(descriptors))
        try:
            outcome = await self._apply(keys, params, checks)
        except LimiterUnavailable:
            if self._failure_mode == "unavailable":
                raise
            return self._failed(placed_all)
        return self._decide(domain, plans, placed_all, params, outcome)

    def _enforce(self, limit: Limit, descriptor: int) -> int:
        """The check's mode for the backend: 0 shadow, 1 enforced, 2 + n quota (descriptor n)."""
        if limit.shadow:
            return 0
        if limit.quota or self._quota_mode:
            return QUOTA + descriptor
        return 1

    def _plan(self, rules: RuleSet, domain: str, d: DescriptorRequest) -> _Plan:
        """The limits for a descriptor with their counter keys, cached per RuleSet: the same
        descriptors recur (the same clients, users, routes), so lookup and key building are
        done once, not per request."""
        if d.override is not None:
            if domain not in rules.domains:
                return _NO_PLAN
            limit = self._override(d.override)
            return _Plan(((limit, counter_key(domain, limit, d.entries)),))
        cache_key = (domain, d.entries)
        plan = self._plans.get(cache_key)
        if plan is None:
            found = rules.match(domain, d.entries)
            plan = self._plans.put(
                cache_key, _plan_for(domain, d.entries, found, quota_mode=self._quota_mode)
            )
        return plan

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

    async def _apply(self, keys: list[str], params: list[int], checks: list[int]) -> Outcome:
        if self._inflight >= self._max_inflight:
            self._observer.backend(0.0, "overloaded")
            raise LimiterUnavailable("overloaded", "too many rate limit decisions waiting on the backend")
        start = time.perf_counter()
        self._inflight += 1
        try:
            outcome = await self._backend.apply(keys, params, checks, timeout=self._timeout)
        except BackendError as exc:
            self._observer.backend(time.perf_counter() - start, exc.reason)
            raise LimiterUnavailable(exc.reason, str(exc)) from exc
        finally:
            self._inflight -= 1
        self._observer.backend(time.perf_counter() - start, None)
        return outcome

    def _failed(self, placed_all: list[list[tuple[Limit, int]]]) -> Decision:
        over = self._failure_mode == "deny"
        statuses = [DescriptorStatus(over, placed[0][0]) if placed else _OK for placed in placed_all]
        return Decision(over and any(placed_all), statuses)

    def _decide(
        self,
        domain: str,
        plans: Sequence[_Plan],
        placed_all: list[list[tuple[Limit, int]]],
        params: list[int],
        outcome: Outcome,
    ) -> Decision:
        now, admitted, used_all, oldest_all = outcome
        decided = self._observer.decided
        statuses: list[DescriptorStatus] = []
        for plan, placed in zip(plans, placed_all, strict=True):
            best: DescriptorStatus | None = None
            for limit, i in placed:
                bucket_ms, span, addend = params[3 * i], params[3 * i + 1], params[3 * i + 2]
                used = used_all[i]
                over = used + (addend or 1) > limit.requests
                if admitted:
                    used += addend
                decided(
                    domain,
                    limit,
                    ("shadow_over_limit" if limit.shadow else "over_limit") if over else "ok",
                    plan.stat_key,
                )
                current = now // bucket_ms
                oldest = oldest_all[i]
                if oldest < 0 or (admitted and addend > 0 and current < oldest):
                    oldest = current
                status = DescriptorStatus(
                    over and not limit.shadow,
                    limit,
                    max(0, limit.requests - used),
                    max(0, (oldest + span + 1) * bucket_ms - now),  # when quota next comes back
                    plan.metadata,
                )
                if best is None or _stricter(status, best):
                    best = status
            statuses.append(best or _OK)
        return Decision(not admitted, statuses)


def _stricter(a: DescriptorStatus, b: DescriptorStatus) -> bool:
    if a.over != b.over:
        return a.over
    if a.remaining != b.remaining:
        return a.remaining < b.remaining
    return a.reset_ms > b.reset_ms


def _plan_for(
    domain: str, entries: tuple[tuple[str, str], ...], match: Match | None, *, quota_mode: bool
) -> _Plan:
    if match is None:
        return _NO_PLAN
    counters = tuple(
        (limit, counter_key(domain, limit, entries, match.shared, colocate=quota_mode or limit.quota))
        for limit in match.limits
    )
    return _Plan(counters, match.stat_key, match.metadata)


def _apply_replaces(plans: list[_Plan]) -> list[_Plan]:
    replaced = {name for plan in plans for limit, _ in plan.counters for name in limit.replaces}
    if not replaced:
        return plans
    return [
        plan._replace(counters=tuple(p for p in plan.counters if not p[0].name or p[0].name not in replaced))
        for plan in plans
    ]
