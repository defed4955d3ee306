"""Authorization service (Envoy ext_authz over gRPC), and Envoy in front of it, driven by h2load.

Targets (``--only`` takes their tags; default all but ``envoy-direct``, ``recheck`` only in full
runs). Direct gRPC (h2load -> Check): ``ceiling`` (``python -m bench.noop_server --service
authz``), ``repeated`` (``legation authz``, one RS256 token: cache hits), ``distinct`` (1,000
tokens, each verified once first), ``nocache`` (``--cache-size 0``: every request verifies),
``recheck``. Through Envoy (``--concurrency 1`` -> direct_response 200): ``envoy-noop`` (ext_authz
-> no-op Check), ``envoy-authz`` (ext_authz -> legation authz), ``envoy-jwt`` (native
jwt_authn), ``envoy-direct`` (no auth filter). The server side runs on CPU 0, h2load on CPU 1.
Exit status 1 if a target could not be measured or answered wrongly under load, 2 if a target
of the issue was missed, else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.authz_fixtures import Keys, check_request, policy_document, subject
from bench.authz_targets import Bench, FirstPass, direct_target, envoy_target, first_pass
from bench.harness.grpc_wire import grpc_frame
from bench.harness.load import LoadResult, LoadSettings, measure, sweep_text
from bench.harness.options import add_load_options, load_settings
from bench.harness.processes import find_binary, keep_logs
from bench.harness.report import Column, Machine, TargetRow, error_summary, load_table, write_results
from bench.harness.scenario import Scenario, exit_on_sigterm

__all__ = ["SCENARIO", "AuthzRow", "Settings", "run"]

GOAL_RATIO = 0.85
GOAL_P99_MS = 5.0
TAGS = (
    "ceiling",
    "repeated",
    "distinct",
    "nocache",
    "envoy-noop",
    "envoy-authz",
    "envoy-jwt",
    "envoy-direct",
    "recheck",
)
NAMES = {
    "ceiling": "ceiling (no-op grpc.aio + uvloop)",
    "recheck": "ceiling (no-op grpc.aio + uvloop) re-check",
    "repeated": "authz, 1 token repeated",
    "nocache": "authz, no cache (--cache-size 0)",
    "envoy-noop": "Envoy + ext_authz -> no-op Check",
    "envoy-authz": "Envoy + ext_authz -> legation authz",
    "envoy-jwt": "Envoy + jwt_authn (native)",
    "envoy-direct": "Envoy, no auth filter",
}
ENVOY = {  # tag -> (Envoy auth filter, what ext_authz calls)
    "envoy-noop": ("ext_authz", "noop"),
    "envoy-authz": ("ext_authz", "service"),
    "envoy-jwt": ("jwt_authn", None),
    "envoy-direct": ("none", None),
}


@dataclass(frozen=True)
class Settings:
    """One run of the authz bench."""

    load: LoadSettings
    tags: tuple[str, ...]
    tokens: int
    """Distinct tokens of the ``distinct`` and ``nocache`` targets."""
    legation: str
    envoy: str
    keep_logs: Path | None = None


@dataclass(frozen=True)
class AuthzRow(TargetRow):
    tag: str = ""
    cache_hits: float | None = None
    cache_misses: float | None = None
    first_pass: FirstPass | None = None

    @property
    def cache_hit_pct(self) -> float | None:
        seen = (self.cache_hits or 0.0) + (self.cache_misses or 0.0)
        return None if self.cache_hits is None or not seen else round(100.0 * self.cache_hits / seen, 2)


@dataclass(frozen=True)
class Results:
    machine: Machine
    settings: Settings
    targets: list[AuthzRow]


def _row(tag: str, name: str, load: LoadResult, service: bool, fp: FirstPass | None = None) -> AuthzRow:
    hits, misses = load.counters.get("cache:hit", 0.0), load.counters.get("cache:miss", 0.0)
    return AuthzRow(name, load, tag=tag, cache_hits=hits if service else None,
                    cache_misses=misses if service else None, first_pass=fp)  # fmt: skip


@contextlib.contextmanager
def _guard(tag: str, name: str, rows: list[AuthzRow]) -> Iterator[None]:
    """Any failure of a target becomes its error row."""
    print(f"\n## {name}", flush=True)
    try:
        yield
    except Exception as exc:  # CheckFailed, RuntimeError, OSError, grpc.RpcError
        print(f"    ERROR: {str(exc).strip()}", flush=True)
        rows.append(AuthzRow(name, error=error_summary(exc), tag=tag))


def _direct(b: Bench, tag: str, settings: Settings, pool: Sequence[bytes], rows: list[AuthzRow]) -> None:
    name = NAMES.get(tag) or f"authz, {len(pool):,} tokens (cached)"
    service_args = {"repeated": [], "distinct": [], "nocache": ["--cache-size", "0"]}.get(tag)
    with (
        _guard(tag, name, rows),
        direct_target(b, tag, name, service_args=service_args, pool=pool) as (target, proc, port, mport),
    ):
        fp = first_pass(b, port, mport, proc, pool) if tag == "distinct" else None
        if fp is not None:
            print(f"    first pass: {fp}", flush=True)
        rows.append(_row(tag, name, measure(target, settings.load), service_args is not None, fp))


def _envoy(b: Bench, tag: str, settings: Settings, base_id: int, rows: list[AuthzRow]) -> None:
    mode, upstream = ENVOY[tag]
    with (
        _guard(tag, NAMES[tag], rows),
        envoy_target(b, tag, NAMES[tag], mode=mode, upstream=upstream, base_id=base_id) as target,
    ):
        rows.append(_row(tag, NAMES[tag], measure(target, settings.load), upstream == "service"))


def run(settings: Settings) -> list[AuthzRow]:
    """Every target of ``settings.tags``, with a fresh RSA key and ``settings.tokens`` tokens."""
    keys = Keys.generate()
    tokens = [keys.token(i) for i in range(settings.tokens)]
    messages = [grpc_frame(check_request(tok)) for tok in tokens]
    print(f"# {len(tokens)} RS256 tokens signed with a fresh RSA 2048 key (kid {keys.kid})", flush=True)
    rows: list[AuthzRow] = []
    with tempfile.TemporaryDirectory(prefix="authz-bench-") as tmp:
        log_dir = Path(tmp)
        policy = log_dir / "policy.yaml"
        policy.write_text(
            "# written by python -m bench authz\n"
            + yaml.safe_dump(policy_document(keys.jwks_json()), sort_keys=False)
        )
        b = Bench(settings.legation, settings.envoy, policy, keys.jwks_json(), tokens,
                  {m: subject(i) for i, m in enumerate(messages)}, settings.load.cpus.server_cpu, log_dir)  # fmt: skip
        base_id = os.getpid() % 10_000 * 100
        for i, tag in enumerate(settings.tags):
            if tag in ENVOY:
                _envoy(b, tag, settings, base_id + i, rows)
            else:
                _direct(b, tag, settings, messages if tag in ("distinct", "nocache") else messages[:1], rows)
        keep_logs(log_dir, settings.keep_logs)
    return rows


# ---------------------------------------------------------------------------------------------
# report


def _loads(rows: Sequence[AuthzRow]) -> Mapping[str, LoadResult]:
    return {r.tag: r.load for r in rows if r.load is not None}


def verdicts(rows: Sequence[AuthzRow]) -> tuple[list[str], bool]:
    """PASS/FAIL lines for the issue's targets, INVALID lines for wrong answers under load;
    and whether every target was met."""
    loads, lines, met = _loads(rows), [], True
    ceiling, repeated = loads.get("ceiling"), loads.get("repeated")
    if ceiling and repeated:
        ratio = repeated.saturation.req_per_s / ceiling.saturation.req_per_s
        cpu_ratio = ceiling.saturation.cpu_us_per_req / repeated.saturation.cpu_us_per_req
        met &= ratio >= GOAL_RATIO
        lines.append(f"- {NAMES['repeated']}: ratio {ratio:.2f} to the ceiling (goal >= {GOAL_RATIO:.2f}) "
                     f"{'PASS' if ratio >= GOAL_RATIO else 'FAIL'}  [by server CPU per request: {cpu_ratio:.2f}]")  # fmt: skip
    for row in rows:
        if row.load is None:
            continue
        if row.load.errors:
            lines.append(f"- {row.name}: INVALID, wrong answers under load: {row.load.errors}")
        if row.tag in ("repeated", "distinct", "nocache"):
            p99 = row.load.half.p99_ms
            met &= p99 <= GOAL_P99_MS
            lines.append(f"- {row.name}: p99 {p99:.2f} ms at half saturation (goal <= {GOAL_P99_MS:g} ms) "
                         f"{'PASS' if p99 <= GOAL_P99_MS else 'FAIL'}")  # fmt: skip
    return lines, met


def envoy_summary(rows: Sequence[AuthzRow]) -> list[str]:
    """Through Envoy: p99s, and ext_authz -> this service against jwt_authn and the no-op."""
    loads = _loads(rows)
    lines = [f"- {r.name}: p99 {r.load.half.p99_ms:.2f} ms at half saturation (through Envoy, for information)"
             for r in rows if r.load is not None and r.tag in ENVOY]  # fmt: skip
    authz, native, noop = loads.get("envoy-authz"), loads.get("envoy-jwt"), loads.get("envoy-noop")
    if authz and native:
        a, n = authz.saturation, native.saturation
        lines.append(
            f"- Envoy + ext_authz (legation authz) / Envoy + jwt_authn: {a.req_per_s / n.req_per_s:.2f} x the req/s "
            f"({a.req_per_s:,.0f} vs {n.req_per_s:,.0f}), {n.cpu_us_per_req / a.cpu_us_per_req:.2f} x by CPU per "
            f"request ({a.cpu_us_per_req:.0f} vs {n.cpu_us_per_req:.0f} µs); p99 at half saturation "
            f"{authz.half.p99_ms:.2f} ms vs {native.half.p99_ms:.2f} ms"
        )
    if authz and noop:
        lines.append(f"- Envoy + ext_authz: legation authz / no-op Check server: "
                     f"{authz.saturation.req_per_s / noop.saturation.req_per_s:.2f} x the req/s")  # fmt: skip
    return lines


def _cache_cell(row: TargetRow) -> str:
    pct = row.cache_hit_pct if isinstance(row, AuthzRow) else None
    return "n/a" if pct is None else f"{pct:.1f}%"


def report(rows: Sequence[AuthzRow], settings: Settings, seconds: float) -> bool:
    """Tables and verdicts on stdout; whether every target of the issue was met."""
    loads, cache = _loads(rows), [Column("cache hits", _cache_cell)]
    direct, envoy = [r for r in rows if r.tag not in ENVOY], [r for r in rows if r.tag in ENVOY]
    print("\n## results\n")
    if direct:
        print(
            "Direct gRPC (h2load -> Check):\n\n"
            + load_table(direct, loads.get("ceiling"), ref_label="ceiling", extra=cache)
            + "\n"
        )
    if envoy:
        print("Through Envoy (h2load -> Envoy --concurrency 1 -> direct_response 200):\n\n"
              + load_table(envoy, loads.get("envoy-noop"), ref_label="Envoy + ext_authz no-op", extra=cache) + "\n")  # fmt: skip
    lines, met = verdicts(rows)
    print("\n".join(lines + envoy_summary(rows)))
    fp = next((r.first_pass for r in rows if r.first_pass is not None), None)
    if fp is not None:
        print(f"- first pass of the {fp.tokens:,} tokens (grpc.aio client, every one a cache miss: "
              f"{fp.cache_misses:.0f} misses): {fp.server_cpu_us_per_req:.0f} µs server CPU per request")  # fmt: skip
    load = settings.load
    print(f"\nSetup: server side pinned to CPU {load.cpus.server_cpu} (the Check server; or Envoy and the Check "
          f"server it calls), h2load (-t 1, one process per connection) on CPU {load.cpus.client_cpu}; saturation "
          f"= best of {sweep_text(load.sweep)} (connections x streams); half saturation paced with h2load --rps on "
          f"{sweep_text([load.half])}; {load.duration:g}s per run; total {seconds:.0f}s.")  # fmt: skip
    return met


# ---------------------------------------------------------------------------------------------
# command line


def configure(parser: argparse.ArgumentParser) -> None:
    add_load_options(parser, default_duration=5.0)
    parser.add_argument("--tokens", type=int, default=1000, help="distinct tokens (default 1000)")
    parser.add_argument("--envoy", help="path of the envoy binary (default: next to python)")


def settings_from(args: argparse.Namespace) -> Settings:
    default = tuple(t for t in TAGS if t != "envoy-direct" and (t != "recheck" or not args.quick))
    tags = tuple(args.only.split(",")) if args.only else default
    if unknown := set(tags) - set(TAGS):
        raise SystemExit(f"unknown targets {sorted(unknown)}; known: {', '.join(TAGS)}")
    return Settings(load_settings(args, default_duration=5.0), tags, args.tokens,
                    find_binary("legation", args.legation), find_binary("envoy", args.envoy), args.keep_logs)  # fmt: skip


def main(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    exit_on_sigterm()
    machine, load, start = Machine.here(len(os.sched_getaffinity(0))), settings.load, time.monotonic()
    print(f"# authz bench: {machine.node} {machine.cpus} CPUs, python {machine.python}, grpcio {machine.grpcio}; "
          f"server side on CPU {load.cpus.server_cpu}, h2load on CPU {load.cpus.client_cpu}; {load.duration:g}s per "
          f"run (+{load.warmup:g}s h2load warm-up), sweep {sweep_text(load.sweep)}, half-saturation run "
          f"{sweep_text([load.half])}", flush=True)  # fmt: skip
    rows = run(settings)
    met = report(rows, settings, time.monotonic() - start)
    write_results("authz", Results(machine, settings, rows), args.json)
    if any(r.load is None or r.load.errors for r in rows):
        return 1  # a target could not be measured, or answered wrongly under load
    return 0 if met else 2


SCENARIO = Scenario(
    "authz",
    __doc__ or "",
    configure,
    main,
)
