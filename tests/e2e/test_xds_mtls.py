"""The xDS channel's security, end to end: `legation controller` processes serving ADS over mTLS,
real Envoys bootstrapped for it, and raw gRPC clients playing the attacker.

- Envoy connects over mTLS with the certificate `legation envoy-bootstrap` points it at, and gets
  its configuration; the controller shows it under its certificate's identity.
- A client without a certificate, with one from another CA, or in plaintext gets nothing (the
  handshake fails); one whose claimed node id its certificate does not allow is refused before
  anything is sent. Rotating the client CA file applies to the next connection, no restart.
- Keepalive: Envoy pinging every second keeps one connection for many periods when the
  controller's ping policy allows it, and is cut off (reconnects) with a stricter policy — the
  ~2-minute reconnects of Envoy's 30 s pings against gRPC's default policy, sped up.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from fixtures.managed import HOST, envoy_binary, free_port, http_get, legation_binary, tcp_open, wait_for
from fixtures.processes import EnvoyProcess, Launcher, ManagedProcess, controller_bootstrap

from legation.controller.commands.bootstrap import XdsTls, sds_files
from legation.controller.commands.demo import LocalCa
from legation.controller.xds.snapshot import LISTENER, SECRET

pytestmark = pytest.mark.e2e

MANIFESTS = """apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {{name: a, namespace: demo}}
spec: {{prefix: /a/, service: 127.0.0.1:{port}}}
---
apiVersion: legation.dev/v1alpha1
kind: Host
metadata: {{name: shop, namespace: demo}}
spec: {{hostname: shop.localhost, tlsSecret: {{name: shop-tls}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-tls, namespace: demo}}
type: kubernetes.io/tls
stringData:
  tls.crt: {cert}
  tls.key: {key}
"""


@dataclass
class Pki:
    ca: LocalCa
    server: Path
    """tls.crt, tls.key of the controller (127.0.0.1), ca.crt: the client CA."""
    envoy: Path
    """tls.crt, tls.key of an Envoy named `edge`, ca.crt: the controller's issuer."""


def write_tls(directory: Path, cert_key: tuple[str, str], ca: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in zip(("tls.crt", "tls.key", "ca.crt"), (*cert_key, ca), strict=True):
        (directory / name).write_text(text)
    return directory


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = LocalCa.create("xds test CA")
    return Pki(
        ca=ca,
        server=write_tls(tmp_path / "server", ca.issue(HOST), ca.certificate),
        envoy=write_tls(tmp_path / "envoy", ca.issue("edge"), ca.certificate),
    )


def start_controller(
    launch: Launcher, tmp_path: Path, pki: Pki, *, extra: tuple[str, ...] = ()
) -> tuple[ManagedProcess, int, int, int]:
    """A controller over mTLS on a Mapping /a/ (to an echo upstream) and a Host with a private key;
    returns the process and its xDS, API and Envoy HTTP ports."""
    upstream = free_port()
    launch.spawn("echo", [legation_binary(), "echo", "--listen", f"{HOST}:{upstream}", "--name", "up"])
    wait_for(lambda: tcp_open(HOST, upstream), timeout=20, what="echo upstream")
    source = tmp_path / "manifests"
    source.mkdir(exist_ok=True)
    cert, key = pki.ca.issue("shop.localhost")
    (source / "a.yaml").write_text(
        MANIFESTS.format(port=upstream, cert=json.dumps(cert), key=json.dumps(key))
    )
    xds, api, http = free_port(), free_port(), free_port()
    process = launch.spawn(
        "controller",
        [
            legation_binary(), "controller", "--allow-loopback-upstreams",
            "--source", str(source),
            "--xds-listen", f"{HOST}:{xds}",
            "--xds-tls-cert", str(pki.server / "tls.crt"),
            "--xds-tls-key", str(pki.server / "tls.key"),
            "--xds-client-ca", str(pki.server / "ca.crt"),
            "--http-listen", f"{HOST}:{api}",
            "--envoy-http-port", str(http),
            "--envoy-https-port", str(free_port()),
            "--ratelimit-service", "none",
            *extra,
        ],
    )  # fmt: skip
    wait_for(lambda: http_get(f"http://{HOST}:{api}/readyz")[0] == 200, timeout=30, what="controller ready")
    return process, xds, api, http


def start_envoy(
    launch: Launcher, tmp_path: Path, pki: Pki, xds: int, node_id: str, **options: Any
) -> EnvoyProcess:
    tls = XdsTls(
        cert_dir=str(pki.envoy), sds_dir=str(tmp_path / f"sds-{node_id.replace('/', '-')}"), server_name=HOST
    )
    Path(tls.sds_dir).mkdir()
    for name, content in sds_files(tls).items():
        (Path(tls.sds_dir) / name).write_text(yaml.safe_dump(content))
    return launch.envoy(controller_bootstrap(xds, node_id, tls=tls, **options), wait=False)


def api(port: int, path: str) -> Any:
    status, body = http_get(f"http://{HOST}:{port}{path}")
    assert status == 200, body
    return json.loads(body)


def route_status(port: int) -> int:
    try:
        return http_get(f"http://{HOST}:{port}/a/1", timeout=2)[0]
    except OSError:
        return -1


# --------------------------------------------------------------------------- raw clients


async def ask(xds: int, credentials: grpc.ChannelCredentials | None, node_id: str, type_url: str) -> Any:
    """One ADS request as `node_id`; the first response, or the gRPC error."""
    target = f"{HOST}:{xds}"
    options = [("grpc.ssl_target_name_override", HOST)]
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials, options=options)
    )
    async with channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources(timeout=5)
        request = discovery_pb2.DiscoveryRequest(type_url=type_url)
        request.node.id = node_id
        if type_url == SECRET:
            request.resource_names.append("demo/shop-tls")
        try:
            await call.write(request)
            return await call.read()
        except grpc.aio.AioRpcError as exc:
            return exc


