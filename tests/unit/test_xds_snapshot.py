"""Snapshots and the ADS protocol state machine, driven with hand-made request sequences.

The last tests run the real grpc.aio servicer in-process (no other process): per-node
snapshots, a client going away, and `close()` ending every stream."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from fixtures.xds_resources import cluster, route, serving, snap, wait_until
from google.rpc import status_pb2

from legation.controller.xds.protocol import KEPT_SUFFIX, Nack
from legation.controller.xds.server import XdsServer
from legation.controller.xds.snapshot import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Snapshot,
    SnapshotStore,
    snapshot_version,
)
from legation.controller.xds.sotw import AdsStream

# --------------------------------------------------------------------------- helpers


def names(response: Any) -> list[str]:
    """Resource names in a DiscoveryResponse (decoded by type)."""
    kinds = {
        CLUSTER: cluster_pb2.Cluster,
        LISTENER: listener_pb2.Listener,
        ROUTE: route_pb2.RouteConfiguration,
    }
    return [kinds[response.type_url].FromString(a.value).name for a in response.resources]


def body_of(response: Any, name: str) -> str:
    for a in response.resources:
        config = route_pb2.RouteConfiguration.FromString(a.value)
        if config.name == name:
            return str(config.virtual_hosts[0].routes[0].direct_response.body.inline_string)
    raise AssertionError(f"no route configuration {name} in response")


class FakeEnvoy:
    """Builds the requests an Envoy would send on one ADS stream."""

    def __init__(self, node_id: str = "envoy-1") -> None:
        self.node = base_pb2.Node(id=node_id, cluster="edge")
        self.first = True

    def request(self, type_url: str, names: tuple[str, ...] = (), **fields: Any) -> Any:
        req = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names, **fields)
        if self.first:
            req.node.CopyFrom(self.node)
            self.first = False
        return req

    def ack(self, response: Any, names: tuple[str, ...] = ()) -> Any:
        return self.request(
            response.type_url, names, version_info=response.version_info, response_nonce=response.nonce
        )

    def nack(self, response: Any, accepted: str, error: str, names: tuple[str, ...] = ()) -> Any:
        return self.request(
            response.type_url,
            names,
            version_info=accepted,
            response_nonce=response.nonce,
            error_detail=status_pb2.Status(code=3, message=error),
        )


class Harness:
    """One AdsStream whose snapshot the test sets, with a fixed clock."""

    def __init__(self, snapshot: Snapshot | None) -> None:
        self.snapshot = snapshot
        self.nacks: list[Nack] = []
        self.stream = AdsStream(
            stream=1,
            lookup=lambda node: self.snapshot,
            nonces=itertools.count(1),
            on_nack=self.nacks.append,
            clock=lambda: 1000.0,
        )
        self.envoy = FakeEnvoy()

    def send(self, request: Any) -> list[Any]:
        return self.stream.on_request(request)

    def publish(self, snapshot: Snapshot) -> list[Any]:
        self.snapshot = snapshot
        return self.stream.on_snapshot()

    def connect(self, route_names: tuple[str, ...] = ("r1",)) -> dict[str, Any]:
        """CDS + LDS + RDS requested and ACKed; returns the last response per type."""
        last = {}
        for type_url in (CLUSTER, LISTENER):
            [last[type_url]] = self.send(self.envoy.request(type_url))
            assert self.send(self.envoy.ack(last[type_url])) == []
        [last[ROUTE]] = self.send(self.envoy.request(ROUTE, route_names))
        assert self.send(self.envoy.ack(last[ROUTE], route_names)) == []
        return last


# --------------------------------------------------------------------------- snapshot


def test_version_is_a_content_hash_independent_of_insertion_order() -> None:
    a = Snapshot.build({CLUSTER: {"a": cluster("a"), "b": cluster("b")}, LISTENER: {}})
    b = Snapshot.build({LISTENER: {}, CLUSTER: {"b": cluster("b"), "a": cluster("a")}})
    assert a.version == b.version
    assert a.version == snapshot_version(a.encoded)
    assert Snapshot.build({CLUSTER: {"a": cluster("a", 2), "b": cluster("b")}}).version != a.version


def test_replaced_gives_a_new_version_and_leaves_the_original_alone() -> None:
    base = snap()
    changed = base.replaced(ROUTE, {"r1": route("r1", "two")})
    assert changed.version != base.version
    assert base.select(ROUTE, None) != changed.select(ROUTE, None)
    assert base.select(CLUSTER, None) == changed.select(CLUSTER, None)
    assert base.replaced(ROUTE, {"r1": route("r1", "one")}).version == base.version


def test_snapshot_is_immutable() -> None:
    resources = {CLUSTER: {"a": cluster("a")}}
    s = Snapshot.build(resources)
    resources[CLUSTER]["b"] = cluster("b")
    assert s.names(CLUSTER) == {"a"}
    with pytest.raises(TypeError):
        s.resources[CLUSTER]["b"] = cluster("b")  # type: ignore[index]


def test_wrong_type_or_name_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"'a' is a envoy.config.cluster.v3.Cluster, not a .*Listener"):
        Snapshot.build({LISTENER: {"a": cluster("a")}})
    with pytest.raises(ValueError, match=r"resource 'a' of .*Cluster carries the name 'b'"):
        Snapshot.build({CLUSTER: {"a": cluster("b")}})
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="c1")
    assert Snapshot.build({ENDPOINT: {"c1": cla}}).names(ENDPOINT) == {"c1"}


def test_select_all_or_the_requested_names_that_exist() -> None:
    s = snap(routes={"r1": "a", "r2": "b"})
    assert list(s.select(ROUTE, None)) == ["r1", "r2"]
    assert list(s.select(ROUTE, frozenset({"r2", "missing"}))) == ["r2"]
    assert s.select(SECRET, None) == {}


def test_store_serves_node_snapshots_then_the_default() -> None:
    store = SnapshotStore()
    assert store.serve("a") is None
    default, own = snap(routes={"r1": "default"}), snap(routes={"r1": "own"})
    store.set(default)
    store.set(own, node_id="b")
    assert (store.serve("a"), store.serve("b")) == (default, own)
    assert store.versions() == {"": default.version, "b": own.version}


def test_store_falls_back_to_what_the_node_accepted_while_it_rejects_the_current() -> None:
    store = SnapshotStore()
    good, bad, fixed = snap(routes={"r1": "good"}), snap(routes={"r1": "bad"}), snap(routes={"r1": "fixed"})
    store.set(good)
    store.accepted("a", good)
    store.set(bad)
    store.accepted("a", bad)  # e.g. listeners and clusters ACKed before routes were NACKed
    assert store.serve("a") is bad  # nothing rejected yet
    store.rejected("a", bad.version)
    assert store.serve("a") is good  # what a kept
    assert store.serve("new-node") is bad  # a's NACK is a's business
    assert store.rejected_versions() == {"a": [bad.version]}
    store.accepted("a", bad)  # a rejected version never becomes the fallback
    assert store.serve("a") is good
    store.set(fixed)
    assert store.serve("a") is fixed  # the next snapshot is served normally
    store.set(snap(routes={"r1": "own"}), node_id="b")
    store.rejected("b", store.serve("b").version)  # type: ignore[union-attr]
    assert store.serve("b").version == snap(routes={"r1": "own"}).version  # type: ignore[union-attr]


def test_a_node_that_rejects_what_it_never_accepted_before_gets_the_current() -> None:
    store = SnapshotStore()
    only = snap(routes={"r1": "only"})
    store.set(only)
    store.rejected("a", only.version)
    assert store.serve("a") is only  # nothing better to offer; the protocol never re-sends it


def test_nodes_remembered_are_bounded() -> None:
    store = SnapshotStore(remember_nodes=2)
    one, two = snap(routes={"r1": "one"}), snap(routes={"r1": "two"})
    store.set(one)
    store.accepted("a", one)
    store.set(two)
    store.rejected("a", two.version)
    store.rejected("x", two.version)
    assert store.serve("a") is one
    store.rejected("y", two.version)  # a is the least recently heard of: forgotten
    assert store.serve("a") is two
    assert list(store.rejected_versions()) == ["x", "y"]


# --------------------------------------------------------------------------- protocol


def test_initial_requests_are_answered_with_the_snapshot_then_acked() -> None:
    h = Harness(snap(clusters={"c1": 1, "c2": 1}))
    [cds] = h.send(h.envoy.request(CLUSTER))
    assert (cds.type_url, cds.version_info, names(cds)) == (CLUSTER, h.snapshot.version, ["c1", "c2"])  # type: ignore[union-attr]
    assert cds.control_plane.identifier == "legation"
    status = h.stream.status
    assert (status.node_id, status.cluster, status.state) == ("envoy-1", "edge", "pending")
    assert h.send(h.envoy.ack(cds)) == []
    cds_status = status.types[CLUSTER]
    assert (cds_status.state, cds_status.acked_version, cds_status.acked_nonce) == (
        "acked",
        cds.version_info,
        cds.nonce,
    )
    assert (status.state, status.acked_version) == ("acked", cds.version_info)


def test_nack_is_recorded_and_the_rejected_version_is_not_sent_again() -> None:
    h = Harness(snap())
    last = h.connect()
    good = h.snapshot.version  # type: ignore[union-attr]
    [rds] = h.publish(snap(routes={"r1": "bad"}))
    assert h.send(h.envoy.nack(rds, good, "Invalid regex", ("r1",))) == []
    status = h.stream.status
    assert status.state == "nacked"
    assert status.acked_version == good  # still running the last accepted snapshot
    nack = status.last_nack
    assert nack is not None and nack == status.types[ROUTE].last_nack and h.nacks == [nack]
    assert (nack.type_url, nack.version, nack.error, nack.nonce, nack.node_id) == (
        ROUTE,
        rds.version_info,
        "Invalid regex",
        rds.nonce,
        "envoy-1",
    )
    assert status.types[ROUTE].acked_version == last[ROUTE].version_info
    # the same content again (e.g. another unrelated publish) is not resent
    assert h.publish(snap(routes={"r1": "bad"})) == []
    # a good snapshot is sent normally and clears the failed state
    [fixed] = h.publish(snap(routes={"r1": "fixed"}))
    assert body_of(fixed, "r1") == "fixed"
    h.send(h.envoy.ack(fixed, ("r1",)))
    assert (status.state, status.acked_version) == ("acked", fixed.version_info)
    assert status.last_nack == nack  # kept as history


def test_only_changed_types_are_pushed_in_ads_order() -> None:
    h = Harness(snap())
    h.connect()
    assert h.publish(snap()) == []  # same content: nothing to send
    only_route = h.publish(snap(routes={"r1": "two"}))
    assert [r.type_url for r in only_route] == [ROUTE]
    pushed = h.publish(snap(clusters={"c1": 1, "c2": 1}, listeners={"l1": 9090}, routes={"r1": "three"}))
    assert [r.type_url for r in pushed] == [CLUSTER, LISTENER, ROUTE]
    assert len({r.nonce for r in pushed}) == 3
    assert h.stream.status.state == "pending"


def test_routes_are_sent_by_requested_name_only() -> None:
    h = Harness(snap(routes={"r1": "one", "r2": "two", "orphan": "x"}))
    last = h.connect(("r1",))
    assert names(last[ROUTE]) == ["r1"]
    # a change to a route nobody requested is not pushed
    assert h.publish(snap(routes={"r1": "one", "r2": "two", "orphan": "y"})) == []
    # a new listener makes Envoy subscribe r2 too, with its ACK of the latest nonce
    [more] = h.send(h.envoy.ack(last[ROUTE], ("r1", "r2")))
    assert names(more) == ["r1", "r2"]
    assert h.stream.status.types[ROUTE].names == ["r1", "r2"]
    # a subscription to a name that does not exist sends nothing new
    assert h.send(h.envoy.ack(more, ("r1", "r2", "missing"))) == []


def test_stale_nonces_are_ignored() -> None:
    h = Harness(snap())
    last = h.connect()
    [first] = h.publish(snap(routes={"r1": "two"}))
    [second] = h.publish(snap(routes={"r1": "three"}))
    assert h.send(h.envoy.ack(first, ("r1", "r2"))) == []  # answers an older response
    assert h.stream.status.types[ROUTE].state == "pending"
    assert h.send(h.envoy.nack(first, last[ROUTE].version_info, "old")) == []
    assert h.nacks == []
    h.send(h.envoy.ack(second, ("r1",)))
    assert h.stream.status.types[ROUTE].acked_version == second.version_info


def test_types_envoy_did_not_request_are_never_pushed() -> None:
    h = Harness(snap())
    [cds] = h.send(h.envoy.request(CLUSTER))
    h.send(h.envoy.ack(cds))
    pushed = h.publish(snap(clusters={"c9": 1}, listeners={"l9": 1}, routes={"r9": "x"}))
    assert [r.type_url for r in pushed] == [CLUSTER]


def test_nothing_is_sent_before_a_snapshot_exists() -> None:
    h = Harness(None)
    assert h.send(h.envoy.request(CLUSTER)) == []
    assert h.send(h.envoy.request(LISTENER)) == []
    assert h.stream.status.state == "requested"
    pushed = h.publish(snap())
    assert [r.type_url for r in pushed] == [CLUSTER, LISTENER]


def test_reconnect_with_a_version_gets_a_full_answer() -> None:
    h = Harness(snap())
    h.connect()
    again = Harness(h.snapshot)  # a new stream: Envoy resends its version but no nonce
    [cds] = again.send(again.envoy.request(CLUSTER, version_info=h.snapshot.version))  # type: ignore[union-attr]
    assert names(cds) == ["c1"]


def test_dropped_clusters_stay_until_routes_moved_off_them() -> None:
    h = Harness(snap(clusters={"old": 1}))
    h.connect()
    pushed = h.publish(snap(clusters={"new": 1}, routes={"r1": "to new"}))
    assert [(r.type_url, names(r)) for r in pushed] == [
        (CLUSTER, ["new", "old"]),
        (ROUTE, ["r1"]),
        (CLUSTER, ["new"]),
    ]
    assert pushed[0].version_info == h.snapshot.version + KEPT_SUFFIX  # type: ignore[union-attr]
    assert pushed[2].version_info == h.snapshot.version  # type: ignore[union-attr]
    for response in pushed:
        h.send(h.envoy.ack(response, ("r1",)))
    assert (h.stream.status.state, h.stream.status.acked_version) == ("acked", h.snapshot.version)  # type: ignore[union-attr]
    # dropping a cluster with nothing else changing needs no interim response
    assert [names(r) for r in h.publish(snap(clusters={}, routes={"r1": "to new"}))] == [[]]


def test_unsupported_types_are_ignored() -> None:
    h = Harness(snap())
    assert h.send(h.envoy.request("type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig")) == []
    assert h.stream.status.types == {}


# --------------------------------------------------------------------------- grpc servicer


class Client:
    """An ADS stream from this process: send requests, read responses."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str) -> None:
        self.envoy = FakeEnvoy(node_id)
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self.call = stub.StreamAggregatedResources(self._requests())

    async def _requests(self) -> AsyncIterator[Any]:
        while (item := await self.outbox.get()) is not None:
            yield item

    async def ask(self, request: Any) -> Any:
        await self.outbox.put(request)
        return await asyncio.wait_for(self.call.read(), 5)


