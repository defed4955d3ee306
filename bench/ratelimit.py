"""Rate limit service (Envoy RLS over gRPC) against a no-op grpcio ceiling, driven by h2load.

Targets, in this order (``--only`` takes their tags): ``ceiling`` (``python -m bench.noop_server``:
grpc.aio on uvloop answering a pre-serialized ``RateLimitResponse(overall_code=OK)``),
``memory`` (``legation ratelimit`` without Redis, 1 descriptor), ``redis1`` and ``redis4`` (with
a fresh redis-server, 1 and 4 descriptors per request; after ``redis4``, Redis memory per key and
commands per decision), ``recheck`` (the ceiling again, full runs only). The server under test
runs on CPU 0, h2load and redis-server on CPU 1. Exit status 1 if any target failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness.cpu import pinned
from bench.harness.grpc_wire import grpc_frame, grpc_unframe, unary_call
from bench.harness.h2load import H2Request, H2Result
from bench.harness.load import (
    LoadResult,
    LoadSettings,
    RunOutcome,
    Target,
    grpc_code_outcome,
    measure,
    no_judge,
    sweep_text,
)
from bench.harness.metrics import service_counters
from bench.harness.options import add_load_options, load_settings
from bench.harness.processes import (
    CheckFailed,
    Proc,
    find_binary,
    free_port,
    keep_logs,
    noop_server_command,
    started,
    wait_grpc_ready,
)
from bench.harness.report import Machine, TargetRow, error_summary, load_table, write_results
from bench.harness.scenario import Scenario, exit_on_sigterm
from bench.ratelimit_redis import RedisMemory, memory_phase, redis_server
from bench.ratelimit_requests import CONFIG_YAML, LIMIT, RLS_PATH, check_response, make_request

__all__ = ["SCENARIO", "RatelimitRow", "Settings", "run"]

GOALS = {"in-memory": 0.85, "redis, 4 descriptors": 0.70}
GOAL_P99_MS = 5.0
TAGS = ("ceiling", "memory", "redis1", "redis4", "recheck")


@dataclass(frozen=True)
class Settings:
    """One run of the rate limit bench."""

    load: LoadSettings
    keys: int
    """Distinct keys of the Redis memory phase."""
    tags: tuple[str, ...]
    """Targets to run, in order."""
    legation: str
    uvloop: bool = True
    """Ceiling on uvloop (else plain asyncio)."""
    keep_logs: Path | None = None


@dataclass(frozen=True)
class RatelimitRow(TargetRow):
    descriptors: int = 1


@dataclass(frozen=True)
class Results:
    machine: Machine
    settings: Settings
    limit: int
    targets: list[RatelimitRow]
    redis_memory: RedisMemory | None


def _counter_name(name: str, labels: Mapping[str, str]) -> str | None:
    if name == "legation_grpc_requests_total" and labels.get("method", "").endswith("/ShouldRateLimit"):
        return f"grpc:{labels.get('code', '?')}"
    return None


def _judge(delta: Mapping[str, float], res: H2Result, in_flight: int) -> RunOutcome:
    answered = sum(v for k, v in delta.items() if k.startswith("grpc:"))
    if answered < res.counts.succeeded:
        print(
            f"    WARNING: the service counted {answered:.0f} calls, h2load {res.counts.succeeded} successes"
        )
    return grpc_code_outcome(delta, in_flight)


@dataclass(frozen=True)
class _Spec:
    """A target to start: its name, tag, command and requests."""

    tag: str
    name: str
    command: Callable[[int, int | None], list[str]]
    """(port, metrics port or None) -> the server's command."""
    descriptors: int
    service: bool
    key_offset: int
    client_procs: Sequence[Proc] = ()


def _target(spec: _Spec, proc: Proc, port: int, metrics_port: int | None, settings: Settings) -> Target:
    max_conns = max(c for c, _ in (*settings.load.sweep, settings.load.half))
    bodies: list[bytes | None] = [
        grpc_frame(make_request(spec.key_offset + i, spec.descriptors)) for i in range(max_conns)
    ]
    expected = spec.descriptors if spec.service else None

    def validate(body: bytes | None, what: str) -> None:
        assert body is not None
        proc.require_alive(what)
        try:
            raw = unary_call(port, RLS_PATH, grpc_unframe(body))
        except Exception as exc:  # grpc.RpcError
            raise CheckFailed(f"{proc.name} failed a gRPC call {what}: {exc}") from exc
        check_response(raw, expected, f"{proc.name} {what}")

    return Target(
        name=spec.name, procs=[proc], request=H2Request(port=port, path=RLS_PATH),
        bodies=lambda _run, conns: bodies[:conns], validate=validate,
        counters=lambda: service_counters(metrics_port, _counter_name), judge=_judge if spec.service else no_judge,
        observes_errors=spec.service, client_procs=spec.client_procs,
    )  # fmt: skip


