"""The state-of-the-world ADS protocol for one Envoy stream, as a pure state machine: it takes
DiscoveryRequests and snapshot changes and returns the DiscoveryResponses to send (no I/O, so
unit tests drive it with plain request sequences).

State-of-the-world protocol (`delta` has the incremental one), per stream and type URL:

- A request with an empty `response_nonce` (Envoy's first for that type, also after it
  reconnects) is answered with the current snapshot at once.
- A request whose nonce is not the last one sent is stale and ignored: a newer response is on
  its way and Envoy will answer that one.
- With the last nonce it is an ACK, or a NACK when `error_detail` is set. A NACK is recorded and
  the rejected content is not sent again; Envoy keeps what it had until a new snapshot changes
  that type. Either may also change `resource_names`, which sends what the new subscription
  adds.
- A new snapshot pushes only the types whose content (for the subscribed names) changed, in
  `ADS_ORDER`: clusters, endpoints, listeners, routes, secrets. Clusters that the new snapshot
  drops while listeners or routes change too are removed last (make before break): first a
  cluster response that still holds them, then listeners and routes, then the final clusters.
- Listeners and clusters are sent whole; route configurations, endpoints and secrets only by
  requested name, so routes that no listener references never reach Envoy.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from legation.controller.xds.protocol import KEPT_SUFFIX, StreamProtocol, TypeStatus
from legation.controller.xds.snapshot import (
    ADS_ORDER,
    CLUSTER,
    LISTENER,
    ROUTE,
    WILDCARD_TYPES,
    Snapshot,
)

__all__ = ["AdsStream"]

_Request = discovery_pb2.DiscoveryRequest
_Response = discovery_pb2.DiscoveryResponse


@dataclass
class _TypeState:
    status: TypeStatus
    names: frozenset[str] | None
    nonce: str = ""
    sent: dict[str, bytes] | None = None


class AdsStream(StreamProtocol[_TypeState]):
    """The ADS protocol for one stream: requests and snapshot changes in, responses out."""

    def on_request(self, request: Any) -> list[Any]:
        """Handle one DiscoveryRequest; return the responses to send, in order."""
        type_url = self._type_of(request)
        if type_url is None:
            return []
        state = self._types.get(type_url)
        initial = state is None or not request.response_nonce
        if state is None:
            state = self._track(_TypeState(TypeStatus(type_url), None))
        elif not initial and request.response_nonce != state.nonce:
            return []  # stale: answers an older response
        if not initial:
            self._ack_or_nack(state, request)
        subscribed = self._subscribe(state, request)
        responses = self._answer(state, force=initial) if initial or subscribed else []
        self._settle()
        return responses

    def _push(self, snapshot: Snapshot) -> list[Any]:
        plan: list[tuple[str, dict[str, bytes]]] = []
        for type_url in ADS_ORDER:
            state = self._types.get(type_url)
            if state is not None:
                resources = snapshot.select(type_url, state.names)
                if _worth_sending(state, resources, initial=False):
                    plan.append((type_url, resources))
                elif state.sent is not None:
                    self._unchanged(state.status, snapshot.version, settled=state.status.state == "acked")
        return [
            self._respond(self._types[type_url], snapshot.version + suffix, resources)
            for type_url, resources, suffix in _make_before_break(self._types, plan)
        ]

    def _ack_or_nack(self, state: _TypeState, request: Any) -> None:
        status, now = state.status, self._clock()
        status.acked_version, status.acked_nonce, status.acked_at = request.version_info, state.nonce, now
        if request.HasField("error_detail"):
            status.state = "nacked"
            self._nacked(status, status.sent_version, request, now)
        else:
            status.state = "acked"
            status.applied(status.covers, now)

    def _subscribe(self, state: _TypeState, request: Any) -> bool:
        """Take the request's resource names; True if the subscription changed."""
        if state.status.type_url in WILDCARD_TYPES:
            return False
        names = frozenset(request.resource_names)
        if names == state.names:
            return False
        state.names = names
        state.status.names = sorted(names)
        return True

    def _answer(self, state: _TypeState, *, force: bool) -> list[Any]:
        """The current resources of one type, if they tell Envoy anything new (or `force`)."""
        snapshot = self._lookup(self.status.node_id)
        if snapshot is None:
            return []
        resources = snapshot.select(state.status.type_url, state.names)
        if not _worth_sending(state, resources, initial=force):
            return []
        self._serving(snapshot)
        return [self._respond(state, snapshot.version, resources)]

    def _respond(self, state: _TypeState, version: str, resources: dict[str, bytes]) -> Any:
        type_url = state.status.type_url
        state.nonce, state.sent = self._sending(state.status, version), resources
        return _Response(
            version_info=version,
            type_url=type_url,
            nonce=state.nonce,
            resources=[any_pb2.Any(type_url=type_url, value=value) for value in resources.values()],
            control_plane=self._control_plane,
        )


def _worth_sending(state: _TypeState, resources: dict[str, bytes], *, initial: bool) -> bool:
    if state.names is not None and not resources and not state.sent:
        return False  # nothing that was asked for exists, and nothing was sent before
    return initial or resources != state.sent


def _make_before_break(
    types: dict[str, _TypeState], plan: list[tuple[str, dict[str, bytes]]]
) -> Iterator[tuple[str, dict[str, bytes], str]]:
    """Yield (type, resources, version suffix): the plan, but clusters it drops stay (in an
    interim response) until the listeners and routes of the same plan have moved off them."""
    sent = types[CLUSTER].sent if CLUSTER in types else None
    clusters = dict(plan).get(CLUSTER)
    dropped = sorted(set(sent or ()) - set(clusters or ()))
    moving = any(type_url in (LISTENER, ROUTE) for type_url, _ in plan)
    if clusters is None or sent is None or not dropped or not moving:
        yield from ((type_url, resources, "") for type_url, resources in plan)
        return
    for type_url, resources in plan:
        if type_url == CLUSTER:
            yield type_url, {**resources, **{name: sent[name] for name in dropped}}, KEPT_SUFFIX
        else:
            yield type_url, resources, ""
    yield CLUSTER, clusters, ""
