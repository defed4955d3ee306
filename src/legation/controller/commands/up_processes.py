"""The child processes of `legation up`: started in their own session with output in a log
file each, stopped in reverse order of start."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Child", "Stack", "binary", "log_tail"]

_STOP_GRACE = 10.0
_GRPC_CORE_LINE = re.compile(r"^[DIWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]")
"""A line written by gRPC's C core (`E0000 00:00:1700000000.123 4242 add_port.cc:83] …`): kept in
the log file, never shown on the terminal, where it reads as noise (our own log says the same)."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class Stack:
    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def rotate_logs(self) -> None:
        """Keep the previous run's logs as `*.log.1`; called only while holding the state lock, so
        no running instance is writing them."""
        for log in self.log_dir.glob("*.log"):
            log.replace(log.with_name(log.name + ".1"))

    def start(self, name: str, argv: Sequence[str]) -> Child:
        log = self.log_dir / f"{name}.log"
        # Append: a demo upstream started again in the same run keeps its earlier lines.
        with log.open("ab") as out:
            # Own session: a terminal's Ctrl-C reaches only us, and we stop the children in order.
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def dead(self) -> Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop_one(self, child: Child) -> None:
        """Stop `child` and forget it (its end is then not a failure of the stack)."""
        self.children.remove(child)
        _terminate(child)

    def stop(self) -> None:
        for child in reversed(self.children):
            _terminate(child)


def _terminate(child: Child) -> None:
    if child.process.poll() is None:
        child.process.send_signal(signal.SIGTERM)
    try:
        child.process.wait(timeout=_STOP_GRACE)
    except subprocess.TimeoutExpired:
        child.process.kill()
        child.process.wait()


def log_tail(child: Child, lines: int = 15) -> str:
    """The last lines of `child`'s log worth showing on a terminal."""
    text = child.log.read_text(errors="replace").replace("\0", "")
    shown = [line for line in text.splitlines() if not _GRPC_CORE_LINE.match(line)]
    return "\n".join(shown[-lines:])


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if `legation up` itself is killed (SIGKILL runs no cleanup)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def binary(name: str) -> str:
    here = str(Path(sys.executable).parent)
    found = shutil.which(name, path=here) or shutil.which(name)
    if found is None:
        raise SystemExit(f"legation up: no `{name}` found next to {sys.executable} or on PATH")
    return found
