"""Per-node NACKs and certificate-bound node ids, on the pure protocol state machines and the
in-process servicer (no other process; the mTLS handshake itself is tested end to end in
tests/e2e/test_xds_mtls.py)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from fixtures.xds_resources import FakeEnvoyStream, snap
from google.rpc import status_pb2

from legation.controller.xds.delta import DeltaStream
from legation.controller.xds.identity import NodeRefused, PeerIdentity
from legation.controller.xds.protocol import StreamProtocol
from legation.controller.xds.server import XdsServer
from legation.controller.xds.snapshot import LISTENER, SnapshotStore
from legation.controller.xds.sotw import AdsStream

_nonces = itertools.count(1)


def stream(store: SnapshotStore, **extra: Any) -> AdsStream:
    """An AdsStream wired to `store` the way XdsServer wires it."""
    return AdsStream(
        stream=next(_nonces),
        lookup=store.serve,
        nonces=_nonces,
        on_nack=lambda nack: store.rejected(nack.node_id, nack.version),
        on_accepted=store.accepted,
        **extra,
    )


def first(node_id: str) -> Any:
    request = discovery_pb2.DiscoveryRequest(type_url=LISTENER)
    request.node.CopyFrom(base_pb2.Node(id=node_id))
    return request


def ack(response: Any, *, error: str | None = None) -> Any:
    request = discovery_pb2.DiscoveryRequest(
        type_url=response.type_url, version_info=response.version_info, response_nonce=response.nonce
    )
    if error is not None:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


def test_a_rogue_nack_rolls_back_nobody_else() -> None:
    store = SnapshotStore()
    v1, v2 = snap(listeners={"one": 1}), snap(listeners={"two": 2})
    store.set(v1)
    a, b = stream(store), stream(store)
    for s, node in ((a, "a"), (b, "b")):
        [response] = s.on_request(first(node))
        assert s.on_request(ack(response)) == []
    store.set(v2)
    [to_a], [to_b] = a.on_snapshot(), b.on_snapshot()
    assert to_a.version_info == to_b.version_info == v2.version
    assert b.on_request(ack(to_b, error="rogue")) == []  # b says v2 is bad
    assert a.on_request(ack(to_a)) == []
    assert a.status.acked_version == v2.version  # a is unaffected
    [to_c] = stream(store).on_request(first("c"))  # a node connecting later gets v2
    assert to_c.version_info == v2.version
    [to_b_again] = stream(store).on_request(first("b"))  # b itself reconnecting keeps v1
    assert to_b_again.version_info == v1.version
    assert store.rejected_versions() == {"b": [v2.version]}


def test_a_certificate_allows_its_own_name_and_names_below_it() -> None:
    peer = PeerIdentity(("legation-envoy", "spiffe://legation.dev/edge"))
    assert peer.allows("legation-envoy") and peer.allows("legation-envoy/pod-1")
    assert peer.allows("spiffe://legation.dev/edge/pod-1")
    for other in ("legation-envoy-2", "legation-envoyx/pod", "other/legation-envoy", "", "/pod"):
        assert not peer.allows(other), other
    assert not PeerIdentity(("",)).allows("")


@pytest.mark.parametrize("protocol", [AdsStream, DeltaStream])
def test_a_node_id_the_certificate_does_not_allow_is_refused_before_anything_is_sent(
    protocol: type[StreamProtocol[Any]],
) -> None:
    store = SnapshotStore()
    store.set(snap())
    peer = PeerIdentity(("edge-a",))
    common = {"lookup": store.serve, "nonces": _nonces, "peer": peer, "require_peer": True}
    refused = protocol(stream=1, **common)
    request = (
        discovery_pb2.DeltaDiscoveryRequest if protocol is DeltaStream else discovery_pb2.DiscoveryRequest
    )
    claim = request(type_url=LISTENER)
    claim.node.id = "edge-b/pod-1"
    with pytest.raises(NodeRefused, match="'edge-b/pod-1' is not allowed for certificate edge-a"):
        refused.on_request(claim)
    assert not refused.identified and refused.on_snapshot() == []
    claim.node.id = "edge-a/pod-1"
    allowed = protocol(stream=2, **common)
    assert len(allowed.on_request(claim)) == 1
    assert (allowed.status.node_id, allowed.status.identity) == ("edge-a/pod-1", "edge-a")


def test_without_a_verified_certificate_a_peer_requiring_server_refuses_every_node() -> None:
    store = SnapshotStore()
    store.set(snap())
    s = stream(store, require_peer=True)
    with pytest.raises(NodeRefused, match="no verified certificate"):
        s.on_request(first("envoy"))


async def test_the_servicer_records_refused_streams() -> None:
    xds = XdsServer(require_peer=True)
    xds.set_snapshot(snap())
    envoy = FakeEnvoyStream(xds, "edge")  # no grpc context: no certificate
    await envoy.send(type_url=LISTENER)
    with pytest.raises(NodeRefused):
        await envoy.close()
    assert xds.nodes() == []
    assert xds.status()["refused"] == [
        {
            "node_id": "edge",
            "identity": "",
            "reason": "node id 'edge' is not allowed for no verified certificate",
        }
    ]
