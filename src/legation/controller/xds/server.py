"""The ADS server: Envoy's AggregatedDiscoveryService over grpc.aio, state of the world and
incremental (delta); each Envoy's bootstrap chooses (`api_type` GRPC or DELTA_GRPC).

Two layers. `AdsStream` is the protocol for one Envoy stream as a pure state machine: it takes
DiscoveryRequests and snapshot changes and returns the DiscoveryResponses to send, keeping the
ACK/NACK record as it goes (no I/O, so unit tests drive it with plain request sequences);
`legation.controller.xds.delta.DeltaStream` is the same for a delta stream. `XdsServer` is the grpc.aio
glue: it holds the snapshots (a default one, optionally one per node id), runs one protocol per
connected Envoy and shows their records, whichever protocol they speak.

State-of-the-world protocol (see xds_delta for the delta one), per stream and type URL:

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

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from legation.controller.xds.snapshot import (
    ADS_ORDER,
    CLUSTER,
    LISTENER,
    ROUTE,
    WILDCARD_TYPES,
    Snapshot,
    SnapshotStore,
)

if TYPE_CHECKING:
    from legation.controller.xds.delta import DeltaRecord

__all__ = ["DELTA_METHOD", "METHOD", "SERVICE", "AdsStream", "Nack", "NodeStatus", "TypeStatus", "XdsServer"]

log = logging.getLogger("legation.xds")

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD = "StreamAggregatedResources"
DELTA_METHOD = "DeltaAggregatedResources"
KEPT_SUFFIX = "+kept"
"""Appended to the version of the interim cluster response that still holds removed clusters."""

_Request = discovery_pb2.DiscoveryRequest
_Response = discovery_pb2.DiscoveryResponse
SyncState = Literal["requested", "pending", "acked", "nacked"]


@dataclass
class Nack:
    """One response Envoy rejected."""

    node_id: str
    type_url: str
    version: str
    """The version Envoy rejected (it keeps running the one it had)."""
    nonce: str
    error: str
    """Envoy's `error_detail.message`."""
    at: float
    """Unix time the NACK arrived."""


@dataclass
class TypeStatus:
    """Where one type URL stands on one stream."""

    type_url: str
    names: list[str] | None = None
    """Subscribed resource names; None = all (listeners and clusters)."""
    state: SyncState = "requested"
    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float | None = None
    acked_version: str = ""
    """The version Envoy last reported running (from its ACK or NACK)."""
    acked_nonce: str = ""
    acked_at: float | None = None
    last_nack: Nack | None = None


@dataclass
class NodeStatus:
    """One connected Envoy: who it is and what it accepted. JSON-ready via `to_dict()`."""

    stream: int
    node_id: str = ""
    cluster: str = ""
    connected_at: float = 0.0
    state: SyncState = "requested"
    snapshot_version: str = ""
    """The snapshot last pushed to (or found unchanged for) this Envoy."""
    acked_version: str = ""
    """The last snapshot version whose every response this Envoy accepted."""
    last_nack: Nack | None = None
    types: dict[str, TypeStatus] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _TypeState:
    status: TypeStatus
    names: frozenset[str] | None
    nonce: str = ""
    sent: dict[str, bytes] | None = None


class _TypeRecord(Protocol):
    status: TypeStatus


_State = TypeVar("_State", bound=_TypeRecord)


