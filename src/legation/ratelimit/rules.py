"""The compiled descriptor tree and its lookup: which limits apply to a request descriptor.

Matching follows envoyproxy/ratelimit: walk the request's entries down the tree, at each level
preferring an exact `key`+`value` node, then a wildcard value, then a key-only node; a limit
applies only when the walk consumes every entry and ends on a node that has one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["BUCKETS_PER_WINDOW", "Limit", "Node", "RuleSet", "make_limit"]

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
        key_tag=f"{tag}{window_ms}",
    )


@dataclass(slots=True)
class Node:
    """One level of the tree. `path` is the reference's stats key (domain.key_value.key)."""

    path: str
    limits: tuple[Limit, ...] = ()
    exact: dict[tuple[str, str], Node] = field(default_factory=dict)
    wildcards: list[tuple[str, re.Pattern[str], Node]] = field(default_factory=list)
    by_key: dict[str, Node] = field(default_factory=dict)

    def child(self, key: str, value: str) -> Node | None:
        found = self.exact.get((key, value))
        if found is not None:
            return found
        for wkey, pattern, node in self.wildcards:
            if wkey == key and pattern.fullmatch(value):
                return node
        return self.by_key.get(key)


def wildcard_pattern(value: str) -> re.Pattern[str]:
    """`*` matches any run of characters, anywhere in the value; nothing else is special."""
    return re.compile(".*".join(re.escape(part) for part in value.split("*")), re.DOTALL)


@dataclass(frozen=True)
class RuleSet:
    """Every domain's tree. Immutable once built: a reload swaps the whole RuleSet."""

    domains: dict[str, Node]
    has_replaces: bool = False

    def lookup(self, domain: str, entries: Sequence[tuple[str, str]]) -> tuple[Limit, ...] | None:
        node = self.domains.get(domain)
        if node is None or not entries:
            return None
        for key, value in entries:
            node = node.child(key, value)
            if node is None:
                return None
        return node.limits or None
