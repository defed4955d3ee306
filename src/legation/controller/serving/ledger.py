"""Which Envoy runs which resource: the sequence of published snapshots, and `Programmed` from it.

Snapshot versions are content digests, so they say nothing about order; the `Ledger` numbers every
snapshot it is told about (the gateway's, and bisection probes for one node) and remembers, per
resource, the first publication built while it had its current content. A publication contains a
resource's current content when it is that one or later, and did not withhold the resource.

Each connected Envoy reports, per xDS type, the snapshot version whose content of that type it
runs (`TypeStatus.applied_version`). A resource is programmed on an Envoy when every type that
carries it names a publication containing it:

- Mapping: its route configuration(s) and its cluster(s) — RouteConfiguration, Cluster;
- Host: its filter chain and certificate, and the insecure action of its hostname — Listener,
  Secret, RouteConfiguration;
- AuthService: its cluster and the ext_authz filter in the listeners — Cluster, Listener.

JWTPolicies and Secrets get no `Programmed`: they reach the authz service through its feed (or
Envoy as part of a Host, whose `Programmed` covers its certificate), not as Envoy resources of
their own. Pure: no clock (times are given), no I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from legation.api.v1alpha1 import ResourceId
from legation.controller.compiler.ir import Programmed
from legation.controller.xds.protocol import NodeStatus
from legation.core.envoy_types import CLUSTER, LISTENER, ROUTE, SECRET

__all__ = ["CARRIED_BY", "First", "Ledger", "Publication", "Quarantine", "evaluate"]

CARRIED_BY: dict[str, tuple[str, ...]] = {
    "Mapping": (ROUTE, CLUSTER),
    "Host": (LISTENER, SECRET, ROUTE),
    "AuthService": (CLUSTER, LISTENER),
}
"""The xDS types that carry each kind's content to Envoy."""


@dataclass(frozen=True)
class Publication:
    """One snapshot handed to the xDS server."""

    seq: int
    version: str
    at: float
    """Unix time the pipeline run that built it finished."""
    withheld: frozenset[ResourceId]
    node: str | None = None
    """None: the gateway's snapshot; else a bisection probe for that node only."""


@dataclass(frozen=True)
class First:
    """The first publication built while a resource had its current content."""

    digest: str
    seq: int
    at: float


@dataclass(frozen=True)
class Quarantine:
    """A resource content that Envoy rejected: withheld from Envoy until the content changes."""

    digest: str
    node: str
    """The Envoy whose NACK was attributed to it."""
    error: str
    """Envoy's message."""
    at: float


class Ledger:
    """Publications in order, and each resource's first publication (see the module)."""

    def __init__(self, *, keep: int = 512) -> None:
        self._by_version: OrderedDict[str, Publication] = OrderedDict()
        self._first: dict[ResourceId, First] = {}
        self._seq = 0
        self._keep = keep

    def publish(
        self,
        version: str,
        *,
        contents: Mapping[ResourceId, str],
        withheld: frozenset[ResourceId],
        at: float,
        node: str | None = None,
    ) -> Publication:
        """Record a snapshot built from resources with these `contents` (digests). A version seen
        before keeps its number: the same version is the same content."""
        pub = self._by_version.get(version)
        if pub is None:
            self._seq += 1
            pub = self._by_version[version] = Publication(self._seq, version, at, withheld, node)
            while len(self._by_version) > self._keep:
                self._by_version.popitem(last=False)
        for rid, digest in contents.items():
            first = self._first.get(rid)
            if first is None or first.digest != digest:
                self._first[rid] = First(digest, pub.seq, at)
        if node is None:  # the gateway's own resources: forget the ones gone
            for rid in [r for r in self._first if r not in contents]:
                del self._first[rid]
        return pub

    def lookup(self, version: str) -> Publication | None:
        return self._by_version.get(version)

    def first(self, rid: ResourceId) -> First | None:
        return self._first.get(rid)

    def contains(self, pub: Publication, rid: ResourceId) -> bool:
        first = self._first.get(rid)
        return first is not None and pub.seq >= first.seq and rid not in pub.withheld


