"""Driving h2load for gRPC unary calls over h2c (or plain HTTP/2 GETs), and reading its results.

h2load sends one request body per process (``-d FILE``), so to spread the load over several
distinct keys the bench runs one h2load process per connection (``-c 1``), each with its own body
file, all started together and pinned to the same CPU. Throughput is the sum of the processes'
measured requests over the main duration; latencies come from ``--log-file`` (h2load prints no
percentiles), which holds only requests of the main duration, not of the warm-up.

h2load counts an HTTP 200 as success even when the gRPC status in the trailers is an error, so
callers check real answers themselves (``bench.harness.load.Target.validate``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness.cpu import pinned
from bench.harness.stats import percentile

__all__ = [
    "GRPC_HEADERS",
    "H2Counts",
    "H2Request",
    "H2Result",
    "parse_h2load_output",
    "parse_log",
    "run_h2load",
]

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")

_REQ_RE = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS_RE = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


@dataclass(frozen=True)
class H2Counts:
    """The request counters of one h2load process (or the sum of several)."""

    requests: int = 0
    """Requests done in the main duration."""
    succeeded: int = 0
    failed: int = 0
    errored: int = 0
    timeout: int = 0
    status_2xx: int = 0
    status_other: int = 0
    """3xx, 4xx and 5xx answers."""

    def __add__(self, other: H2Counts) -> H2Counts:
        return H2Counts(
            requests=self.requests + other.requests,
            succeeded=self.succeeded + other.succeeded,
            failed=self.failed + other.failed,
            errored=self.errored + other.errored,
            timeout=self.timeout + other.timeout,
            status_2xx=self.status_2xx + other.status_2xx,
            status_other=self.status_other + other.status_other,
        )


def parse_h2load_output(out: str) -> H2Counts:
    """The counters of h2load's summary; ValueError when the text has none."""
    m = _REQ_RE.search(out)
    s = _STATUS_RE.search(out)
    if not m or not s:
        raise ValueError(f"cannot parse h2load output:\n{out}")
    _total, _started, done, succeeded, failed, errored, timeout = map(int, m.groups())
    s2, s3, s4, s5 = map(int, s.groups())
    return H2Counts(done, succeeded, failed, errored, timeout, s2, s3 + s4 + s5)


def parse_log(text: str) -> list[int]:
    """Latencies in µs of the HTTP 200 answers in an h2load ``--log-file`` (start, status, µs)."""
    latencies: list[int] = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1] == "200":
            latencies.append(int(parts[2]))
    return latencies


@dataclass
class H2Result:
    """One load run: h2load's counters and latencies over its main duration."""

    procs: int
    streams: int
    duration: float
    rps_per_client: int | None
    counts: H2Counts = H2Counts()
    latencies_us: list[int] = field(default_factory=list, repr=False)
    raw_outputs: list[str] = field(default_factory=list, repr=False)

    @property
    def req_per_s(self) -> float:
        return self.counts.succeeded / self.duration

    @property
    def ok(self) -> bool:
        """Requests done, and none failed, errored, timed out or answered other than 2xx."""
        c = self.counts
        return c.requests > 0 and not (c.failed or c.errored or c.timeout or c.status_other)

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies_us, q) / 1000.0


@dataclass(frozen=True)
class H2Request:
    """What every h2load process of a run sends, and where."""

    port: int
    path: str
    headers: Sequence[str] = GRPC_HEADERS
    extra_args: Sequence[str] = ()
    host: str = "127.0.0.1"


def run_h2load(
    request: H2Request,
    bodies: Sequence[bytes | None],
    *,
    streams: int,
    duration: float,
    warmup: float,
    rps_per_client: int | None = None,
    cpu: int | None = None,
) -> H2Result:
    """Run one h2load process per body (``-c 1 -t 1 -m streams``) at the same time.

    ``bodies`` are request bodies (``None``: no body, h2load sends a GET); ``cpu`` pins every
    h2load process (``taskset -c``); ``rps_per_client`` paces each connection (``--rps``).
    """
    result = H2Result(len(bodies), streams, duration, rps_per_client)
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        cmds = [_command(request, body, Path(tmp), i, streams, duration, warmup, rps_per_client)
                for i, body in enumerate(bodies)]  # fmt: skip
        procs = [_spawn(pinned(cmd, cpu)) for cmd, _ in cmds]
        try:
            for proc, (_, log) in zip(procs, cmds, strict=True):
                out, _ = proc.communicate(timeout=duration + warmup + 30)
                result.raw_outputs.append(out)
                if proc.returncode != 0:
                    raise RuntimeError(f"h2load exited {proc.returncode}:\n{out}")
                result.counts += parse_h2load_output(out)
                result.latencies_us.extend(parse_log(log.read_text()) if log.exists() else [])
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    result.latencies_us.sort()
    return result


def _spawn(cmd: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _command(
    request: H2Request,
    body: bytes | None,
    tmpdir: Path,
    i: int,
    streams: int,
    duration: float,
    warmup: float,
    rps: int | None,
) -> tuple[list[str], Path]:
    log = tmpdir / f"log{i}.tsv"
    cmd = [shutil.which("h2load") or "/usr/bin/h2load", "-t", "1", "-c", "1", "-m", str(streams),
           "-D", h2_duration(duration), "--warm-up-time", h2_duration(warmup), "--log-file", str(log)]  # fmt: skip
    if body is not None:
        data = tmpdir / f"body{i}.bin"
        data.write_bytes(body)
        cmd += ["-d", str(data)]
    for header in request.headers:
        cmd += ["-H", header]
    cmd += list(request.extra_args)
    if rps is not None:
        cmd += ["--rps", str(max(1, rps))]
    cmd.append(f"http://{request.host}:{request.port}{request.path}")
    return cmd, log


def h2_duration(seconds: float) -> str:
    """An h2load duration: an integer with a unit suffix (milliseconds, at least 1)."""
    return f"{max(1, round(seconds * 1000))}ms"
