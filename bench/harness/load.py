"""Measuring one target under h2load: a saturation sweep, then a run paced at half of it.

Every run: each body is first checked with a real call (:attr:`Target.validate`), the servers'
counters and CPU times are read, h2load runs, then counters and CPU times again; the counter
deltas are judged (:attr:`Target.judge`: wrong answers h2load cannot see), the server must still
answer correctly, and h2load must have seen no failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bench.harness.cpu import CpuPlan, children_cpu_seconds, cpu_busy
from bench.harness.h2load import H2Request, H2Result, run_h2load
from bench.harness.processes import CheckFailed, Proc
from bench.harness.stats import round1

__all__ = [
    "STOP_CODES",
    "LoadResult",
    "LoadSettings",
    "RunOutcome",
    "RunStats",
    "Target",
    "grpc_code_outcome",
    "measure",
    "no_judge",
    "parse_setting",
    "parse_sweep",
    "split_cpu",
    "sweep_text",
]

STOP_CODES = frozenset({"UNKNOWN", "CANCELLED"})
"""Codes of the calls h2load ``-D`` leaves in flight when it stops (the server sees them cancelled)."""

Setting = tuple[int, int]
"""(connections, streams per connection)."""


@dataclass(frozen=True)
class LoadSettings:
    """How each target is loaded."""

    duration: float
    """Seconds per measured h2load run."""
    warmup: float
    """h2load ``--warm-up-time`` inside every run."""
    initial_warmup: float
    """Seconds of one unmeasured run before the sweep (connections, caches, scripts)."""
    sweep: tuple[Setting, ...]
    """Saturation settings; the best req/s is kept."""
    half: Setting
    """Setting of the run paced at half of the saturation rate (p50/p99)."""
    cpus: CpuPlan
    """Server side and client side CPUs."""


@dataclass(frozen=True)
class RunOutcome:
    """What one run's counter deltas say: wrong answers, and calls cancelled by h2load's stop."""

    errors: Mapping[str, float] = field(default_factory=dict)
    cancelled: float = 0.0


def no_judge(_delta: Mapping[str, float], _res: H2Result, _in_flight: int) -> RunOutcome:
    """For targets whose counters cannot show wrong answers (the no-op servers)."""
    return RunOutcome()


@dataclass(frozen=True)
class Target:
    """One thing to load: how to reach it, what a correct answer is, what its counters mean."""

    name: str
    procs: Sequence[Proc]
    """The server side: their CPU time is the server's."""
    request: H2Request
    bodies: Callable[[int, int], list[bytes | None]]
    """(run index, connections) -> one body per connection."""
    validate: Callable[[bytes | None, str], None]
    """Sends one real request and checks the answer; raises CheckFailed."""
    counters: Callable[[], dict[str, float]] = dict
    judge: Callable[[Mapping[str, float], H2Result, int], RunOutcome] = no_judge
    """(counter deltas, h2load's result, calls in flight at most) -> the run's outcome."""
    observes_errors: bool = False
    """Whether the counters can show wrong answers (else the row's errors are "n/a")."""
    client_procs: Sequence[Proc] = ()
    """Our processes pinned to the client CPU besides h2load (redis-server)."""


@dataclass(frozen=True)
class RunStats:
    """One h2load run, summarised."""

    connections: int
    streams_per_connection: int
    duration_s: float
    rps_per_client: int | None
    req_per_s: float
    requests: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    non_2xx: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_pct: float
    cpu_us_per_req: float
    """Server CPU time per request (all server processes)."""
    cpu_us_per_req_by_process: dict[str, float]
    other_load_on_server_cpu_pct: float | None
    other_load_on_client_cpu_pct: float | None

    @property
    def setting(self) -> str:
        return f"{self.connections}x{self.streams_per_connection}"


