"""What the state-of-the-world and the delta ADS protocols share: a node's record of what it was
sent, accepted and rejected (for the API and the page), nonces, and the snapshot push."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from legation.controller.xds.identity import NodeRefused, PeerIdentity
from legation.controller.xds.snapshot import (
    ADS_ORDER,
    Snapshot,
)

__all__ = ["KEPT_SUFFIX", "Nack", "NodeStatus", "StreamProtocol", "SyncState", "TypeStatus"]

log = logging.getLogger("legation.xds")

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
    covers: str = ""
    """The newest snapshot version whose content of this type equals what was last sent (a later
    snapshot that leaves this type unchanged is not sent, but is covered by that response)."""
    applied_version: str = ""
    """The newest snapshot version whose content of this type Envoy runs: set by an ACK, and moved
    on by snapshots that leave an ACKed type unchanged. What `Programmed` is computed from."""
    applied_at: float | None = None
    """Unix time `applied_version` was set."""

    def applied(self, version: str, at: float) -> None:
        self.applied_version, self.applied_at = version, at


@dataclass
class NodeStatus:
    """One connected Envoy: who it is and what it accepted. JSON-ready via `to_dict()`."""

    stream: int
    node_id: str = ""
    cluster: str = ""
    identity: str = ""
    """The names of the client certificate it connected with ("" without mTLS)."""
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
        on_settled: Callable[[NodeStatus], None] = lambda status: None,
        control_plane: str = "legation",
        clock: Callable[[], float] = time.time,
        peer: PeerIdentity | None = None,
        require_peer: bool = False,
    ) -> None:
        self.status = NodeStatus(stream=stream, connected_at=clock(), identity=str(peer or ""))
        self._peer, self._require_peer = peer, require_peer
        self._lookup = lookup
        self._nonces = nonces
        self._on_nack = on_nack
        self._on_accepted = on_accepted
        self._on_settled = on_settled
        self._snapshot: Snapshot | None = None
        self._control_plane = base_pb2.ControlPlane(identifier=control_plane)
        self._clock = clock
        self._types: dict[str, _State] = {}
        self.identified = False

    def on_request(self, request: Any) -> list[Any]:
        """Handle one request; return the responses to send, in order. Raises NodeRefused when
        the stream's first request claims a node id its peer's certificate does not allow."""
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
            node_id: str = request.node.id
            if self._peer is None and self._require_peer:
                raise NodeRefused(node_id, None)
            if self._peer is not None and not self._peer.allows(node_id):
                raise NodeRefused(node_id, self._peer)
            self.identified = True
            self.status.node_id, self.status.cluster = node_id, request.node.cluster
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
        status.sent_at, status.covers = self._clock(), version
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

    def _unchanged(self, status: TypeStatus, version: str, *, settled: bool) -> None:
        """Snapshot `version` leaves this type as last sent: that response covers it too, and if
        Envoy runs that response (`settled`), it runs this version's content of the type."""
        status.covers = version
        if settled:
            status.applied(version, self._clock())

    def _settle(self) -> None:
        """The node's state from its types'; a snapshot it accepted whole is reported, and every
        settling is told (`on_settled`: ACK bookkeeping, Programmed)."""
        states = {t.status.state for t in self._types.values()}
        if "pending" in states:
            self.status.state = "pending"
        elif "nacked" in states:
            self.status.state = "nacked"
        elif "acked" in states and self._snapshot is not None:
            self.status.state = "acked"
            self.status.acked_version = self._snapshot.version
            self._on_accepted(self.status.node_id, self._snapshot)
        if self.identified:
            self._on_settled(self.status)
