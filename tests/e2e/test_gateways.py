"""Three gateways on one directory of manifests, each a `legation controller --gateway NAME` with
its own real Envoy: each serves only its own Mappings (and those for every gateway), and a change
to one gateway's Mapping reaches only that gateway."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures.managed import HOST, free_port, http_get, legation_binary, tcp_open, wait_for
from fixtures.processes import Launcher, controller_bootstrap

pytestmark = pytest.mark.e2e

MAPPING = """apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {{name: {name}, namespace: demo}}
spec: {{gateways: {gateways}, prefix: /{name}/, service: "127.0.0.1:{port}"}}
"""
GATEWAYS = ("default", "blue", "green")


@dataclass
class Gateway:
    name: str
    api: int
    http: int

    def status(self, path: str) -> int:
        try:
            return http_get(f"http://{HOST}:{self.http}{path}", timeout=2)[0]
        except OSError:
            return -1

    def version(self) -> str:
        return str(json.loads(http_get(f"http://{HOST}:{self.api}/api/status")[1])["envoy_version"])


def _start(launch: Launcher, source: Path, name: str) -> Gateway:
    xds, api, http = free_port(), free_port(), free_port()
    launch.spawn(
        f"controller-{name}",
        [
            legation_binary(), "controller", "--gateway", name,
            "--source", str(source),
            "--xds-listen", f"{HOST}:{xds}",
            "--http-listen", f"{HOST}:{api}",
            "--envoy-http-port", str(http),
            "--envoy-https-port", str(free_port()),
            "--ratelimit-service", "none",
        ],
    )  # fmt: skip
    wait_for(lambda: http_get(f"http://{HOST}:{api}/readyz")[0] == 200, timeout=30, what=f"{name} ready")
    launch.envoy(controller_bootstrap(xds, f"envoy-{name}"), wait=False)
    return Gateway(name, api, http)


def test_three_gateways_each_serve_their_own(launch: Launcher, tmp_path: Path) -> None:
    upstream = free_port()
    launch.spawn("echo", [legation_binary(), "echo", "--listen", f"{HOST}:{upstream}", "--name", "up"])
    wait_for(lambda: tcp_open(HOST, upstream), timeout=20, what="echo upstream")
    source = tmp_path / "manifests"
    source.mkdir()
    for name, gateways in (
        ("default", "[default]"),
        ("blue", "[blue]"),
        ("green", "[green]"),
        ("all", '["*"]'),
    ):
        (source / f"{name}.yaml").write_text(MAPPING.format(name=name, gateways=gateways, port=upstream))
    gateways = [_start(launch, source, name) for name in GATEWAYS]

    for gateway in gateways:
        wait_for(lambda g=gateway: g.status("/all/x") == 200, timeout=30, what=f"{gateway.name} serves /all/")
        for other in GATEWAYS:
            expected = 200 if other == gateway.name else 404
            assert gateway.status(f"/{other}/x") == expected, (gateway.name, other)

    versions = {g.name: g.version() for g in gateways}
    (source / "blue-extra.yaml").write_text(MAPPING.format(name="extra", gateways="[blue]", port=upstream))
    blue = gateways[1]
    wait_for(lambda: blue.status("/extra/x") == 200, timeout=30, what="blue serves its new Mapping")
    for gateway in gateways:
        changed = gateway.version() != versions[gateway.name]
        assert changed == (gateway is blue), gateway.name
        if gateway is not blue:
            assert gateway.status("/extra/x") == 404
