"""Benchmark of the rate limit service (Envoy RLS over gRPC) against a no-op grpcio ceiling.

    .venv/bin/python bench/ratelimit_bench.py [--quick] [--duration S] [--json PATH]

One run measures, in this order, with h2load driving gRPC over h2c (``POST
/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``, gRPC-framed body from a file,
``content-type: application/grpc``, ``te: trailers``):

1. ``ceiling``: ``bench/noop_server.py``, a grpc.aio server on uvloop that answers every call with
   a pre-serialized ``RateLimitResponse(overall_code=OK)`` (registered like the service: a generic
   handler over raw bytes);
2. ``in-memory``: ``legation ratelimit --config CFG --listen ...`` (no ``--redis-url``), requests
   with 1 descriptor;
3. ``redis, 1 descriptor``: the service with ``--redis-url`` on a fresh ``redis-server`` (``--save
   "" --appendonly no``) started by the bench;
4. ``redis, 4 descriptors``: the same with 4 descriptors per request (one of them nested);

then Redis memory per active key (N distinct descriptor values sent through the service with
direct gRPC calls: ``used_memory`` and ``DBSIZE`` before/after) and the number of Redis commands
per decision, and finally the ceiling once more to show how much the machine drifted.

For each target: every request body is first sent once with grpcio and the answer must be a
well-formed ``RateLimitResponse`` with ``overall_code=OK`` and, for the service, one status per
descriptor carrying the configured limit (so the request really matched a rule and reached the
backend) -- h2load itself counts any HTTP 200 as a success, even with an error grpc-status. Then a
short warm-up, a saturation sweep over a few (connections x streams) settings keeping the best
req/s, and a paced run at half of that rate (h2load ``--rps`` per connection) for p50/p99
latency. After every h2load run the server must still be alive and answer a real gRPC call, and
the service (started with ``--metrics-listen``) must not have counted any non-OK gRPC code in
``legation_grpc_requests_total`` during the run (up to connections x streams UNKNOWN/CANCELLED are
the calls h2load -D leaves in flight when it stops; they are reported apart). Besides req/s, the
server's CPU time per request is reported: on a shared machine it is the steadier measure.

Pinning (2-core machines): the server under test runs on CPU 0 (``taskset -c 0``), h2load
(``-t 1``) and redis-server on CPU 1 (``taskset -c 1``). The ceiling and the service are measured
with exactly the same setup and the same h2load settings, so the ratio is fair. h2load runs one
process per connection (``-c 1``), each with its own body file, so that requests spread over
several distinct rate-limit keys; throughput is their sum, latencies come from their log files.
The config written by the bench has limits of 10^9 per second, so every request is admitted.

Every process the bench starts (servers, redis, h2load) is stopped on exit, errors included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _h2load import RLS_PATH, H2Result, grpc_frame, grpc_unframe, pinned, run_h2load

HERE = Path(__file__).resolve().parent
LIMIT = 1_000_000_000
DOMAIN = "bench"
OK = rls_pb2.RateLimitResponse.OK

CONFIG_YAML = f"""\
# written by bench/ratelimit_bench.py: limits high enough that every request is admitted
domain: {DOMAIN}
descriptors:
  - key: remote_address
    rate_limit: {{unit: second, requests_per_unit: {LIMIT}}}
  - key: path
    rate_limit: {{unit: second, requests_per_unit: {LIMIT}}}
  - key: generic_key
    value: bench
    rate_limit: {{unit: second, requests_per_unit: {LIMIT}}}
  - key: user
    descriptors:
      - key: method
        rate_limit: {{unit: second, requests_per_unit: {LIMIT}}}
  - key: mem_key
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}
"""

# ---------------------------------------------------------------------------------------------
# requests


def _entry(key: str, value: str) -> ratelimit_pb2.RateLimitDescriptor.Entry:
    return ratelimit_pb2.RateLimitDescriptor.Entry(key=key, value=value)


def make_request(i: int, n_descriptors: int) -> bytes:
    """A serialized RateLimitRequest with 1 or 4 descriptors; ``i`` picks distinct values."""
    descs = [ratelimit_pb2.RateLimitDescriptor(entries=[_entry("remote_address", _ip(i))])]
    if n_descriptors >= 4:
        descs += [
            ratelimit_pb2.RateLimitDescriptor(entries=[_entry("path", f"/api/items/{i}")]),
            ratelimit_pb2.RateLimitDescriptor(entries=[_entry("generic_key", "bench")]),
            ratelimit_pb2.RateLimitDescriptor(entries=[_entry("user", f"user-{i}"), _entry("method", "GET")]),
        ]
    return rls_pb2.RateLimitRequest(
        domain=DOMAIN, descriptors=descs[:n_descriptors], hits_addend=1
    ).SerializeToString()


def make_mem_request(i: int) -> bytes:
    desc = ratelimit_pb2.RateLimitDescriptor(entries=[_entry("mem_key", f"client-{i:08d}")])
    return rls_pb2.RateLimitRequest(domain=DOMAIN, descriptors=[desc], hits_addend=1).SerializeToString()


def _ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


# ---------------------------------------------------------------------------------------------
# processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process in its own session; stop() signals the whole process group."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_dir / f"{name.replace(' ', '_').replace(',', '')}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

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

    def stop(self) -> None:
        try:
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(timeout=5)
            # whatever is left in the group (workers, a stuck server)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            if self.popen.returncode is None:
                self.popen.wait(timeout=5)
        finally:
            self._log.close()

    def cpu_seconds(self) -> float:
        """utime+stime of every process in this process's session (threads included)."""
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if int(fields[3]) == self.pid:  # session id
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def started(name: str, cmd: list[str], log_dir: Path) -> Iterator[Proc]:
    proc = Proc(name, cmd, log_dir)
    try:
        yield proc
    finally:
        proc.stop()


