"""The incremental (delta) ADS protocol, driven with hand-made request sequences.

The last tests run the real grpc.aio servicer in-process: a delta client next to a state-of-the-
world one, both shown by `XdsServer.nodes()`, and the NACK fallback for late delta clients."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from fixtures.xds_resources import serving, snap, wait_until
from google.rpc import status_pb2

from legation.controller.xds.delta import DeltaRecord, DeltaStream, resource_version
from legation.controller.xds.protocol import KEPT_SUFFIX, Nack
from legation.controller.xds.server import XdsServer
from legation.controller.xds.snapshot import CLUSTER, LISTENER, ROUTE, SECRET, Snapshot

# --------------------------------------------------------------------------- helpers


def names(response: Any) -> list[str]:
    return [r.name for r in response.resources]


def versions(response: Any) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


def body_of(response: Any, name: str) -> str:
    [found] = [r for r in response.resources if r.name == name]
    config = route_pb2.RouteConfiguration.FromString(found.resource.value)
    return str(config.virtual_hosts[0].routes[0].direct_response.body.inline_string)


class FakeEnvoy:
    """Builds the requests an Envoy would send on one delta ADS stream."""

    def __init__(self, node_id: str = "envoy-1") -> None:
        self.node = base_pb2.Node(id=node_id, cluster="edge")
        self.first = True

    def request(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        **fields: Any,
    ) -> Any:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            **fields,
        )
        if self.first:
            req.node.CopyFrom(self.node)
            self.first = False
        return req

    def ack(self, response: Any, **fields: Any) -> Any:
        return self.request(response.type_url, response_nonce=response.nonce, **fields)

    def nack(self, response: Any, error: str) -> Any:
        return self.request(
            response.type_url,
            response_nonce=response.nonce,
            error_detail=status_pb2.Status(code=3, message=error),
        )


class Harness:
    """One DeltaStream whose snapshot the test sets, with a fixed clock."""

    def __init__(self, snapshot: Snapshot | None) -> None:
        self.snapshot = snapshot
        self.nacks: list[Nack] = []
        self.accepted: list[str] = []
        self.records: list[DeltaRecord] = []
        self.stream = DeltaStream(
            stream=1,
            lookup=lambda node: self.snapshot,
            nonces=itertools.count(1),
            on_nack=self.nacks.append,
            on_accepted=lambda node, snapshot: self.accepted.append(snapshot.version),
            on_response=self.records.append,
            clock=lambda: 1000.0,
        )
        self.envoy = FakeEnvoy()

    def send(self, request: Any) -> list[Any]:
        return self.stream.on_request(request)

    def publish(self, snapshot: Snapshot) -> list[Any]:
        self.snapshot = snapshot
        return self.stream.on_snapshot()

    def ack_all(self, responses: list[Any]) -> None:
        for response in responses:
            assert self.send(self.envoy.ack(response)) == []

    def connect(self, route_names: tuple[str, ...] = ("r1",)) -> dict[str, Any]:
        """CDS + LDS (wildcard) + RDS (by name) requested and ACKed; the first response per type."""
        first = {}
        for type_url in (CLUSTER, LISTENER):
            [first[type_url]] = self.send(self.envoy.request(type_url))
        [first[ROUTE]] = self.send(self.envoy.request(ROUTE, route_names))
        self.ack_all(list(first.values()))
        return first


# --------------------------------------------------------------------------- protocol


def test_initial_wildcard_request_gets_every_resource_with_its_version() -> None:
    h = Harness(snap(clusters={"c1": 1, "c2": 2}))
    [cds] = h.send(h.envoy.request(CLUSTER))
    assert (cds.type_url, cds.system_version_info, names(cds)) == (CLUSTER, h.snapshot.version, ["c1", "c2"])  # type: ignore[union-attr]
    assert cds.control_plane.identifier == "legation"
    assert list(cds.removed_resources) == []
    for resource in cds.resources:
        assert resource.resource.type_url == CLUSTER
        assert cluster_pb2.Cluster.FromString(resource.resource.value).name == resource.name
        assert resource.version == resource_version(resource.resource.value)
    assert versions(cds)["c1"] != versions(cds)["c2"]
    status = h.stream.status
    assert (status.node_id, status.cluster, status.state) == ("envoy-1", "edge", "pending")
    assert status.types[CLUSTER].names is None  # wildcard
    assert h.send(h.envoy.ack(cds)) == []
    cds_status = status.types[CLUSTER]
    assert (cds_status.state, cds_status.acked_version, cds_status.acked_nonce) == (
        "acked",
        cds.system_version_info,
        cds.nonce,
    )
    assert (status.state, status.acked_version) == ("acked", cds.system_version_info)
    assert h.accepted == [cds.system_version_info]


def test_a_change_sends_only_the_changed_resource() -> None:
    h = Harness(snap(clusters={"c1": 1, "c2": 1}, routes={"r1": "one", "r2": "two"}))
    h.connect(("r1", "r2"))
    assert h.publish(h.snapshot) == []  # type: ignore[arg-type]
    assert h.publish(snap(clusters={"c1": 1, "c2": 1}, routes={"r1": "one", "r2": "two"})) == []
    [rds] = h.publish(snap(clusters={"c1": 1, "c2": 1}, routes={"r1": "one", "r2": "TWO"}))
    assert (rds.type_url, names(rds), body_of(rds, "r2")) == (ROUTE, ["r2"], "TWO")
    assert rds.system_version_info == h.snapshot.version  # type: ignore[union-attr]
    h.ack_all([rds])
    [cds] = h.publish(snap(clusters={"c1": 1, "c2": 5}, routes={"r1": "one", "r2": "TWO"}))
    assert (cds.type_url, names(cds)) == (CLUSTER, ["c2"])
    h.ack_all([cds])
    assert (h.stream.status.state, h.stream.status.acked_version) == ("acked", h.snapshot.version)  # type: ignore[union-attr]
    assert [(r.type_url, r.resources, r.removed) for r in h.records[-2:]] == [
        (ROUTE, ("r2",), ()),
        (CLUSTER, ("c2",), ()),
    ]


def test_changes_are_pushed_in_ads_order_and_removals_named() -> None:
    h = Harness(snap(clusters={"c1": 1, "c2": 1}))
    h.connect()
    pushed = h.publish(snap(clusters={"c1": 1, "c3": 1}, listeners={"l1": 9090}, routes={"r1": "two"}))
    # c2 goes while listeners and routes change: its removal waits until they have moved
    assert [(r.type_url, names(r), list(r.removed_resources)) for r in pushed] == [
        (CLUSTER, ["c3"], []),
        (LISTENER, ["l1"], []),
        (ROUTE, ["r1"], []),
        (CLUSTER, [], ["c2"]),
    ]
    assert len({r.nonce for r in pushed}) == 4
    assert pushed[0].system_version_info == h.snapshot.version + KEPT_SUFFIX  # type: ignore[union-attr]
    assert pushed[3].system_version_info == h.snapshot.version  # type: ignore[union-attr]
    h.ack_all(pushed)
    assert (h.stream.status.state, h.stream.status.acked_version) == ("acked", h.snapshot.version)  # type: ignore[union-attr]
    # a removal with nothing else changing is one response, with no resources
    [removal] = h.publish(snap(clusters={"c1": 1}, listeners={"l1": 9090}, routes={"r1": "two"}))
    assert (removal.type_url, names(removal), list(removal.removed_resources)) == (CLUSTER, [], ["c3"])
    # and with nothing to add, the removal still comes after the routes
    h.ack_all([removal])
    pushed = h.publish(snap(clusters={}, listeners={"l1": 9090}, routes={"r1": "three"}))
    assert [(r.type_url, list(r.removed_resources)) for r in pushed] == [(ROUTE, []), (CLUSTER, ["c1"])]


def test_named_subscriptions_come_and_go() -> None:
    h = Harness(snap(routes={"r1": "one", "r2": "two", "orphan": "x"}))
    first = h.connect(("r1",))
    assert names(first[ROUTE]) == ["r1"]
    assert h.stream.status.types[ROUTE].names == ["r1"]
    # a change to a route nobody subscribed to is not pushed
    assert h.publish(snap(routes={"r1": "one", "r2": "two", "orphan": "y"})) == []
    # a subscription (Envoy sends it without a nonce) sends what it adds, nothing else
    [more] = h.send(h.envoy.request(ROUTE, ["r2"]))
    assert (names(more), list(more.removed_resources)) == (["r2"], [])
    assert h.stream.status.types[ROUTE].names == ["r1", "r2"]
    h.ack_all([more])
    # a subscription to a name that does not exist is answered: it does not exist
    [absent] = h.send(h.envoy.request(ROUTE, ["missing"]))
    assert (names(absent), list(absent.removed_resources)) == ([], ["missing"])
    h.ack_all([absent])
    assert h.publish(snap(routes={"r1": "one", "r2": "two", "orphan": "z"})) == []  # not repeated
    # once it exists, it is sent
    [created] = h.publish(snap(routes={"r1": "one", "r2": "two", "orphan": "z", "missing": "m"}))
    assert names(created) == ["missing"]
    h.ack_all([created])
    # unsubscribed: changes no longer pushed; subscribed again: sent again, whole
    assert h.send(h.envoy.request(ROUTE, unsubscribe=["r1"])) == []
    assert h.publish(snap(routes={"r1": "ONE", "r2": "two", "orphan": "z", "missing": "m"})) == []
    [again] = h.send(h.envoy.request(ROUTE, ["r1"]))
    assert (names(again), body_of(again, "r1")) == (["r1"], "ONE")


def test_explicit_wildcard_subscription_and_its_end() -> None:
    h = Harness(snap(clusters={"c1": 1, "c2": 1}))
    [cds] = h.send(h.envoy.request(CLUSTER, ["*"]))
    assert names(cds) == ["c1", "c2"]
    h.ack_all([cds])
    assert h.send(h.envoy.request(CLUSTER, unsubscribe=["*"])) == []
    assert h.stream.status.types[CLUSTER].names == []
    assert h.publish(snap(clusters={"c1": 9, "c2": 9})) == []
    # a named route request that is empty is not a wildcard (only listeners and clusters are)
    [rds] = h.send(h.envoy.request(ROUTE))
    assert (names(rds), list(rds.removed_resources)) == ([], [])


def test_reconnect_with_initial_versions_sends_only_what_differs() -> None:
    old = snap(clusters={"c1": 1, "c2": 1, "c3": 1}, routes={"r1": "one", "r2": "two"})
    h = Harness(old)
    first = h.connect(("r1", "r2"))
    held = {t: versions(r) for t, r in first.items()}
    # the server restarted; meanwhile c2 changed, c3 went, c4 came, r2 changed
    new = snap(clusters={"c1": 1, "c2": 2, "c4": 1}, routes={"r1": "one", "r2": "TWO"})
    again = Harness(new)
    [cds] = again.send(again.envoy.request(CLUSTER, initial_resource_versions=held[CLUSTER]))
    assert (names(cds), list(cds.removed_resources)) == (["c2", "c4"], ["c3"])
    [lds] = again.send(again.envoy.request(LISTENER, initial_resource_versions=held[LISTENER]))
    assert (names(lds), list(lds.removed_resources)) == ([], [])  # answered, with nothing in it
    [rds] = again.send(again.envoy.request(ROUTE, ["r1", "r2"], initial_resource_versions=held[ROUTE]))
    assert (names(rds), body_of(rds, "r2")) == (["r2"], "TWO")
    again.ack_all([cds, lds, rds])
    assert (again.stream.status.state, again.stream.status.acked_version) == ("acked", new.version)
    # Envoy reports a route it no longer subscribes to: forgotten, never "removed"
    third = Harness(new)
    [rds] = third.send(third.envoy.request(ROUTE, ["r1"], initial_resource_versions=held[ROUTE]))
    assert (names(rds), list(rds.removed_resources)) == ([], [])


def test_nack_is_recorded_and_the_type_stays_nacked_until_the_resource_is_replaced() -> None:
    h = Harness(snap(clusters={"c1": 1}, routes={"r1": "one", "r2": "two"}))
    h.connect(("r1", "r2"))
    good = h.snapshot.version  # type: ignore[union-attr]
    [rds] = h.publish(snap(clusters={"c1": 1}, routes={"r1": "bad", "r2": "two"}))
    assert h.send(h.envoy.nack(rds, "Invalid regex")) == []
    status = h.stream.status
    nack = status.last_nack
    assert nack is not None and nack == status.types[ROUTE].last_nack and h.nacks == [nack]
    assert (nack.node_id, nack.type_url, nack.version, nack.nonce, nack.error, nack.at) == (
        "envoy-1",
        ROUTE,
        rds.system_version_info,
        rds.nonce,
        "Invalid regex",
        1000.0,
    )
    assert (status.state, status.acked_version) == ("nacked", good)
    assert (status.types[ROUTE].state, status.types[ROUTE].acked_version) == ("nacked", good)
    # the rejected content is not sent again
    assert h.publish(snap(clusters={"c1": 1}, routes={"r1": "bad", "r2": "two"})) == []
    # an unrelated change is sent and accepted, but Envoy still lacks r1: still nacked
    [cds] = h.publish(snap(clusters={"c1": 2}, routes={"r1": "bad", "r2": "two"}))
    h.ack_all([cds])
    assert (status.types[CLUSTER].state, status.types[ROUTE].state, status.state) == (
        "acked",
        "nacked",
        "nacked",
    )
    assert status.acked_version == good
    # a change to another route neither clears r1's rejection
    [other] = h.publish(snap(clusters={"c1": 2}, routes={"r1": "bad", "r2": "TWO"}))
    assert names(other) == ["r2"]
    h.ack_all([other])
    assert status.types[ROUTE].state == "nacked"
    # replacing r1 does
    [fixed] = h.publish(snap(clusters={"c1": 2}, routes={"r1": "fixed", "r2": "TWO"}))
    assert (names(fixed), body_of(fixed, "r1")) == (["r1"], "fixed")
    h.ack_all([fixed])
    assert (status.state, status.acked_version) == ("acked", fixed.system_version_info)
    assert status.last_nack == nack  # kept as history
    assert h.accepted[-1] == fixed.system_version_info and rds.system_version_info not in h.accepted


def test_every_response_is_answered_by_its_own_nonce_and_unknown_nonces_are_ignored() -> None:
    h = Harness(snap())
    h.connect()
    [first] = h.publish(snap(routes={"r1": "two"}))
    [second] = h.publish(snap(routes={"r1": "three"}))
    assert h.send(h.envoy.request(ROUTE, response_nonce="999")) == []
    assert h.send(h.envoy.nack(discovery_pb2.DeltaDiscoveryResponse(type_url=ROUTE, nonce="998"), "x")) == []
    assert h.nacks == []
    h.ack_all([first])
    assert h.stream.status.types[ROUTE].state == "pending"  # the second is still unanswered
    assert h.stream.status.types[ROUTE].acked_version == first.system_version_info
    h.ack_all([second])
    assert h.stream.status.types[ROUTE].state == "acked"
    assert h.stream.status.types[ROUTE].acked_version == second.system_version_info
    h.ack_all([])
    assert h.send(h.envoy.ack(second)) == []  # answered twice: ignored


def test_nothing_is_sent_before_a_snapshot_exists_then_every_requested_type_is_answered() -> None:
    h = Harness(None)
    assert h.send(h.envoy.request(CLUSTER)) == []
    assert h.send(h.envoy.request(LISTENER)) == []
    assert h.send(h.envoy.request(SECRET, ["tls"])) == []
    assert h.stream.status.state == "requested"
    pushed = h.publish(snap(listeners={}))
    assert [(r.type_url, names(r), list(r.removed_resources)) for r in pushed] == [
        (CLUSTER, ["c1"], []),
        (LISTENER, [], []),  # empty, but answered: Envoy's initialisation waits for it
        (SECRET, [], []),
    ]


def test_unsupported_types_are_ignored() -> None:
    h = Harness(snap())
    assert h.send(h.envoy.request("type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig")) == []
    assert h.stream.status.types == {}


# --------------------------------------------------------------------------- grpc servicer


class Client:
    """An ADS stream from this process, delta or state of the world."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str, *, delta: bool = True) -> None:
        self.node = base_pb2.Node(id=node_id, cluster="edge")
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.call = method(self._requests())

    async def _requests(self) -> AsyncIterator[Any]:
        while (item := await self.outbox.get()) is not None:
            yield item

    async def ask(self, request: Any) -> Any:
        request.node.CopyFrom(self.node)
        await self.outbox.put(request)
        return await self.read()

    async def read(self) -> Any:
        return await asyncio.wait_for(self.call.read(), 5)