def _measure(
    spec: _Spec, settings: Settings, log_dir: Path, after: Callable[[Proc, int], None] | None = None
) -> RatelimitRow:
    print(f"\n## {spec.name}", flush=True)
    port = free_port()
    metrics_port = free_port() if spec.service else None
    try:
        with started(
            spec.name, pinned(spec.command(port, metrics_port), settings.load.cpus.server_cpu), log_dir
        ) as proc:
            wait_grpc_ready(proc, port)
            load = measure(_target(spec, proc, port, metrics_port, settings), settings.load)
            if after is not None:
                after(proc, port)
            return RatelimitRow(spec.name, load, descriptors=spec.descriptors)
    except Exception as exc:  # CheckFailed, RuntimeError, OSError, grpc.RpcError
        print(f"    ERROR: {str(exc).strip()}", flush=True)
        return RatelimitRow(spec.name, error=error_summary(exc), descriptors=spec.descriptors)


def _service(
    settings: Settings, config: Path, redis_port: int | None
) -> Callable[[int, int | None], list[str]]:
    def cmd(port: int, metrics_port: int | None) -> list[str]:
        c = [settings.legation, "ratelimit", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
        if metrics_port is not None:
            c += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
        if redis_port is not None:
            c += ["--redis-url", f"redis://127.0.0.1:{redis_port}/0"]
        return c

    return cmd


def _ceiling(settings: Settings, tag: str) -> _Spec:
    name = "ceiling (no-op grpc.aio" + (" + uvloop)" if settings.uvloop else ")")
    name += " re-check" if tag == "recheck" else ""

    def cmd(port: int, _metrics: int | None) -> list[str]:
        return noop_server_command(port, service="ratelimit", uvloop=settings.uvloop)

    return _Spec(tag, name, cmd, 1, service=False, key_offset=0)


def run(settings: Settings) -> tuple[list[RatelimitRow], RedisMemory | None]:
    """Every target of ``settings.tags``; the rows and (after ``redis4``) the Redis memory phase."""
    rows: list[RatelimitRow] = []
    memory: list[RedisMemory] = []
    with tempfile.TemporaryDirectory(prefix="rl-bench-") as tmp, contextlib.ExitStack() as stack:
        log_dir = Path(tmp)
        config = log_dir / "bench.yaml"
        config.write_text(CONFIG_YAML)
        redis_port: int | None = None
        redis_procs: list[Proc] = []
        for tag in settings.tags:
            if tag in ("ceiling", "recheck"):
                rows.append(_measure(_ceiling(settings, tag), settings, log_dir))
            elif tag == "memory":
                rows.append(
                    _measure(
                        _Spec(tag, "in-memory", _service(settings, config, None), 1, True, 1000),
                        settings,
                        log_dir,
                    )
                )
            elif tag in ("redis1", "redis4"):
                if redis_port is None:
                    redis, redis_port = stack.enter_context(
                        redis_server(log_dir, settings.load.cpus.client_cpu)
                    )
                    redis_procs.append(redis)
                rows.append(_redis_target(tag, settings, config, redis_port, redis_procs, log_dir, memory))
        stack.close()
        keep_logs(log_dir, settings.keep_logs)
    return rows, (memory[0] if memory else None)


def _redis_target(tag: str, settings: Settings, config: Path, redis_port: int, redis_procs: list[Proc],
                  log_dir: Path, memory: list[RedisMemory]) -> RatelimitRow:  # fmt: skip
    n_desc = 1 if tag == "redis1" else 4
    name = "redis, 1 descriptor" if n_desc == 1 else "redis, 4 descriptors"
    spec = _Spec(
        tag,
        name,
        _service(settings, config, redis_port),
        n_desc,
        True,
        2000 if n_desc == 1 else 3000,
        redis_procs,
    )

    def memory_after(proc: Proc, port: int) -> None:
        print(f"\n## redis memory per key ({settings.keys} distinct values)", flush=True)
        memory.append(memory_phase(port, redis_port, settings.keys, proc))
        print(f"    {memory[-1]}", flush=True)

    return _measure(spec, settings, log_dir, after=memory_after if n_desc == 4 else None)


# ---------------------------------------------------------------------------------------------
# report


def _ceiling_row(rows: Sequence[RatelimitRow]) -> LoadResult | None:
    first = next((r for r in rows if r.name.startswith("ceiling")), None)
    return first.load if first is not None else None


def verdicts(rows: Sequence[RatelimitRow]) -> list[str]:
    """PASS/FAIL lines for the issue's targets; INVALID for wrong answers under load."""
    ceiling = _ceiling_row(rows)
    lines = []
    for row in rows:
        if row.load is None or row.name.startswith("ceiling"):
            continue
        if row.name in GOALS and ceiling is not None:
            ratio, goal = row.load.saturation.req_per_s / ceiling.saturation.req_per_s, GOALS[row.name]
            lines.append(
                f"- {row.name}: ratio {ratio:.2f} (goal >= {goal:.2f}) {'PASS' if ratio >= goal else 'FAIL'}"
            )
        if row.load.errors:
            lines.append(f"- {row.name}: INVALID, gRPC errors under load: {row.load.errors}")
        p99 = row.load.half.p99_ms
        lines.append(
            f"- {row.name}: p99 {p99:.2f} ms at half saturation (goal <= 5 ms) {'PASS' if p99 <= GOAL_P99_MS else 'FAIL'}"
        )
    return lines


def memory_text(m: RedisMemory) -> str:
    return (
        f"Redis memory: {m.bytes_per_key} bytes per key ({m.new_keys} keys for {m.distinct_values} distinct "
        f"descriptor values, {m.bytes_per_descriptor_value} bytes per value; {m.keys_with_ttl}/{m.keys_total} "
        f"keys have a TTL); Redis commands sent per decision: {m.client_commands_per_request_1desc} "
        f"(1 descriptor), {m.client_commands_per_request_4desc} (4 descriptors); executed inside Redis "
        f"(script included): {m.executed_commands_per_request_1desc} and {m.executed_commands_per_request_4desc}"
    )


def report(rows: Sequence[RatelimitRow], memory: RedisMemory | None, settings: Settings) -> None:
    print("\n## results\n")
    print(load_table(rows, _ceiling_row(rows), ref_label="ceiling", errors_header="gRPC errors"))
    print()
    print("\n".join(verdicts(rows)))
    if memory is not None:
        print("\n" + memory_text(memory))
    load = settings.load
    print(
        f"\nSetup: server pinned to CPU {load.cpus.server_cpu}, h2load (-t 1, one process per connection) "
        f"and redis on CPU {load.cpus.client_cpu}; saturation = best of {sweep_text(load.sweep)} "
        f"(connections x streams); half saturation paced with h2load --rps on {sweep_text([load.half])}; "
        f"{load.duration:g}s per run."
    )


# ---------------------------------------------------------------------------------------------
# command line


def configure(parser: argparse.ArgumentParser) -> None:
    add_load_options(parser, default_duration=6.0)
    parser.add_argument("--keys", type=int, help="distinct keys for the memory phase (10000; --quick 2000)")
    parser.add_argument("--no-uvloop", action="store_true", help="ceiling on plain asyncio")


def settings_from(args: argparse.Namespace) -> Settings:
    tags = (
        tuple(args.only.split(","))
        if args.only
        else tuple(t for t in TAGS if t != "recheck" or not args.quick)
    )
    unknown = set(tags) - set(TAGS)
    if unknown:
        raise SystemExit(f"unknown targets {sorted(unknown)}; known: {', '.join(TAGS)}")
    return Settings(
        load=load_settings(args, default_duration=6.0), keys=args.keys or (2000 if args.quick else 10_000),
        tags=tags, legation=find_binary("legation", args.legation), uvloop=not args.no_uvloop,
        keep_logs=args.keep_logs,
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    exit_on_sigterm()
    machine = Machine.here(len(os.sched_getaffinity(0)))
    load = settings.load
    print(
        f"# ratelimit bench: {machine.node} {machine.cpus} CPUs, python {machine.python}, grpcio {machine.grpcio}; "
        f"server on CPU {load.cpus.server_cpu}, h2load/redis on CPU {load.cpus.client_cpu}; {load.duration:g}s per "
        f"run (+{load.warmup:g}s h2load warm-up), sweep {sweep_text(load.sweep)}, half-saturation run "
        f"{sweep_text([load.half])}",
        flush=True,
    )
    rows, memory = run(settings)
    report(rows, memory, settings)
    write_results("ratelimit", Results(machine, settings, LIMIT, rows, memory), args.json)
    return 1 if any(r.load is None for r in rows) else 0


SCENARIO = Scenario("ratelimit", __doc__ or "", configure, main)
