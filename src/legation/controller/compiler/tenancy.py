"""Who may route what: the platform's kinds, hostname ownership and delegation, and conflicts
between namespaces over the URL space (the overlap geometry is in `ownership`).

Rules (README, "Multi-team safety"):

1. Gateway-wide kinds belong to the platform: AuthServices, and Hosts for `*`, are accepted only
   from `Tenancy.platform_namespaces`.
2. A Host's namespace owns its hostname. Hosts of different namespaces whose hostnames overlap
   (one covers the other; `*` aside) conflict, and a Host conflicts with the Mappings of other
   namespaces that name a hostname it overlaps (`*` Mappings aside) unless it delegates their
   paths to them: the older one wins.
3. A Mapping whose hostname lies under a Host of another namespace (or covers one) is accepted
   only inside a prefix that Host delegates to the Mapping's namespace. A hostname no specific
   Host covers lies under the `*` Host, if there is one. `*` Mappings without a `*` Host are the
   shared space: first come, first served.
4. Any other overlap between Mappings of different namespaces (`ownership.paths_overlap`,
   hostnames as Envoy selects virtual hosts, whatever their header, query or method conditions)
   is a conflict: the older one wins, the newer is rejected naming the owner. A Host's owner and
   the namespaces it delegates to never conflict with each other there (the owner chose).

"Older" means strictly older by a trusted age (`Entry.stamp`): the API server's creation time, or
when a directory source first read the resource; never a manifest's own timestamp. Equal ages
decide nothing: then every party of the conflict is rejected, so a conflict is always loud and
never settled by a name that sorts first.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from legation.api.v1alpha1 import AuthService, Host, MappingSpec, Resource, ResourceId
from legation.controller.compiler.entries import AnyEntry, Entry, age, creation_stamp
from legation.controller.compiler.ownership import (
    Claim,
    ClaimIndex,
    PathSpace,
    covers,
    hostnames_overlap,
    normalize_prefix,
    path_within,
)
from legation.controller.compiler.routes import Accepted, match_path

__all__ = ["DEFAULT_PLATFORM_NAMESPACES", "Tenancy", "admit_mappings", "platform_only", "settle_hosts"]

DEFAULT_PLATFORM_NAMESPACES = frozenset({"legation-system"})


@dataclass(frozen=True, kw_only=True)
class Tenancy:
    """What the compiler is told about the gateway's tenants."""

    platform_namespaces: frozenset[str] = field(default=DEFAULT_PLATFORM_NAMESPACES)
    """Namespaces that may create the gateway-wide kinds (AuthService, the `*` Host)."""
    trusted_timestamps: bool = False
    """Whether creation timestamps were set by the API server (Kubernetes source) rather than
    written by a manifest's author (directory source): only trusted ones settle conflicts."""
    ages: Mapping[ResourceId, float] | None = None
    """Otherwise, the source's own record of when it first saw each resource (a directory source
    stamps what it reads, as an API server does: `SourceSnapshot.ages`)."""

    def stamp(self, rid: ResourceId, resource: Resource) -> float | None:
        """The age of a resource that may settle a conflict between namespaces, if any."""
        if self.trusted_timestamps:
            return creation_stamp(resource)
        return None if self.ages is None else self.ages.get(rid)

    def describe_platform(self) -> str:
        return ", ".join(sorted(self.platform_namespaces)) or "none"


def older(a: AnyEntry, b: AnyEntry) -> bool | None:
    """True when `a` is strictly older than `b`, False when `b` is, None when neither can be shown."""
    if a.stamp == b.stamp:
        return None
    if a.stamp is None or b.stamp is None:
        return a.stamp is not None  # with trusted times, none at all counts as newest
    return a.stamp < b.stamp


def trusted_age(entry: AnyEntry) -> tuple[bool, float, tuple[int, float, str, str]]:
    """Sort key: by trusted age (none = newest), then as within a namespace (`entries.age`)."""
    return (entry.stamp is None, entry.stamp or 0.0, age(entry))


def _tie(tenancy: Tenancy) -> str:
    if tenancy.trusted_timestamps:
        return "neither is older (same creation time), so neither is served"
    return (
        "neither was there first (read together; manifests' own creation times are not trusted), "
        "so neither is served: make them disjoint, or delegate"
    )


# --- rule 1: the platform's kinds --------------------------------------------------------------


