"""The authz bench's targets: the Check server under h2load directly, or Envoy in front of it.

Each builder starts the processes of one target (pinned to the server CPU), checks that they
answer a real allow, and yields the :class:`~bench.harness.load.Target` to measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from envoy.service.auth.v3 import external_auth_pb2

from bench.authz_fixtures import AUTHZ_PATH, REQUEST_HOST, REQUEST_PATH, TEAM, envoy_config, subject
from bench.harness.cpu import pinned
from bench.harness.grpc_wire import grpc_unframe, unary_call
from bench.harness.h2load import H2Request, H2Result
from bench.harness.load import RunOutcome, Target, grpc_code_outcome, no_judge
from bench.harness.metrics import envoy_counters, service_counters
from bench.harness.processes import (
    CheckFailed,
    Proc,
    envoy_command,
    free_port,
    noop_server_command,
    started,
    wait_grpc_ready,
    wait_http_ready,
)

__all__ = ["Bench", "FirstPass", "direct_target", "envoy_target"]

EXT_AUTHZ_ERRORS = (
    "ext_authz.denied",
    "ext_authz.error",
    "ext_authz.failure_mode_allowed",
    "ext_authz.invalid",
)


@dataclass(frozen=True)
class Bench:
    """What every target of one run shares."""

    legation: str
    envoy: str
    policy: Path
    jwks: str
    tokens: Sequence[str]
    sub_of: Mapping[bytes, str]
    """gRPC-framed CheckRequest -> the subject of its token."""
    server_cpu: int | None
    log_dir: Path


@dataclass(frozen=True)
class FirstPass:
    """Each token sent once with grpc.aio before the load: every one a cache miss."""

    tokens: int
    seconds: float
    req_per_s_grpc_aio_client: float
    cache_misses: float
    cache_hits: float
    server_cpu_us_per_req: float


def _counter_name(name: str, labels: Mapping[str, str]) -> str | None:
    if name == "legation_grpc_requests_total" and labels.get("method", "").endswith("/Check"):
        return f"grpc:{labels.get('code', '?')}"
    if name == "legation_authz_decisions_total":
        return f"decision:{labels.get('result')}:{labels.get('reason')}"
    if name == "legation_authz_token_cache_total":
        return f"cache:{labels.get('result')}"
    return None


def authz_counters(metrics_port: int) -> dict[str, float]:
    """gRPC codes of Check, decisions and token cache lookups of the authz service."""
    return service_counters(metrics_port, _counter_name)


def service_outcome(delta: Mapping[str, float], res: H2Result, in_flight: int) -> RunOutcome:
    """Non-OK gRPC codes (beyond h2load's stop) and every deny are wrong answers."""
    codes = grpc_code_outcome(delta, in_flight)
    denies = {k.split(":", 2)[2]: v for k, v in delta.items() if k.startswith("decision:deny:")}
    allowed = sum(v for k, v in delta.items() if k.startswith("decision:allow:"))
    if allowed < res.counts.succeeded:
        print(
            f"    WARNING: the service allowed {allowed:.0f} calls, h2load saw {res.counts.succeeded} successes"
        )
    return RunOutcome({**codes.errors, **denies}, codes.cancelled)


def envoy_outcome(mode: str, delta: Mapping[str, float], succeeded: int) -> dict[str, float]:
    """Envoy's filter stats: errors and denies, or fewer allows than h2load's successes."""
    odd: dict[str, float] = {}
    stat, bad = (
        ("ext_authz.ok", EXT_AUTHZ_ERRORS)
        if mode == "ext_authz"
        else ("jwt_authn.allowed", ("jwt_authn.denied",))
    )
    for name in bad:
        if delta.get(f"envoy:{name}"):
            odd[name] = delta[f"envoy:{name}"]
    if delta.get(f"envoy:{stat}", 0.0) < succeeded:
        odd[f"{stat} < successes"] = succeeded - delta.get(f"envoy:{stat}", 0.0)
    return odd


def check_allow(raw: bytes, sub: str | None, what: str) -> None:
    """An allow of the bench policy: status OK, identity headers, token removed, metadata
    (``sub`` None: the no-op server, a bare OK)."""
    resp = external_auth_pb2.CheckResponse.FromString(raw)
    if resp.status.code != 0 or resp.HasField("denied_response"):
        raise CheckFailed(f"{what}: not an allow\n{resp}")
    if sub is None:
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


async def _first_pass(port: int, messages: Sequence[tuple[bytes, str]], concurrency: int = 16) -> float:
    """Send each CheckRequest once with grpc.aio; every answer must be a real allow."""
    import grpc

    sem = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(AUTHZ_PATH, request_serializer=None, response_deserializer=None)

        async def one(msg: bytes, sub: str) -> None:
            async with sem:
                raw = await call(msg, timeout=10)
            check_allow(raw, sub, "first pass")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(m, s) for m, s in messages))
        return time.perf_counter() - t0