@dataclass(frozen=True)
class LoadResult:
    """A target's saturation (best of the sweep) and half-saturation runs."""

    saturation: RunStats
    half: RunStats
    sweep: list[RunStats]
    errors: dict[str, float] | None
    """Wrong answers under load by kind (None: not observable)."""
    cancelled_at_stop: float | None
    counters: dict[str, float]
    """Counter deltas summed over all runs."""


def parse_setting(text: str) -> Setting:
    """``"4x16"`` -> (4, 16)."""
    c, m = text.lower().split("x")
    return int(c), int(m)


def parse_sweep(text: str) -> tuple[Setting, ...]:
    """``"2x16,4x8"`` -> ((2, 16), (4, 8))."""
    return tuple(parse_setting(part) for part in text.split(","))


def sweep_text(settings: Sequence[Setting]) -> str:
    return ", ".join(f"{c}x{m}" for c, m in settings)


def grpc_code_outcome(delta: Mapping[str, float], in_flight: int) -> RunOutcome:
    """Non-OK ``grpc:CODE`` counters are errors, unless they are only stop codes and no more
    than the calls in flight when h2load stopped: then they are its cancellations."""
    odd = {k[5:]: v for k, v in delta.items() if k.startswith("grpc:") and k != "grpc:OK" and v > 0}
    if set(odd) <= STOP_CODES and sum(odd.values()) <= in_flight:
        return RunOutcome(cancelled=sum(odd.values()))
    return RunOutcome(errors={f"gRPC {k}": v for k, v in odd.items()})


def split_cpu(before: Mapping[str, float], after: Mapping[str, float], total_us: float) -> dict[str, float]:
    """``total_us`` split by process in proportion to the CPU time each spent."""
    spent = {k: after[k] - before.get(k, 0.0) for k in after}
    whole = sum(spent.values()) or 1.0
    return {k: round(total_us * v / whole, 1) for k, v in spent.items()}


@dataclass(frozen=True)
class _CpuSnapshot:
    at: float
    by_proc: dict[str, float]
    server_busy: float | None
    client_busy: float | None
    client_ours: float

    @staticmethod
    def take(target: Target, cpus: CpuPlan) -> _CpuSnapshot:
        by_proc = {p.name: p.cpu_seconds() for p in target.procs}
        ours = children_cpu_seconds() + sum(p.cpu_seconds() for p in target.client_procs)
        return _CpuSnapshot(
            time.monotonic(), by_proc, cpu_busy(cpus.server_cpu), cpu_busy(cpus.client_cpu), ours
        )


def _other_load(busy0: float | None, busy1: float | None, ours: float, wall: float) -> float | None:
    if busy0 is None or busy1 is None:
        return None
    return max(0.0, 100.0 * (busy1 - busy0 - ours) / wall)


def _stats(res: H2Result, before: _CpuSnapshot, after: _CpuSnapshot) -> RunStats:
    wall = max(1e-9, after.at - before.at)
    server_s = sum(after.by_proc.values()) - sum(before.by_proc.values())
    cpu_pct = 100.0 * server_s / wall
    cpu_us = cpu_pct / 100.0 / max(1e-9, res.req_per_s) * 1e6
    c = res.counts
    return RunStats(
        connections=res.procs, streams_per_connection=res.streams, duration_s=res.duration,
        rps_per_client=res.rps_per_client, req_per_s=round(res.req_per_s, 1), requests=c.requests,
        succeeded=c.succeeded, failed=c.failed, errored=c.errored, timeout=c.timeout,
        non_2xx=c.status_other, p50_ms=round(res.latency_ms(0.5), 3), p90_ms=round(res.latency_ms(0.9), 3),
        p99_ms=round(res.latency_ms(0.99), 3), max_ms=round(res.latency_ms(1.0), 3),
        server_cpu_pct=round(cpu_pct, 1), cpu_us_per_req=round(cpu_us, 1),
        cpu_us_per_req_by_process=split_cpu(before.by_proc, after.by_proc, cpu_us),
        other_load_on_server_cpu_pct=round1(_other_load(before.server_busy, after.server_busy, server_s, wall)),
        other_load_on_client_cpu_pct=round1(
            _other_load(before.client_busy, after.client_busy, after.client_ours - before.client_ours, wall)
        ),
    )  # fmt: skip


