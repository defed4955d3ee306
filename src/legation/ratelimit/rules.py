"""The compiled descriptor tree and its lookup: which limits apply to a request descriptor.

Matching follows envoyproxy/ratelimit: walk the request's entries down the tree, at each level
preferring an exact `key`+`value` node, then a wildcard value, then a key-only node; a limit
applies only when the walk consumes every entry and ends on a node that has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["BUCKETS_PER_WINDOW", "Limit", "Match", "Node", "RuleSet", "Wildcard", "make_limit"]

# A sliding window of W is counted in this many buckets of W/20; see README "Sliding windows".
BUCKETS_PER_WINDOW = 20


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit, with everything the hot path needs precomputed."""

    requests: int
    unit: int  # RateLimitResponse.RateLimit.Unit value, reported back to Envoy
    window_ms: int
    bucket_ms: int
    span: int  # buckets before the current one that still count (0 for fixed windows)
    rule: str  # metric label: the limit's name, else its descriptor path
    shadow: bool = False
    unlimited: bool = False
    name: str = ""
    replaces: frozenset[str] = frozenset()
    detailed: bool = False
    quota: bool = False  # quota_mode: the request is denied only when every quota descriptor is over
    path: str = ""  # the reference's stats key for this limit (domain.key_value.key)
    key_tag: str = ""  # algorithm and window, part of every counter key


def make_limit(
    *,
    requests: int,
    unit: int,
    window_seconds: int,
    algorithm: Literal["sliding_window", "fixed_window"],
    rule: str,
    shadow: bool = False,
    unlimited: bool = False,
    name: str = "",
    replaces: frozenset[str] = frozenset(),
    detailed: bool = False,
    quota: bool = False,
    path: str = "",
) -> Limit:
    window_ms = window_seconds * 1000
    if algorithm == "sliding_window":
        bucket_ms, span, tag = window_ms // BUCKETS_PER_WINDOW, BUCKETS_PER_WINDOW, "s"
    else:
        bucket_ms, span, tag = window_ms, 0, "f"
    return Limit(
        requests=requests,
        unit=unit,
        window_ms=window_ms,
        bucket_ms=bucket_ms,
        span=span,
        rule=rule,
        shadow=shadow,
        unlimited=unlimited,
        name=name,
        replaces=replaces,
        detailed=detailed,
        quota=quota,
        path=path,
        key_tag=f"{tag}{window_ms}",
    )


class Wildcard:
    """A value with `*` wildcards, matched in linear time without backtracking.

    Each `*` matches any run of characters (the empty one too), anywhere in the value. The value
    must start with the text before the first `*` and end with the text after the last; the parts
    in between are found left to right, each at its first occurrence after the previous one, which
    is enough: taking the earliest occurrence never rules out a match that a later one allows. So
    matching costs one pass over the value per part, whatever the value: a hostile value cannot
    make it slow (a backtracking regex took seconds on a 3 KB path).
    """

    __slots__ = ("_fixed", "_head", "_middle", "_tail", "pattern")

    def __init__(self, pattern: str) -> None:
        parts = pattern.split("*")
        self.pattern = pattern
        self._head, self._tail, self._middle = parts[0], parts[-1], tuple(p for p in parts[1:-1] if p)
        self._fixed = sum(len(p) for p in parts)

    def matches(self, value: str) -> bool:
        if len(value) < self._fixed or not value.startswith(self._head) or not value.endswith(self._tail):
            return False
        pos, end = len(self._head), len(value) - len(self._tail)
        for part in self._middle:
            found = value.find(part, pos, end)
            if found < 0:
                return False
            pos = found + len(part)
        return True


@dataclass(slots=True)
class Node:
    """One level of the tree. `path` is the reference's stats key (domain.key_value.key)."""

    path: str
    limits: tuple[Limit, ...] = ()
    exact: dict[tuple[str, str], Node] = field(default_factory=dict)
    wildcards: list[tuple[str, Wildcard, Node]] = field(default_factory=list)
    by_key: dict[str, Node] = field(default_factory=dict)
    share: bool = False  # share_threshold: every value matching this wildcard shares one counter
    value_to_metric: bool = False
    metadata: dict[str, Any] | None = None

    def child(self, key: str, value: str) -> tuple[Node, str | None, bool] | None:
        """The node for one entry: (node, wildcard pattern it matched or None, matched a value)."""
        found = self.exact.get((key, value))
        if found is not None:
            return found, None, True
        for wkey, wildcard, node in self.wildcards:
            if wkey == key and wildcard.matches(value):
                return node, wildcard.pattern, True
        found = self.by_key.get(key)
        return (found, None, False) if found is not None else None


@dataclass(frozen=True, slots=True)
class Match:
    """What applies to one request descriptor.

    `shared[i]` is the wildcard pattern entry i counts under (share_threshold), else None;
    `stat_key` is the reference's stats key when it names runtime values (detailed_metric,
    value_to_metric), else None (the limit's static `rule` names it); `metadata` is the matched
    descriptor's `metadata:`.
    """

    limits: tuple[Limit, ...]
    shared: tuple[str | None, ...] = ()
    stat_key: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class RuleSet:
    """Every domain's tree. Immutable once built: a reload swaps the whole RuleSet."""

    domains: dict[str, Node]
    has_replaces: bool = False

    def lookup(self, domain: str, entries: Sequence[tuple[str, str]]) -> tuple[Limit, ...] | None:
        found = self.match(domain, entries)
        return found.limits if found is not None else None

    def match(self, domain: str, entries: Sequence[tuple[str, str]]) -> Match | None:
        """Walk the entries down the domain's tree, as the reference's GetLimit does."""
        node = self.domains.get(domain)
        if node is None or not entries:
            return None
        shared: list[str | None] = []
        metric: list[str] = [domain]
        for key, value in entries:
            found = node.child(key, value)
            if found is None:
                return None
            node, pattern, by_value = found
            share = pattern if pattern is not None and node.share else None
            shared.append(share)
            metric.append(
                _metric_part(key, value, node=node, pattern=pattern, share=share, by_value=by_value)
            )
        if not node.limits:
            return None
        return Match(
            limits=node.limits,
            shared=tuple(shared) if any(s is not None for s in shared) else (),
            stat_key=_stat_key(domain, entries, node=node, shared=shared, metric=metric),
            metadata=node.metadata,
        )


def _metric_part(
    key: str, value: str, *, node: Node, pattern: str | None, share: str | None, by_value: bool
) -> str:
    """One level of the value_to_metric stats key: the shared pattern, else the runtime value
    where value_to_metric asks for it, else what the config names (its value or pattern)."""
    if share is not None:
        shown = share
    elif pattern is not None:
        shown = value if node.value_to_metric else pattern
    elif by_value or node.value_to_metric:
        shown = value
    else:
        shown = ""
    return f"{key}_{shown}" if shown else key


def _stat_key(
    domain: str,
    entries: Sequence[tuple[str, str]],
    *,
    node: Node,
    shared: list[str | None],
    metric: list[str],
) -> str | None:
    if any(limit.detailed for limit in node.limits):
        parts = [domain]
        for (key, value), share in zip(entries, shared, strict=True):
            if share is not None:
                parts.append(f"{key}_{share}")
            elif any(shared):
                parts.append(f"{key}_{value}" if value else key)
            else:
                parts.append(f"{key}_{value}")
        key_name = ".".join(parts)
    else:
        key_name = ".".join(metric)
    return None if key_name == node.path else key_name