@pytest.fixture
async def ads() -> AsyncIterator[tuple[XdsServer, grpc.aio.Channel]]:
    xds = XdsServer()
    async with serving(xds) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield xds, channel


def delta_request(type_url: str, **fields: Any) -> Any:
    return discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, **fields)


async def test_servicer_serves_delta_next_to_state_of_the_world(
    ads: tuple[XdsServer, grpc.aio.Channel],
) -> None:
    xds, channel = ads
    xds.set_snapshot(snap(listeners={"l1": 1, "l2": 2}))
    delta, sotw = Client(channel, "d"), Client(channel, "s", delta=False)
    lds_d = await delta.ask(delta_request(LISTENER))
    lds_s = await sotw.ask(discovery_pb2.DiscoveryRequest(type_url=LISTENER))
    assert [r.name for r in lds_d.resources] == ["l1", "l2"] and len(lds_s.resources) == 2
    await delta.outbox.put(delta_request(LISTENER, response_nonce=lds_d.nonce))
    await sotw.outbox.put(
        discovery_pb2.DiscoveryRequest(
            type_url=LISTENER, version_info=lds_s.version_info, response_nonce=lds_s.nonce
        )
    )
    await wait_until(lambda: [n.state for n in xds.nodes()] == ["acked", "acked"])
    xds.set_snapshot(snap(listeners={"l1": 1, "l2": 3}))
    pushed_d, pushed_s = await delta.read(), await sotw.read()
    assert [r.name for r in pushed_d.resources] == ["l2"]  # delta: only what changed
    assert len(pushed_s.resources) == 2  # state of the world: everything
    status = xds.status()
    json.dumps(status)
    nodes = {n["node_id"]: n for n in status["nodes"]}
    assert set(nodes) == {"d", "s"}
    assert nodes["d"].keys() == nodes["s"].keys()
    assert nodes["d"]["types"][LISTENER].keys() == nodes["s"]["types"][LISTENER].keys()
    assert nodes["d"]["state"] == nodes["s"]["state"] == "pending"
    assert nodes["d"]["types"][LISTENER]["sent_version"] == xds.snapshot_for("d").version  # type: ignore[union-attr]
    assert [(r.node_id, r.resources) for r in xds.delta_responses] == [("d", ("l1", "l2")), ("d", ("l2",))]
    await xds.close()
    assert await delta.read() is grpc.aio.EOF
    assert await delta.call.code() == grpc.StatusCode.OK
    assert xds.nodes() == []


