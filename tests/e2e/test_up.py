"""`legation up` around a running instance: a second `up` is refused before it touches anything
(same state directory, or a port already taken), and the demo upstreams follow the Mappings while
it runs: a new loopback service gets one, a removed one loses it, and a Mapping naming one of the
gateway's own ports (or a port something else holds) never gets one and never crashes `up`.

One `legation up` on a small manifests directory serves the whole module; every port is free.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.gateway import Gateway, start_gateway, stop_gateway
from fixtures.managed import HOST, free_port, legation_binary, tcp_open
from fixtures.processes import Launcher

pytestmark = pytest.mark.e2e

GRPC_CORE_LINE = re.compile(r"^[DIWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]", re.MULTILINE)
REFUSED_WITHIN = 5.0
"""Seconds a refused `up` may take (it starts nothing; most of it is Python importing)."""


def _mapping(name: str, prefix: str, port: int) -> str:
    return f"""apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {{name: {name}, namespace: team-up}}
spec: {{prefix: {prefix}, service: "127.0.0.1:{port}"}}
"""


def _write(path: Path, text: str) -> None:
    """As editors do: a new file renamed over the old one (the watcher never sees half a file)."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    tmp.replace(path)


@pytest.fixture(scope="module")
def gateway(module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("up")
    source = root / "manifests"
    source.mkdir()
    (source / "first.yaml").write_text(_mapping("first", "/first/", free_port()))
    gateway = start_gateway(module_launcher, source, root / "state")
    yield gateway
    assert stop_gateway(gateway) == 0, gateway.process.stdout_text()


def _second_up(gateway: Gateway, state: Path, **ports: int) -> tuple[int, str, float]:
    """`legation up` on the same manifests with free ports (except those given): (code, output,
    seconds)."""
    flags = ("http", "https", "envoy-admin", "xds", "api", "authz", "ratelimit")
    argv = [legation_binary(), "up", str(gateway.source), "--state-dir", str(state)]
    for flag in flags:
        argv += [f"--{flag}-port", str(ports.get(flag.replace("-", "_"), free_port()))]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def _logs(gateway: Gateway) -> dict[str, bytes]:
    return {log.name: log.read_bytes() for log in sorted((gateway.state / "logs").glob("*.log"))}


def _assert_unharmed(gateway: Gateway, before: dict[str, bytes]) -> None:
    """The first instance serves, and each of its logs still starts with what it held before."""
    assert gateway.request("GET", "/first/x").status == 200
    after = _logs(gateway)
    assert set(after) == set(before), (sorted(before), sorted(after))
    for name, content in before.items():
        assert after[name].startswith(content), f"{name} was rewritten"
        assert b"\0" not in after[name], f"{name} has NUL bytes"


def _assert_refused_quietly(code: int, output: str, seconds: float) -> None:
    assert code == 1, output
    assert seconds < REFUSED_WITHIN, (seconds, output)
    assert "ready" not in output, output  # it reached nothing, and started nothing
    assert not GRPC_CORE_LINE.search(output), output
    assert ".cc:" not in output, output  # nor any other C++ log line


# --- a second `legation up` ----------------------------------------------------------------------


def test_a_second_up_on_the_same_state_dir_is_refused_naming_the_first(gateway: Gateway) -> None:
    before = _logs(gateway)
    assert before, "the first instance has logs to protect"
    code, output, seconds = _second_up(gateway, gateway.state)
    _assert_refused_quietly(code, output, seconds)
    assert f"another legation up (pid {gateway.process.pid}) is using {gateway.state}" in output, output
    assert "--state-dir" in output
    _assert_unharmed(gateway, before)


def test_a_second_up_on_a_taken_port_is_refused_naming_the_port_and_its_flag(
    gateway: Gateway, tmp_path: Path
) -> None:
    before = _logs(gateway)
    code, output, seconds = _second_up(gateway, tmp_path / "state", api=gateway.api_port)
    _assert_refused_quietly(code, output, seconds)
    assert f"port {gateway.api_port} (controller HTTP API and page) is in use" in output, output
    assert "--api-port" in output
    assert not (tmp_path / "state" / "logs").exists()  # refused before writing anything
    _assert_unharmed(gateway, before)


def test_a_second_up_with_a_port_given_twice_is_refused(gateway: Gateway, tmp_path: Path) -> None:
    port = free_port()
    code, output, seconds = _second_up(gateway, tmp_path / "state", http=port, https=port)
    _assert_refused_quietly(code, output, seconds)
    assert f"port {port} is given to both Envoy HTTP and Envoy HTTPS" in output, output


# --- demo upstreams follow the Mappings -----------------------------------------------------------


def test_a_loopback_service_added_while_running_gets_a_demo_upstream(gateway: Gateway) -> None:
    port = free_port()
    path = gateway.source / "added.yaml"
    _write(path, _mapping("added", "/added/", port))
    try:
        response = gateway.wait_until(
            lambda: (r := gateway.request("GET", "/added/1")).status == 200 and r,
            timeout=20,
            what="the new service answered by its demo upstream",
        )
        assert response.json()["name"] == "team-up/added"
    finally:
        path.unlink()
    gateway.wait_until(
        lambda: f"upstream 127.0.0.1:{port} stopped" in gateway.process.stdout_text(),
        what="the demo upstream stopped",
    )
    assert not tcp_open(HOST, port)


def _verdict(gateway: Gateway, name: str) -> tuple[str, str] | None:
    for r in gateway.api_json("/api/resources?kind=Mapping")["resources"]:
        if r["name"] == name:
            return str(r["state"]), " ".join(p["reason"] for p in r["problems"])
    return None


def test_a_mapping_naming_a_gateway_port_never_gets_a_demo_upstream(gateway: Gateway) -> None:
    own = {"api": gateway.api_port, "admin": gateway.admin_port, "http": gateway.http_port}
    path = gateway.source / "own.yaml"
    _write(path, "---\n".join(_mapping(f"own-{name}", f"/own-{name}/", port) for name, port in own.items()))
    try:
        # `up` reserves its own ports: the controller rejects such Mappings (and Envoy never routes
        # them), so no demo upstream is wanted for them.
        for name, port in own.items():
            gateway.wait_until(
                lambda name=name: _verdict(gateway, f"own-{name}") is not None,
                what=f"the verdict on port {port}",
            )
            state, reason = _verdict(gateway, f"own-{name}") or ("", "")
            assert state == "Rejected" and "the gateway's own endpoint" in reason, (state, reason)
            assert gateway.request("GET", f"/own-{name}/x").status == 404
        assert gateway.process.running, gateway.process.stdout_text()
        for port in own.values():
            assert not (gateway.state / "logs" / f"upstream-{port}.log").exists()
        assert gateway.api_json("/readyz") == {"ready": True}  # the controller kept its port
        assert gateway.request("GET", "/first/x").status == 200
    finally:
        path.unlink()


def test_a_service_port_held_by_something_else_is_left_to_it(gateway: Gateway) -> None:
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        path = gateway.source / "held.yaml"
        _write(path, _mapping("held", "/held/", port))
        try:
            gateway.wait_until(
                lambda: (
                    f"upstream 127.0.0.1:{port} (team-up/held) not started: port {port} is in use"
                    in gateway.process.stdout_text()
                ),
                what="the in-use line",
            )
            assert gateway.process.running, gateway.process.stdout_text()
            assert not (gateway.state / "logs" / f"upstream-{port}.log").exists()
        finally:
            path.unlink()


def test_up_gives_the_page_its_envoys_upstream_health(gateway: Gateway) -> None:
    """`legation up` passes its Envoy's admin URL: /api/upstreams (what the page shows) holds the
    Mapping's upstream as that Envoy sees it."""

    def envoys() -> list[dict[str, object]]:
        with urllib.request.urlopen(f"{gateway.api}/api/upstreams", timeout=5) as response:
            found = json.loads(response.read())["envoys"]
        assert found is not None, "no --envoy-admin given"
        return [e for e in found if e["clusters"]]

    deadline = time.monotonic() + 20
    while not envoys() and time.monotonic() < deadline:
        time.sleep(0.2)
    (envoy,) = envoys()
    assert envoy["admin"] == f"http://127.0.0.1:{gateway.admin_port}" and envoy["error"] is None
