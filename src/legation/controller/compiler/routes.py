"""Mappings → routes: each Mapping's own checks and match, Mappings with an equal match merged
into one route (canaries and their weights), and the order Envoy tries routes in."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from legation.api.v1alpha1 import (
    CircuitBreakers,
    Mapping,
    MappingSpec,
    ResourceId,
)
from legation.api.v1alpha1.fields import Upstream
from legation.api.v1alpha1.ratelimit_annotation import (
    ANNOTATION,
    RateLimitAnnotationError,
    RateLimitRule,
)
from legation.controller.compiler.clusters import upstream_cluster
from legation.controller.compiler.entries import AnyEntry, Entry, age
from legation.controller.compiler.ir import (
    Cluster,
    Destination,
    Route,
    RouteMatch,
)
from legation.controller.compiler.ownership import PathSpace, normalize_prefix, path_space
from legation.controller.compiler.policies import (
    policy_of,
)
from legation.controller.compiler.ratelimits import rate_limits
from legation.core.errors import FieldPath

__all__ = [
    "ROUTE_FIELDS",
    "Accepted",
    "build_route",
    "check_mapping",
    "compile_routes",
    "match_path",
    "route_match",
    "route_order",
]


ROUTE_FIELDS = (
    "rewrite",
    "timeout",
    "retries",
    "cors",
    "allow_upgrade",
    "allow_method_override",
    "auth",
    "add_request_headers",
    "remove_request_headers",
    "add_response_headers",
    "remove_response_headers",
)
"""MappingSpec fields that belong to the route (shared by its canaries), not to a destination."""


@dataclass(frozen=True, eq=False)
class Accepted:
    """A Mapping that passed its own checks, with what the checks resolved."""

    entry: Entry[Mapping]
    mapping: Mapping
    match: RouteMatch
    policy: str | None
    rules: tuple[RateLimitRule, ...]
    cluster: Cluster

    @functools.cached_property
    def space(self) -> PathSpace:
        """The paths it can serve, for the ownership checks."""
        return path_space(self.match.kind, self.match.value)


def check_mapping(
    entry: Entry[Mapping],
    current: dict[ResourceId, AnyEntry],
    defaults: dict[str, AnyEntry],
    clusters: dict[tuple[Upstream, bool, CircuitBreakers | None], Cluster],
    *,
    upstream_of: Callable[[Entry[Mapping]], Upstream | None] = lambda e: e.resource.spec.upstream,
) -> Accepted | None:
    """`upstream_of` checks the Mapping's service (`compiler.upstreams`): the upstream to use,
    or None with the Mapping rejected."""
    mapping = entry.resource
    if not entry.ok:  # a duplicate
        return None
    rules: tuple[RateLimitRule, ...] = ()
    try:
        rules = mapping.rate_limits
    except RateLimitAnnotationError as exc:
        for problem in exc.problems:
            entry.reject(("metadata", "annotations", ANNOTATION), str(problem))
    policy = policy_of(entry, mapping, current, defaults)
    upstream = upstream_of(entry)
    if entry.problems or upstream is None:
        return None
    spec = mapping.spec
    # One Cluster per distinct upstream, shared by the Mappings that use it.
    cluster_key = (upstream, spec.http2, spec.circuit_breakers)
    cluster = clusters.get(cluster_key)
    if cluster is None:
        cluster = clusters[cluster_key] = upstream_cluster(*cluster_key)
    return Accepted(
        entry=entry, mapping=mapping, match=route_match(spec), policy=policy, rules=rules, cluster=cluster
    )


def route_match(spec: MappingSpec) -> RouteMatch:
    if spec.prefix is not None:
        # Whole segments: `/orders/` and `/orders` are the same match (path_separated_prefix).
        kind, value = "prefix", normalize_prefix(spec.prefix)
    elif spec.path is not None:
        kind, value = "path", spec.path
    else:
        kind, value = "regex", spec.regex or ""
    return RouteMatch(
        hostname=spec.hostname,
        kind=kind,  # type: ignore[arg-type]
        value=value,
        methods=tuple(sorted(spec.methods)),
        headers=tuple(sorted(spec.headers.items())),
        query_parameters=tuple(sorted(spec.query_parameters.items())),
    )


def match_path(spec: MappingSpec) -> FieldPath:
    return ("spec", "prefix" if spec.prefix is not None else "path" if spec.path is not None else "regex")


def compile_routes(accepted: list[Accepted]) -> list[tuple[Accepted, list[tuple[Accepted, int]]]]:
    """(primary, [(member, weight)…]) per route; rejects conflicting Mappings."""
    groups: dict[RouteMatch, list[Accepted]] = defaultdict(list)
    for a in accepted:
        groups[a.match].append(a)
    routes = []
    for match in sorted(groups, key=_match_key):
        members = groups[match]
        if len(members) > 1:
            members.sort(key=lambda a: age(a.entry))
        primary = members[0]
        kept: list[Accepted] = []
        for a in members:
            if a.entry.id.namespace != primary.entry.id.namespace:
                a.entry.reject(
                    match_path(a.mapping.spec),
                    f"Mapping {primary.entry.key} (namespace {primary.entry.id.namespace}) already "
                    f"claims this match ({match}); the oldest Mapping wins",
                )
            elif a is primary or _agrees(a, primary):
                kept.append(a)
        routes.append((primary, _weights(kept)))
    return routes


def _agrees(member: Accepted, primary: Accepted) -> bool:
    """Whether a canary leaves the route's settings to the primary; rejects it if not."""
    spec, main = member.mapping.spec, primary.mapping.spec
    for name in ROUTE_FIELDS:
        if name in spec.model_fields_set and getattr(spec, name) != getattr(main, name):
            alias = MappingSpec.model_fields[name].alias or name
            member.entry.reject(
                ("spec", alias),
                f"differs from Mapping {primary.entry.key}, which has the same match and sets the "
                f"route's {alias} (leave it unset in canaries, or make it equal)",
            )
            return False
    own = member.mapping.metadata.annotations.get(ANNOTATION)
    if own is not None and own != primary.mapping.metadata.annotations.get(ANNOTATION):
        member.entry.reject(
            ("metadata", "annotations", ANNOTATION),
            f"differs from Mapping {primary.entry.key}, which has the same match and sets the "
            "route's rate limits (leave it unset in canaries, or make it equal)",
        )
        return False
    return True


