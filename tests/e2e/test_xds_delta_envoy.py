"""Black box: a real Envoy speaking incremental (delta) ADS to an XdsServer in this test's loop.

The bootstrap is `legation.controller.commands.bootstrap.bootstrap(delta=True)` (what `legation envoy-bootstrap
--delta` prints), with the admin port the `envoy` fixture picks. The snapshot: a listener (routes
over RDS from ADS), one route configuration (`/ready` → the `admin` cluster, a STATIC cluster to
the Envoy's own admin port; everything else → a direct response) and a second, unused cluster.
What a delta response carried is read from `XdsServer.delta_responses`, and Envoy's own counters
confirm what it applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from fixtures.processes import EnvoyProcess, controller_bootstrap, free_port, http_get
from fixtures.xds_resources import serving

from e2e.test_xds_envoy import ROUTES, _cluster, _listener, _routes, eventually, get, node, serves, synced
from legation.controller.xds.delta import DeltaRecord
from legation.controller.xds.server import XdsServer
from legation.controller.xds.snapshot import CLUSTER, LISTENER, ROUTE, Snapshot

pytestmark = pytest.mark.e2e

NODE = "delta-edge"


def gateway(envoy: EnvoyProcess, body: str, *, spare: int | None = 1, invalid: bool = False) -> Snapshot:
    """The gateway snapshot; `spare`: the connect timeout (s) of the unused cluster, None = no
    such cluster."""
    clusters = {"admin": _cluster("admin", envoy.admin_port)}
    if spare is not None:
        clusters["spare"] = _cluster("spare", free_port_of(envoy))
        clusters["spare"].connect_timeout.seconds = spare
    return Snapshot.build(
        {
            CLUSTER: clusters,
            LISTENER: {"http": _listener(envoy.port)},
            ROUTE: {ROUTES: _routes(body, "admin", invalid=invalid)},
        }
    )


def free_port_of(envoy: EnvoyProcess) -> int:
    """A port nothing listens on, the same for the whole test (so `spare` changes only when asked)."""
    return envoy.ports.setdefault("SPARE", free_port())


def delta_bootstrap(xds_port: int) -> dict[str, Any]:
    config = controller_bootstrap(xds_port, NODE, node_cluster="legation-e2e", delta=True)
    assert config["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    return config


def records_since(xds: XdsServer, mark: int) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(type, resources, removed) of the delta responses sent after the first `mark` ones."""
    found: list[DeltaRecord] = list(xds.delta_responses)[mark:]
    return [(r.type_url, r.resources, r.removed) for r in found]


async def stats(envoy: EnvoyProcess, *names: str) -> dict[str, int]:
    return {name: await asyncio.to_thread(envoy.stat, name) for name in names}


CDS_OK = "cluster_manager.cds.update_success"
LDS_OK = "listener_manager.lds.update_success"
RDS_OK = f"http.ingress.rds.{ROUTES}.update_success"
MODIFIED = "cluster_manager.cluster_modified"
REMOVED = "cluster_manager.cluster_removed"
ACTIVE = "cluster_manager.active_clusters"
COUNTERS = (CDS_OK, LDS_OK, RDS_OK, MODIFIED, REMOVED, ACTIVE)