def credentials(ca: LocalCa, client: tuple[str, str] | None) -> grpc.ChannelCredentials:
    key_cert = (client[1].encode(), client[0].encode()) if client else (None, None)
    return grpc.ssl_channel_credentials(ca.certificate.encode(), *key_cert)


def test_envoy_gets_its_configuration_over_mtls_and_attackers_get_nothing(
    launch: Launcher, tmp_path: Path, pki: Pki
) -> None:
    _, xds, api_port, http = start_controller(launch, tmp_path, pki)
    envoy = start_envoy(launch, tmp_path, pki, xds, "edge/pod-1")
    wait_for(lambda: route_status(http) == 200, timeout=30, what="route /a/ served through mTLS xDS")
    [node] = api(api_port, "/api/envoys")["nodes"]
    assert (node["node_id"], node["identity"]) == ("edge/pod-1", "edge")
    assert envoy.stat("cluster.legation-xds.ssl.handshake") >= 1  # it really is TLS

    other_ca = LocalCa.create("someone else's CA")
    refused = {
        "plaintext": asyncio.run(ask(xds, None, "edge/x", LISTENER)),
        "no client certificate": asyncio.run(ask(xds, credentials(pki.ca, None), "edge/x", SECRET)),
        "certificate from another CA": asyncio.run(
            ask(xds, credentials(pki.ca, other_ca.issue("edge")), "edge/x", SECRET)
        ),
    }
    for what, answer in refused.items():
        assert isinstance(answer, grpc.aio.AioRpcError), (what, answer)
        assert answer.code() == grpc.StatusCode.UNAVAILABLE, (what, answer)  # no handshake, no stream

    # A valid certificate claiming another identity's node id: refused before anything is sent.
    intruder = credentials(pki.ca, pki.ca.issue("intruder"))
    answer = asyncio.run(ask(xds, intruder, "edge/pod-1", SECRET))
    assert isinstance(answer, grpc.aio.AioRpcError) and answer.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'edge/pod-1' is not allowed for certificate intruder" in str(answer.details())
    refusals = api(api_port, "/api/envoys")["refused"]
    assert [(r["node_id"], r["identity"]) for r in refusals] == [("edge/pod-1", "intruder")]
    # ... while under its own name it gets what any Envoy gets (positive control).
    answer = asyncio.run(ask(xds, intruder, "intruder", LISTENER))
    assert isinstance(answer, discovery_pb2.DiscoveryResponse) and answer.resources
    # The intruder's own stream has ended (its record goes when the server sees the close).
    wait_for(
        lambda: [n["node_id"] for n in api(api_port, "/api/envoys")["nodes"]] == ["edge/pod-1"],
        timeout=10,
        what="only the real Envoy listed as connected",
    )

    # Rotating the client CA file applies to new connections without a restart.
    (pki.server / "ca.crt").write_text(other_ca.certificate)
    answer = asyncio.run(ask(xds, credentials(pki.ca, other_ca.issue("edge")), "edge/new", LISTENER))
    assert isinstance(answer, discovery_pb2.DiscoveryResponse), answer
    answer = asyncio.run(ask(xds, credentials(pki.ca, pki.ca.issue("edge")), "edge/new", LISTENER))
    assert isinstance(answer, grpc.aio.AioRpcError) and answer.code() == grpc.StatusCode.UNAVAILABLE
    assert route_status(http) == 200  # the established Envoy connection is untouched