@pytest.fixture
async def ads() -> AsyncIterator[tuple[XdsServer, grpc.aio.Channel]]:
    xds = XdsServer()
    async with serving(xds) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield xds, channel


async def test_servicer_serves_per_node_snapshots_and_pushes_changes(
    ads: tuple[XdsServer, grpc.aio.Channel],
) -> None:
    xds, channel = ads
    xds.set_snapshot(snap(listeners={"default": 1}))
    xds.set_snapshot(snap(listeners={"special": 2}), node_id="b")
    a, b = Client(channel, "a"), Client(channel, "b")
    lds_a = await a.ask(a.envoy.request(LISTENER))
    lds_b = await b.ask(b.envoy.request(LISTENER))
    assert (names(lds_a), names(lds_b)) == (["default"], ["special"])
    await a.outbox.put(a.envoy.ack(lds_a))
    await b.outbox.put(b.envoy.ack(lds_b))
    await wait_until(lambda: [n.state for n in xds.nodes()] == ["acked", "acked"])
    xds.set_snapshot(snap(listeners={"default": 1, "more": 3}))  # node b has its own
    pushed = await asyncio.wait_for(a.call.read(), 5)
    assert names(pushed) == ["default", "more"]
    status = xds.status()
    json.dumps(status)
    assert [n["node_id"] for n in status["nodes"]] == ["a", "b"]
    assert status["versions"] == {"": xds.snapshot_for("a").version, "b": xds.snapshot_for("b").version}  # type: ignore[union-attr]
    assert status["nodes"][1]["acked_version"] == lds_b.version_info
    await b.outbox.put(None)  # b goes away
    b.call.cancel()
    await wait_until(lambda: [n.node_id for n in xds.nodes()] == ["a"])
    await xds.close()  # ends a's stream cleanly
    assert await asyncio.wait_for(a.call.read(), 5) is grpc.aio.EOF
    assert await a.call.code() == grpc.StatusCode.OK
    assert xds.nodes() == []