@dataclass(frozen=True)
class _Applied:
    """What one node runs of one type: the publication, and since when."""

    pub: Publication | None
    at: float


def _applied(ledger: Ledger, nodes: Sequence[NodeStatus]) -> list[dict[str, _Applied]]:
    """Per node, per type it subscribes to: the publication it runs (None when unknown)."""
    return [
        {
            type_url: _Applied(ledger.lookup(t.applied_version), t.applied_at or 0.0)
            for type_url, t in node.types.items()
        }
        for node in nodes
    ]


def evaluate(
    ledger: Ledger,
    resources: Iterable[ResourceId],
    nodes: Sequence[NodeStatus],
    *,
    quarantined: Mapping[ResourceId, Quarantine],
    withheld: frozenset[ResourceId],
    memo: dict[ResourceId, tuple[str, Programmed]] | None = None,
) -> dict[ResourceId, Programmed]:
    """`Programmed` of each accepted resource that reaches Envoy, given the connected `nodes`.
    The time in `seconds` is measured from the resource's first publication to the latest ACK
    among the nodes' types that carry it, when it first became programmed: `memo` keeps that
    verdict per content (and number of Envoys), so later ACKs of other changes do not rewrite it."""
    applied = _applied(ledger, nodes)
    memo = {} if memo is None else memo
    result: dict[ResourceId, Programmed] = {}
    for rid in resources:
        types = CARRIED_BY.get(rid.kind)
        if types is None:
            continue
        found = _one(ledger, rid, types, nodes, applied, quarantined, withheld)
        first = ledger.first(rid)
        if found.programmed and first is not None:
            kept = memo.get(rid)
            if kept is not None and kept[0] == first.digest and kept[1].envoys == found.envoys:
                found = kept[1]
            memo[rid] = (first.digest, found)
        result[rid] = found
    for rid in [r for r in memo if r not in result]:
        del memo[rid]
    return result


def _one(
    ledger: Ledger,
    rid: ResourceId,
    types: tuple[str, ...],
    nodes: Sequence[NodeStatus],
    applied: list[dict[str, _Applied]],
    quarantined: Mapping[ResourceId, Quarantine],
    withheld: frozenset[ResourceId],
) -> Programmed:
    envoys = len(nodes)
    held = quarantined.get(rid)
    if held is not None:
        return Programmed(False, "Nacked", f"Envoy {held.node} rejected it: {held.error}", envoys)
    if rid in withheld:
        reason = "left out of Envoy's configuration with a resource Envoy rejected (same route)"
        return Programmed(False, "Nacked", reason, envoys)
    if not nodes:
        return Programmed(False, "NoEnvoy", "no Envoy of this gateway is connected", 0)
    first = ledger.first(rid)
    done, latest = 0, 0.0
    for by_type in applied:
        times = [a.at for t in types if (a := by_type.get(t)) is not None and _has(ledger, a, rid)]
        if len(times) == len(types):
            done += 1
            latest = max(latest, *times)
    if done < envoys or first is None:
        waiting = ", ".join(
            n.node_id for n, t in zip(nodes, applied, strict=True) if not _all(ledger, t, types, rid)
        )
        message = f"ACKed by {done} of {envoys} Envoys; waiting for {waiting}"
        return Programmed(False, "Pending", message, envoys)
    seconds = max(0.0, latest - first.at)
    return Programmed(True, "Programmed", _done(envoys, seconds), envoys, seconds)


def _has(ledger: Ledger, applied: _Applied, rid: ResourceId) -> bool:
    return applied.pub is not None and ledger.contains(applied.pub, rid)


def _all(ledger: Ledger, by_type: dict[str, _Applied], types: tuple[str, ...], rid: ResourceId) -> bool:
    return all((a := by_type.get(t)) is not None and _has(ledger, a, rid) for t in types)


def _done(envoys: int, seconds: float) -> str:
    plural = "Envoy" if envoys == 1 else "Envoys"
    return f"ACKed by {envoys} {plural}, {seconds:.3f} s after the change"