class StreamProtocol(Generic[_State]):
    """What the state-of-the-world and the delta protocols share: the node's record, where
    snapshots come from, nonces, what to tell about NACKs and accepted snapshots, and a state
    per type URL (`_State`, the protocol's own)."""

    def __init__(
        self,
        *,
        stream: int,
        lookup: Callable[[str], Snapshot | None],
        nonces: Iterator[int],
        on_nack: Callable[[Nack], None] = lambda nack: None,
        on_accepted: Callable[[str, Snapshot], None] = lambda node_id, snapshot: None,
        control_plane: str = "legation",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.status = NodeStatus(stream=stream, connected_at=clock())
        self._lookup = lookup
        self._nonces = nonces
        self._on_nack = on_nack
        self._on_accepted = on_accepted
        self._snapshot: Snapshot | None = None
        self._control_plane = base_pb2.ControlPlane(identifier=control_plane)
        self._clock = clock
        self._types: dict[str, _State] = {}
        self.identified = False

    def on_request(self, request: Any) -> list[Any]:
        """Handle one request; return the responses to send, in order."""
        raise NotImplementedError

    def on_snapshot(self) -> list[Any]:
        """The snapshot for this node may have changed: push what changed, in ADS order."""
        snapshot = self._lookup(self.status.node_id) if self.identified else None
        if snapshot is None:
            return []
        responses = self._push(snapshot)
        self._serving(snapshot)
        self._settle()
        return responses

    def _push(self, snapshot: Snapshot) -> list[Any]:
        """The responses that bring every subscribed type to `snapshot`."""
        raise NotImplementedError

    def _type_of(self, request: Any) -> str | None:
        """Record the node from the stream's first request; the request's type URL if served."""
        if not self.identified:
            self.identified = True
            self.status.node_id, self.status.cluster = request.node.id, request.node.cluster
        type_url: str = request.type_url
        if type_url not in ADS_ORDER:
            log.warning("unsupported xDS type requested", extra={"type_url": type_url})
            return None
        return type_url

    def _track(self, state: _State) -> _State:
        """Start serving a type: its state here, its record in the node's."""
        type_url = state.status.type_url
        self._types[type_url] = state
        self.status.types[type_url] = state.status
        return state

    def _serving(self, snapshot: Snapshot) -> None:
        self._snapshot, self.status.snapshot_version = snapshot, snapshot.version

    def _sending(self, status: TypeStatus, version: str) -> str:
        """A nonce for a new response of `status`'s type, which stays pending until answered."""
        nonce = str(next(self._nonces))
        status.state, status.sent_version, status.sent_nonce = "pending", version, nonce
        status.sent_at = self._clock()
        return nonce

    def _nacked(self, status: TypeStatus, version: str, request: Any, at: float) -> None:
        """Record and report that `request` rejects the response (of `version`) it answers."""
        nack = Nack(
            node_id=self.status.node_id,
            type_url=status.type_url,
            version=version,
            nonce=request.response_nonce,
            error=request.error_detail.message,
            at=at,
        )
        status.last_nack = self.status.last_nack = nack
        self._on_nack(nack)

    def _settle(self) -> None:
        """The node's state from its types'; a snapshot it accepted whole is reported."""
        states = {t.status.state for t in self._types.values()}
        if "pending" in states:
            self.status.state = "pending"
        elif "nacked" in states:
            self.status.state = "nacked"
        elif "acked" in states and self._snapshot is not None:
            self.status.state = "acked"
            self.status.acked_version = self._snapshot.version
            self._on_accepted(self.status.node_id, self._snapshot)


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


class _End:
    """Queue marker: the stream is over (Envoy went away, or the server closes)."""


class _Wake:
    """Queue marker: the snapshot for this stream's node may have changed."""


_END, _WAKE = _End(), _Wake()


@dataclass
class _Session:
    protocol: StreamProtocol[Any]
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    woken: bool = False

    def wake(self) -> None:
        if not self.woken:
            self.woken = True
            self.queue.put_nowait(_WAKE)


class XdsServer:
    """Serves snapshots to every connected Envoy over ADS and records what each one accepted.

    `set_snapshot(s)` serves `s` to every node without a snapshot of its own;
    `set_snapshot(s, node_id=...)` to that node only. Register `handler()` on a grpc.aio server;
    call `close()` before stopping it so that streams end at once instead of after the grace.

    After a NACK, Envoys that have it keep their last accepted configuration (Envoy's doing), the
    rejected version is recorded, and Envoys that connect later get the last snapshot an Envoy
    accepted instead of the rejected one; the next `set_snapshot` is sent to all as usual."""

    def __init__(self, *, control_plane: str = "legation", nack_history: int = 100) -> None:
        self._control_plane = control_plane
        self.snapshots = SnapshotStore()
        self._sessions: dict[int, _Session] = {}
        self._stream_ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._closed = False
        self.nacks: deque[Nack] = deque(maxlen=nack_history)
        """Every NACK since start (the newest `nack_history`), also from Envoys gone since."""
        self.delta_responses: deque[DeltaRecord] = deque(maxlen=1000)
        """What the newest delta responses carried, for diagnostics: which resources, which
        removals (a state-of-the-world response always carries every resource of its type)."""

    def set_snapshot(self, snapshot: Snapshot, *, node_id: str | None = None) -> None:
        self.snapshots.set(snapshot, node_id=node_id)
        for session in self._sessions.values():
            if node_id is None or session.protocol.status.node_id == node_id:
                session.wake()

    def snapshot_for(self, node_id: str) -> Snapshot | None:
        """The snapshot `node_id` is served now (see the class docstring about NACKs)."""
        return self.snapshots.serve(node_id)

    def nodes(self) -> list[NodeStatus]:
        """The connected Envoys by node id (live objects: copy before keeping)."""
        found = [s.protocol.status for s in self._sessions.values() if s.protocol.identified]
        return sorted(found, key=lambda status: (status.node_id, status.stream))

    def status(self) -> dict[str, Any]:
        """Everything as JSON-ready data, for the HTTP API."""
        return {
            "versions": self.snapshots.versions(),
            "rejected_versions": self.snapshots.rejected_versions(),
            "nodes": [node.to_dict() for node in self.nodes()],
            "nacks": [dataclasses.asdict(nack) for nack in self.nacks],
        }

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                METHOD: grpc.stream_stream_rpc_method_handler(
                    self.stream,
                    request_deserializer=_Request.FromString,
                    response_serializer=_Response.SerializeToString,
                ),
                DELTA_METHOD: grpc.stream_stream_rpc_method_handler(
                    self.delta_stream,
                    request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                    response_serializer=discovery_pb2.DeltaDiscoveryResponse.SerializeToString,
                ),
            },
        )

    async def close(self) -> None:
        """End every stream (Envoy reconnects elsewhere, or later) and refuse new ones."""
        self._closed = True
        for session in self._sessions.values():
            session.queue.put_nowait(_END)
        await asyncio.sleep(0)

    async def stream(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """StreamAggregatedResources: one Envoy, until it goes away or the server closes."""
        async for response in self._serve(requests, AdsStream):
            yield response

    async def delta_stream(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """DeltaAggregatedResources: one Envoy speaking incremental xDS, as long as `stream`."""
        # Imported here: xds_delta builds on this module's records (Nack, NodeStatus, TypeStatus).
        from legation.controller.xds.delta import DeltaStream

        protocol = functools.partial(DeltaStream, on_response=self.delta_responses.append)
        async for response in self._serve(requests, protocol):
            yield response

    async def _serve(
        self, requests: AsyncIterator[Any], protocol: Callable[..., StreamProtocol[Any]]
    ) -> AsyncIterator[Any]:
        if self._closed:
            return
        stream_id = next(self._stream_ids)
        session = _Session(
            protocol(
                stream=stream_id,
                lookup=self.snapshot_for,
                nonces=self._nonces,
                on_nack=self._record_nack,
                on_accepted=self.snapshots.accepted,
                control_plane=self._control_plane,
            )
        )
        self._sessions[stream_id] = session
        reader = asyncio.get_running_loop().create_task(_read(requests, session.queue))
        try:
            async for response in _responses(session):
                yield response
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            del self._sessions[stream_id]
            status = session.protocol.status
            log.info("xds stream closed", extra={"stream": stream_id, "node": status.node_id})

    def _record_nack(self, nack: Nack) -> None:
        self.nacks.append(nack)
        self.snapshots.rejected(nack.version.removesuffix(KEPT_SUFFIX))
        log.warning(
            "envoy rejected configuration",
            extra={
                "node": nack.node_id,
                "type_url": nack.type_url,
                "version": nack.version,
                "error": nack.error,
            },
        )


async def _read(requests: AsyncIterator[Any], queue: asyncio.Queue[object]) -> None:
    try:
        async for request in requests:
            queue.put_nowait(request)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the client went away mid-message, or sent garbage
        log.info("xds stream read failed", extra={"error": repr(exc)})
    finally:
        queue.put_nowait(_END)


async def _responses(session: _Session) -> AsyncIterator[Any]:
    protocol = session.protocol
    while True:
        item = await session.queue.get()
        if item is _END:
            return
        if item is _WAKE:
            session.woken = False
            responses = protocol.on_snapshot()
        else:
            responses = protocol.on_request(item)
        for response in responses:
            yield response
