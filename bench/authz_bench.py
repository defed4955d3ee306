"""Benchmark of the authorization service (Envoy ext_authz over gRPC) and of Envoy in front of it.

    .venv/bin/python bench/authz_bench.py [--quick] [--duration S] [--json PATH] [--only TAGS]

Uses the approach and helpers of ``ratelimit_bench.py``: h2load drives gRPC over h2c (``POST
/envoy.service.auth.v3.Authorization/Check``, a gRPC-framed ``CheckRequest`` from a file,
``content-type: application/grpc``, ``te: trailers``), one h2load process per connection, the
server under test pinned to CPU 0 and h2load to CPU 1; a saturation sweep over a few
(connections x streams) settings, then a run paced at half of the best rate for p50/p99.

Direct gRPC (h2load -> server):

1. ``ceiling``: ``bench/noop_server.py --service authz``: grpc.aio + uvloop answering every
   Check with a pre-serialized OK ``CheckResponse``;
2. ``repeated``: ``legation authz --config POLICY --listen ...`` with ONE RS256 token repeated
   (after the first call, every request is a verified-token cache hit);
3. ``distinct``: 1,000 distinct valid tokens: each is sent once with grpc.aio first (1,000
   signature verifications, timed: the first pass), then h2load runs with one token per
   connection, a different slice of the 1,000 for every run (h2load sends one body per process:
   at most ``connections`` distinct tokens are in flight in one run). All are in the cache by
   then, so the h2load runs are cache hits; the hit fraction is read from the service's metrics;
4. ``nocache``: the same tokens with ``--cache-size 0``: every request verifies the RS256
   signature (hit fraction 0, measured).

Through Envoy (h2load over h2c -> ``envoy --concurrency 1`` -> direct_response 200):

5. ``envoy-noop``: Envoy + ext_authz filter -> the no-op Check server (the ext_authz ceiling);
6. ``envoy-authz``: Envoy + ext_authz filter -> ``legation authz`` (same policy, one token);
7. ``envoy-jwt``: Envoy + native ``jwt_authn`` (same issuer, audience, keys inline, token);
8. ``envoy-direct`` (only with ``--only``): Envoy with no auth filter at all.

Envoy and the service it calls both run on CPU 0 (the whole server side on one core, like the
direct rows), h2load on CPU 1. ext_authz runs on direct_response routes (checked: a request
without a token gets 401, and the 200 carries the identity headers the filter set).

Correctness, because h2load counts any HTTP 200 as success: before the load every body is sent
once and must get a real allow (``CheckResponse`` status OK with ``x-user-id`` = the token's
``sub``, ``x-team``, ``authorization`` removed, ``sub`` in the dynamic metadata; through Envoy:
200 with the identity headers echoed, and 401 without a token); after every h2load run the server
must be alive and allow again; the service's metrics (``legation_grpc_requests_total``,
``legation_authz_decisions_total``) and Envoy's stats (``ext_authz.ok/denied/error``,
``jwt_authn.allowed/denied``) are read before and after every run: any non-OK gRPC code, any deny
or any ext_authz error marks the row INVALID (up to connections x streams calls cancelled when
h2load -D stops are reported apart).

Every process the bench starts (servers, Envoy, h2load) is stopped on exit, errors included.
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
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.service.auth.v3 import external_auth_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _authz_fixtures import (
    AUTHZ_PATH,
    REQUEST_HOST,
    REQUEST_PATH,
    TEAM,
    Keys,
    check_request,
    envoy_config,
    policy_document,
    subject,
)
from _h2load import H2Result, grpc_frame, pinned, run_h2load
from ratelimit_bench import (
    CheckFailed,
    Proc,
    Settings,
    cpu_busy,
    free_port,
    parse_sweep,
    round1,
    started,
    sweep_text,
    wait_ready,
)

HERE = Path(__file__).resolve().parent
N_TOKENS = 1000
GOAL_RATIO = 0.85
GOAL_P99_MS = 5.0
STOP_CODES = {"UNKNOWN", "CANCELLED"}


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


# ---------------------------------------------------------------------------------------------
# observing the servers


def service_counters(metrics_port: int | None) -> dict[str, float]:
    """Counters of the authz service: gRPC codes of Check, decisions, token cache lookups."""
    if metrics_port is None:
        return {}
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}

    def add(key: str, value: float) -> None:
        out[key] = out.get(key, 0.0) + value

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "legation_grpc_requests_total" and s.labels.get("method", "").endswith("/Check"):
                add(f"grpc:{s.labels.get('code', '?')}", s.value)
            elif s.name == "legation_authz_decisions_total":
                add(f"decision:{s.labels.get('result')}:{s.labels.get('reason')}", s.value)
            elif s.name == "legation_authz_token_cache_total":
                add(f"cache:{s.labels.get('result')}", s.value)
    return out


def envoy_counters(admin_port: int) -> dict[str, float]:
    """Envoy's ext_authz / jwt_authn / downstream counters of the ``front`` listener."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and name.startswith("http.front.") and value.strip().isdigit():
            out["envoy:" + name.removeprefix("http.front.")] = float(value)
    return out


