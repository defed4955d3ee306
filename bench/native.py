"""Native JWT enforcement (issue 13): wrk through Envoy, five targets in one run.

Targets, all proxying to the same upstream (a separate Envoy answering every request with a
``direct_response`` 200): ``open`` (a Legation route without auth), ``native`` (the same with a
JWTPolicy, ``enforcement: auto``: jwt_authn + RBAC + header mutation in Envoy), ``service`` (the
same policy copied with ``enforcement: service``: ext_authz -> ``legation authz``), ``jwt_authn``
(a hand-written static Envoy with jwt_authn and the same keys, no Legation), ``jwt_rbac`` (the same
plus the policy's claim rules as Envoy's RBAC on the verified payload). The first three are
one real gateway: ``legation controller`` on a manifests directory, Envoy over ADS, ``legation
authz`` on the controller's feed. Gateway Envoys (``--concurrency 1``) and the authz service on
CPU 0; wrk, the upstream and the controller on CPU 1. Every route is checked first (200 with the
token, 401 without; ext_authz not called on the native route, called on the service route).
Then ``--rounds`` interleaved rounds (open native service jwt_authn jwt_rbac, open ...) of one
``--duration`` wrk run each, same connections, the same valid token; the median req/s per target.
Goals: native >= 0.8 x hand-written jwt_authn, >= 0.6 x no auth, >= 3 x service; native ÷
jwt_rbac is shown for context (what is left once Envoy's own price for claim rules is paid).
Exit status 1 if a target could not be measured (any non-2xx answer or wrong auth path in a run),
2 if a goal was missed, else 0.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.authz_fixtures import Keys
from bench.harness.cpu import CpuPlan, cpu_busy
from bench.harness.options import add_common
from bench.harness.processes import CheckFailed, find_binary, keep_logs
from bench.harness.report import Machine, write_results
from bench.harness.scenario import Scenario, exit_on_sigterm
from bench.harness.wrk import parse_wrk_output, start_wrk
from bench.native_fixtures import HOSTS, REQUEST_PATH, UPSTREAM_BODY
from bench.native_gateway import Gateways, Tools, envoy_stats, get, started_gateways
from bench.native_results import (
    AUTHZ_CALLS,
    TAGS,
    GoalResult,
    Sample,
    Summary,
    goal_results,
    jwt_verified,
    results_table,
    run_problems,
    summarize,
)

__all__ = ["SCENARIO", "Settings", "run"]


@dataclass(frozen=True)
class Settings:
    """One run of the native enforcement bench."""

    duration: int
    """Seconds of each measured wrk run."""
    warmup: int
    """Seconds of one unmeasured wrk run per target before the rounds."""
    rounds: int
    connections: int
    cpus: CpuPlan
    legation: str
    envoy: str
    keep_logs: Path | None = None


@dataclass(frozen=True)
class Results:
    machine: Machine
    settings: Settings
    samples: list[Sample]
    targets: list[Summary]
    goals: list[GoalResult]


def _delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def _headers(tag: str, token: str) -> list[str]:
    return [f"Host: {HOSTS[tag]}", *([] if tag == "open" else [f"Authorization: Bearer {token}"])]


def one_run(g: Gateways, tag: str, token: str, s: Settings, *, round_no: int, duration: int) -> Sample:
    """One wrk run against ``tag``, judged by the Envoys' counters."""
    g.require_alive(f"before the {tag} run")
    gw0, up0 = envoy_stats(g.admin(tag)), envoy_stats(g.upstream_admin)
    cpu0 = sum(p.cpu_seconds() for p in g.server_procs)
    busy0, cbusy0, t0 = cpu_busy(s.cpus.server_cpu), cpu_busy(s.cpus.client_cpu), time.monotonic()
    wrk = start_wrk(f"http://127.0.0.1:{g.port(tag)}{REQUEST_PATH}", duration_s=duration,
                    connections=s.connections, cpu=s.cpus.client_cpu, headers=_headers(tag, token))  # fmt: skip
    out, _ = wrk.communicate(timeout=duration + 60)
    wall = time.monotonic() - t0
    busy1, cbusy1 = cpu_busy(s.cpus.server_cpu), cpu_busy(s.cpus.client_cpu)
    cpu = sum(p.cpu_seconds() for p in g.server_procs) - cpu0
    gw, up = _delta(envoy_stats(g.admin(tag)), gw0), _delta(envoy_stats(g.upstream_admin), up0)
    result = parse_wrk_output(out)
    g.require_alive(f"after the {tag} run")
    return Sample(
        tag=tag, round=round_no, wrk=result, cpu_us_per_req=round(cpu / max(result.requests, 1) * 1e6, 1),
        server_cpu_busy_pct=None if busy0 is None or busy1 is None else round(100 * (busy1 - busy0) / wall, 1),
        client_cpu_busy_pct=None if cbusy0 is None or cbusy1 is None else round(100 * (cbusy1 - cbusy0) / wall, 1),
        problems=run_problems(tag, result, gw, up),
    )  # fmt: skip


def _expect(what: str, found: object, wanted: object) -> None:
    if found != wanted:
        raise CheckFailed(f"{what}: {found!r}, expected {wanted!r}")


