"""Driving wrk (HTTP/1.1 load) and reading its summary."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from bench.harness.cpu import pinned

__all__ = ["WrkResult", "parse_wrk_output", "start_wrk", "wrk_command"]

_REQUESTS = re.compile(r"(\d+) requests in")
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_P99 = re.compile(r"99%\s+([\d.]+)(us|ms|s)\b")
_P50 = re.compile(r"50%\s+([\d.]+)(us|ms|s)\b")
_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    non_2xx: int
    """Non-2xx or 3xx responses."""
    socket_errors: int
    """connect + read + write + timeout."""
    p99_ms: float
    """From ``--latency`` (0 when absent)."""
    p50_ms: float = 0.0
    """From ``--latency`` (0 when absent)."""
    req_per_s: float = 0.0
    """wrk's ``Requests/sec`` (0 when absent)."""

    @property
    def failed(self) -> int:
        return self.non_2xx + self.socket_errors


def parse_wrk_output(out: str) -> WrkResult:
    """wrk's summary; ValueError when it has no request count."""
    requests = _REQUESTS.search(out)
    if requests is None:
        raise ValueError(f"cannot parse wrk output:\n{out}")
    non2xx = _NON2XX.search(out)
    sockets = _SOCKET.search(out)
    rate = _RATE.search(out)
    return WrkResult(
        requests=int(requests.group(1)),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in sockets.groups()) if sockets else 0,
        p99_ms=_ms(_P99.search(out)),
        p50_ms=_ms(_P50.search(out)),
        req_per_s=float(rate.group(1)) if rate else 0.0,
    )


def _ms(found: re.Match[str] | None) -> float:
    return float(found.group(1)) * _UNIT_MS[found.group(2)] if found else 0.0


def wrk_command(
    url: str, *, duration_s: int, threads: int = 1, connections: int = 8, headers: Sequence[str] = ()
) -> list[str]:
    """``wrk -tT -cC -dDs --latency [-H HEADER]... URL``."""
    return [
        shutil.which("wrk") or "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
        *(arg for header in headers for arg in ("-H", header)),
        url,
    ]


def start_wrk(
    url: str,
    *,
    duration_s: int,
    threads: int = 1,
    connections: int = 8,
    cpu: int | None = None,
    headers: Sequence[str] = (),
) -> subprocess.Popen[str]:
    """:func:`wrk_command` started on CPU ``cpu``; read its stdout with communicate()."""
    cmd = wrk_command(url, duration_s=duration_s, threads=threads, connections=connections, headers=headers)
    return subprocess.Popen(pinned(cmd, cpu), stdout=subprocess.PIPE, text=True)