def cpu_busy(cpu: int | None) -> float | None:
    """Seconds CPU ``cpu`` was busy (everything but idle and iowait, steal included)."""
    if cpu is None:
        return None
    with open("/proc/stat") as fh:
        for line in fh:
            if line.startswith(f"cpu{cpu} "):
                vals = [int(v) for v in line.split()[1:]]
                busy = sum(vals[:8]) - vals[3] - vals[4]  # user..steal minus idle, iowait
                return busy / os.sysconf("SC_CLK_TCK")
    return None


def service_codes(metrics_port: int | None) -> dict[str, float] | None:
    """ShouldRateLimit calls by gRPC code, from the service's Prometheus metrics."""
    if metrics_port is None:
        return None
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    codes: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "legation_grpc_requests_total" and sample.labels.get("method", "").endswith(
                "/ShouldRateLimit"
            ):
                code = sample.labels.get("code", "?")
                codes[code] = codes.get(code, 0.0) + sample.value
    return codes or None


def round1(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:3.0f}%"


# ---------------------------------------------------------------------------------------------
# gRPC checks


class CheckFailed(RuntimeError):
    pass


def rls_call(port: int, message: bytes, timeout: float = 5.0) -> rls_pb2.RateLimitResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(RLS_PATH, request_serializer=None, response_deserializer=None)
        raw = call(message, timeout=timeout)
    return rls_pb2.RateLimitResponse.FromString(raw)


def check_response(resp: rls_pb2.RateLimitResponse, n_descriptors: int | None, what: str) -> None:
    if resp.overall_code != OK:
        raise CheckFailed(f"{what}: overall_code={resp.overall_code}, expected OK\n{resp}")
    if n_descriptors is None:  # the no-op server answers without statuses
        return
    if len(resp.statuses) != n_descriptors:
        raise CheckFailed(f"{what}: {len(resp.statuses)} statuses for {n_descriptors} descriptors\n{resp}")
    for st in resp.statuses:
        if st.code != OK or st.current_limit.requests_per_unit != LIMIT:
            raise CheckFailed(f"{what}: descriptor status not OK with the bench limit\n{resp}")


