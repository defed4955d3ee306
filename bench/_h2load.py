"""Driving h2load for gRPC unary calls over h2c, and reading its results.

h2load sends one request body per process (``-d FILE``), so to spread the load over several
distinct rate-limit keys the bench runs one h2load process per connection (``-c 1``), each with
its own body file, all started together and pinned to the same CPU. Throughput is the sum of the
processes' measured requests over the main duration; latencies come from ``--log-file`` (h2load
prints no percentiles), which holds only requests of the main duration, not of the warm-up.

h2load counts an HTTP 200 as success even when the gRPC status in the trailers is an error, so
callers must check real gRPC answers themselves (see ``ratelimit_bench.py``).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"
RLS_PATH = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    """`cmd` run on CPU `cpu` only (taskset), when a CPU is given and taskset exists."""
    if cpu is None or not shutil.which("taskset"):
        return cmd
    return ["taskset", "-c", str(cpu), *cmd]


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: flag 0 (uncompressed), 4-byte big-endian length, bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def grpc_unframe(frame: bytes) -> bytes:
    flag, length = frame[0], struct.unpack(">I", frame[1:5])[0]
    if flag != 0 or length != len(frame) - 5:
        raise ValueError("not a single uncompressed gRPC message")
    return frame[5:]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..1)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q * len(sorted_values) + 0.5 - 1e-9))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


@dataclass
class H2Result:
    procs: int
    streams: int
    duration: float
    rps_per_client: int | None
    other_load_pct: float | None = None  # set by the caller: foreign load on the server's CPU
    other_client_load_pct: float | None = None  # and on the client's CPU
    grpc_answered: float | None = None  # calls the server counted (its metrics), warm-up included
    requests: int = 0  # requests done in the main duration
    succeeded: int = 0
    failed: int = 0
    errored: int = 0
    timeout: int = 0
    status_2xx: int = 0
    status_other: int = 0
    latencies_us: list[int] = field(default_factory=list, repr=False)
    raw_outputs: list[str] = field(default_factory=list, repr=False)

    @property
    def req_per_s(self) -> float:
        return self.succeeded / self.duration

    @property
    def ok(self) -> bool:
        return (
            self.requests > 0
            and self.failed == 0
            and self.errored == 0
            and self.timeout == 0
            and self.status_other == 0
        )

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies_us, q) / 1000.0

    def summary(self) -> dict[str, object]:
        return {
            "connections": self.procs,
            "streams_per_connection": self.streams,
            "duration_s": self.duration,
            "rps_per_client": self.rps_per_client,
            "req_per_s": round(self.req_per_s, 1),
            "requests": self.requests,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errored": self.errored,
            "timeout": self.timeout,
            "non_2xx": self.status_other,
            "p50_ms": round(self.latency_ms(0.50), 3),
            "p90_ms": round(self.latency_ms(0.90), 3),
            "p99_ms": round(self.latency_ms(0.99), 3),
            "max_ms": round(self.latency_ms(1.0), 3),
        }


_REQ_RE = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout"
)
_STATUS_RE = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def run_h2load(
    port: int,
    bodies: Sequence[bytes | None],
    *,
    streams: int,
    duration: float,
    warmup: float,
    rps_per_client: int | None = None,
    cpu: int | None = None,
    host: str = "127.0.0.1",
    path: str = RLS_PATH,
    headers: Sequence[str] = GRPC_HEADERS,
    extra_args: Sequence[str] = (),
) -> H2Result:
    """Run one h2load process per body (``-c 1 -t 1 -m streams``) at the same time.

    ``bodies`` are gRPC-framed request messages (``None``: no body, h2load sends a GET); ``cpu``
    pins every h2load process to that CPU (``taskset -c``). ``rps_per_client`` paces each
    connection (h2load ``--rps``). ``path`` and ``headers`` default to a gRPC call of the rate
    limit service; ``extra_args`` go to h2load as they are (e.g. ``--h1``).
    """
    url = f"http://{host}:{port}{path}"
    result = H2Result(procs=len(bodies), streams=streams, duration=duration, rps_per_client=rps_per_client)
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        tmpdir = Path(tmp)
        procs: list[tuple[subprocess.Popen[str], Path]] = []
        try:
            for i, body in enumerate(bodies):
                log = tmpdir / f"log{i}.tsv"
                cmd = [
                    H2LOAD,
                    "-t", "1",
                    "-c", "1",
                    "-m", str(streams),
                    "-D", _dur(duration),
                    "--warm-up-time", _dur(warmup),
                    "--log-file", str(log),
                ]  # fmt: skip
                if body is not None:
                    data = tmpdir / f"body{i}.bin"
                    data.write_bytes(body)
                    cmd += ["-d", str(data)]
                for header in headers:
                    cmd += ["-H", header]
                cmd += list(extra_args)
                if rps_per_client is not None:
                    cmd += ["--rps", str(max(1, rps_per_client))]
                cmd.append(url)
                proc = subprocess.Popen(
                    pinned(cmd, cpu), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                )
                procs.append((proc, log))
            timeout = duration + warmup + 30
            for proc, log in procs:
                out, _ = proc.communicate(timeout=timeout)
                result.raw_outputs.append(out)
                if proc.returncode != 0:
                    raise RuntimeError(f"h2load exited {proc.returncode}:\n{out}")
                _parse_into(result, out)
                result.latencies_us.extend(_read_log(log))
        finally:
            for proc, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    result.latencies_us.sort()
    return result


def _dur(seconds: float) -> str:
    # h2load durations accept an integer with a unit suffix
    return f"{max(1, round(seconds * 1000))}ms"


def _parse_into(result: H2Result, out: str) -> None:
    m = _REQ_RE.search(out)
    s = _STATUS_RE.search(out)
    if not m or not s:
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    _total, _started, done, succeeded, failed, errored, timeout = map(int, m.groups())
    result.requests += done
    result.succeeded += succeeded
    result.failed += failed
    result.errored += errored
    result.timeout += timeout
    s2, s3, s4, s5 = map(int, s.groups())
    result.status_2xx += s2
    result.status_other += s3 + s4 + s5


def _read_log(path: Path) -> list[int]:
    lat: list[int] = []
    if not path.exists():
        return lat
    with path.open() as fh:
        for line in fh:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "200":
                lat.append(int(parts[2]))
    return lat