# ---------------------------------------------------------------------------------------------
# targets


@dataclass
class Target:
    """One thing to load: how to reach it, what a correct answer is, what its counters mean."""

    name: str
    group: str  # "grpc" (h2load -> Check) or "envoy" (h2load -> Envoy)
    procs: list[Proc]  # the server side: CPU time of all of them is the server's
    port: int
    bodies: Callable[[int, int], list[bytes | None]]  # (run index, connections) -> one per connection
    validate: Callable[[bytes | None, str], None]  # one real request, checked; raises CheckFailed
    counters: Callable[[], dict[str, float]]
    path: str = AUTHZ_PATH
    headers: Sequence[str] = ("content-type: application/grpc", "te: trailers")
    extra_args: Sequence[str] = ()
    service: bool = False  # a legation authz process whose metrics are read
    envoy_filter: str | None = None  # "ext_authz" | "jwt_authn" | None
    notes: dict[str, Any] = field(default_factory=dict)


def check_allow(resp: external_auth_pb2.CheckResponse, sub: str | None, what: str) -> None:
    """An allow of the bench policy: status OK, identity headers, token removed, metadata."""
    if resp.status.code != 0 or resp.HasField("denied_response"):
        raise CheckFailed(f"{what}: not an allow\n{resp}")
    if sub is None:  # the no-op server: a bare OK
        return
    ok = resp.ok_response
    headers = {h.header.key: h.header.value for h in ok.headers}
    if headers.get("x-user-id") != sub or headers.get("x-team") != TEAM:
        raise CheckFailed(f"{what}: identity headers missing or wrong\n{resp}")
    if "authorization" not in ok.headers_to_remove:
        raise CheckFailed(f"{what}: the token header is not removed\n{resp}")
    meta = resp.dynamic_metadata.fields
    if "sub" not in meta or meta["sub"].string_value != sub:
        raise CheckFailed(f"{what}: no sub in dynamic metadata\n{resp}")


def grpc_check(port: int, message: bytes, timeout: float = 5.0) -> external_auth_pb2.CheckResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(AUTHZ_PATH, request_serializer=None, response_deserializer=None)
        raw = call(message, timeout=timeout)
    return external_auth_pb2.CheckResponse.FromString(raw)


async def first_pass(port: int, messages: Sequence[tuple[bytes, str]], concurrency: int = 16) -> float:
    """Send each CheckRequest once with grpc.aio, every answer must be a real allow."""
    sem = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(AUTHZ_PATH, request_serializer=None, response_deserializer=None)

        async def one(msg: bytes, sub: str) -> None:
            async with sem:
                raw = await call(msg, timeout=10)
            check_allow(external_auth_pb2.CheckResponse.FromString(raw), sub, "first pass")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(m, s) for m, s in messages))
        return time.perf_counter() - t0


def http_get(port: int, token: str | None) -> tuple[int, dict[str, str]]:
    headers = {"host": REQUEST_HOST}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{REQUEST_PATH}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


# ---------------------------------------------------------------------------------------------
# measuring one target


