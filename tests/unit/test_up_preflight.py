"""What `legation up` decides before and while it runs, without processes: the port and state-dir
checks, and which services get a demo upstream."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from legation.controller.commands.demo_upstreams import DemoUpstreams, loopback_services
from legation.controller.commands.up import add_arguments
from legation.controller.commands.up_preflight import (
    PortUse,
    PreflightError,
    check_ports,
    gateway_ports,
    lock_state,
)
from legation.controller.commands.up_processes import Child, Stack, log_tail


@pytest.fixture
def held_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_every_port_flag_is_checked_with_what_it_is_for() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    uses = gateway_ports(parser.parse_args(["--api-port", "1234"]))
    assert PortUse(1234, "controller HTTP API and page", "pass --api-port") in uses
    assert {u.port for u in uses} == {8080, 8443, 9901, 18000, 1234, 9001, 8081}


def test_a_port_in_use_is_named_with_its_flag(held_port: int) -> None:
    with pytest.raises(PreflightError) as refused:
        check_ports([PortUse(held_port, "Envoy admin", "pass --envoy-admin-port")])
    assert str(refused.value) == (
        f"port {held_port} (Envoy admin) is in use: stop what holds it or pass --envoy-admin-port"
    )


def test_a_port_given_twice_is_refused() -> None:
    uses = [PortUse(1, "Envoy HTTP", "pass --http-port"), PortUse(1, "authz gRPC", "pass --authz-port")]
    with pytest.raises(PreflightError, match="port 1 is given to both Envoy HTTP and authz gRPC"):
        check_ports(uses)


def test_the_state_dir_lock_names_its_holder_and_is_released(tmp_path: Path) -> None:
    first = lock_state(tmp_path / "state")
    with pytest.raises(PreflightError) as refused:
        lock_state(tmp_path / "state")  # another open file description: flock conflicts
    assert f"another legation up (pid {os.getpid()}) is using {tmp_path / 'state'}" in str(refused.value)
    first.release()
    lock_state(tmp_path / "state").release()


def test_only_plain_loopback_services_get_demo_upstreams_named_after_their_first_mapping() -> None:
    found = loopback_services(
        [
            ("b", "second", "127.0.0.1:9000"),
            ("a", "first", "localhost:9000"),
            ("a", "v6", "[::1]:9001"),
            ("a", "remote", "orders.team:9002"),
            ("a", "tls", "https://127.0.0.1:9003"),
            ("a", "bad", "127.0.0.1:notaport"),
        ]
    )
    assert found == {("127.0.0.1", 9000): "a/first", ("::1", 9001): "a/v6"}


def test_the_gateways_own_and_taken_ports_are_skipped_once(tmp_path: Path, held_port: int) -> None:
    said: list[str] = []
    upstreams = DemoUpstreams(
        stack=Stack(tmp_path), legation="/nonexistent", reserved={8877: "API"}, say=said.append
    )
    wanted = {("127.0.0.1", 8877): "a/own", ("127.0.0.1", held_port): "a/held"}
    assert upstreams.sync(wanted) == []  # nothing started (the binary would not even exist)
    assert upstreams.sync(wanted) == []
    assert sorted(said) == sorted(
        [
            "  upstream 127.0.0.1:8877 (a/own) not started: port 8877 is the gateway's own (API)",
            f"  upstream 127.0.0.1:{held_port} (a/held) not started: "
            f"port {held_port} is in use by something else: left to it",
        ]
    )  # and once only


def test_a_log_tail_shown_on_the_terminal_has_no_grpc_core_lines(tmp_path: Path) -> None:
    log = tmp_path / "controller.log"
    log.write_text(
        '{"msg": "cannot listen", "listen": "127.0.0.1:18000"}\n'
        "E0000 00:00:1764962400.123456   4242 add_port.cc:83] Failed to add :18000: address in use\n"
        '{"msg": "exiting"}\n'
    )
    child = Child("controller", subprocess.Popen(["true"]), log)
    child.process.wait()
    assert log_tail(child) == '{"msg": "cannot listen", "listen": "127.0.0.1:18000"}\n{"msg": "exiting"}'


def test_logs_of_the_previous_run_are_kept_once(tmp_path: Path) -> None:
    (tmp_path / "envoy.log").write_text("run 1\n")
    (tmp_path / "envoy.log.1").write_text("run 0\n")
    Stack(tmp_path).rotate_logs()
    assert (tmp_path / "envoy.log.1").read_text() == "run 1\n"
    assert not (tmp_path / "envoy.log").exists()


def test_hint_names_legation_as_the_other_terminal_can_run_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from legation.controller.commands.up_run import _legation_command

    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "legation"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(script), "up"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # a new user's shell: the venv is not on PATH
    assert _legation_command() == ".venv/bin/legation"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin")  # after `source .venv/bin/activate`
    assert _legation_command() == "legation"
    monkeypatch.setattr(sys, "argv", ["/x/legation/__main__.py", "up"])
    assert _legation_command() == f"{sys.executable} -m legation"
