"""Child processes of the bench: our services (the ``legation`` CLI), Envoy, redis-server.

Every process runs in its own session, so stopping it (and measuring its CPU time) covers its
children too; :func:`started` stops it on the way out, on errors as well.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.harness.cpu import session_cpu_seconds

__all__ = [
    "ROOT",
    "CheckFailed",
    "Proc",
    "envoy_command",
    "find_binary",
    "free_port",
    "http_status",
    "keep_logs",
    "noop_server_command",
    "started",
    "wait_for",
    "wait_grpc_ready",
    "wait_http_ready",
]

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: children run there, so ``python -m bench...`` finds the package."""


class CheckFailed(RuntimeError):
    """A target answered wrongly, died or never became ready."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(name: str, override: str | None = None) -> str:
    """``override``, else ``name`` next to this Python (the venv), else on PATH."""
    if override:
        return override
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name) or str(beside)


class Proc:
    """A child process in its own session, its output in ``log_dir``; stop() ends the group."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, *, quiet_stdout: bool = False) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_dir / f"{name.replace(' ', '_').replace(',', '')}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL if quiet_stdout else self._log,
            stderr=self._log if quiet_stdout else subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def cpu_seconds(self) -> float:
        """CPU time of every process of this child's session."""
        return session_cpu_seconds(self.pid)

    def require_alive(self, what: str) -> None:
        if not self.alive():
            raise CheckFailed(f"{self.name} died {what} ({self.popen.returncode}):\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the group, up to 5 s to exit, then SIGKILL to whatever is left."""
        try:
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=5)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            if self.popen.returncode is None:
                self.popen.wait(timeout=5)
        finally:
            self._log.close()


@contextlib.contextmanager
def started(name: str, cmd: list[str], log_dir: Path, *, quiet_stdout: bool = False) -> Iterator[Proc]:
    """A :class:`Proc`, stopped when the block ends (``quiet_stdout``: its stdout discarded, e.g.
    an Envoy access log on ``/dev/stdout`` under load; stderr still goes to the log)."""
    proc = Proc(name, cmd, log_dir, quiet_stdout=quiet_stdout)
    try:
        yield proc
    finally:
        proc.stop()


def wait_for(proc: Proc, ready: Callable[[], bool], *, timeout: float, what: str) -> None:
    """Poll ``ready`` until true; CheckFailed if ``proc`` exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.require_alive(f"while waiting for {what}")
        if ready():
            return
        time.sleep(0.05)
    raise CheckFailed(f"{proc.name}: no {what} after {timeout}s:\n{proc.log_tail()}")


def wait_grpc_ready(proc: Proc, port: int, timeout: float = 30.0) -> None:
    """Until a gRPC channel to 127.0.0.1:``port`` connects."""
    import grpc  # not at import time: the controller scenario's parent stays lean

    def ready() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
            except grpc.FutureTimeoutError:
                return False
            return True

    wait_for(proc, ready, timeout=timeout, what=f"gRPC on port {port}")


def http_status(url: str, timeout: float = 2.0) -> int:
    """The HTTP status of a GET, -1 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except OSError:
        return -1


def wait_http_ready(proc: Proc, url: str, timeout: float = 30.0, expect: bytes | None = None) -> None:
    """Until ``url`` answers 200 (and, if given, exactly ``expect`` as its stripped body)."""

    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as resp:
                return resp.status == 200 and (expect is None or resp.read().strip() == expect)
        except OSError:
            return False

    wait_for(proc, ready, timeout=timeout, what=f"200 from {url}")


def keep_logs(log_dir: Path, dest: Path | None) -> None:
    """Copy the servers' logs of ``log_dir`` into ``dest`` (if given)."""
    if dest is None:
        return
    dest.mkdir(parents=True, exist_ok=True)
    for log in log_dir.glob("*.log"):
        shutil.copy(log, dest / log.name)


def noop_server_command(port: int, *, service: str, uvloop: bool = True) -> list[str]:
    """``python -m bench.noop_server`` answering ``service`` (ratelimit or authz) on ``port``."""
    cmd = [sys.executable, "-m", "bench.noop_server", "--service", service, "--listen", f"127.0.0.1:{port}"]
    return cmd if uvloop else [*cmd, "--no-uvloop"]


def envoy_command(envoy: str, config: Path, *, base_id: int) -> list[str]:
    """Envoy on one worker thread (``--concurrency 1``), warnings only."""
    return [envoy, "-c", str(config), "--disable-hot-restart", "--base-id", str(base_id),
            "--concurrency", "1", "-l", "warning"]  # fmt: skip