def test_an_envoy_pinging_often_keeps_its_stream_when_the_policy_allows_it(
    launch: Launcher, tmp_path: Path, pki: Pki
) -> None:
    _, xds, _, http = start_controller(launch, tmp_path, pki, extra=("--xds-keepalive-min-interval", "0.5"))
    envoy = start_envoy(launch, tmp_path, pki, xds, "edge/pinger", keepalive=1)
    wait_for(lambda: route_status(http) == 200, timeout=30, what="route served")
    time.sleep(7)  # seven keepalive periods; the strict policy below cuts it within about three
    stats = envoy.stats()
    assert stats["cluster.legation-xds.upstream_cx_total"] == 1, stats[
        "cluster.legation-xds.upstream_cx_total"
    ]
    assert stats["control_plane.connected_state"] == 1
    assert stats.get("cluster.legation-xds.upstream_cx_destroy_remote", 0) == 0


def test_a_ping_policy_stricter_than_envoys_keepalive_makes_it_reconnect(
    launch: Launcher, tmp_path: Path, pki: Pki
) -> None:
    """The control for the test above: the same Envoy against a controller accepting pings every
    5 s at most (as gRPC's default, 5 minutes, against Envoy's 30 s pings) is cut off."""
    _, xds, _, http = start_controller(launch, tmp_path, pki, extra=("--xds-keepalive-min-interval", "5"))
    envoy = start_envoy(launch, tmp_path, pki, xds, "edge/pinger", keepalive=1)
    wait_for(lambda: route_status(http) == 200, timeout=30, what="route served")
    wait_for(lambda: envoy.stat("cluster.legation-xds.upstream_cx_total") >= 2, timeout=15, what="reconnect")


def test_the_cli_writes_a_tls_bootstrap_envoy_accepts(tmp_path: Path, pki: Pki) -> None:
    sds = tmp_path / "sds"
    sds.mkdir()
    printed = subprocess.run(
        [
            legation_binary(), "envoy-bootstrap",
            "--xds", "legation-controller.legation-system.svc:18000",
            "--node-id", "edge/n1",
            "--xds-tls-dir", str(pki.envoy),
            "--sds-dir", str(sds),
        ],
        check=True, capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    config = yaml.safe_load(printed)
    [cluster] = config["static_resources"]["clusters"]
    context = cluster["transport_socket"]["typed_config"]
    assert context["sni"] == "legation-controller.legation-system.svc"
    trusted = yaml.safe_load((sds / "xds-trusted-ca.yaml").read_text())["resources"][0]["validation_context"]
    assert trusted["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "legation-controller.legation-system.svc"}}
    ]
    assert trusted["trusted_ca"]["filename"] == str(pki.envoy / "ca.crt")
    path = tmp_path / "bootstrap.yaml"
    path.write_text(printed)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