def platform_only(entries: Iterable[Entry[AuthService]], tenancy: Tenancy) -> list[Entry[AuthService]]:
    """The AuthServices of platform namespaces; the others are rejected."""
    kept = []
    for entry in entries:
        if entry.id.namespace in tenancy.platform_namespaces:
            kept.append(entry)
        else:
            entry.reject(
                ("metadata", "namespace"),
                "an AuthService is gateway-wide: only the platform namespaces "
                f"({tenancy.describe_platform()}) may create one",
            )
    return kept


# --- rule 2: Hosts ------------------------------------------------------------------------------


def settle_hosts(entries: list[Entry[Host]], mappings: list[Accepted], tenancy: Tenancy) -> list[Entry[Host]]:
    """The Hosts that own their hostnames (`entries` already checked on their own)."""
    kept: list[Entry[Host]] = []
    for entry in sorted(entries, key=trusted_age):
        hostname = entry.resource.spec.hostname
        if not entry.ok:
            continue
        if hostname == "*" and entry.id.namespace not in tenancy.platform_namespaces:
            entry.reject(
                ("spec", "hostname"),
                "a Host for * is gateway-wide (the default certificate, every hostname's plain-HTTP "
                f"handling): only the platform namespaces ({tenancy.describe_platform()}) may create one",
            )
            continue
        for other in kept:
            _host_conflict(entry, other, tenancy)
        kept = [k for k in kept if k.ok]
        if entry.ok:
            kept.append(entry)
    for host in kept:
        if host.resource.spec.hostname != "*":
            _named_mappings(host, mappings, tenancy)
    return [k for k in kept if k.ok]


def _host_conflict(entry: Entry[Host], other: Entry[Host], tenancy: Tenancy) -> None:
    """`entry` (not older than `other`) against a kept Host."""
    mine, theirs = entry.resource.spec.hostname, other.resource.spec.hostname
    path = ("spec", "hostname")
    if entry.id.namespace == other.id.namespace:
        if mine == theirs:
            entry.reject(path, f"hostname {mine} is already served by {other.id}")
        return
    if (mine == "*") != (theirs == "*") or not hostnames_overlap(mine, theirs):
        return
    owned = f"hostname {theirs} is owned by {other.id.namespace} (Host {other.key})"
    if older(other, entry):
        entry.reject(path, f"{mine} overlaps {owned}")
    else:
        entry.reject(path, f"{mine} overlaps {owned}; {_tie(tenancy)}")
        other.reject(
            path,
            f"{theirs} overlaps hostname {mine} of {entry.id.namespace} (Host {entry.key}); {_tie(tenancy)}",
        )


def _named_mappings(host: Entry[Host], mappings: list[Accepted], tenancy: Tenancy) -> None:
    """A Host against the older Mappings of other namespaces that name a hostname it overlaps."""
    hostname = host.resource.spec.hostname
    for a in mappings:
        theirs = a.match.hostname
        if theirs == "*" or a.entry.id.namespace == host.id.namespace or not a.entry.ok:
            continue
        if not hostnames_overlap(theirs, hostname) or _grant(host, a) is not None:
            continue
        when = older(a.entry, host)
        if when is False:
            continue  # the Mapping is newer: admission refuses it
        routed = (
            f"hostname {hostname} overlaps {theirs}, routed by {a.entry.id.namespace} (Mapping {a.entry.key})"
        )
        if when:
            host.reject(("spec", "hostname"), f"{routed}, which is older")
            return
        host.reject(("spec", "hostname"), f"{routed}; {_tie(tenancy)}")
        a.entry.reject(
            match_path(a.mapping.spec),
            f"host {theirs} overlaps hostname {hostname} of {host.id.namespace} (Host {host.key}); "
            + _tie(tenancy),
        )


def _grant(host: Entry[Host], a: Accepted) -> str | None:
    """The prefix of `host` delegated to `a`'s namespace that holds `a`'s paths, if any."""
    for delegation in host.resource.spec.delegate:
        if delegation.namespace == a.entry.id.namespace:
            for prefix in delegation.prefixes:
                if path_within(_space(a), normalize_prefix(prefix)):
                    return prefix
    return None


# --- rules 3 and 4: Mappings -------------------------------------------------------------------


