"""Incremental (delta) ADS: `DeltaAggregatedResources`, as a pure state machine like `AdsStream`.

`DeltaStream` takes DeltaDiscoveryRequests and snapshot changes and returns the
DeltaDiscoveryResponses to send; `XdsServer` runs it for Envoys bootstrapped with
`api_type: DELTA_GRPC` and shows it through the same `NodeStatus` records as a state-of-the-world
stream.

Protocol, per stream and type URL:

- Every resource carries a version: a digest of its serialized bytes, so identical content has
  the same version on every replica and across server restarts.
- The stream remembers which version of each resource Envoy holds: what it was sent, or, on its
  first request after a reconnect, what it reports in `initial_resource_versions`. A response
  carries only the resources whose version differs, plus `removed_resources` for those Envoy
  holds that are gone (or no longer subscribed to by a wildcard).
- Subscriptions: listeners and clusters are wildcard (a first request that names nothing, or
  `*`); the other types by `resource_names_subscribe` / `resource_names_unsubscribe`. A newly
  subscribed name that does not exist is answered in `removed_resources`, as the protocol asks.
- The first request of a type is always answered once a snapshot exists, even with nothing in
  it, so that Envoy's initialisation does not wait for a timeout.
- Each response is ACKed or NACKed (`error_detail`) by its own nonce; unknown nonces are ignored.
  A NACK is recorded (the same `Nack` as state of the world, reported through `on_nack`), the
  rejected resources are not sent again, and the type stays "nacked" until later responses have
  replaced or removed every resource of the rejected one (Envoy may have applied some of them, but
  it does not say which).
- A snapshot change pushes the types whose resources differ, in `ADS_ORDER`. Clusters the new
  snapshot drops while listeners or routes change too are removed last (make before break):
  changed clusters first, then listeners and routes, then a response that removes the clusters.
- `system_version_info` (and the status records) carry the snapshot version, with `KEPT_SUFFIX`
  on the interim cluster response, exactly as on a state-of-the-world stream.
"""

from __future__ import annotations

import hashlib
import logging
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from legation.controller.xds.protocol import KEPT_SUFFIX, StreamProtocol, TypeStatus
from legation.controller.xds.snapshot import ADS_ORDER, CLUSTER, LISTENER, ROUTE, WILDCARD_TYPES, Snapshot

__all__ = ["DeltaRecord", "DeltaStream", "resource_version"]

log = logging.getLogger("legation.xds")

WILDCARD = "*"

_Response = discovery_pb2.DeltaDiscoveryResponse
_Resource = discovery_pb2.Resource


@dataclass(frozen=True)
class DeltaRecord:
    """What one delta response carried (for diagnostics and tests: a delta is only as good as
    what it leaves out)."""

    stream: int
    node_id: str
    type_url: str
    nonce: str
    version: str
    resources: tuple[str, ...]
    removed: tuple[str, ...]


def resource_version(payload: bytes) -> str:
    """The version of one serialized resource: the same bytes always give the same version."""
    return hashlib.sha256(payload).hexdigest()[:16]


_versions_cache: weakref.WeakKeyDictionary[Snapshot, dict[str, dict[str, str]]] = weakref.WeakKeyDictionary()


def _versions(snapshot: Snapshot, type_url: str) -> dict[str, str]:
    """Resource versions of one type, computed once per snapshot however many Envoys it serves."""
    by_type = _versions_cache.setdefault(snapshot, {})
    found = by_type.get(type_url)
    if found is None:
        encoded = snapshot.encoded.get(type_url, {})
        found = by_type[type_url] = {name: resource_version(payload) for name, payload in encoded.items()}
    return found


@dataclass
class _Sent:
    version: str
    resources: dict[str, str | None]
    """Name -> resource version sent; None for a removal."""


@dataclass
class _DeltaType:
    status: TypeStatus
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    held: dict[str, str] = field(default_factory=dict)
    """What Envoy holds (as far as this stream knows): name -> resource version."""
    in_flight: dict[str, _Sent] = field(default_factory=dict)
    """Responses not yet ACKed or NACKed, by nonce."""
    rejected: dict[str, str | None] = field(default_factory=dict)
    """Resources (name -> version, None for a removal) of NACKed responses not replaced since."""
    answered: bool = False

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names


@dataclass
class _Change:
    type_url: str
    upserts: dict[str, tuple[bytes, str]]
    """Name -> (serialized resource, its version)."""
    removed: list[str]
    suffix: str = ""