def first_pass(b: Bench, port: int, metrics_port: int, proc: Proc, pool: Sequence[bytes]) -> FirstPass:
    """Every token of ``pool`` verified once (cache misses), with the server's CPU per request."""
    c0, cpu0 = authz_counters(metrics_port), proc.cpu_seconds()
    elapsed = asyncio.run(_first_pass(port, [(grpc_unframe(m), b.sub_of[m]) for m in pool]))
    c1, cpu1 = authz_counters(metrics_port), proc.cpu_seconds()
    return FirstPass(
        tokens=len(pool), seconds=round(elapsed, 3), req_per_s_grpc_aio_client=round(len(pool) / elapsed, 1),
        cache_misses=c1.get("cache:miss", 0) - c0.get("cache:miss", 0),
        cache_hits=c1.get("cache:hit", 0) - c0.get("cache:hit", 0),
        server_cpu_us_per_req=round((cpu1 - cpu0) / len(pool) * 1e6, 1),
    )  # fmt: skip


def slices(pool: Sequence[bytes]) -> Callable[[int, int], list[bytes | None]]:
    """A different slice of the token pool for every run, one token per connection."""

    def bodies(run: int, conns: int) -> list[bytes | None]:
        start = (run * conns * 7) % len(pool)
        return [pool[(start + i * 7) % len(pool)] for i in range(conns)]

    return bodies


def service_command(b: Bench, port: int, metrics_port: int, extra: Sequence[str] = ()) -> list[str]:
    return [b.legation, "authz", "--config", str(b.policy), "--listen", f"127.0.0.1:{port}",
            "--metrics-listen", f"127.0.0.1:{metrics_port}", *extra]  # fmt: skip


@contextlib.contextmanager
def direct_target(
    b: Bench, tag: str, name: str, *, service_args: Sequence[str] | None, pool: Sequence[bytes]
) -> Iterator[tuple[Target, Proc, int, int]]:
    """h2load -> the Check server (``service_args`` None: the no-op server); (target, process,
    port, metrics port)."""
    port, metrics_port = free_port(), free_port()
    is_service = service_args is not None
    cmd = (
        service_command(b, port, metrics_port, service_args or ())
        if is_service
        else noop_server_command(port, service="authz")
    )
    with started(tag, pinned(cmd, b.server_cpu), b.log_dir) as proc:
        wait_grpc_ready(proc, port)

        def validate(body: bytes | None, what: str) -> None:
            assert body is not None
            proc.require_alive(what)
            try:
                raw = unary_call(port, AUTHZ_PATH, grpc_unframe(body))
            except Exception as exc:  # grpc.RpcError
                raise CheckFailed(f"{proc.name} failed a gRPC call {what}: {exc}") from exc
            check_allow(raw, b.sub_of[body] if is_service else None, f"{proc.name} {what}")

        yield Target(
            name=name, procs=[proc], request=H2Request(port=port, path=AUTHZ_PATH), bodies=slices(pool),
            validate=validate, counters=(lambda: authz_counters(metrics_port)) if is_service else dict,
            judge=service_outcome if is_service else no_judge, observes_errors=is_service,
        ), proc, port, metrics_port  # fmt: skip