class _Runner:
    """Runs h2load against one target, keeping what the runs' counters add up to."""

    def __init__(self, target: Target, settings: LoadSettings) -> None:
        self.target, self.settings = target, settings
        self.runs = 0
        self.errors: dict[str, float] = {}
        self.totals: dict[str, float] = {}
        self.cancelled = 0.0

    def run(self, setting: Setting, duration: float, warmup: float, rps: int | None = None) -> RunStats:
        t, (conns, streams) = self.target, setting
        what = f"h2load -c {conns} -m {streams}"
        bodies = t.bodies(self.runs, conns)
        self.runs += 1
        for i, body in enumerate(bodies):
            t.validate(body, f"before {what} (connection {i})")
        c0, cpu0 = t.counters(), _CpuSnapshot.take(t, self.settings.cpus)
        res = run_h2load(t.request, bodies, streams=streams, duration=duration, warmup=warmup,
                         rps_per_client=rps, cpu=self.settings.cpus.client_cpu)  # fmt: skip
        cpu1, c1 = _CpuSnapshot.take(t, self.settings.cpus), t.counters()
        self._judge({k: v - c0.get(k, 0.0) for k, v in c1.items() if v - c0.get(k, 0.0)}, res, what)
        t.validate(bodies[0], f"after {what}")
        if not res.ok:
            raise CheckFailed(f"{t.name}: h2load saw failures: {res.counts}\n{res.raw_outputs[0][-2000:]}")
        return _stats(res, cpu0, cpu1)

    def _judge(self, delta: dict[str, float], res: H2Result, what: str) -> None:
        for k, v in delta.items():
            self.totals[k] = self.totals.get(k, 0.0) + v
        outcome = self.target.judge(delta, res, res.procs * res.streams)
        self.cancelled += outcome.cancelled
        for k, v in outcome.errors.items():
            self.errors[k] = self.errors.get(k, 0.0) + v
            print(f"    WARNING: {v:.0f} x {k} during {what}", flush=True)


def _line(kind: str, s: RunStats) -> str:
    rps = f" --rps {s.rps_per_client} per connection:" if s.rps_per_client is not None else ":"
    return (
        f"    {kind} -c {s.connections:>2} x -m {s.streams_per_connection:>3}{rps} {s.req_per_s:8.0f} req/s  "
        f"p50 {s.p50_ms:6.2f} ms  p99 {s.p99_ms:6.2f} ms  server CPU {s.server_cpu_pct:4.0f}%  "
        f"other load: server CPU {pct(s.other_load_on_server_cpu_pct)}, "
        f"client CPU {pct(s.other_load_on_client_cpu_pct)}"
    )


def pct(value: float | None) -> str:
    """A percentage with no decimals, "n/a" for None."""
    return "n/a" if value is None else f"{value:.0f}%"


def measure(target: Target, settings: LoadSettings) -> LoadResult:
    """One unmeasured warm-up run, the saturation sweep, and the half-saturation run."""
    runner = _Runner(target, settings)
    runner.run(settings.sweep[0], settings.initial_warmup, 0.5)
    sweep: list[RunStats] = []
    for setting in settings.sweep:
        sweep.append(runner.run(setting, settings.duration, settings.warmup))
        print(_line("sat ", sweep[-1]), flush=True)
    sat = max(sweep, key=lambda s: s.req_per_s)
    rps = max(1, round(sat.req_per_s / 2 / settings.half[0]))
    half = runner.run(settings.half, settings.duration, settings.warmup, rps)
    print(_line("half", half), flush=True)
    return LoadResult(
        saturation=sat,
        half=half,
        sweep=sweep,
        errors=runner.errors if target.observes_errors else None,
        cancelled_at_stop=runner.cancelled if target.observes_errors else None,
        counters=dict(sorted(runner.totals.items())),
    )