def admit_mappings(mappings: list[Accepted], hosts: list[Entry[Host]], tenancy: Tenancy) -> list[Accepted]:
    """The Mappings that may serve what they match; the others are rejected naming the owner."""
    grantors: dict[Accepted, frozenset[str]] = {}
    governing: dict[str, list[Entry[Host]]] = {}
    for a in mappings:
        if not a.entry.ok:
            continue
        hostname = a.match.hostname
        if hostname not in governing:
            governing[hostname] = _governing(hostname, hosts)
        granted = _admitted(a, governing[hostname])
        if granted is not None:
            grantors[a] = granted
    _settle(list(grantors), grantors, tenancy)
    return [a for a in grantors if a.entry.ok]


def _governing(hostname: str, hosts: list[Entry[Host]]) -> list[Entry[Host]]:
    """The Hosts whose owners decide who routes on `hostname`: every specific Host it overlaps,
    and the `*` Host when no specific Host covers it."""
    specific = [h for h in hosts if h.resource.spec.hostname != "*"]
    found = [h for h in specific if hostname != "*" and hostnames_overlap(h.resource.spec.hostname, hostname)]
    if not any(covers(h.resource.spec.hostname, hostname) for h in found):
        found += [h for h in hosts if h.resource.spec.hostname == "*"]
    return found


def _admitted(a: Accepted, hosts: list[Entry[Host]]) -> frozenset[str] | None:
    """The namespaces whose Hosts delegate `a` its paths, or None (rejected) if one does not."""
    grantors = set()
    for host in hosts:
        owner = host.id.namespace
        if owner == a.entry.id.namespace:
            continue
        if _grant(host, a) is not None:
            grantors.add(owner)
            continue
        given = [
            p for d in host.resource.spec.delegate if d.namespace == a.entry.id.namespace for p in d.prefixes
        ]
        reason = f"{_describe(a)} on host {a.match.hostname} is owned by {owner} (Host {host.key})"
        if given:
            reason += f", which delegates only {', '.join(given)} to {a.entry.id.namespace}"
        a.entry.reject(match_path(a.mapping.spec), reason)
        return None
    return frozenset(grantors)


def _settle(admitted: list[Accepted], grantors: dict[Accepted, frozenset[str]], tenancy: Tenancy) -> None:
    """Overlaps between namespaces: the strictly older Mapping wins; equals all lose."""
    index: ClaimIndex[Accepted] = ClaimIndex()
    keys = {a: trusted_age(a.entry) for a in admitted}  # once each: it parses a timestamp
    ordered = sorted(admitted, key=keys.__getitem__)
    for _, group in itertools.groupby(ordered, key=lambda a: keys[a][:2]):
        fresh = []
        for a in group:
            owner = _contested(index, a, grantors)
            if owner is None:
                fresh.append(a)
                continue
            a.entry.reject(
                match_path(a.mapping.spec),
                f"{_describe(owner)} on host {owner.match.hostname} is owned by {owner.entry.id.namespace} "
                f"(Mapping {owner.entry.key})",
            )
        local: ClaimIndex[Accepted] = ClaimIndex()
        for a in fresh:
            local.add(Claim(a.match.hostname, _space(a), a))
        for a in fresh:
            rival = _contested(local, a, grantors)
            if rival is not None:
                a.entry.reject(
                    match_path(a.mapping.spec),
                    f"{_describe(a)} on host {a.match.hostname} overlaps {_describe(rival)} on host "
                    f"{rival.match.hostname} of {rival.entry.id.namespace} (Mapping {rival.entry.key}); "
                    + _tie(tenancy),
                )
        for a in fresh:
            if a.entry.ok:
                index.add(Claim(a.match.hostname, _space(a), a))


def _contested(
    index: ClaimIndex[Accepted], a: Accepted, grantors: dict[Accepted, frozenset[str]]
) -> Accepted | None:
    """The first claim in `index` of another namespace that shares requests with `a`, unless one
    of the two was delegated its paths by the other's namespace."""
    mine = a.entry.id.namespace
    for claim in index.overlapping(a.match.hostname, _space(a)):
        other = claim.owner
        theirs = other.entry.id.namespace
        if theirs != mine and theirs not in grantors[a] and mine not in grantors[other]:
            return other
    return None


def _space(a: Accepted) -> PathSpace:
    return a.space


def _describe(a: Accepted) -> str:
    spec: MappingSpec = a.mapping.spec
    if spec.regex is not None:
        return f"regex {spec.regex}"
    return f"path {spec.prefix if spec.prefix is not None else spec.path}"