class DeltaStream(StreamProtocol["_DeltaType"]):
    """The delta ADS protocol for one stream: requests and snapshot changes in, responses out."""

    def __init__(
        self, *, on_response: Callable[[DeltaRecord], None] = lambda record: None, **common: Any
    ) -> None:
        super().__init__(**common)
        self._on_response = on_response

    def on_request(self, request: Any) -> list[Any]:
        """Handle one DeltaDiscoveryRequest; return the responses to send, in order."""
        type_url = self._type_of(request)
        if type_url is None:
            return []
        state = self._types.get(type_url)
        first = state is None
        if state is None:
            state = self._track(_DeltaType(TypeStatus(type_url)))
            # An empty first request is the (legacy) wildcard; only these types are asked for whole.
            state.wildcard = type_url in WILDCARD_TYPES and not request.resource_names_subscribe
            state.held = dict(request.initial_resource_versions)
        if request.response_nonce:
            self._ack_or_nack(state, request)
        added = self._subscribe(state, request)
        responses: list[Any] = []
        if first or added is None or added:
            snapshot = self._lookup(self.status.node_id)
            if snapshot is not None:
                change = self._diff(state, snapshot, missing=added or ())
                if change.upserts or change.removed or not state.answered:
                    self._serving(snapshot)
                    responses.append(self._respond(state, snapshot.version, change))
        self._settle()
        return responses

    def _push(self, snapshot: Snapshot) -> list[Any]:
        plan: list[_Change] = []
        for type_url in ADS_ORDER:
            state = self._types.get(type_url)
            if state is not None:
                change = self._diff(state, snapshot, missing=())
                if change.upserts or change.removed or not state.answered:
                    plan.append(change)
                else:
                    settled = not state.in_flight and not state.rejected
                    self._unchanged(state.status, snapshot.version, settled=settled)
        return [
            self._respond(self._types[change.type_url], snapshot.version + change.suffix, change)
            for change in _make_before_break(plan)
        ]

    def _subscribe(self, state: _DeltaType, request: Any) -> set[str] | None:
        """Apply the request's subscription changes. Returns the newly subscribed names, or None
        when a wildcard subscription started (everything is new)."""
        was_wildcard, added = state.wildcard, set[str]()
        for name in request.resource_names_subscribe:
            if name == WILDCARD:
                state.wildcard = True
            elif name not in state.names:
                state.names.add(name)
                added.add(name)
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                state.wildcard = False
            else:
                state.names.discard(name)
        # Envoy forgets what it no longer subscribes to, so it must be sent again if asked anew.
        for name in [name for name in state.held if not state.wants(name)]:
            del state.held[name]
            state.rejected.pop(name, None)
        state.status.names = None if state.wildcard else sorted(state.names)
        if state.wildcard:
            return None if not was_wildcard else set()
        return added

    def _diff(self, state: _DeltaType, snapshot: Snapshot, *, missing: Iterable[str]) -> _Change:
        """What Envoy lacks of one type, and what it holds that is gone; `missing`: newly
        subscribed names to report as absent if they do not exist."""
        type_url = state.status.type_url
        encoded = snapshot.encoded.get(type_url, {})
        versions = _versions(snapshot, type_url)
        wanted = encoded if state.wildcard else {n: encoded[n] for n in sorted(state.names) if n in encoded}
        upserts = {
            name: (payload, versions[name])
            for name, payload in sorted(wanted.items())
            if state.held.get(name) != versions[name]
        }
        gone = {name for name in state.held if name not in wanted}
        gone.update(name for name in missing if name not in encoded)
        return _Change(type_url, upserts, sorted(gone))

    def _respond(self, state: _DeltaType, version: str, change: _Change) -> Any:
        type_url = state.status.type_url
        sent: dict[str, str | None] = {name: v for name, (_, v) in change.upserts.items()}
        sent.update(dict.fromkeys(change.removed))
        for name, resource in sent.items():
            state.rejected.pop(name, None)
            if resource is None:
                state.held.pop(name, None)
            else:
                state.held[name] = resource
        nonce = self._sending(state.status, version)
        state.in_flight[nonce] = _Sent(version, sent)
        state.answered = True
        self._on_response(
            DeltaRecord(
                stream=self.status.stream,
                node_id=self.status.node_id,
                type_url=type_url,
                nonce=nonce,
                version=version,
                resources=tuple(change.upserts),
                removed=tuple(change.removed),
            )
        )
        return _Response(
            system_version_info=version,
            type_url=type_url,
            nonce=nonce,
            resources=[
                _Resource(name=name, version=v, resource=any_pb2.Any(type_url=type_url, value=payload))
                for name, (payload, v) in change.upserts.items()
            ],
            removed_resources=change.removed,
            control_plane=self._control_plane,
        )

    def _ack_or_nack(self, state: _DeltaType, request: Any) -> None:
        sent = state.in_flight.pop(request.response_nonce, None)
        if sent is None:
            return  # not a response of this stream (or answered already): nothing to learn
        status, now = state.status, self._clock()
        status.acked_nonce, status.acked_at = request.response_nonce, now
        if request.HasField("error_detail"):
            # Only what this response set and nothing later replaced is still rejected.
            for name, version in sent.resources.items():
                if state.held.get(name) == version:
                    state.rejected[name] = version
            self._nacked(status, sent.version, request, now)
        else:
            status.acked_version = sent.version
            if not state.rejected:  # else Envoy holds older copies of some resources of the type
                status.applied(status.covers if not state.in_flight else sent.version, now)

    def _settle(self) -> None:
        for state in self._types.values():
            if state.answered and not state.in_flight:
                state.status.state = "nacked" if state.rejected else "acked"
        super()._settle()


def _make_before_break(plan: list[_Change]) -> list[_Change]:
    """The plan, but clusters it removes stay until the listeners and routes of the same plan have
    moved off them: changed clusters first, their removal after the listeners and routes."""
    clusters = next((change for change in plan if change.type_url == CLUSTER), None)
    moving = any(change.type_url in (LISTENER, ROUTE) for change in plan)
    if clusters is None or not clusters.removed or not moving:
        return plan
    ordered = [change for change in plan if change is not clusters]
    if clusters.upserts:
        ordered.insert(0, _Change(CLUSTER, clusters.upserts, [], KEPT_SUFFIX))
    return [*ordered, _Change(CLUSTER, {}, clusters.removed)]
