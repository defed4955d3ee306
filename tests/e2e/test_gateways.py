"""Three gateways on one directory of manifests, each a `legation controller --gateway NAME` with
its own real Envoy: each serves only its own Mappings (and those for every gateway), and a change
to one gateway's Mapping reaches only that gateway. The upgrade the README describes: a Mapping
moves from an `old` gateway to a `new` one while `*` routes keep answering on both."""

from __future__ import annotations

import json
import os
import threading
import time
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
            legation_binary(), "controller", "--gateway", name, "--allow-loopback-upstreams",
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


class Prober:
    """Requests `path` through every gateway's Envoy in a loop (a thread), recording failures."""

    def __init__(self, gateways: list[Gateway], path: str) -> None:
        self.gateways, self.path = gateways, path
        self.counts = dict.fromkeys((g.name for g in gateways), 0)
        self.failures: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for gateway in self.gateways:
                status = gateway.status(self.path)
                self.counts[gateway.name] += 1
                if status != 200:
                    self.failures.append((gateway.name, status))
            time.sleep(0.02)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def write(path: Path, text: str) -> None:
    """As an editor or `kubectl apply` would: the whole new content at once."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_upgrade_as_a_second_gateway_moves_a_mapping_without_downtime(
    launch: Launcher, tmp_path: Path
) -> None:
    """The README's upgrade: `old` and `new` controllers on one set of resources, each with its
    Envoy. `*` routes are served by both throughout; a Mapping moves [old] → [old, new] → [new],
    arriving on the new Envoy before it leaves the old one."""
    upstream = free_port()
    launch.spawn("echo", [legation_binary(), "echo", "--listen", f"{HOST}:{upstream}", "--name", "up"])
    wait_for(lambda: tcp_open(HOST, upstream), timeout=20, what="echo upstream")
    source = tmp_path / "manifests"
    source.mkdir()
    write(source / "all.yaml", MAPPING.format(name="all", gateways='["*"]', port=upstream))
    moving = source / "orders.yaml"
    write(moving, MAPPING.format(name="orders", gateways="[old]", port=upstream))
    old, new = _start(launch, source, "old"), _start(launch, source, "new")
    for gateway in (old, new):
        wait_for(lambda g=gateway: g.status("/all/x") == 200, timeout=30, what=f"{gateway.name} serves /all/")
    assert (old.status("/orders/x"), new.status("/orders/x")) == (200, 404)

    with Prober([old, new], "/all/x") as shared, Prober([old], "/orders/x") as before_move:
        write(moving, MAPPING.format(name="orders", gateways="[old, new]", port=upstream))
        wait_for(lambda: new.status("/orders/x") == 200, timeout=30, what="orders arrives on new")
        time.sleep(0.5)  # traffic moves here (DNS or load balancer weights): old still serves
    assert before_move.failures == [] and before_move.counts["old"] > 5

    with Prober([old, new], "/all/x") as after:
        write(moving, MAPPING.format(name="orders", gateways="[new]", port=upstream))
        wait_for(lambda: old.status("/orders/x") == 404, timeout=30, what="orders leaves old")
        assert new.status("/orders/x") == 200
        time.sleep(0.5)  # and the shared routes keep answering after it
    for prober in (shared, after):
        assert prober.failures == [], "a * route failed during the move"
        assert min(prober.counts.values()) > 5