_CLAIM_RULES = ("native", "service", "jwt_rbac")
"""The targets that enforce the policy's claim rules (the others only verify the token)."""


def check_routes(g: Gateways, token: str, stranger: str) -> None:
    """Before any load: the answers with and without the token, the auth path each takes, and
    (``stranger``: a valid token of another team) that the claim rules are enforced."""
    for tag in TAGS:
        port, host = g.port(tag), HOSTS[tag]
        before = envoy_stats(g.admin(tag))
        _expect(f"{tag}: GET with the token", get(port, host, token), (200, UPSTREAM_BODY))
        delta = _delta(envoy_stats(g.admin(tag)), before)
        jwt, authz = jwt_verified(delta, tag), delta.get(AUTHZ_CALLS, 0)
        _expect(f"{tag}: tokens jwt_authn verified, ext_authz calls", (jwt, authz),
                {"open": (0, 0), "native": (1, 0), "service": (0, 1), "jwt_authn": (1, 0), "jwt_rbac": (1, 0)}[tag])  # fmt: skip
        _expect(f"{tag}: status without a token", get(port, host, None)[0], 200 if tag == "open" else 401)
        _expect(f"{tag}: status with another team's token", get(port, host, stranger)[0],
                403 if tag in _CLAIM_RULES else 200)  # fmt: skip
        print(f"  {tag:<9} 200 with the token, {get(port, host, None)[0]} without; "
              f"jwt_authn verified +{jwt:.0f}, ext_authz calls +{authz:.0f}", flush=True)  # fmt: skip


def run(s: Settings) -> list[Sample]:
    """Start everything, check the routes, warm up, then the interleaved rounds."""
    keys = Keys.generate()
    token = keys.token(0)
    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="native-bench-") as tmp:
        tools = Tools(s.legation, s.envoy, s.cpus, Path(tmp))
        try:
            with started_gateways(tools, keys.jwks_json()) as g:
                print("# checks", flush=True)
                check_routes(g, token, keys.token(1, team="billing"))
                print(f"# warm-up: {s.warmup}s per target", flush=True)
                for tag in TAGS:
                    one_run(g, tag, token, s, round_no=0, duration=s.warmup)
                for r in range(1, s.rounds + 1):
                    for tag in TAGS:
                        sample = one_run(g, tag, token, s, round_no=r, duration=s.duration)
                        samples.append(sample)
                        w = sample.wrk
                        print(f"  round {r} {tag:<9} {w.req_per_s:>9,.0f} req/s  p99 {w.p99_ms:6.2f} ms  "
                              f"{sample.cpu_us_per_req:5.0f} µs/req  {sample.problems or ''}", flush=True)  # fmt: skip
        finally:
            keep_logs(Path(tmp), s.keep_logs)
    return samples


def report(
    summaries: Mapping[str, Summary], goals: Sequence[GoalResult], s: Settings, seconds: float
) -> None:
    print("\n## results\n")
    print(results_table(summaries, goals))
    print()
    for gr in goals:
        ratio = "n/a" if gr.ratio is None else f"{gr.ratio:.2f}"
        if gr.goal.minimum is None:
            print(f"- native / {gr.goal.baseline}: {ratio} (no goal: for context)")
            continue
        verdict = "PASS" if gr.passed else "FAIL"
        print(f"- native / {gr.goal.baseline}: {ratio} (goal >= {gr.goal.minimum:g}) {verdict}")
    print(f"\nSetup: wrk -t1 -c{s.connections} -d{s.duration}s, {s.rounds} interleaved rounds, median req/s; "
          f"gateway Envoys (--concurrency 1) and authz on CPU {s.cpus.server_cpu}, wrk, upstream Envoy and "
          f"controller on CPU {s.cpus.client_cpu}; total {seconds:.0f}s.")  # fmt: skip


def configure(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 2 s runs")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--legation", help="path of the legation CLI (default: next to python)")
    parser.add_argument("--envoy", help="path of the envoy binary (default: next to python)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server/client CPUs")
    parser.add_argument("--keep-logs", type=Path, help="copy the logs and configs into this directory")


def settings_from(args: argparse.Namespace) -> Settings:
    quick: bool = args.quick
    return Settings(
        duration=2 if quick else args.duration, warmup=1 if quick else 3, rounds=1 if quick else args.rounds,
        connections=args.connections, cpus=CpuPlan.choose(pin=not args.no_pin),
        legation=find_binary("legation", args.legation), envoy=find_binary("envoy", args.envoy),
        keep_logs=args.keep_logs,
    )  # fmt: skip


def main(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    exit_on_sigterm()
    machine, start = Machine.here(len(os.sched_getaffinity(0))), time.monotonic()
    print(f"# native enforcement bench: {machine.node}, {machine.cpus} CPUs", flush=True)
    samples = run(settings)
    summaries = {tag: summarize(tag, samples) for tag in TAGS}
    goals = goal_results(summaries)
    report(summaries, goals, settings, time.monotonic() - start)
    write_results("native", Results(machine, settings, samples, list(summaries.values()), goals), args.json)
    if not all(s.valid for s in summaries.values()):
        return 1
    return 0 if all(g.passed for g in goals) else 2


SCENARIO = Scenario("native", __doc__ or "", configure, main)
