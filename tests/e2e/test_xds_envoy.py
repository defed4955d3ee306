"""Black box: real Envoys configured only over ADS by an XdsServer running in this test's loop.

Bootstrap: tests/fixtures/envoy_ads_bootstrap.yaml (a static `xds` cluster, everything else from
ADS). Each Envoy gets its own snapshot by node id, because each listens on its own free port.
The snapshot: a listener (HTTP connection manager, routes over RDS from ADS), one route
configuration (`/ready` → a STATIC cluster pointing at that Envoy's own admin port, everything
else → a direct response) and that cluster. Blocking probes run in threads: the ADS server
shares this event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from fixtures.processes import HOST, EnvoyProcess, free_port, http_get
from fixtures.xds_resources import serving

from legation.controller.xds.protocol import NodeStatus
from legation.controller.xds.server import XdsServer
from legation.controller.xds.snapshot import CLUSTER, LISTENER, ROUTE, Snapshot

pytestmark = pytest.mark.e2e

BOOTSTRAP = Path(__file__).parent.parent / "fixtures" / "envoy_ads_bootstrap.yaml"
ROUTES = "routes"

# --------------------------------------------------------------------------- snapshot


def _cluster(name: str, port: int) -> Any:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    c.connect_timeout.seconds = 1
    c.load_assignment.cluster_name = name
    address = c.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    address.address, address.port_value = HOST, port
    return c


def _listener(port: int) -> Any:
    manager = hcm.HttpConnectionManager(stat_prefix="ingress")
    manager.rds.route_config_name = ROUTES
    manager.rds.config_source.ads.SetInParent()
    manager.rds.config_source.resource_api_version = 2  # V3
    router = manager.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router())
    item = listener_pb2.Listener(name="http")
    item.address.socket_address.address, item.address.socket_address.port_value = HOST, port
    network = item.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager")
    network.typed_config.Pack(manager)
    return item


def _routes(body: str, cluster: str, *, invalid: bool) -> Any:
    config = route_pb2.RouteConfiguration(name=ROUTES)
    vhost = config.virtual_hosts.add(name="all", domains=["*"])
    if invalid:  # Envoy rejects this regex (RE2: missing closing parenthesis)
        broken = vhost.routes.add()
        broken.match.safe_regex.regex = "/(unclosed"
        broken.direct_response.status = 500
    ready = vhost.routes.add()
    ready.match.path = "/ready"
    ready.route.cluster = cluster
    rest = vhost.routes.add()
    rest.match.prefix = "/"
    rest.direct_response.status = 200
    rest.direct_response.body.inline_string = body
    return config


def gateway(envoy: EnvoyProcess, body: str, *, cluster: str = "admin", invalid: bool = False) -> Snapshot:
    """Listener on the Envoy's LISTENER_PORT; `/ready` through `cluster` to its admin port."""
    return Snapshot.build(
        {
            CLUSTER: {cluster: _cluster(cluster, envoy.admin_port)},
            LISTENER: {"http": _listener(envoy.port)},
            ROUTE: {ROUTES: _routes(body, cluster, invalid=invalid)},
        }
    )


# --------------------------------------------------------------------------- helpers


@pytest.fixture
async def ads() -> AsyncIterator[tuple[XdsServer, int]]:
    xds, port = XdsServer(), free_port()
    async with serving(xds, port):
        yield xds, port


async def start_envoy(
    launch_envoy: Callable[..., EnvoyProcess], xds: XdsServer, port: int, node: str, body: str
) -> EnvoyProcess:
    """An Envoy for `node`, its snapshot published, ready and serving `body`."""
    envoy = launch_envoy(BOOTSTRAP, values={"XDS_PORT": port, "NODE_ID": node}, wait=False)
    xds.set_snapshot(gateway(envoy, body), node_id=node)
    await asyncio.to_thread(envoy.wait_ready)
    await serves(envoy, body)
    return envoy


async def get(envoy: EnvoyProcess, path: str = "/") -> tuple[int, str]:
    return await asyncio.to_thread(http_get, envoy.base_url + path, 1.0)


async def eventually(check: Callable[[], Awaitable[bool] | bool], *, timeout: float = 5.0) -> float:
    """Poll until `check()` is true; return the seconds it took."""
    start = time.monotonic()
    while True:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, "condition not reached in time"
        await asyncio.sleep(0.05)


async def serves(envoy: EnvoyProcess, body: str, *, timeout: float = 5.0) -> float:
    async def check() -> bool:
        return await get(envoy) == (200, body)

    return await eventually(check, timeout=timeout)


def node(xds: XdsServer, node_id: str) -> NodeStatus:
    [found] = [n for n in xds.nodes() if n.node_id == node_id]
    return found


def synced(xds: XdsServer, node_id: str) -> bool:
    """The node accepted everything of its current snapshot."""
    snapshot = xds.snapshot_for(node_id)
    nodes = [n for n in xds.nodes() if n.node_id == node_id]
    return (
        snapshot is not None
        and len(nodes) == 1
        and nodes[0].state == "acked"
        and nodes[0].acked_version == snapshot.version
    )


