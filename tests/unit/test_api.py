"""The controller's HTTP API and page (legation.controller.serving.api, legation.controller.serving.page), in-process over ASGI.

The app serves stages from a real pipeline run over a directory of manifests (a good Mapping
with a canary, a JWTPolicy, a Host with a generated TLS Secret, a bad Mapping, a document whose
text tries to inject a script) and a real XdsServer, whose ADS stream a test drives with
DiscoveryRequests as Envoy would, up to a NACK."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from fastapi import FastAPI
from fixtures.manifests import self_signed, tls_secret
from fixtures.xds_resources import FakeEnvoyStream, wait_until
from google.rpc import status_pb2

from legation.controller.serving.access import HttpAccess
from legation.controller.serving.api import REDACTED, create_app
from legation.controller.serving.feed import Feed
from legation.controller.serving.pipeline import ControllerState, Stages, build
from legation.controller.sources.directory import DirectorySource
from legation.controller.translate.envoy import EnvoyOptions
from legation.controller.xds.server import XdsServer
from legation.controller.xds.snapshot import CLUSTER, SECRET
from legation.core.bearer import TokenFile
from legation.core.fastmetrics import FastCounter

ORDERS = """\
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata:
  name: orders
  namespace: team-orders
  annotations: {legation.dev/rate-limit: "100/m per ip; 20/s"}
spec:
  prefix: /orders/
  methods: [GET, POST]
  headers: {x-tier: gold}
  service: orders.team-orders:8080
  weight: 90
  auth: {policy: orders-jwt}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: orders-canary, namespace: team-orders}
spec:
  prefix: /orders/
  methods: [GET, POST]
  headers: {x-tier: gold}
  service: orders-v2.team-orders:8080
  weight: 10
  auth: {policy: orders-jwt}
---
apiVersion: legation.dev/v1alpha1
kind: JWTPolicy
metadata: {name: orders-jwt, namespace: team-orders}
spec:
  providers:
    - name: corp
      issuer: https://idp.example.com/
      jwks: {uri: https://idp.example.com/jwks.json}
  rules:
    - requires: {anyOf: [corp]}
"""

HOST = """\
apiVersion: legation.dev/v1alpha1
kind: Host
metadata: {name: api, namespace: team-orders}
spec: {hostname: api.example.com, tlsSecret: {name: api-tls}}
"""

BAD = """\
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: lookbehind, namespace: team-orders}
spec:
  regex: '/(?<=a)b'
  service: a:80