async def test_delta_nack_falls_back_for_that_node_only_and_a_reconnect_resyncs(
    ads: tuple[XdsServer, grpc.aio.Channel],
) -> None:
    xds, channel = ads
    good = snap(clusters={"a": 1, "b": 1})
    xds.set_snapshot(good)
    first = Client(channel, "edge")
    cds = await first.ask(delta_request(CLUSTER))
    await first.outbox.put(delta_request(CLUSTER, response_nonce=cds.nonce))
    await wait_until(lambda: [n.acked_version for n in xds.nodes()] == [good.version])
    bad = snap(clusters={"a": 1, "b": 2})
    xds.set_snapshot(bad)
    pushed = await first.read()
    assert [r.name for r in pushed.resources] == ["b"]
    await first.outbox.put(
        delta_request(
            CLUSTER, response_nonce=pushed.nonce, error_detail=status_pb2.Status(code=3, message="no")
        )
    )
    await wait_until(lambda: len(xds.nacks) == 1)
    assert xds.status()["rejected_versions"] == {"edge": [bad.version]}
    assert xds.nodes()[0].state == "nacked"
    other = Client(channel, "other")  # another node is served the newest snapshot
    assert (await other.ask(delta_request(CLUSTER))).system_version_info == bad.version
    # this node reconnecting, holding the good versions, is sent nothing new
    late = Client(channel, "edge")
    held = {r.name: r.version for r in cds.resources}
    resync = await late.ask(delta_request(CLUSTER, initial_resource_versions=held))
    assert (list(resync.resources), list(resync.removed_resources)) == ([], [])
    assert resync.system_version_info == good.version
    fixed = snap(clusters={"a": 1, "c": 1})
    xds.set_snapshot(fixed)
    got = await late.read()
    assert ([r.name for r in got.resources], list(got.removed_resources)) == (["c"], ["b"])
    got = await first.read()  # it was sent the rejected b: that one goes too
    assert ([r.name for r in got.resources], list(got.removed_resources)) == (["c"], ["b"])