def wait_ready(proc: Proc, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise CheckFailed(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return
            except grpc.FutureTimeoutError:
                pass
    raise CheckFailed(f"{proc.name} not ready on port {port} after {timeout}s:\n{proc.log_tail()}")


def check_alive(proc: Proc, port: int, body: bytes, n_descriptors: int | None, what: str) -> None:
    if not proc.alive():
        raise CheckFailed(f"{proc.name} died {what}:\n{proc.log_tail()}")
    try:
        resp = rls_call(port, grpc_unframe(body))
    except grpc.RpcError as exc:
        raise CheckFailed(f"{proc.name} failed a gRPC call {what}: {exc}") from exc
    check_response(resp, n_descriptors, f"{proc.name} {what}")


async def drive_distinct(
    port: int, messages: Sequence[bytes], n_descriptors: int, concurrency: int = 32
) -> float:
    """Send each message once with grpc.aio; every answer must be OK. Returns elapsed seconds."""
    sem = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(RLS_PATH, request_serializer=None, response_deserializer=None)

        async def one(msg: bytes) -> None:
            async with sem:
                raw = await call(msg, timeout=10)
            check_response(rls_pb2.RateLimitResponse.FromString(raw), n_descriptors, "drive")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(m) for m in messages))
        return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# measuring one target


@dataclass
class Settings:
    duration: float
    warmup: float  # h2load --warm-up-time inside every run
    initial_warmup: float  # one unmeasured run before the sweep
    sweep: list[tuple[int, int]]  # (connections, streams per connection)
    half: tuple[int, int]  # (connections, streams) of the paced run at half saturation
    server_cpu: int | None
    client_cpu: int | None


