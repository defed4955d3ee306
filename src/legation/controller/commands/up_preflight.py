"""What `legation up` checks before it starts anything: that no other `up` uses the same state
directory, and that every port it will listen on is free.

Both checks run before any file in the state directory is written (only the lock file itself is
opened, never truncated while another instance may hold it), so a second `up` can never harm a
running one: it says who is in the way and which flag avoids it, and exits within a second.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PORT_FLAGS",
    "PortUse",
    "PreflightError",
    "StateLock",
    "check_ports",
    "gateway_ports",
    "lock_state",
]

PORT_FLAGS: tuple[tuple[str, int, str], ...] = (
    ("--http-port", 8080, "Envoy HTTP"),
    ("--https-port", 8443, "Envoy HTTPS"),
    ("--envoy-admin-port", 9901, "Envoy admin"),
    ("--xds-port", 18000, "controller ADS"),
    ("--api-port", 8877, "controller HTTP API and page"),
    ("--authz-port", 9001, "authz gRPC"),
    ("--ratelimit-port", 8081, "rate limit gRPC"),
)
"""(flag, default, what listens there) for every fixed port of `up`."""

LOCK_NAME = "up.lock"


class PreflightError(Exception):
    """Something is in the way; the message says what and how to avoid it."""


@dataclass(frozen=True)
class PortUse:
    port: int
    what: str
    """What listens there, e.g. "controller HTTP API and page"."""
    remedy: str
    """How to move it, e.g. "pass --api-port"."""


def gateway_ports(args: argparse.Namespace) -> list[PortUse]:
    """The ports the gateway itself listens on, as given on the command line."""
    return [
        PortUse(getattr(args, flag[2:].replace("-", "_")), what, f"pass {flag}")
        for flag, _default, what in PORT_FLAGS
    ]


def check_ports(uses: Sequence[PortUse], host: str = "127.0.0.1") -> None:
    """Raise PreflightError for the first port given twice or that cannot be bound on `host`."""
    seen: dict[int, PortUse] = {}
    for use in uses:
        if use.port in seen:
            raise PreflightError(
                f"port {use.port} is given to both {seen[use.port].what} and {use.what}: {use.remedy}"
            )
        seen[use.port] = use
        if not bindable(host, use.port):
            raise PreflightError(
                f"port {use.port} ({use.what}) is in use: stop what holds it or {use.remedy}"
            )


def bindable(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As servers do: a port whose old connections linger in TIME_WAIT is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class StateLock:
    """An exclusive flock on `<state-dir>/up.lock`, held while `up` runs; the file records our pid.

    The kernel drops the lock when the process ends however it ends, so a stale file never blocks."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    def release(self) -> None:
        os.close(self._fd)  # closing the descriptor releases the flock


def lock_state(state_dir: Path) -> StateLock:
    """Take the state directory's lock, or raise PreflightError naming the instance holding it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's pid stays readable
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise PreflightError(
            f"another legation up (pid {holder}) is using {state_dir}; stop it or pass --state-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return StateLock(path, fd)
