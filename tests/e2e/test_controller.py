"""`legation controller` as a process with a real Envoy bootstrapped by `legation envoy-bootstrap`:
Envoy keeps serving the last configuration while the controller is down, and resynchronises when
it comes back; the bootstrap the CLI prints is one Envoy accepts.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from fixtures.managed import HOST, envoy_binary, free_port, http_get, legation_binary, tcp_open, wait_for
from fixtures.processes import Launcher, ManagedProcess, controller_bootstrap

pytestmark = pytest.mark.e2e

MAPPING = """apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {{name: {name}, namespace: demo}}
spec: {{prefix: /{name}/, service: 127.0.0.1:{port}}}
"""


def _controller(launch: Launcher, source: Path, xds: int, api: int, http: int) -> ManagedProcess:
    process = launch.spawn(
        "controller",
        [
            legation_binary(), "controller",
            "--source", str(source),
            "--xds-listen", f"{HOST}:{xds}",
            "--http-listen", f"{HOST}:{api}",
            "--envoy-http-port", str(http),
            "--envoy-https-port", str(free_port()),
            "--ratelimit-service", "none",
            "--allow-loopback-upstreams",  # the echo upstream listens on loopback
        ],
    )  # fmt: skip
    wait_for(lambda: http_get(f"http://{HOST}:{api}/readyz")[0] == 200, timeout=30, what="controller ready")
    return process


def _status(port: int, path: str) -> int:
    try:
        return http_get(f"http://{HOST}:{port}{path}", timeout=2)[0]
    except OSError:
        return -1


def test_envoy_keeps_serving_while_the_controller_is_down_and_resyncs(
    launch: Launcher, tmp_path: Path
) -> None:
    upstream_port = free_port()
    launch.spawn("echo", [legation_binary(), "echo", "--listen", f"{HOST}:{upstream_port}", "--name", "up"])
    wait_for(lambda: tcp_open(HOST, upstream_port), timeout=20, what="echo upstream")
    source = tmp_path / "manifests"
    source.mkdir()
    (source / "a.yaml").write_text(MAPPING.format(name="a", port=upstream_port))
    xds, api, http = free_port(), free_port(), free_port()
    controller = _controller(launch, source, xds, api, http)
    envoy = launch.envoy(controller_bootstrap(xds, "restart-test"), wait=False)
    wait_for(lambda: _status(http, "/a/1") == 200, timeout=30, what="route /a/ served")

    controller.kill()
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # Envoy keeps what it has
        assert _status(http, "/a/1") == 200
        time.sleep(0.1)

    (source / "b.yaml").write_text(MAPPING.format(name="b", port=upstream_port))
    controller.start()
    wait_for(lambda: _status(http, "/b/1") == 200, timeout=30, what="Envoy resynchronised (route /b/)")
    assert _status(http, "/a/1") == 200
    assert envoy.process.running

    def synced() -> bool:
        envoys = json.loads(http_get(f"http://{HOST}:{api}/api/envoys")[1])
        status = json.loads(http_get(f"http://{HOST}:{api}/api/status")[1])
        nodes = envoys["nodes"]
        return bool(nodes) and nodes[0]["acked_version"] == status["envoy_version"]

    wait_for(synced, timeout=10, what="the API shows the Envoy in sync")
    assert json.loads(http_get(f"http://{HOST}:{api}/api/envoys")[1])["nacks"] == []


def test_printed_bootstrap_is_valid_for_envoy(tmp_path: Path) -> None:
    printed = subprocess.run(
        [
            legation_binary(),
            "envoy-bootstrap",
            "--xds",
            "legation-controller.legation-system:18000",
            "--node-id",
            "n1",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    config = yaml.safe_load(printed)
    assert config["node"]["id"] == "n1"
    cluster = config["static_resources"]["clusters"][0]
    assert cluster["type"] == "STRICT_DNS"  # a Service name, resolved by DNS
    path = tmp_path / "bootstrap.yaml"
    path.write_text(printed)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