# --------------------------------------------------------------------------- tests


async def test_changes_are_served_acked_and_a_nack_keeps_the_last_good_config(
    ads: tuple[XdsServer, int], envoy: Callable[..., EnvoyProcess]
) -> None:
    xds, port = ads
    edge = await start_envoy(envoy, xds, port, "edge", "v1")
    assert await get(edge, "/ready") == (200, "LIVE\n")  # through the ADS-provided cluster
    await eventually(lambda: synced(xds, "edge"))
    status = node(xds, "edge")
    assert status.cluster == "legation-e2e"
    assert {t: s.state for t, s in status.types.items()} == {
        CLUSTER: "acked",
        LISTENER: "acked",
        ROUTE: "acked",
    }
    assert status.types[ROUTE].names == [ROUTES]

    xds.set_snapshot(gateway(edge, "v2"), node_id="edge")
    assert await serves(edge, "v2", timeout=2.0) < 1.5
    await eventually(lambda: synced(xds, "edge"))
    good = xds.snapshot_for("edge")
    assert good is not None

    bad = gateway(edge, "v3", invalid=True)
    xds.set_snapshot(bad, node_id="edge")
    await eventually(lambda: node(xds, "edge").state == "nacked")
    status = node(xds, "edge")
    nack = status.last_nack
    assert nack is not None and list(xds.nacks) == [nack]
    assert (nack.node_id, nack.type_url, nack.version) == ("edge", ROUTE, bad.version)
    assert "missing ): /(unclosed" in nack.error, nack.error  # RE2, word for word from Envoy
    assert status.acked_version == good.version
    assert status.types[ROUTE].acked_version == good.version  # what Envoy still runs
    for _ in range(3):
        assert await get(edge) == (200, "v2")
    assert xds.status()["rejected_versions"] == {"edge": [bad.version]}

    # this Envoy reconnecting starts from the last snapshot it accepted, not the one it rejected
    await asyncio.to_thread(edge.process.stop)
    edge.process.start()
    await asyncio.to_thread(edge.wait_ready)
    await serves(edge, "v2")
    await eventually(lambda: synced(xds, "edge") and node(xds, "edge").acked_version == good.version)

    # the next good snapshot also moves /ready to a renamed cluster (clusters and routes at once)
    xds.set_snapshot(gateway(edge, "v4", cluster="admin-b"), node_id="edge")
    await serves(edge, "v4", timeout=2.0)
    assert await get(edge, "/ready") == (200, "LIVE\n")
    await eventually(lambda: synced(xds, "edge"))
    assert list(xds.nacks) == [nack]  # history: what failed, and why


async def test_two_envoys_converge_and_a_restarted_envoy_resynchronises(
    ads: tuple[XdsServer, int], envoy: Callable[..., EnvoyProcess]
) -> None:
    xds, port = ads
    a = await start_envoy(envoy, xds, port, "edge-a", "a1")
    b = await start_envoy(envoy, xds, port, "edge-b", "b1")
    await eventually(lambda: synced(xds, "edge-a") and synced(xds, "edge-b"))
    assert [n.node_id for n in xds.nodes()] == ["edge-a", "edge-b"]

    xds.set_snapshot(gateway(a, "a2"), node_id="edge-a")
    xds.set_snapshot(gateway(b, "b2"), node_id="edge-b")
    await asyncio.gather(serves(a, "a2", timeout=2.0), serves(b, "b2", timeout=2.0))
    await eventually(lambda: synced(xds, "edge-a") and synced(xds, "edge-b"))

    await asyncio.to_thread(b.process.stop)
    await eventually(lambda: [n.node_id for n in xds.nodes()] == ["edge-a"])
    xds.set_snapshot(gateway(b, "b3"), node_id="edge-b")  # changed while b was away
    b.process.start()
    await asyncio.to_thread(b.wait_ready)
    await serves(b, "b3")
    await eventually(lambda: synced(xds, "edge-b"))
    assert await get(a) == (200, "a2")
    assert list(xds.nacks) == []


async def test_envoy_keeps_serving_while_the_server_restarts_then_resynchronises(
    envoy: Callable[..., EnvoyProcess],
) -> None:
    first, port = XdsServer(), free_port()
    async with serving(first, port):
        edge = await start_envoy(envoy, first, port, "edge", "before")
        await eventually(lambda: synced(first, "edge"))
        assert [n.node_id for n in first.nodes()] == ["edge"]
    assert first.nodes() == []  # close() ended the stream
    for _ in range(3):
        assert await get(edge) == (200, "before")  # the last accepted config stays
    second = XdsServer()
    second.set_snapshot(gateway(edge, "after"), node_id="edge")
    async with serving(second, port):
        took = await serves(edge, "after", timeout=10.0)
        await eventually(lambda: synced(second, "edge"))
    assert took < 5.0, took
