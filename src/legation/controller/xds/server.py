"""The ADS server: Envoy's AggregatedDiscoveryService over grpc.aio, state of the world and
incremental (delta); each Envoy's bootstrap chooses (`api_type` GRPC or DELTA_GRPC).

The protocols are pure state machines (`sotw.AdsStream`, `delta.DeltaStream`); `XdsServer` is the
grpc.aio glue: it holds the snapshots (a default one, optionally one per node id), runs one
protocol per connected Envoy and shows their records, whichever protocol they speak. Over mTLS
(`require_peer`), each stream's node id must be one its client certificate allows
(`identity.PeerIdentity`); other streams are refused with PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from legation.controller.xds.delta import DeltaRecord, DeltaStream
from legation.controller.xds.identity import NodeRefused, peer_identity
from legation.controller.xds.protocol import (
    KEPT_SUFFIX,
    Nack,
    NodeStatus,
    StreamProtocol,
)
from legation.controller.xds.snapshot import (
    Snapshot,
    SnapshotStore,
)
from legation.controller.xds.sotw import AdsStream

__all__ = ["DELTA_METHOD", "METHOD", "SERVICE", "XdsServer"]

log = logging.getLogger("legation.xds")

SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
METHOD = "StreamAggregatedResources"
DELTA_METHOD = "DeltaAggregatedResources"


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

    A NACK concerns only the node that sent it: that Envoy keeps its last accepted configuration
    (Envoy's doing), the rejected version is recorded for that node, and should the same node
    reconnect it gets the last snapshot it accepted instead of the one it rejected. Every other
    node, connected or connecting later, is served the newest snapshot regardless. The next
    `set_snapshot` is sent to all as usual.

    `require_peer`: every stream must come with a verified client certificate whose names allow
    the node id it claims (set it when the gRPC port requires client certificates)."""

    def __init__(
        self, *, control_plane: str = "legation", nack_history: int = 100, require_peer: bool = False
    ) -> None:
        self._control_plane = control_plane
        self._require_peer = require_peer
        self.snapshots = SnapshotStore()
        self._sessions: dict[int, _Session] = {}
        self._stream_ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._closed = False
        self.nacks: deque[Nack] = deque(maxlen=nack_history)
        """Every NACK since start (the newest `nack_history`), also from Envoys gone since."""
        self.refused: deque[NodeRefused] = deque(maxlen=nack_history)
        """Streams refused because their node id is not one their certificate allows."""
        self.on_nack: Callable[[Nack], None] = lambda nack: None
        """Told of every NACK, after it is recorded (NACK attribution listens here)."""
        self.on_change: Callable[[NodeStatus | None], None] = lambda status: None
        """Told whenever a node's sync state may have changed: it settled after a request or a
        push (its status), or a stream ended (None). Must be cheap: it runs on every ACK."""
        self.delta_responses: deque[DeltaRecord] = deque(maxlen=1000)
        """What the newest delta responses carried, for diagnostics: which resources, which
        removals (a state-of-the-world response always carries every resource of its type)."""

    def set_snapshot(self, snapshot: Snapshot, *, node_id: str | None = None) -> None:
        self.snapshots.set(snapshot, node_id=node_id)
        for session in self._sessions.values():
            if node_id is None or session.protocol.status.node_id == node_id:
                session.wake()

    def clear_snapshot(self, node_id: str) -> None:
        """`node_id` goes back to the default snapshot (after one of its own)."""
        self.snapshots.clear(node_id)
        for session in self._sessions.values():
            if session.protocol.status.node_id == node_id:
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
            "refused": [
                {"node_id": r.node_id, "identity": str(r.identity or ""), "reason": str(r)}
                for r in self.refused
            ],
        }

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                METHOD: grpc.stream_stream_rpc_method_handler(
                    self.stream,
                    request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                    response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
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
        async for response in self._serve(requests, context, AdsStream):
            yield response

    async def delta_stream(self, requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """DeltaAggregatedResources: one Envoy speaking incremental xDS, as long as `stream`."""

        protocol = functools.partial(DeltaStream, on_response=self.delta_responses.append)
        async for response in self._serve(requests, context, protocol):
            yield response

    async def _serve(
        self, requests: AsyncIterator[Any], context: Any, protocol: Callable[..., StreamProtocol[Any]]
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
                on_settled=self._settled,
                control_plane=self._control_plane,
                peer=peer_identity(context),
                require_peer=self._require_peer,
            )
        )
        self._sessions[stream_id] = session
        reader = asyncio.get_running_loop().create_task(_read(requests, session.queue))
        try:
            async for response in _responses(session):
                yield response
        except NodeRefused as refused:
            self._refuse(refused)
            if context is None:
                raise
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(refused))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            del self._sessions[stream_id]
            self.on_change(None)
            status = session.protocol.status
            log.info("xds stream closed", extra={"stream": stream_id, "node": status.node_id})

    def _refuse(self, refused: NodeRefused) -> None:
        self.refused.append(refused)
        log.warning(
            "xds stream refused",
            extra={"node": refused.node_id, "identity": str(refused.identity or ""), "error": str(refused)},
        )

    def _settled(self, status: NodeStatus) -> None:
        self.on_change(status)

    def _record_nack(self, nack: Nack) -> None:
        self.nacks.append(nack)
        self.snapshots.rejected(nack.node_id, nack.version.removesuffix(KEPT_SUFFIX))
        self.on_nack(nack)
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