async def test_a_nack_rolls_back_only_the_node_that_sent_it(
    ads: tuple[XdsServer, grpc.aio.Channel],
) -> None:
    xds, channel = ads
    good = snap(listeners={"good": 1})
    xds.set_snapshot(good)
    first = Client(channel, "a")
    lds = await first.ask(first.envoy.request(LISTENER))
    await first.outbox.put(first.envoy.ack(lds))
    await wait_until(lambda: [n.acked_version for n in xds.nodes()] == [good.version])
    bad = snap(listeners={"bad": 1})
    xds.set_snapshot(bad)
    pushed = await asyncio.wait_for(first.call.read(), 5)
    await first.outbox.put(first.envoy.nack(pushed, good.version, "rejected"))
    await wait_until(lambda: len(xds.nacks) == 1)
    assert xds.status()["rejected_versions"] == {"a": [bad.version]}
    late = Client(channel, "c")  # another node: a's NACK does not concern it
    assert names(await late.ask(late.envoy.request(LISTENER))) == ["bad"]
    again = Client(channel, "a")  # a reconnecting keeps what it accepted
    assert names(await again.ask(again.envoy.request(LISTENER))) == ["good"]
    fixed = snap(listeners={"fixed": 1})
    xds.set_snapshot(fixed)
    for client in (first, late, again):
        assert names(await asyncio.wait_for(client.call.read(), 5)) == ["fixed"]