async def test_delta_envoy_gets_only_changes_keeps_serving_through_a_nack_and_resyncs(
    envoy: Callable[..., EnvoyProcess],
) -> None:
    first, port = XdsServer(), free_port()
    async with serving(first, port):
        edge = envoy(delta_bootstrap(port), wait=False)
        first.set_snapshot(gateway(edge, "v1"), node_id=NODE)
        await asyncio.to_thread(edge.wait_ready)
        await serves(edge, "v1")
        assert await get(edge, "/ready") == (200, "LIVE\n")  # through the ADS-provided cluster
        await eventually(lambda: synced(first, NODE))
        status = node(first, NODE)
        assert status.cluster == "legation-e2e"
        assert {t: s.state for t, s in status.types.items()} == {
            CLUSTER: "acked",
            LISTENER: "acked",
            ROUTE: "acked",
        }
        assert (status.types[CLUSTER].names, status.types[ROUTE].names) == (None, [ROUTES])
        assert sorted(records_since(first, 0)) == sorted(
            [(CLUSTER, ("admin", "spare"), ()), (LISTENER, ("http",), ()), (ROUTE, (ROUTES,), ())]
        )

        # one route configuration changes: only it is sent, and Envoy applies only an RDS update
        before, mark = await stats(edge, *COUNTERS), len(first.delta_responses)
        first.set_snapshot(gateway(edge, "v2"), node_id=NODE)
        assert await serves(edge, "v2", timeout=2.0) < 1.5
        await eventually(lambda: synced(first, NODE))
        assert records_since(first, mark) == [(ROUTE, (ROUTES,), ())]
        routes_v2 = first.snapshot_for(NODE)
        assert routes_v2 is not None
        after = await stats(edge, *COUNTERS)
        assert after[RDS_OK] == before[RDS_OK] + 1
        assert {k: after[k] for k in (CDS_OK, LDS_OK, MODIFIED)} == {
            k: before[k] for k in (CDS_OK, LDS_OK, MODIFIED)
        }

        # one cluster changes: only it is sent; Envoy modifies that one cluster
        before, mark = after, len(first.delta_responses)
        first.set_snapshot(gateway(edge, "v2", spare=2), node_id=NODE)
        await eventually(lambda: synced(first, NODE))
        assert records_since(first, mark) == [(CLUSTER, ("spare",), ())]
        after = await stats(edge, *COUNTERS)
        assert (after[CDS_OK], after[MODIFIED]) == (before[CDS_OK] + 1, before[MODIFIED] + 1)
        assert (after[RDS_OK], after[LDS_OK]) == (before[RDS_OK], before[LDS_OK])

        # a cluster goes: it is named as removed, and Envoy removes it
        before, mark = after, len(first.delta_responses)
        first.set_snapshot(gateway(edge, "v2", spare=None), node_id=NODE)
        await eventually(lambda: synced(first, NODE))
        assert records_since(first, mark) == [(CLUSTER, (), ("spare",))]
        after = await stats(edge, *COUNTERS)
        assert (after[REMOVED], after[ACTIVE]) == (before[REMOVED] + 1, before[ACTIVE] - 1)
        _, clusters = await asyncio.to_thread(http_get, f"{edge.admin_url}/clusters", 1.0)
        assert "admin::" in clusters and "spare::" not in clusters
        good = first.snapshot_for(NODE)
        assert good is not None

        # a route configuration Envoy rejects: recorded, and the last good one keeps serving
        bad = gateway(edge, "v3", spare=None, invalid=True)
        first.set_snapshot(bad, node_id=NODE)
        await eventually(lambda: node(first, NODE).state == "nacked")
        status = node(first, NODE)
        nack = status.last_nack
        assert nack is not None and list(first.nacks) == [nack]
        assert (nack.node_id, nack.type_url, nack.version) == (NODE, ROUTE, bad.version)
        assert "missing ): /(unclosed" in nack.error, nack.error  # RE2, word for word from Envoy
        assert status.acked_version == good.version
        assert status.types[ROUTE].acked_version == routes_v2.version  # the last routes it took
        for _ in range(3):
            assert await get(edge) == (200, "v2")
        assert first.status()["rejected_versions"] == {NODE: [bad.version]}
        assert first.snapshot_for(NODE) is good  # what a (re)connecting Envoy is served
    assert first.nodes() == []  # close() ended the stream; Envoy keeps what it has
    assert await get(edge) == (200, "v2")

    # a new server (a controller restart) with one route changed: Envoy reconnects and reports the
    # versions it holds, so only the route configuration is sent again
    second = XdsServer()
    second.set_snapshot(gateway(edge, "after", spare=None), node_id=NODE)
    before = await stats(edge, *COUNTERS)
    async with serving(second, port):
        took = await serves(edge, "after", timeout=10.0)
        await eventually(lambda: synced(second, NODE))
        sent = [(t, resources) for t, resources, _ in records_since(second, 0) if resources]
        assert sent == [(ROUTE, (ROUTES,))], records_since(second, 0)
        assert all(removed == () for _, _, removed in records_since(second, 0))
        after = await stats(edge, *COUNTERS)
        assert (after[MODIFIED], after[REMOVED], after[ACTIVE]) == (
            before[MODIFIED],
            before[REMOVED],
            before[ACTIVE],
        )
        assert await get(edge, "/ready") == (200, "LIVE\n")
        assert list(second.nacks) == []
    assert took < 5.0, took