def measure(
    name: str,
    proc: Proc,
    port: int,
    n_descriptors: int,
    expect_statuses: bool,
    cfg: Settings,
    key_offset: int,
    metrics_port: int | None = None,
    client_procs: Sequence[Proc] = (),
) -> dict[str, Any]:
    """Saturation sweep and half-saturation run of one target.

    ``metrics_port``: the service's Prometheus endpoint, read before and after every h2load run to
    count the gRPC status codes it answered (h2load cannot see them). ``client_procs``: processes
    pinned to the client CPU besides h2load (redis-server), for the other-load estimate.
    """
    expected = n_descriptors if expect_statuses else None
    grpc_errors: dict[str, float] = {}
    grpc_counted = 0.0
    cancelled_at_stop = 0.0
    max_conns = max(c for c, _ in [*cfg.sweep, cfg.half])
    bodies = [grpc_frame(make_request(key_offset + i, n_descriptors)) for i in range(max_conns)]
    for i, body in enumerate(bodies):
        check_alive(proc, port, body, expected, f"before load (body {i})")

    def run(
        conns: int, streams: int, duration: float, warmup: float, rps: int | None
    ) -> tuple[H2Result, float]:
        nonlocal grpc_counted, cancelled_at_stop
        codes0 = service_codes(metrics_port)
        cpu0, t0, busy0 = proc.cpu_seconds(), time.monotonic(), cpu_busy(cfg.server_cpu)
        cbusy0, ru0 = cpu_busy(cfg.client_cpu), resource.getrusage(resource.RUSAGE_CHILDREN)
        extra0 = sum(p.cpu_seconds() for p in client_procs)
        res = run_h2load(
            port,
            bodies[:conns],
            streams=streams,
            duration=duration,
            warmup=warmup,
            rps_per_client=rps,
            cpu=cfg.client_cpu,
        )
        wall = max(1e-9, time.monotonic() - t0)
        server_s = proc.cpu_seconds() - cpu0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime  # the h2load processes
        ours += sum(p.cpu_seconds() for p in client_procs) - extra0
        cbusy1 = cpu_busy(cfg.client_cpu)
        if cbusy0 is not None and cbusy1 is not None:
            res.other_client_load_pct = max(0.0, 100.0 * (cbusy1 - cbusy0 - ours) / wall)
        cpu_pct = 100.0 * server_s / wall
        # busy time of the server's CPU not spent by the server: other processes on the shared
        # machine (and VM steal) taking cycles from the server under test
        res.other_load_pct = (
            None
            if busy0 is None
            else max(0.0, 100.0 * ((cpu_busy(cfg.server_cpu) or 0.0) - busy0 - server_s) / wall)
        )
        codes1 = service_codes(metrics_port)
        if codes0 is not None and codes1 is not None:
            delta = {k: v - codes0.get(k, 0.0) for k, v in codes1.items()}
            res.grpc_answered = sum(delta.values())
            grpc_counted += res.grpc_answered
            odd = {code: n for code, n in delta.items() if code != "OK" and n > 0}
            # h2load -D stops with up to conns x streams calls in flight; the service sees them
            # cancelled (and may count them as UNKNOWN). More than that, or other codes, are errors.
            stop_codes = {"UNKNOWN", "CANCELLED"}
            if set(odd) <= stop_codes and sum(odd.values()) <= conns * streams:
                cancelled_at_stop += sum(odd.values())
                odd = {}
            for code, n in odd.items():
                grpc_errors[code] = grpc_errors.get(code, 0.0) + n
                print(f"    WARNING: the service answered {n:.0f} calls with gRPC {code}")
            if res.grpc_answered < res.succeeded:
                print(
                    f"    WARNING: the service counted {res.grpc_answered:.0f} calls, "
                    f"h2load {res.succeeded} successes"
                )
        check_alive(proc, port, bodies[0], expected, f"after h2load -c {conns} -m {streams}")
        if not res.ok:
            raise CheckFailed(f"{name}: h2load saw failures: {res.summary()}\n{res.raw_outputs[0][-2000:]}")
        return res, cpu_pct

    c0, m0 = cfg.sweep[0]
    run(c0, m0, cfg.initial_warmup, 0.5, None)  # warm-up: connections, caches, Lua script load

    sweep: list[dict[str, Any]] = []
    best: tuple[H2Result, float] | None = None
    for conns, streams in cfg.sweep:
        res, cpu_pct = run(conns, streams, cfg.duration, cfg.warmup, None)
        row = res.summary() | {"server_cpu_pct": round(cpu_pct, 1)}
        row["other_load_on_server_cpu_pct"] = round1(res.other_load_pct)
        row["other_load_on_client_cpu_pct"] = round1(res.other_client_load_pct)
        sweep.append(row)
        print(
            f"    sat  -c {conns:>2} x -m {streams:>3}: {res.req_per_s:8.0f} req/s  "
            f"p50 {res.latency_ms(0.5):6.2f} ms  p99 {res.latency_ms(0.99):6.2f} ms  "
            f"server CPU {cpu_pct:4.0f}%  other load: server CPU {_pct(res.other_load_pct)}, "
            f"client CPU {_pct(res.other_client_load_pct)}",
            flush=True,
        )
        if best is None or res.req_per_s > best[0].req_per_s:
            best = (res, cpu_pct)
    assert best is not None
    sat, sat_cpu = best

    half_conns, half_streams = cfg.half
    rps_per_client = max(1, round(sat.req_per_s / 2 / half_conns))
    half, half_cpu = run(half_conns, half_streams, cfg.duration, cfg.warmup, rps_per_client)
    print(
        f"    half -c {half_conns:>2} x -m {half_streams:>3} --rps {rps_per_client} per "
        f"connection: {half.req_per_s:8.0f} req/s  "
        f"p50 {half.latency_ms(0.5):6.2f} ms  p99 {half.latency_ms(0.99):6.2f} ms  "
        f"server CPU {half_cpu:4.0f}%  other load: server CPU {_pct(half.other_load_pct)}, "
        f"client CPU {_pct(half.other_client_load_pct)}",
        flush=True,
    )
    return {
        "name": name,
        "descriptors": n_descriptors,
        "distinct_keys_under_load": sat.procs * n_descriptors,
        "saturation_req_per_s": round(sat.req_per_s, 1),
        "saturation_setting": f"{sat.procs}x{sat.streams}",
        "saturation_server_cpu_pct": round(sat_cpu, 1),
        # server CPU time per request at saturation: unlike req/s, barely moved by other load
        "saturation_cpu_us_per_req": round(sat_cpu / 100.0 / sat.req_per_s * 1e6, 1),
        "saturation_p99_ms": round(sat.latency_ms(0.99), 3),
        "saturation_other_load_pct": round1(sat.other_load_pct),
        "saturation_other_client_load_pct": round1(sat.other_client_load_pct),
        "half_other_load_pct": round1(half.other_load_pct),
        "half_other_client_load_pct": round1(half.other_client_load_pct),
        # gRPC codes the service answered during all h2load runs (None: not observable)
        "grpc_calls_counted": grpc_counted if metrics_port is not None else None,
        "grpc_errors": grpc_errors if metrics_port is not None else None,
        # non-OK codes no more than the calls in flight when h2load stopped: its cancellations
        "grpc_cancelled_at_stop": cancelled_at_stop if metrics_port is not None else None,
        "half_req_per_s": round(half.req_per_s, 1),
        "half_p50_ms": round(half.latency_ms(0.5), 3),
        "half_p99_ms": round(half.latency_ms(0.99), 3),
        "half_max_ms": round(half.latency_ms(1.0), 3),
        "half_server_cpu_pct": round(half_cpu, 1),
        "sweep": sweep,
        "half": half.summary()
        | {"server_cpu_pct": round(half_cpu, 1), "other_load_on_server_cpu_pct": round1(half.other_load_pct)},
    }