def measure(t: Target, cfg: Settings) -> dict[str, Any]:
    errors: dict[str, float] = {}
    totals: dict[str, float] = {}
    cancelled_at_stop = 0.0
    runs = 0

    def run(
        conns: int, streams: int, duration: float, warmup: float, rps: int | None
    ) -> tuple[H2Result, float]:
        nonlocal cancelled_at_stop, runs
        bodies = t.bodies(runs, conns)
        runs += 1
        for i, body in enumerate(bodies):
            t.validate(body, f"before h2load -c {conns} -m {streams} (connection {i})")
        c0 = t.counters()
        cpu0, t0, busy0 = sum(p.cpu_seconds() for p in t.procs), time.monotonic(), cpu_busy(cfg.server_cpu)
        cbusy0, ru0 = cpu_busy(cfg.client_cpu), resource.getrusage(resource.RUSAGE_CHILDREN)
        res = run_h2load(
            t.port,
            bodies,
            streams=streams,
            duration=duration,
            warmup=warmup,
            rps_per_client=rps,
            cpu=cfg.client_cpu,
            path=t.path,
            headers=t.headers,
            extra_args=t.extra_args,
        )
        wall = max(1e-9, time.monotonic() - t0)
        server_s = sum(p.cpu_seconds() for p in t.procs) - cpu0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        ours = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        cbusy1, busy1 = cpu_busy(cfg.client_cpu), cpu_busy(cfg.server_cpu)
        if cbusy0 is not None and cbusy1 is not None:
            res.other_client_load_pct = max(0.0, 100.0 * (cbusy1 - cbusy0 - ours) / wall)
        if busy0 is not None and busy1 is not None:
            res.other_load_pct = max(0.0, 100.0 * (busy1 - busy0 - server_s) / wall)
        c1 = t.counters()
        delta = {k: v - c0.get(k, 0.0) for k, v in c1.items() if v - c0.get(k, 0.0)}
        for k, v in delta.items():
            totals[k] = totals.get(k, 0.0) + v
        odd: dict[str, float] = {}
        if t.service:
            codes = {k[5:]: v for k, v in delta.items() if k.startswith("grpc:") and k != "grpc:OK"}
            res.grpc_answered = sum(v for k, v in delta.items() if k.startswith("grpc:"))
            if set(codes) <= STOP_CODES and sum(codes.values()) <= conns * streams:
                cancelled_at_stop += sum(codes.values())
                codes = {}
            odd |= {f"gRPC {k}": v for k, v in codes.items()}
            odd |= {k.split(":", 2)[2]: v for k, v in delta.items() if k.startswith("decision:deny:")}
            allowed = sum(v for k, v in delta.items() if k.startswith("decision:allow:"))
            if allowed < res.succeeded:
                print(
                    f"    WARNING: the service allowed {allowed:.0f} calls, h2load saw {res.succeeded} successes"
                )
        if t.envoy_filter == "ext_authz":
            for stat in (
                "ext_authz.denied",
                "ext_authz.error",
                "ext_authz.failure_mode_allowed",
                "ext_authz.invalid",
            ):
                if delta.get(f"envoy:{stat}"):
                    odd[stat] = delta[f"envoy:{stat}"]
            if delta.get("envoy:ext_authz.ok", 0.0) < res.succeeded:
                odd["ext_authz.ok < successes"] = res.succeeded - delta.get("envoy:ext_authz.ok", 0.0)
        if t.envoy_filter == "jwt_authn":
            if delta.get("envoy:jwt_authn.denied"):
                odd["jwt_authn.denied"] = delta["envoy:jwt_authn.denied"]
            if delta.get("envoy:jwt_authn.allowed", 0.0) < res.succeeded:
                odd["jwt_authn.allowed < successes"] = res.succeeded - delta.get(
                    "envoy:jwt_authn.allowed", 0.0
                )
        for k, v in odd.items():
            errors[k] = errors.get(k, 0.0) + v
            print(f"    WARNING: {v:.0f} x {k} during h2load -c {conns} -m {streams}")
        t.validate(bodies[0], f"after h2load -c {conns} -m {streams}")
        if not res.ok:
            raise CheckFailed(f"{t.name}: h2load saw failures: {res.summary()}\n{res.raw_outputs[0][-2000:]}")
        res.raw_outputs.clear()
        return res, 100.0 * server_s / wall

    def split_cpu(before: dict[str, float], after: dict[str, float], total_us: float) -> dict[str, float]:
        """The server's CPU µs per request, split by process in proportion to their CPU time."""
        spent = {k: after[k] - before.get(k, 0.0) for k in after}
        whole = sum(spent.values()) or 1.0
        return {k: round(total_us * v / whole, 1) for k, v in spent.items()}

    c0, m0 = cfg.sweep[0]
    run(c0, m0, cfg.initial_warmup, 0.5, None)  # warm-up: connections, caches
    sweep: list[dict[str, Any]] = []
    best: tuple[H2Result, float, dict[str, float]] | None = None
    for conns, streams in cfg.sweep:
        before = {p.name: p.cpu_seconds() for p in t.procs}
        res, cpu_pct = run(conns, streams, cfg.duration, cfg.warmup, None)
        after = {p.name: p.cpu_seconds() for p in t.procs}
        # CPU per request of each server process (Envoy and the service apart)
        by_proc = split_cpu(before, after, cpu_pct / 100.0 / max(1e-9, res.req_per_s) * 1e6)
        row = res.summary() | {"server_cpu_pct": round(cpu_pct, 1), "cpu_us_per_req_by_process": by_proc}
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
            best = (res, cpu_pct, by_proc)
    assert best is not None
    sat, sat_cpu, sat_by_proc = best

    half_conns, half_streams = cfg.half
    rps_per_client = max(1, round(sat.req_per_s / 2 / half_conns))
    half, half_cpu = run(half_conns, half_streams, cfg.duration, cfg.warmup, rps_per_client)
    print(
        f"    half -c {half_conns:>2} x -m {half_streams:>3} --rps {rps_per_client} per connection: "
        f"{half.req_per_s:8.0f} req/s  p50 {half.latency_ms(0.5):6.2f} ms  "
        f"p99 {half.latency_ms(0.99):6.2f} ms  server CPU {half_cpu:4.0f}%  "
        f"other load: server CPU {_pct(half.other_load_pct)}, client CPU {_pct(half.other_client_load_pct)}",
        flush=True,
    )
    hits, misses = totals.get("cache:hit", 0.0), totals.get("cache:miss", 0.0)
    return {
        "name": t.name,
        "group": t.group,
        "saturation_req_per_s": round(sat.req_per_s, 1),
        "saturation_setting": f"{sat.procs}x{sat.streams}",
        "saturation_server_cpu_pct": round(sat_cpu, 1),
        "saturation_cpu_us_per_req": round(sat_cpu / 100.0 / sat.req_per_s * 1e6, 1),
        "saturation_cpu_us_per_req_by_process": sat_by_proc,
        "saturation_p99_ms": round(sat.latency_ms(0.99), 3),
        "saturation_other_load_pct": round1(sat.other_load_pct),
        "saturation_other_client_load_pct": round1(sat.other_client_load_pct),
        "half_req_per_s": round(half.req_per_s, 1),
        "half_p50_ms": round(half.latency_ms(0.5), 3),
        "half_p99_ms": round(half.latency_ms(0.99), 3),
        "half_max_ms": round(half.latency_ms(1.0), 3),
        "half_server_cpu_pct": round(half_cpu, 1),
        "half_other_load_pct": round1(half.other_load_pct),
        "errors": errors if (t.service or t.envoy_filter) else None,
        "cancelled_at_stop": cancelled_at_stop if t.service else None,
        "cache_hits": hits if t.service else None,
        "cache_misses": misses if t.service else None,
        "cache_hit_pct": round(100.0 * hits / (hits + misses), 2) if t.service and hits + misses else None,
        "counters_during_runs": {k: v for k, v in sorted(totals.items())},
        "sweep": sweep,
        "half": half.summary() | {"server_cpu_pct": round(half_cpu, 1)},
    } | t.notes