def http_get(port: int, token: str | None) -> tuple[int, dict[str, str]]:
    """GET the bench route through Envoy, with the token or without."""
    headers = {"host": REQUEST_HOST}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{REQUEST_PATH}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


def _envoy_validator(
    name: str, procs: Sequence[Proc], port: int, token: str, sub: str | None
) -> Callable[[bytes | None, str], None]:
    def validate(_body: bytes | None, what: str) -> None:
        for p in procs:
            p.require_alive(what)
        status, headers = http_get(port, token)
        if status != 200:
            raise CheckFailed(f"{name} {what}: HTTP {status} with a valid token {headers}")
        if sub is not None and (
            headers.get("x-seen-user") != sub
            or headers.get("x-seen-team") != TEAM
            or headers.get("x-seen-authorization")
        ):
            raise CheckFailed(f"{name} {what}: identity headers not set by the filter {headers}")

    return validate


def _start_upstream(
    b: Bench, stack: contextlib.ExitStack, tag: str, upstream: str, port: int, metrics_port: int
) -> Proc:
    cmd = (
        service_command(b, port, metrics_port)
        if upstream == "service"
        else noop_server_command(port, service="authz")
    )
    proc = stack.enter_context(started(f"{tag}-{upstream}", pinned(cmd, b.server_cpu), b.log_dir))
    wait_grpc_ready(proc, port)
    return proc


@contextlib.contextmanager
def envoy_target(
    b: Bench, tag: str, name: str, *, mode: str, upstream: str | None, base_id: int
) -> Iterator[Target]:
    """h2load -> ``envoy --concurrency 1`` (``mode``: ext_authz, jwt_authn or none) -> a
    direct_response 200; ext_authz calls ``upstream`` (``service`` or ``noop``)."""
    authz_port, metrics_port, port, admin_port = free_port(), free_port(), free_port(), free_port()
    config = b.log_dir / f"{tag}.yaml"
    config.write_text(
        yaml.safe_dump(
            envoy_config(mode, port=port, admin_port=admin_port, authz_port=authz_port, jwks_json=b.jwks),
            sort_keys=False,
        )
    )
    with contextlib.ExitStack() as stack:
        procs = (
            [] if upstream is None else [_start_upstream(b, stack, tag, upstream, authz_port, metrics_port)]
        )
        envoy = stack.enter_context(
            started(
                f"{tag}-envoy",
                pinned(envoy_command(b.envoy, config, base_id=base_id), b.server_cpu),
                b.log_dir,
            )
        )
        wait_http_ready(envoy, f"http://127.0.0.1:{admin_port}/ready", timeout=20, expect=b"LIVE")
        procs.insert(0, envoy)
        # the no-op Check server allows anything and sets no identity headers
        checks_token = mode == "jwt_authn" or upstream == "service"
        if checks_token and (status := http_get(port, None))[0] != 401:
            raise CheckFailed(f"{name}: HTTP {status[0]} without a token, expected 401 {status[1]}")
        sub = subject(0) if checks_token else None  # the subject of tokens[0]

        def counters() -> dict[str, float]:
            out = envoy_counters(admin_port)
            return out | authz_counters(metrics_port) if upstream == "service" else out

        def judge(delta: Mapping[str, float], res: H2Result, in_flight: int) -> RunOutcome:
            base = service_outcome(delta, res, in_flight) if upstream == "service" else RunOutcome()
            extra = envoy_outcome(mode, delta, res.counts.succeeded) if mode != "none" else {}
            return RunOutcome({**base.errors, **extra}, base.cancelled)

        token = b.tokens[0]
        yield Target(
            name=name, procs=procs, bodies=lambda _run, conns: [None] * conns,
            request=H2Request(port=port, path=REQUEST_PATH, headers=(f"authorization: Bearer {token}", "accept: application/json")),
            validate=_envoy_validator(name, procs, port, token, sub), counters=counters, judge=judge,
            observes_errors=upstream == "service" or mode != "none",
        )  # fmt: skip