"""

EVIL = """\
apiVersion: legation.dev/v1alpha1
kind: "<script>alert('kind')</script>"
metadata: {name: evil, namespace: team-orders}
spec: {}
"""


def write_manifests(root: Path) -> Path:
    (root / "team-orders").mkdir(parents=True)
    (root / "team-orders" / "orders.yaml").write_text(ORDERS)
    (root / "team-orders" / "host.yaml").write_text(HOST)
    api_tls = tls_secret("api-tls", *self_signed("api.example.com"), namespace="team-orders")
    (root / "team-orders" / "api-tls.yaml").write_text(api_tls)
    (root / "team-orders" / "bad.yaml").write_text(BAD)
    (root / "evil.yaml").write_text(EVIL)
    return root


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_manifests(tmp_path_factory.mktemp("manifests"))


@pytest.fixture(scope="module")
def stages(manifests: Path) -> Stages:
    return build(DirectorySource(manifests).load(), EnvoyOptions())


@pytest.fixture
def state(stages: Stages) -> ControllerState:
    state = ControllerState(source_description="directory <test>")
    state.record(stages)
    return state


@pytest.fixture
def xds(stages: Stages) -> XdsServer:
    server = XdsServer()
    server.set_snapshot(stages.envoy)
    return server


@contextlib.asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://controller") as c:
        yield c


@pytest.fixture
async def client(state: ControllerState, xds: XdsServer) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(create_app(state, xds)) as c:
        yield c


def private_keys(stages: Stages) -> list[str]:
    return [s.private_key for s in stages.result.ir.tls_secrets]


# --- probes ------------------------------------------------------------------------------------


async def test_probes_follow_the_state(stages: Stages) -> None:
    state, xds = ControllerState(), XdsServer()
    async with client_for(create_app(state, xds)) as client:
        assert (await client.get("/healthz")).status_code == 200
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json() == {"ready": False, "reason": "no pipeline run has finished yet"}
        assert (await client.get("/api/ir")).status_code == 503
        assert "Ready" in (await client.get("/")).text  # the page works before the first run
        state.last_error = "RuntimeError: boom"
        assert "boom" in (await client.get("/readyz")).json()["reason"]
        state.record(stages)
        assert (await client.get("/readyz")).json() == {"ready": True}
        assert (await client.get("/healthz")).text == "ok\n"


async def test_metrics_include_the_lock_free_collectors(client: httpx.AsyncClient) -> None:
    counter = FastCounter("legation_test_api_probe_total", "A counter only this test uses.", ["kind"])
    try:
        counter.inc(("page",), 3)
        response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        assert 'legation_test_api_probe_total{kind="page"} 3.0' in response.text
    finally:
        from prometheus_client import REGISTRY

        REGISTRY.unregister(counter)


# --- stages as JSON ----------------------------------------------------------------------------


async def test_status_summarises_the_run(client: httpx.AsyncClient, stages: Stages) -> None:
    status = (await client.get("/api/status")).json()
    assert status["ready"] is True
    assert status["source"] == "directory <test>"
    assert status["source_version"] == stages.source.version
    assert status["envoy_version"] == stages.envoy.version
    assert status["counts"]["rejected"] == 2  # the bad regex and the unknown kind
    assert status["counts"]["resources"] == len(stages.statuses) == 7
    assert status["counts"]["routes"] == 1
    assert [run["envoy_version"] for run in status["history"]] == [stages.envoy.version]
    assert status["last_run"]["seconds"] == stages.seconds
    assert status["envoys"] == {"versions": {"": stages.envoy.version}, "nodes": 0, "nacks": 0}


async def test_resources_show_every_status_with_field_paths_and_filters(client: httpx.AsyncClient) -> None:
    everything = (await client.get("/api/resources")).json()
    by_name = {(r["kind"], r["name"]): r for r in everything["resources"]}
    assert len(by_name) == 7
    bad = by_name["Mapping", "lookbehind"]
    assert bad["state"] == "Rejected"
    assert bad["where"].endswith("team-orders/bad.yaml:1")
    assert bad["origin"]["line"] == 1
    [problem] = bad["problems"]
    assert problem["path"] == "spec.regex"
    assert (problem["line"], problem["where"][-10:]) == (5, "bad.yaml:5")  # the field's own line
    assert problem["reason"].startswith("invalid RE2 regex")
    assert bad["resource"] is None  # invalid on its own: there is no validated resource
    good = by_name["Mapping", "orders"]
    assert (good["state"], good["problems"]) == ("Accepted", [])
    assert good["resource"]["spec"]["service"] == "orders.team-orders:8080"
    assert good["resource"]["metadata"]["annotations"] == {"legation.dev/rate-limit": "100/m per ip; 20/s"}

    rejected = (await client.get("/api/resources", params={"kind": "Mapping", "state": "rejected"})).json()
    assert [r["name"] for r in rejected["resources"]] == ["lookbehind"]
    accepted = (await client.get("/api/resources", params={"state": "Accepted"})).json()
    assert {r["state"] for r in accepted["resources"]} == {"Accepted"}
    assert len(accepted["resources"]) == 5


async def test_secret_resources_keep_their_keys_but_not_their_values(
    client: httpx.AsyncClient, stages: Stages
) -> None:
    response = await client.get("/api/resources", params={"kind": "Secret"})
    [secret] = response.json()["resources"]
    assert secret["resource"]["stringData"] == {"tls.crt": REDACTED, "tls.key": REDACTED}
    assert "PRIVATE KEY" not in response.text
    for key in private_keys(stages):
        assert key.splitlines()[1] not in (await client.get("/api/resources")).text


async def test_ir_is_json_of_the_compile_result_without_private_keys(
    client: httpx.AsyncClient, stages: Stages
) -> None:
    response = await client.get("/api/ir")
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == stages.envoy.version
    ir = body["ir"]
    [route] = ir["routes"]
    assert route["id"] == "team-orders/orders"
    assert route["match"]["methods"] == ["GET", "POST"]
    assert [(d["mapping"], d["weight"]) for d in route["destinations"]] == [
        ("team-orders/orders", 90),
        ("team-orders/orders-canary", 10),
    ]
    assert route["policy"] == "team-orders/orders-jwt"
    assert [rule["requests"] for limit in route["rate_limits"] for rule in limit["rules"]] == [100, 20]
    [secret] = ir["tls_secrets"]
    assert secret["name"] == "team-orders/api-tls"
    assert "BEGIN CERTIFICATE" in secret["certificate_chain"]
    assert secret["private_key"] == REDACTED
    assert private_keys(stages)  # the IR does carry the key; only the dump leaves it out
    assert "PRIVATE KEY" not in response.text


async def test_envoy_snapshot_as_json_without_private_keys(client: httpx.AsyncClient, stages: Stages) -> None:
    response = await client.get("/api/envoy")
    body = response.json()
    assert body["version"] == stages.envoy.version
    assert set(body["resources"]) == set(stages.envoy.resources)
    clusters = body["resources"][CLUSTER]
    assert set(clusters) == set(stages.envoy.resources[CLUSTER])
    assert all(c["name"] == name for name, c in clusters.items())
    secrets = body["resources"][SECRET]
    assert secrets, "the Host's certificate is served over SDS"
    for secret in secrets.values():
        assert "BEGIN CERTIFICATE" in json.dumps(secret)
        assert secret["tls_certificate"]["private_key"] == REDACTED
    assert "PRIVATE KEY" not in response.text
    for key in private_keys(stages):
        assert key.splitlines()[1] not in response.text


async def test_json_is_deterministic_across_runs_and_apps(manifests: Path, xds: XdsServer) -> None:
    bodies = []
    for _ in range(2):
        state = ControllerState()
        state.record(build(DirectorySource(manifests).load(), EnvoyOptions()))
        async with client_for(create_app(state, xds)) as client:
            bodies.append(
                [(await client.get(p)).content for p in ("/api/ir", "/api/envoy", "/api/resources")]
            )
    assert bodies[0] == bodies[1]


async def test_feeds_from_the_stages_or_from_the_feed_objects(
    state: ControllerState, xds: XdsServer, stages: Stages, tmp_path: Path
) -> None:
    async with client_for(create_app(state, xds)) as client:
        feeds = (await client.get("/api/feeds")).json()
    assert set(feeds) == {"authz", "ratelimit"}
    assert feeds["authz"]["content"] == stages.authz_feed
    assert "orders-jwt" in feeds["authz"]["content"]
    assert feeds["ratelimit"]["content"] == stages.ratelimit_feed
    assert feeds["authz"]["version"] != feeds["ratelimit"]["version"]

    published = {"authz": Feed(), "ratelimit": Feed()}
    published["authz"].publish(stages.authz_feed)
    published["ratelimit"].publish(stages.ratelimit_feed)
    token = tmp_path / "token"
    token.write_text("t" * 40 + "\n")
    access = HttpAccess(feed_tokens={"authz": TokenFile(token)})
    async with client_for(create_app(state, xds, published, access=access)) as client:
        feeds = (await client.get("/api/feeds")).json()
        assert feeds["authz"] == {"version": published["authz"].version, "content": stages.authz_feed}
        assert feeds["ratelimit"]["content"] == stages.ratelimit_feed
        assert (await client.get("/feed/authz")).status_code == 401, "a feed needs its token"
        # the feed module's own route is mounted
        served = await client.get("/feed/authz", headers={"Authorization": "Bearer " + "t" * 40})
        assert served.status_code == 200
        assert "orders-jwt" in served.text


async def test_new_stages_replace_what_was_cached(
    manifests: Path, tmp_path: Path, state: ControllerState, xds: XdsServer
) -> None:
    async with client_for(create_app(state, xds)) as client:
        before = (await client.get("/api/ir")).json()
        page_before = (await client.get("/")).text
        changed = write_manifests(tmp_path / "changed")
        (changed / "team-orders" / "bad.yaml").unlink()
        (changed / "more.yaml").write_text(
            ORDERS.split("---")[0]
            .replace("name: orders\n", "name: orders-search\n")
            .replace("/orders/", "/search/")
        )
        state.record(build(DirectorySource(changed).load(), EnvoyOptions()))
        after = (await client.get("/api/ir")).json()
        page_after = (await client.get("/")).text
    assert after["version"] != before["version"]
    assert sorted(r["id"] for r in after["ir"]["routes"]) == [
        "team-orders/orders",
        "team-orders/orders-search",
    ]
    assert "lookbehind" in page_before
    assert "lookbehind" not in page_after
    assert "/search" in page_after  # the match as Envoy applies it: whole segments, no trailing /


# --- connected Envoys --------------------------------------------------------------------------


@pytest.fixture
async def nacked(xds: XdsServer, stages: Stages) -> AsyncIterator[tuple[FakeEnvoyStream, str]]:
    """An Envoy that accepted the stages' clusters, then rejected the next snapshot's."""
    envoy = FakeEnvoyStream(xds, "edge-1")
    await envoy.send(type_url=CLUSTER)
    first = await envoy.receive()
    await envoy.send(type_url=CLUSTER, version_info=first.version_info, response_nonce=first.nonce)
    await wait_until(lambda: [n.state for n in xds.nodes()] == ["acked"])
    broken = cluster_pb2.Cluster()
    broken.CopyFrom(next(iter(stages.envoy.resources[CLUSTER].values())))
    broken.connect_timeout.seconds = 7
    bad = stages.envoy.replaced(CLUSTER, {broken.name: broken})
    xds.set_snapshot(bad)
    pushed = await envoy.receive()
    assert pushed.version_info == bad.version
    assert pushed.resources
    error = "cluster <script>alert('nack')</script>: connect_timeout rejected"
    await envoy.send(
        type_url=CLUSTER,
        version_info=first.version_info,
        response_nonce=pushed.nonce,
        error_detail=status_pb2.Status(code=3, message=error),
    )
    await wait_until(lambda: len(xds.nacks) == 1)
    try:
        yield envoy, bad.version
    finally:
        await envoy.close()


async def test_envoys_show_acked_versions_and_the_last_nack(
    client: httpx.AsyncClient, nacked: tuple[FakeEnvoyStream, str], stages: Stages
) -> None:
    _, bad_version = nacked
    envoys = (await client.get("/api/envoys")).json()
    [node] = envoys["nodes"]
    assert (node["node_id"], node["cluster"], node["state"]) == ("edge-1", "edge", "nacked")
    assert node["acked_version"] == stages.envoy.version
    assert node["snapshot_version"] == bad_version
    assert node["last_nack"]["version"] == bad_version
    assert "connect_timeout rejected" in node["last_nack"]["error"]
    assert node["types"][CLUSTER]["state"] == "nacked"
    assert [n["version"] for n in envoys["nacks"]] == [bad_version]
    assert envoys["rejected_versions"] == {"edge-1": [bad_version]}
    status = (await client.get("/api/status")).json()
    assert status["envoys"]["nodes"] == 1
    assert status["envoys"]["nacks"] == 1


async def test_page_shows_the_nack_escaped(
    client: httpx.AsyncClient, nacked: tuple[FakeEnvoyStream, str], stages: Stages
) -> None:
    _, bad_version = nacked
    page = (await client.get("/")).text
    sync = section(page, "sync")
    assert "edge-1" in sync
    assert "nacked" in sync
    assert stages.envoy.version in sync  # what it runs
    assert bad_version in sync  # what it was sent
    assert "connect_timeout rejected" in sync
    assert "&lt;script&gt;alert(&#x27;nack&#x27;)&lt;/script&gt;" in sync
    history = section(page, "nacks")
    assert "connect_timeout rejected" in history
    assert "Cluster" in history
    assert "<script>alert" not in page


async def test_envoy_that_went_away_leaves_its_nack_in_the_history(
    client: httpx.AsyncClient, xds: XdsServer, nacked: tuple[FakeEnvoyStream, str]
) -> None:
    envoy, _ = nacked
    await envoy.close()
    await wait_until(lambda: xds.nodes() == [])
    page = (await client.get("/")).text
    assert "No Envoy connected" in section(page, "sync")
    assert "connect_timeout rejected" in section(page, "nacks")
    assert len((await client.get("/api/envoys")).json()["nacks"]) == 1


# --- the page ----------------------------------------------------------------------------------


def section(page: str, section_id: str) -> str:
    start = page.index(f'<section id="{section_id}"')
    return page[start : page.index("</section>", start)]


async def test_page_shows_summary_rejected_resources_and_routes(
    client: httpx.AsyncClient, stages: Stages
) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    summary = section(page, "summary")
    assert "directory &lt;test&gt;" in summary
    assert stages.envoy.version in summary
    assert stages.source.version in summary
    assert "2 rejected" in summary

    rejected = section(page, "rejected")
    assert "Mapping team-orders/lookbehind" in rejected
    assert "bad.yaml:5" in rejected  # the line of spec.regex, as `legation validate` says
    assert "spec.regex" in rejected
    assert "invalid RE2 regex" in rejected

    routes = section(page, "routes")
    assert "/orders" in routes
    assert "methods GET, POST" in routes
    assert "x-tier: gold" in routes
    assert "orders.team-orders:8080</code> 90% (team-orders/orders)" in routes
    assert "orders-v2.team-orders:8080</code> 10% (team-orders/orders-canary)" in routes
    assert "team-orders/orders-jwt" in routes
    assert "100/m per ip; 20/s" in routes
    assert "No Envoy connected" in section(page, "sync")
    assert "No NACKs" in section(page, "nacks")


async def test_page_escapes_what_the_input_says(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    rejected = section(page, "rejected")
    assert "&lt;script&gt;alert(&#x27;kind&#x27;)&lt;/script&gt; team-orders/evil" in rejected
    assert "unknown kind &quot;&lt;script&gt;alert(&#x27;kind&#x27;)&lt;/script&gt;&quot;" in rejected
    assert "<script>alert" not in page
    assert page.count("<script>") == 1  # the page's own refresh script


async def test_page_has_no_external_assets(client: httpx.AsyncClient) -> None:
    page = (await client.get("/")).text
    for marker in ("http://", "https://", "<link", " src="):
        assert marker not in page.replace("https://idp.example.com/", "")


# --- scale -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thousand(tmp_path_factory: pytest.TempPathFactory) -> Stages:
    root = tmp_path_factory.mktemp("thousand")
    documents = [
        {
            "apiVersion": "legation.dev/v1alpha1",
            "kind": "Mapping",
            "metadata": {
                "name": f"svc-{i}",
                "namespace": f"team-{i % 10}",
                "annotations": {"legation.dev/rate-limit": "10/s per ip"},
            },
            "spec": {"prefix": f"/svc-{i}/", "service": f"svc-{i}.team-{i % 10}:8080"},
        }
        for i in range(1000)
    ]
    (root / "mappings.yaml").write_text("\n---\n".join(json.dumps(d) for d in documents))
    return build(DirectorySource(root).load(), EnvoyOptions())


async def test_a_thousand_mappings_are_rendered_once_per_run(thousand: Stages) -> None:
    state = ControllerState()
    state.record(thousand)
    paths = ("/", "/api/ir", "/api/envoy", "/api/resources")
    first: dict[str, float] = {}
    again: dict[str, float] = {}

    async def timed(client: httpx.AsyncClient, path: str) -> float:
        start = time.perf_counter()
        assert (await client.get(path)).status_code == 200
        return time.perf_counter() - start

    async with client_for(create_app(state, XdsServer())) as client:
        for path in paths:
            first[path] = await timed(client, path)
        for path in paths:
            again[path] = min([await timed(client, path) for _ in range(3)])  # the best of 3: no GC pause
        assert len((await client.get("/api/ir")).json()["ir"]["routes"]) == 1000
        assert section((await client.get("/")).text, "routes").count("<tr>") == 1001  # with the header
    for path in paths:
        # Served from the cache: a small fraction of the first request's work (and quick anyway).
        assert again[path] < max(first[path] / 3, 0.004), (path, first[path], again[path])
        assert again[path] < 0.25, (path, again[path])


async def test_api_and_page_need_loopback_or_the_api_token(
    state: ControllerState, xds: XdsServer, tmp_path: Path
) -> None:
    """From another address (a pod of the cluster), /api/* and the page need --api-token-file's
    token; probes stay open; loopback (kubectl port-forward) needs none."""
    token = tmp_path / "api-token"
    token.write_text("# rotated: both work\n" + "a" * 40 + "\n" + "b" * 40 + "\n")
    app = create_app(state, xds, access=HttpAccess(api_tokens=TokenFile(token)))
    remote = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))
    async with httpx.AsyncClient(transport=remote, base_url="http://controller") as client:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status_code == 200, path
        for path in ("/", "/api/status", "/api/resources", "/api/envoy", "/api/nothing-here"):
            refused = await client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == 'Bearer realm="legation-controller"'
            wrong = await client.get(path, headers={"Authorization": "Bearer " + "c" * 40})
            assert wrong.status_code == 401, path
        for good in ("a" * 40, "b" * 40):
            assert (
                await client.get("/api/status", headers={"Authorization": f"bearer {good}"})
            ).status_code == 200
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        local = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=local, base_url="http://controller") as client:
            assert (await client.get("/api/status")).status_code == 200, address
    no_token = httpx.ASGITransport(app=create_app(state, xds), client=("10.1.2.3", 40000))
    async with httpx.AsyncClient(transport=no_token, base_url="http://controller") as client:
        assert (
            await client.get("/api/status", headers={"Authorization": "Bearer " + "a" * 40})
        ).status_code == 401