# ---------------------------------------------------------------------------------------------
# report


def fmt_table(rows: list[dict[str, Any]], ref: dict[str, Any] | None, ref_label: str) -> str:
    out = [
        f"| target | req/s at saturation | ratio to {ref_label} | p50 (half sat.) | p99 (half sat.) "
        "| half-sat. rate | server CPU µs/req | CPU ratio | cache hits | errors | best setting "
        "| server CPU | other load: server CPU / client CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        if "error" in row:
            out.append(f"| {row['name']} | n/a | | | | | | | | {row['error']} | | | |")
            continue
        sat, cpu_us = row["saturation_req_per_s"], row["saturation_cpu_us_per_req"]
        ratio = f"{sat / ref['saturation_req_per_s']:.2f}" if ref else "n/a"
        cpu_ratio = f"{ref['saturation_cpu_us_per_req'] / cpu_us:.2f}" if ref and cpu_us else "n/a"
        hit = "n/a" if row.get("cache_hit_pct") is None else f"{row['cache_hit_pct']:.1f}%"
        cpu_split = ""
        by_proc = row.get("saturation_cpu_us_per_req_by_process") or {}
        if len(by_proc) > 1:
            cpu_split = " (" + " + ".join(f"{k.split(' ')[0]} {v:.0f}" for k, v in by_proc.items()) + ")"
        out.append(
            f"| {row['name']} | {sat:,.0f} | {ratio} | {row['half_p50_ms']:.2f} ms | "
            f"{row['half_p99_ms']:.2f} ms | {row['half_req_per_s']:,.0f} req/s | {cpu_us:.0f}{cpu_split} | "
            f"{cpu_ratio} | {hit} | {_errors(row)} | {row['saturation_setting']} | "
            f"{row['saturation_server_cpu_pct']:.0f}% | {_pct(row['saturation_other_load_pct'])} / "
            f"{_pct(row['saturation_other_client_load_pct'])} |"
        )
    return "\n".join(out)


def _errors(row: dict[str, Any]) -> str:
    errors = row.get("errors")
    if errors is None:
        return "n/a"
    return ", ".join(f"{n:.0f} {k}" for k, n in errors.items()) or "0"


def verdicts(rows: dict[str, dict[str, Any]]) -> tuple[list[str], bool]:
    """PASS/FAIL lines for the issue's targets (direct gRPC rows of the service), INVALID lines
    for any row with wrong answers under load. Returns (lines, every target met)."""
    lines: list[str] = []
    met = True
    ceiling, repeated = rows.get("ceiling"), rows.get("repeated")
    if ceiling and repeated:
        ratio = repeated["saturation_req_per_s"] / ceiling["saturation_req_per_s"]
        cpu_ratio = ceiling["saturation_cpu_us_per_req"] / repeated["saturation_cpu_us_per_req"]
        ok = ratio >= GOAL_RATIO
        met &= ok
        lines.append(
            f"- {repeated['name']}: ratio {ratio:.2f} to the ceiling (goal >= {GOAL_RATIO:.2f}) "
            f"{'PASS' if ok else 'FAIL'}  [by server CPU per request: {cpu_ratio:.2f}]"
        )
    for tag, row in rows.items():
        if row.get("errors"):
            lines.append(f"- {row['name']}: INVALID, wrong answers under load: {_errors(row)}")
        if tag in ("repeated", "distinct", "nocache"):
            p99 = row["half_p99_ms"]
            ok = p99 <= GOAL_P99_MS
            met &= ok
            lines.append(
                f"- {row['name']}: p99 {p99:.2f} ms at half saturation (goal <= {GOAL_P99_MS:g} ms) "
                f"{'PASS' if ok else 'FAIL'}"
            )
    return lines, met


def envoy_summary(by_tag: dict[str, dict[str, Any]]) -> list[str]:
    authz, native, noop = by_tag.get("envoy-authz"), by_tag.get("envoy-jwt"), by_tag.get("envoy-noop")
    lines = [
        f"- {row['name']}: p99 {row['half_p99_ms']:.2f} ms at half saturation (through Envoy, for information)"
        for tag, row in by_tag.items()
        if tag.startswith("envoy")
    ]
    if authz and native:
        lines.append(
            f"- Envoy + ext_authz (legation authz) / Envoy + jwt_authn: "
            f"{authz['saturation_req_per_s'] / native['saturation_req_per_s']:.2f} x the req/s "
            f"({authz['saturation_req_per_s']:,.0f} vs {native['saturation_req_per_s']:,.0f}), "
            f"{native['saturation_cpu_us_per_req'] / authz['saturation_cpu_us_per_req']:.2f} x by CPU per request "
            f"({authz['saturation_cpu_us_per_req']:.0f} vs {native['saturation_cpu_us_per_req']:.0f} µs); "
            f"p99 at half saturation {authz['half_p99_ms']:.2f} ms vs {native['half_p99_ms']:.2f} ms"
        )
    if authz and noop:
        lines.append(
            f"- Envoy + ext_authz: legation authz / no-op Check server: "
            f"{authz['saturation_req_per_s'] / noop['saturation_req_per_s']:.2f} x the req/s"
        )
    return lines


# ---------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Authorization service benchmark (h2load)")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test, ~1 minute)")
    parser.add_argument(
        "--duration", type=float, help="seconds per measured h2load run (default 5; --quick 2)"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--sweep", help="saturation settings, connections x streams (default 2x16,4x8,4x16)")
    parser.add_argument("--half", default="4x16", help="connections x streams of the half-saturation run")
    parser.add_argument(
        "--only",
        help="comma list of: ceiling,repeated,distinct,nocache,envoy-noop,envoy-authz,envoy-jwt,"
        "envoy-direct,recheck (default: all but envoy-direct; recheck only without --quick)",
    )
    parser.add_argument("--tokens", type=int, default=N_TOKENS, help="distinct tokens (default 1000)")
    parser.add_argument("--legation", help="path of the legation CLI (default: next to python)")
    parser.add_argument("--envoy", help="path of the envoy binary (default: next to python)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server/client CPUs")
    parser.add_argument("--keep-logs", type=Path, help="copy the servers' logs into this directory")
    args = parser.parse_args(argv)

    quick = args.quick
    duration = args.duration or (2.0 if quick else 5.0)
    cpus = sorted(os.sched_getaffinity(0))
    pin = not args.no_pin and len(cpus) >= 2 and shutil.which("taskset") is not None
    cfg = Settings(
        duration=duration,
        warmup=0.5 if quick else 1.0,
        initial_warmup=1.0 if quick else 2.0,
        sweep=parse_sweep(args.sweep or ("4x16" if quick else "2x16,4x8,4x16")),
        half=parse_sweep(args.half)[0],
        server_cpu=cpus[0] if pin else None,
        client_cpu=cpus[1] if pin else None,
    )
    default_tags = ["ceiling", "repeated", "distinct", "nocache", "envoy-noop", "envoy-authz", "envoy-jwt"]
    if not quick:
        default_tags.append("recheck")  # the ceiling again: how much the shared machine drifted
    tags = args.only.split(",") if args.only else default_tags
    legation = args.legation or str(Path(sys.executable).parent / "legation")
    if not Path(legation).exists():
        legation = shutil.which("legation") or legation
    envoy_bin = args.envoy or str(Path(sys.executable).parent / "envoy")
    if not Path(envoy_bin).exists():
        envoy_bin = shutil.which("envoy") or envoy_bin

    def sigterm(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, sigterm)
    print(
        f"# authz bench: {platform.node()} {len(cpus)} CPUs, python {platform.python_version()}, "
        f"grpcio {grpc.__version__}; server side on CPU {cfg.server_cpu}, h2load on CPU "
        f"{cfg.client_cpu}; {cfg.duration:g}s per run (+{cfg.warmup:g}s h2load warm-up), sweep "
        f"{sweep_text(cfg.sweep)}, half-saturation run {sweep_text([cfg.half])}",
        flush=True,
    )
    t_start = time.monotonic()
    keys = Keys.generate()
    jwks = keys.jwks_json()
    tokens = [keys.token(i) for i in range(args.tokens)]
    messages = [grpc_frame(check_request(tok)) for tok in tokens]
    sub_of = {m: subject(i) for i, m in enumerate(messages)}
    print(f"# {len(tokens)} RS256 tokens signed with a fresh RSA 2048 key (kid {keys.kid})", flush=True)

    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="authz-bench-") as tmp:
        tmpdir = Path(tmp)
        policy = tmpdir / "policy.yaml"
        policy.write_text(
            "# written by bench/authz_bench.py\n" + yaml.safe_dump(policy_document(jwks), sort_keys=False)
        )
        base_ids = iter(range(os.getpid() % 10_000 * 100, os.getpid() % 10_000 * 100 + 100))

        def noop_cmd(port: int) -> list[str]:
            return [
                sys.executable,
                str(HERE / "noop_server.py"),
                "--service",
                "authz",
                "--listen",
                f"127.0.0.1:{port}",
            ]

        def service_cmd(port: int, metrics_port: int, extra: Sequence[str] = ()) -> list[str]:
            return [
                legation, "authz", "--config", str(policy), "--listen", f"127.0.0.1:{port}",
                "--metrics-listen", f"127.0.0.1:{metrics_port}", *extra,
            ]  # fmt: skip

        def grpc_validator(port: int, proc: Proc, service: bool) -> Callable[[bytes | None, str], None]:
            def validate(body: bytes | None, what: str) -> None:
                assert body is not None
                if not proc.alive():
                    raise CheckFailed(f"{proc.name} died {what}:\n{proc.log_tail()}")
                try:
                    resp = grpc_check(port, body[5:])
                except grpc.RpcError as exc:
                    raise CheckFailed(f"{proc.name} failed a gRPC call {what}: {exc}") from exc
                check_allow(resp, sub_of[body] if service else None, f"{proc.name} {what}")

            return validate

        def slices(pool: Sequence[bytes]) -> Callable[[int, int], list[bytes | None]]:
            """A different slice of the token pool for every run, one token per connection."""

            def bodies(run: int, conns: int) -> list[bytes | None]:
                start = (run * conns * 7) % len(pool)
                return [pool[(start + i * 7) % len(pool)] for i in range(conns)]

            return bodies

        def direct(tag: str, name: str, *, service_args: Sequence[str] | None, pool: Sequence[bytes],
                   prefill: bool = False) -> dict[str, Any]:  # fmt: skip
            print(f"\n## {name}", flush=True)
            port = free_port()
            metrics_port = free_port()
            is_service = service_args is not None
            cmd = service_cmd(port, metrics_port, service_args or ()) if is_service else noop_cmd(port)
            try:
                with started(tag, pinned(cmd, cfg.server_cpu), tmpdir) as proc:
                    wait_ready(proc, port)
                    target = Target(
                        name=name,
                        group="grpc",
                        procs=[proc],
                        port=port,
                        bodies=slices(pool),
                        validate=grpc_validator(port, proc, is_service),
                        counters=(lambda: service_counters(metrics_port)) if is_service else dict,
                        service=is_service,
                    )
                    if prefill:
                        c0, cpu0 = target.counters(), proc.cpu_seconds()
                        elapsed = asyncio.run(first_pass(port, [(m[5:], sub_of[m]) for m in pool]))
                        c1, cpu1 = target.counters(), proc.cpu_seconds()
                        misses = c1.get("cache:miss", 0) - c0.get("cache:miss", 0)
                        hits = c1.get("cache:hit", 0) - c0.get("cache:hit", 0)
                        target.notes["first_pass"] = {
                            "tokens": len(pool),
                            "seconds": round(elapsed, 3),
                            "req_per_s_grpc_aio_client": round(len(pool) / elapsed, 1),
                            "cache_misses": misses,
                            "cache_hits": hits,
                            "server_cpu_us_per_req": round((cpu1 - cpu0) / len(pool) * 1e6, 1),
                        }
                        print(f"    first pass: {json.dumps(target.notes['first_pass'])}", flush=True)
                    return measure(target, cfg)
            except (CheckFailed, RuntimeError, OSError, grpc.RpcError) as exc:
                return _failed(name, exc)

        def through_envoy(tag: str, name: str, mode: str, upstream: str | None) -> dict[str, Any]:
            print(f"\n## {name}", flush=True)
            authz_port, metrics_port = free_port(), free_port()
            port, admin_port = free_port(), free_port()
            config = tmpdir / f"{tag}.yaml"
            config.write_text(
                yaml.safe_dump(
                    envoy_config(
                        mode, port=port, admin_port=admin_port, authz_port=authz_port, jwks_json=jwks
                    ),
                    sort_keys=False,
                )
            )
            envoy_cmd = [
                envoy_bin, "-c", str(config), "--disable-hot-restart", "--base-id", str(next(base_ids)),
                "--concurrency", "1", "-l", "warning",
            ]  # fmt: skip
            token = tokens[0]
            try:
                with contextlib.ExitStack() as stack:
                    procs: list[Proc] = []
                    if upstream is not None:
                        up_cmd = (
                            service_cmd(authz_port, metrics_port)
                            if upstream == "service"
                            else noop_cmd(authz_port)
                        )
                        up = stack.enter_context(
                            started(f"{tag}-{upstream}", pinned(up_cmd, cfg.server_cpu), tmpdir)
                        )
                        wait_ready(up, authz_port)
                        procs.append(up)
                    envoy = stack.enter_context(
                        started(f"{tag}-envoy", pinned(envoy_cmd, cfg.server_cpu), tmpdir)
                    )
                    _wait_envoy(envoy, port, admin_port)
                    procs.insert(0, envoy)
                    # the no-op Check server allows anything and sets no identity headers
                    checks_token = mode == "jwt_authn" or upstream == "service"
                    expect_sub = subject(0) if checks_token else None

                    def validate(_body: bytes | None, what: str) -> None:
                        for p in procs:
                            if not p.alive():
                                raise CheckFailed(f"{p.name} died {what}:\n{p.log_tail()}")
                        status, headers = http_get(port, token)
                        if status != 200:
                            raise CheckFailed(f"{name} {what}: HTTP {status} with a valid token {headers}")
                        if expect_sub is not None and (
                            headers.get("x-seen-user") != expect_sub
                            or headers.get("x-seen-team") != TEAM
                            or headers.get("x-seen-authorization")
                        ):
                            raise CheckFailed(
                                f"{name} {what}: identity headers not set by the filter {headers}"
                            )

                    if checks_token:
                        status, headers = http_get(port, None)
                        if status != 401:
                            raise CheckFailed(
                                f"{name}: HTTP {status} without a token, expected 401 {headers}"
                            )

                    def counters() -> dict[str, float]:
                        out = envoy_counters(admin_port)
                        if upstream == "service":
                            out |= service_counters(metrics_port)
                        return out

                    target = Target(
                        name=name,
                        group="envoy",
                        procs=procs,
                        port=port,
                        bodies=lambda _run, conns: [None] * conns,
                        validate=validate,
                        counters=counters,
                        path=REQUEST_PATH,
                        headers=(f"authorization: Bearer {token}", "accept: application/json"),
                        service=upstream == "service",
                        envoy_filter=mode if mode != "none" else None,
                    )
                    return measure(target, cfg)
            except (CheckFailed, RuntimeError, OSError, grpc.RpcError) as exc:
                return _failed(name, exc)

        one = [messages[0]]
        for tag in tags:
            if tag in ("ceiling", "recheck"):
                rows[tag] = direct(tag, "ceiling (no-op grpc.aio + uvloop)" + (" re-check" if tag == "recheck" else ""),
                                   service_args=None, pool=one)  # fmt: skip
            elif tag == "repeated":
                rows[tag] = direct(tag, "authz, 1 token repeated", service_args=[], pool=one)
            elif tag == "distinct":
                rows[tag] = direct(tag, f"authz, {len(tokens):,} tokens (cached)", service_args=[],
                                   pool=messages, prefill=True)  # fmt: skip
            elif tag == "nocache":
                rows[tag] = direct(tag, "authz, no cache (--cache-size 0)", service_args=["--cache-size", "0"],
                                   pool=messages)  # fmt: skip
            elif tag == "envoy-noop":
                rows[tag] = through_envoy(tag, "Envoy + ext_authz -> no-op Check", "ext_authz", "noop")
            elif tag == "envoy-authz":
                rows[tag] = through_envoy(tag, "Envoy + ext_authz -> legation authz", "ext_authz", "service")
            elif tag == "envoy-jwt":
                rows[tag] = through_envoy(tag, "Envoy + jwt_authn (native)", "jwt_authn", None)
            elif tag == "envoy-direct":
                rows[tag] = through_envoy(tag, "Envoy, no auth filter", "none", None)
            else:
                parser.error(f"unknown target {tag!r}")

        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in tmpdir.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)

    envoy_rows = [r for t, r in rows.items() if t.startswith("envoy")]
    grpc_rows = [r for t, r in rows.items() if not t.startswith("envoy")]
    ok_rows = {t: r for t, r in rows.items() if "error" not in r}
    print("\n## results\n")
    if grpc_rows:
        print("Direct gRPC (h2load -> Check):\n")
        print(fmt_table(grpc_rows, ok_rows.get("ceiling"), "ceiling"))
        print()
    if envoy_rows:
        print("Through Envoy (h2load -> Envoy --concurrency 1 -> direct_response 200):\n")
        print(fmt_table(envoy_rows, ok_rows.get("envoy-noop"), "Envoy + ext_authz no-op"))
        print()
    lines, met = verdicts(ok_rows)
    for line in lines:
        print(line)
    for line in envoy_summary(ok_rows):
        print(line)
    if "distinct" in ok_rows and "first_pass" in ok_rows["distinct"]:
        fp = ok_rows["distinct"]["first_pass"]
        print(
            f"- first pass of the {fp['tokens']:,} tokens (grpc.aio client, every one a cache miss: "
            f"{fp['cache_misses']:.0f} misses): {fp['server_cpu_us_per_req']:.0f} µs server CPU per request"
        )
    print(
        f"\nSetup: server side pinned to CPU {cfg.server_cpu} (the Check server; or Envoy and the "
        f"Check server it calls), h2load (-t 1, one process per connection) on CPU {cfg.client_cpu}; "
        f"saturation = best of {sweep_text(cfg.sweep)} (connections x streams); half saturation paced "
        f"with h2load --rps on {sweep_text([cfg.half])}; {cfg.duration:g}s per run; total "
        f"{time.monotonic() - t_start:.0f}s."
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": {
                        "node": platform.node(),
                        "cpus": len(cpus),
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
                        "tokens": len(tokens),
                    },
                    "targets": rows,
                },
                indent=2,
            )
            + "\n"
        )
        print(f"wrote {args.json}")
    if any("error" in r or r.get("errors") for r in rows.values()):
        return 1  # a target could not be measured, or answered wrongly under load
    return 0 if met else 2


def _wait_envoy(envoy: Proc, port: int, admin_port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not envoy.alive():
            raise CheckFailed(f"envoy exited with {envoy.popen.returncode}:\n{envoy.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=0.5) as resp:
                if resp.status == 200 and resp.read().strip() == b"LIVE":
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise CheckFailed(f"envoy not ready on port {port} after {timeout}s:\n{envoy.log_tail()}")


def _failed(name: str, exc: BaseException) -> dict[str, Any]:
    msg = str(exc).strip()
    print(f"    ERROR: {msg}", flush=True)
    lines = msg.splitlines() or [type(exc).__name__]
    short = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return {"name": name, "error": short[:160].replace("|", "/")}


if __name__ == "__main__":
    sys.exit(main())