def _weights(members: list[Accepted]) -> list[tuple[Accepted, int]]:
    """Each member's share (members oldest first); rejects weights that overflow 100."""
    weights: dict[Accepted, int] = {}
    total = 0
    for a in members:
        weight = a.mapping.spec.weight
        if weight is None:
            continue
        if total + weight > 100:
            a.entry.reject(
                ("spec", "weight"),
                f"the weights of the Mappings with this match would add up to {total + weight} "
                f"(more than 100; older ones already take {total})",
            )
            continue
        weights[a] = weight
        total += weight
    rest = sorted(
        (a for a in members if a.mapping.spec.weight is None),
        key=lambda a: (a.entry.id.namespace, a.entry.id.name),
    )
    if rest:
        share, extra = divmod(100 - total, len(rest))
        for i, a in enumerate(rest):
            weights[a] = share + (1 if i < extra else 0)
    return [(a, weights[a]) for a in members if a in weights]


def build_route(primary: Accepted, members: list[tuple[Accepted, int]]) -> Route:
    spec = primary.mapping.spec
    route_id = primary.entry.key
    return Route(
        id=route_id,
        namespace=primary.entry.id.namespace,
        match=primary.match,
        destinations=tuple(
            sorted(
                (
                    Destination(mapping=a.entry.key, cluster=a.cluster.name, weight=weight)
                    for a, weight in members
                ),
                key=lambda d: d.mapping,
            )
        ),
        mappings=tuple(a.entry.key for a, _ in members),
        policy=primary.policy,
        rate_limits=rate_limits(route_id, primary.rules),
        rewrite=spec.rewrite,
        timeout=spec.timeout,
        retries=spec.retries,
        cors=spec.cors,
        allow_upgrade=tuple(spec.allow_upgrade),
        allow_method_override=spec.allow_method_override,
        add_request_headers=tuple(sorted(spec.add_request_headers.items())),
        remove_request_headers=tuple(spec.remove_request_headers),
        add_response_headers=tuple(sorted(spec.add_response_headers.items())),
        remove_response_headers=tuple(spec.remove_response_headers),
    )


def route_order(route: Route) -> tuple[Any, ...]:
    m = route.match
    rank = {"path": 0, "regex": 1, "prefix": 2}[m.kind]
    constraints = bool(m.methods) + len(m.headers) + len(m.query_parameters)
    wildcard = 2 if m.hostname == "*" else 1 if m.hostname.startswith("*.") else 0
    return (
        wildcard,
        m.hostname,
        rank,
        -len(m.value) if m.kind == "prefix" else 0,
        -constraints,
        _match_key(m),
        route.id,
    )


def _match_key(m: RouteMatch) -> tuple[Any, ...]:
    # The order of RouteMatch itself (dataclass order=True compares the fields as a tuple), without
    # its Python-level __lt__: 76k calls were 5% of a 10k-Mapping compile.
    return (m.hostname, m.kind, m.value, m.methods, m.headers, m.query_parameters)