# ---------------------------------------------------------------------------------------------
# Redis


def redis_client(port: int) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


def redis_command_calls(r: Any) -> int:
    """Commands executed by Redis, those run inside Lua scripts included (minus our INFOs)."""
    stats = r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def client_commands(
    redis_port: int, service_port: int, messages: Sequence[bytes], n_descriptors: int
) -> dict[str, int] | None:
    """Commands the service sends to Redis (not those run by scripts) for these requests.

    Uses ``redis-cli MONITOR``, where commands run by a script show as coming from ``lua``.
    """
    cli = shutil.which("redis-cli") or str(Path(sys.executable).parent / "redis-cli")
    if not Path(cli).exists():
        return None
    with tempfile.TemporaryFile("w+") as out:
        mon = subprocess.Popen([cli, "-p", str(redis_port), "monitor"], stdout=out, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            asyncio.run(drive_distinct(service_port, messages, n_descriptors))
            time.sleep(0.3)
        finally:
            mon.terminate()
            mon.wait(timeout=5)
        out.seek(0)
        counts: dict[str, int] = {}
        for line in out:
            if "]" not in line or " lua]" in line:
                continue
            rest = line.split("]", 1)[1].strip()
            cmd = rest.split(" ", 1)[0].strip('"').lower()
            if cmd:
                counts[cmd] = counts.get(cmd, 0) + 1
        return counts


def redis_memory_phase(service_port: int, redis_port: int, n_keys: int, proc: Proc) -> dict[str, Any]:
    r = redis_client(redis_port)
    r.flushall()
    # warm-up outside the measured range (loads the script, grows client buffers)
    asyncio.run(drive_distinct(service_port, [make_mem_request(-1 - i) for i in range(50)], 1))
    time.sleep(0.2)
    mem0 = int(r.info("memory")["used_memory"])
    keys0 = int(r.dbsize())
    calls0 = redis_command_calls(r)
    elapsed = asyncio.run(drive_distinct(service_port, [make_mem_request(i) for i in range(n_keys)], 1))
    calls1 = redis_command_calls(r)
    time.sleep(0.2)
    mem1 = int(r.info("memory")["used_memory"])
    keys1 = int(r.dbsize())
    keyspace = r.info("keyspace").get("db0", {})
    sample = r.randomkey()
    sample_info: dict[str, Any] = {}
    if sample is not None:
        sample_info = {
            "key": sample.decode(errors="replace"),
            "type": r.type(sample).decode(),
            "ttl_s": r.ttl(sample),
            "memory_usage_bytes": r.memory_usage(sample),
        }
    # 4 descriptors per request: Redis commands per decision must stay 1
    msgs4 = [make_request(10_000_000 + i, 4) for i in range(min(2000, n_keys))]
    calls4a = redis_command_calls(r)
    asyncio.run(drive_distinct(service_port, msgs4, 4))
    calls4b = redis_command_calls(r)
    n_mon = 500
    sent1 = client_commands(
        redis_port, service_port, [make_mem_request(20_000_000 + i) for i in range(n_mon)], 1
    )
    sent4 = client_commands(
        redis_port, service_port, [make_request(20_000_000 + i, 4) for i in range(n_mon)], 4
    )

    def per_request(counts: dict[str, int] | None) -> dict[str, float] | None:
        if counts is None:
            return None
        return {k: round(v / n_mon, 3) for k, v in sorted(counts.items())}

    if not proc.alive():
        raise CheckFailed(f"{proc.name} died during the memory phase:\n{proc.log_tail()}")
    new_keys = keys1 - keys0
    return {
        "distinct_values": n_keys,
        "new_keys": new_keys,
        "keys_with_ttl": int(keyspace.get("expires", 0)),
        "keys_total": keys1,
        "used_memory_before": mem0,
        "used_memory_after": mem1,
        "bytes_per_key": round((mem1 - mem0) / new_keys, 1) if new_keys else None,
        "bytes_per_descriptor_value": round((mem1 - mem0) / n_keys, 1),
        # sent by the service, per decision (MONITOR): exactly one EVALSHA is the goal
        "client_commands_per_request_1desc": per_request(sent1),
        "client_commands_per_request_4desc": per_request(sent4),
        # executed by Redis per decision, commands inside the Lua script included
        "executed_commands_per_request_1desc": round((calls1 - calls0) / n_keys, 3),
        "executed_commands_per_request_4desc": round((calls4b - calls4a) / len(msgs4), 3),
        "drive_req_per_s": round(n_keys / elapsed, 1),
        "sample_key": sample_info,
    }


# ---------------------------------------------------------------------------------------------
# report


def fmt_table(rows: list[dict[str, Any]], ceiling: float | None, ceiling_cpu: float | None) -> str:
    out = [
        "| target | req/s at saturation | ratio to ceiling | p50 (half sat.) | p99 (half sat.) "
        "| half-sat. rate | server CPU µs/req | CPU ratio | gRPC errors | best setting | server CPU "
        "| other load: server CPU / client CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            out.append(f"| {row['name']} | n/a | n/a | n/a | n/a | n/a | | | | {row['error']} | | |")
            continue
        sat = row["saturation_req_per_s"]
        ratio = f"{sat / ceiling:.2f}" if ceiling else "n/a"
        cpu_us = row["saturation_cpu_us_per_req"]
        cpu_ratio = f"{ceiling_cpu / cpu_us:.2f}" if ceiling_cpu and cpu_us else "n/a"
        out.append(
            f"| {row['name']} | {sat:,.0f} | {ratio} | {row['half_p50_ms']:.2f} ms | "
            f"{row['half_p99_ms']:.2f} ms | {row['half_req_per_s']:,.0f} req/s | {cpu_us:.0f} | "
            f"{cpu_ratio} | {_errors(row)} | {row['saturation_setting']} | "
            f"{row['saturation_server_cpu_pct']:.0f}% | "
            f"{_pct(row['saturation_other_load_pct']).strip()} / "
            f"{_pct(row['saturation_other_client_load_pct']).strip()} |"
        )
    return "\n".join(out)


def _errors(row: dict[str, Any]) -> str:
    errors = row.get("grpc_errors")
    if errors is None:
        return "n/a"
    return ", ".join(f"{n:.0f} {code}" for code, n in errors.items()) or "0"


def verdicts(rows: list[dict[str, Any]], ceiling: float | None) -> list[str]:
    goals = {"in-memory": 0.85, "redis, 4 descriptors": 0.70}
    lines = []
    for row in rows:
        if "error" in row or row["name"].startswith("ceiling"):
            continue
        if row["name"] in goals and ceiling:
            ratio = row["saturation_req_per_s"] / ceiling
            goal = goals[row["name"]]
            ok = "PASS" if ratio >= goal else "FAIL"
            lines.append(f"- {row['name']}: ratio {ratio:.2f} (goal >= {goal:.2f}) {ok}")
        if row.get("grpc_errors"):
            lines.append(f"- {row['name']}: INVALID, gRPC errors under load: {_errors(row)}")
        p99 = row["half_p99_ms"]
        ok = "PASS" if p99 <= 5.0 else "FAIL"
        lines.append(f"- {row['name']}: p99 {p99:.2f} ms at half saturation (goal <= 5 ms) {ok}")
    return lines


# ---------------------------------------------------------------------------------------------
# main


def sweep_text(pairs: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"{c}x{m}" for c, m in pairs)


def parse_sweep(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        c, m = part.lower().split("x")
        out.append((int(c), int(m)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rate limit service benchmark (h2load)")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    parser.add_argument("--duration", type=float, help="seconds per measured h2load run")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--sweep", help="saturation settings, connections x streams (default 2x16,4x8,4x16)")
    parser.add_argument(
        "--half", default="4x16", help="connections x streams of the half-saturation run (4x16)"
    )
    parser.add_argument("--keys", type=int, help="distinct keys for the memory phase (10000)")
    parser.add_argument("--legation", help="path of the legation CLI (default: next to python)")
    parser.add_argument("--no-uvloop", action="store_true", help="ceiling on plain asyncio")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server/client CPUs")
    parser.add_argument("--keep-logs", type=Path, help="copy the servers' logs into this directory")
    parser.add_argument("--only", help="comma list of: ceiling,memory,redis1,redis4,recheck")
    args = parser.parse_args(argv)

    quick = args.quick
    duration = args.duration or (2.0 if quick else 6.0)
    ncpu = len(os.sched_getaffinity(0))
    pin = not args.no_pin and ncpu >= 2 and shutil.which("taskset") is not None
    cpus = sorted(os.sched_getaffinity(0))
    cfg = Settings(
        duration=duration,
        warmup=0.5 if quick else 1.0,
        initial_warmup=1.0 if quick else 2.0,
        sweep=parse_sweep(args.sweep or ("4x16" if quick else "2x16,4x8,4x16")),
        half=parse_sweep(args.half)[0],
        server_cpu=cpus[0] if pin else None,
        client_cpu=cpus[1] if pin else None,
    )
    n_keys = args.keys or (2000 if quick else 10_000)
    only = set(args.only.split(",")) if args.only else None
    legation = args.legation or str(Path(sys.executable).parent / "legation")
    if not Path(legation).exists():
        legation = shutil.which("legation") or legation
    redis_bin = shutil.which("redis-server") or str(Path(sys.executable).parent / "redis-server")

    def sigterm(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, sigterm)

    print(
        f"# ratelimit bench: {platform.node()} {ncpu} CPUs, python {platform.python_version()}, "
        f"grpcio {grpc.__version__}; server on CPU {cfg.server_cpu}, h2load/redis on CPU "
        f"{cfg.client_cpu}; {cfg.duration:g}s per run (+{cfg.warmup:g}s h2load warm-up), "
        f"sweep {sweep_text(cfg.sweep)}, half-saturation run {sweep_text([cfg.half])}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    memory: dict[str, Any] | None = None
    ceiling: float | None = None
    ceiling_cpu: float | None = None

    def want(tag: str) -> bool:
        return only is None or tag in only

    with tempfile.TemporaryDirectory(prefix="rl-bench-") as tmp:
        tmpdir = Path(tmp)
        config = tmpdir / "bench.yaml"
        config.write_text(CONFIG_YAML)

        def target(
            name: str,
            cmd_for_port: Callable[[int, int | None], list[str]],
            n_desc: int,
            statuses: bool,
            key_offset: int,
            after: Callable[[Proc, int], None] | None = None,
            client_procs: Sequence[Proc] = (),
        ) -> dict[str, Any]:
            print(f"\n## {name}", flush=True)
            port = free_port()
            metrics_port = free_port() if statuses else None  # the service, not the no-op
            cmd = pinned(cmd_for_port(port, metrics_port), cfg.server_cpu)
            try:
                with started(name, cmd, tmpdir) as proc:
                    wait_ready(proc, port)
                    row = measure(
                        name, proc, port, n_desc, statuses, cfg, key_offset, metrics_port, client_procs
                    )
                    if after is not None:
                        after(proc, port)
                    return row
            except (CheckFailed, RuntimeError, OSError, grpc.RpcError) as exc:
                msg = str(exc).strip()
                print(f"    ERROR: {msg}", flush=True)
                lines = msg.splitlines() or [type(exc).__name__]
                short = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
                return {"name": name, "error": short[:160].replace("|", "/")}

        noop_cmd = [sys.executable, str(HERE / "noop_server.py")]
        if args.no_uvloop:
            noop_cmd.append("--no-uvloop")
        ceiling_name = "ceiling (no-op grpc.aio" + (")" if args.no_uvloop else " + uvloop)")

        def noop(port: int, _metrics_port: int | None) -> list[str]:
            return [*noop_cmd, "--listen", f"127.0.0.1:{port}"]

        def service(redis_port: int | None) -> Callable[[int, int | None], list[str]]:
            def cmd(port: int, metrics_port: int | None) -> list[str]:
                c = [legation, "ratelimit", "--config", str(config)]
                c += ["--listen", f"127.0.0.1:{port}"]
                if metrics_port is not None:
                    c += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
                if redis_port is not None:
                    c += ["--redis-url", f"redis://127.0.0.1:{redis_port}/0"]
                return c

            return cmd

        if want("ceiling"):
            rows.append(target(ceiling_name, noop, 1, False, 0))
            if "error" not in rows[-1]:
                ceiling = rows[-1]["saturation_req_per_s"]
                ceiling_cpu = rows[-1]["saturation_cpu_us_per_req"]
        if want("memory"):
            rows.append(target("in-memory", service(None), 1, True, 1000))

        if want("redis1") or want("redis4"):
            redis_port = free_port()
            redis_cmd = [
                redis_bin, "--port", str(redis_port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no",
            ]  # fmt: skip
            with started("redis-server", pinned(redis_cmd, cfg.client_cpu), tmpdir) as redis:
                deadline = time.monotonic() + 10
                r = redis_client(redis_port)
                while True:
                    try:
                        r.ping()
                        break
                    except Exception as exc:
                        if time.monotonic() > deadline or not redis.alive():
                            raise RuntimeError(f"redis-server did not start:\n{redis.log_tail()}") from exc
                        time.sleep(0.1)
                info = r.info("server")
                print(f"\n# redis-server {info['redis_version']} on port {redis_port}")

                def memory_phase(proc: Proc, port: int) -> None:
                    nonlocal memory
                    print(f"\n## redis memory per key ({n_keys} distinct values)", flush=True)
                    memory = redis_memory_phase(port, redis_port, n_keys, proc)
                    print("    " + json.dumps(memory), flush=True)

                if want("redis1"):
                    rows.append(
                        target(
                            "redis, 1 descriptor", service(redis_port), 1, True, 2000, client_procs=[redis]
                        )
                    )
                if want("redis4"):
                    rows.append(
                        target(
                            "redis, 4 descriptors",
                            service(redis_port),
                            4,
                            True,
                            3000,
                            after=memory_phase,
                            client_procs=[redis],
                        )
                    )

        if want("recheck") and (only is not None or not quick):
            rows.append(target("ceiling re-check", noop, 1, False, 0))

        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in tmpdir.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)

    print("\n## results\n")
    print(fmt_table(rows, ceiling, ceiling_cpu))
    print()
    for line in verdicts(rows, ceiling):
        print(line)
    if memory is not None:
        print(
            f"\nRedis memory: {memory['bytes_per_key']} bytes per key "
            f"({memory['new_keys']} keys for {memory['distinct_values']} distinct descriptor "
            f"values, {memory['bytes_per_descriptor_value']} bytes per value; "
            f"{memory['keys_with_ttl']}/{memory['keys_total']} keys have a TTL); "
            f"Redis commands sent per decision: {memory['client_commands_per_request_1desc']} "
            f"(1 descriptor), {memory['client_commands_per_request_4desc']} (4 descriptors); "
            f"executed inside Redis (script included): "
            f"{memory['executed_commands_per_request_1desc']} and "
            f"{memory['executed_commands_per_request_4desc']}"
        )
    print(
        f"\nSetup: server pinned to CPU {cfg.server_cpu}, h2load (-t 1, one process per "
        f"connection) and redis on CPU {cfg.client_cpu}; saturation = best of "
        f"{sweep_text(cfg.sweep)} (connections x streams); half saturation paced with h2load "
        f"--rps on {sweep_text([cfg.half])}; {cfg.duration:g}s per run."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": {
                        "node": platform.node(),
                        "cpus": ncpu,
                        "python": platform.python_version(),
                        "grpcio": grpc.__version__,
                    },
                    "settings": {
                        "duration_s": cfg.duration,
                        "warmup_s": cfg.warmup,
                        "sweep": cfg.sweep,
                        "half": cfg.half,
                        "server_cpu": cfg.server_cpu,
                        "client_cpu": cfg.client_cpu,
                        "limit": LIMIT,
                    },
                    "ceiling_req_per_s": ceiling,
                    "ceiling_cpu_us_per_req": ceiling_cpu,
                    "targets": rows,
                    "redis_memory": memory,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
