"""`legation up` once nothing is in the way (see `commands.up`): starts every process in order,
prints the URLs, then watches the processes and follows the Mappings with demo upstreams."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from legation.controller.commands.bootstrap import bootstrap
from legation.controller.commands.demo import TLS_HOSTNAMES, DemoFiles
from legation.controller.commands.demo_upstreams import DemoUpstreams, from_api, from_directory
from legation.controller.commands.up_preflight import gateway_ports
from legation.controller.commands.up_processes import Child, Stack, binary, log_tail
from legation.controller.translate.envoy import HTTPS_LISTENER

__all__ = ["run_locked"]

_SYNC_INTERVAL = 1.0
"""Seconds between two looks at the controller's Mappings for demo upstreams to start or stop."""
_HOST = "127.0.0.1"
_LOG_LEVEL = "info"
_LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


class _Stopped(Exception):
    pass


@dataclass(frozen=True)
class _Plan:
    """Ports chosen for this run beyond the command line's."""

    authz_ops: int
    ratelimit_ops: int
    reserved: dict[int, str]
    """Every port of the gateway itself → what listens there (never a demo upstream)."""


def run_locked(args: argparse.Namespace, state: Path) -> int:
    """Everything, while the caller holds `state`'s lock; the exit code."""
    files = DemoFiles(state)
    files.ensure()
    (files.root / "logs").mkdir(exist_ok=True)
    stack = Stack(files.root / "logs")
    stack.rotate_logs()
    plan = _plan(args)
    upstreams = None if args.no_demo_upstreams else _demo_upstreams(stack, plan)
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    code = 0
    try:
        _start_all(
            args, files=files, stack=stack, plan=plan, upstreams=upstreams, interrupted=lambda: stop_requested
        )
        _print_ready(args, files)
        code = _watch(args, stack=stack, upstreams=upstreams, stopped=lambda: stop_requested)
    except _Stopped as exc:
        print(f"\n{exc}", flush=True)
        code = 1 if not stop_requested else 0
    finally:
        print("stopping…", flush=True)
        stack.stop()
        print("stopped", flush=True)
    return code


def _plan(args: argparse.Namespace) -> _Plan:
    authz_ops, ratelimit_ops = _free_port(), _free_port()
    reserved = {use.port: use.what for use in gateway_ports(args)}
    reserved[authz_ops] = "authz metrics"
    reserved[ratelimit_ops] = "rate limit metrics"
    redis = urllib.parse.urlsplit(args.redis_url) if args.redis_url else None
    if redis is not None and redis.hostname in ("127.0.0.1", "localhost", "::1"):
        reserved[redis.port or 6379] = "Redis"
    return _Plan(authz_ops=authz_ops, ratelimit_ops=ratelimit_ops, reserved=reserved)


def _demo_upstreams(stack: Stack, plan: _Plan) -> DemoUpstreams:
    def say(line: str) -> None:
        print(line, flush=True)

    return DemoUpstreams(stack=stack, legation=binary("legation"), reserved=plan.reserved, say=say)


def _watch(
    args: argparse.Namespace, *, stack: Stack, upstreams: DemoUpstreams | None, stopped: Callable[[], bool]
) -> int:
    """Until stopped (0) or a process dies (1): follow the Mappings with the demo upstreams."""
    api = f"http://127.0.0.1:{args.api_port}"
    next_sync = time.monotonic()
    while not stopped():
        if upstreams is not None:
            upstreams.reap()
            if time.monotonic() >= next_sync:
                _follow(upstreams, api)
                next_sync = time.monotonic() + _SYNC_INTERVAL
        died = stack.dead()
        if died is not None:
            print(f"\n{died.name} exited with code {died.process.returncode}; see {died.log}", flush=True)
            return 1
        time.sleep(0.2)
    return 0


def _follow(upstreams: DemoUpstreams, api: str) -> None:
    wanted = from_api(api)
    if wanted is None:
        return  # the controller cannot say now: keep what runs
    for (host, port), name, _child in upstreams.sync(wanted):
        print(f"  upstream {host}:{port} ({name}) started", flush=True)


class _Waiter:
    """Waits for one child to be ready, printing one progress line."""

    def __init__(self, timeout: float, interrupted: Callable[[], bool]) -> None:
        self._timeout = timeout
        self._interrupted = interrupted

    def __call__(self, what: str, ready: Callable[[], bool], child: Child) -> None:
        start = time.monotonic()
        print(f"  {what:<24} ", end="", flush=True)
        # Our child must be alive when the probe answers: the probe alone could reach another
        # process on that port (the preflight makes that unlikely, this makes it harmless).
        while not (ready() and child.process.poll() is None):
            self._check(child, start)
            time.sleep(0.05)
        print(f"ready in {time.monotonic() - start:.1f} s", flush=True)

    def _check(self, child: Child, start: float) -> None:
        if self._interrupted():
            raise _Stopped("interrupted")
        if child.process.poll() is not None:
            print("failed", flush=True)
            raise _Stopped(f"{child.name} exited with code {child.process.returncode}:\n{log_tail(child)}")
        if time.monotonic() - start > self._timeout:
            print("timed out", flush=True)
            raise _Stopped(f"{child.name} not ready after {self._timeout:.0f} s; see {child.log}")


def _start_all(
    args: argparse.Namespace,
    *,
    files: DemoFiles,
    stack: Stack,
    plan: _Plan,
    upstreams: DemoUpstreams | None,
    interrupted: Callable[[], bool],
) -> None:
    wait = _Waiter(args.ready_timeout, interrupted)
    print(f"legation up: {args.dir} (state and logs in {files.root}/)", flush=True)
    if upstreams is not None:
        for (host, port), name, child in upstreams.sync(from_directory(args.dir, gateway=args.gateway)):
            wait(f"upstream {port} ({name})", _opens(host, port), child)
    api = _start_controller(args, files=files, stack=stack, plan=plan, wait=wait)
    _start_services(args, api=api, files=files, stack=stack, plan=plan, wait=wait)
    _start_envoy(args, files=files, stack=stack, wait=wait)


def _start_controller(
    args: argparse.Namespace, *, files: DemoFiles, stack: Stack, plan: _Plan, wait: _Waiter
) -> str:
    """The controller, allowing loopback upstreams (the demo upstreams) but never the gateway's
    own ports: every port of `plan.reserved` (Envoy, xDS, API, authz, rate limit, their metrics,
    a loopback Redis) is a reserved upstream, as is a Redis elsewhere."""
    host = _HOST
    reserved = [f"{host}:{port}" for port in sorted(plan.reserved)]
    reserved += _remote_redis(args.redis_url)
    controller = stack.start(
        "controller",
        [
            binary("legation"), "controller",
            "--source", args.dir,
            "--source", str(files.manifests),
            "--xds-listen", f"{host}:{args.xds_port}",
            "--http-listen", f"{host}:{args.api_port}",
            "--envoy-listen-address", host,
            "--envoy-http-port", str(args.http_port),
            "--envoy-https-port", str(args.https_port),
            "--authz-service", f"{host}:{args.authz_port}",
            "--ratelimit-service", f"{host}:{args.ratelimit_port}",
            "--gateway", args.gateway,
            "--envoy-admin", f"http://{host}:{args.envoy_admin_port}",  # upstream health on the page
            "--feed-token-file", f"authz={files.feed_token('authz')}",
            "--feed-token-file", f"ratelimit={files.feed_token('ratelimit')}",
            "--allow-loopback-upstreams",
            "--native-remote-jwks",  # one laptop, one team: Envoy may fetch its IdP's keys
            *(f"--reserved-upstream={entry}" for entry in reserved),
            "--log-level", _LOG_LEVEL,
            *(f"--platform-namespace={ns}" for ns in args.platform_namespace or ()),
        ],
    )  # fmt: skip
    api = f"http://{host}:{args.api_port}"
    wait("controller", lambda: _http_ok(f"{api}/readyz"), controller)
    return api


def _remote_redis(url: str | None) -> list[str]:
    """A redis:// or rediss:// server off this machine, as HOST:PORT (a loopback one is in the
    plan's reserved ports already)."""
    parts = urllib.parse.urlsplit(url) if url else None
    if parts is None or parts.scheme not in ("redis", "rediss"):
        return []
    try:
        host, port = parts.hostname, parts.port or 6379
    except ValueError:
        return []
    if not host or host in ("127.0.0.1", "localhost", "::1"):
        return []
    return [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]


def _start_services(
    args: argparse.Namespace, *, api: str, files: DemoFiles, stack: Stack, plan: _Plan, wait: _Waiter
) -> None:
    legation, host = binary("legation"), _HOST
    authz = stack.start(
        "authz",
        [
            legation, "authz",
            "--config-url", f"{api}/feed/authz",
            "--feed-token-file", str(files.feed_token("authz")),
            "--listen", f"{host}:{args.authz_port}",
            "--metrics-listen", f"{host}:{plan.authz_ops}",
            # Loopback JWKS (a local IdP) work through the service as natively: the controller,
            # run with --allow-loopback-upstreams, refuses every other http or private JWKS URI
            # and the gateway's own ports in the policies it feeds (compiler/jwks_uris.py).
            "--jwks-allow-insecure",
            "--log-level", _LOG_LEVEL,
        ],
    )  # fmt: skip
    ratelimit_argv = [
        legation, "ratelimit",
        "--config-url", f"{api}/feed/ratelimit",
        "--feed-token-file", str(files.feed_token("ratelimit")),
        "--listen", f"{host}:{args.ratelimit_port}",
        "--metrics-listen", f"{host}:{plan.ratelimit_ops}",
        "--log-level", _LOG_LEVEL,
    ]  # fmt: skip
    if args.redis_url:
        ratelimit_argv += ["--redis-url", args.redis_url]
    ratelimit = stack.start("ratelimit", ratelimit_argv)
    wait("authz", lambda: _http_ok(f"http://{host}:{plan.authz_ops}/readyz"), authz)
    wait("ratelimit", lambda: _http_ok(f"http://{host}:{plan.ratelimit_ops}/readyz"), ratelimit)


def _start_envoy(args: argparse.Namespace, *, files: DemoFiles, stack: Stack, wait: _Waiter) -> None:
    host = _HOST
    config = bootstrap(
        xds=f"{host}:{args.xds_port}",
        node_id="legation-up",
        admin=f"{host}:{args.envoy_admin_port}",
        delta=True,  # incremental xDS: a change re-sends only the resources that changed
    )
    bootstrap_path = files.root / "envoy.yaml"
    bootstrap_path.write_text(yaml.safe_dump(config, sort_keys=False))
    envoy = stack.start(
        "envoy",
        [
            binary("envoy"),
            "-c", str(bootstrap_path),
            "--concurrency", "2",
            "--disable-hot-restart",
            "--base-id", str(os.getpid() % 60000 + 1000),
            "-l", "warning",
        ],
    )  # fmt: skip
    admin = f"http://{host}:{args.envoy_admin_port}"

    https = _serves_https(f"http://{host}:{args.api_port}")

    def ready() -> bool:
        listening = _port_open(host, args.http_port) and (not https or _port_open(host, args.https_port))
        return _http_ok(f"{admin}/ready") and listening

    wait("envoy", ready, envoy)


def _serves_https(api: str) -> bool:
    """Whether the controller's snapshot has the HTTPS listener (only when there are Hosts)."""
    try:
        with urllib.request.urlopen(f"{api}/api/envoy", timeout=5) as response:
            listeners = json.loads(response.read())["resources"].get(_LISTENER_TYPE, {})
    except (OSError, ValueError, KeyError):
        return True  # cannot tell: wait for it, as before
    return HTTPS_LISTENER in listeners


def _print_ready(args: argparse.Namespace, files: DemoFiles) -> None:
    web = f"http://localhost:{args.http_port}"
    cert = files.certificate
    print(
        f"""
Legation is up.
  gateway       {web}   https://{TLS_HOSTNAMES[0]}:{args.https_port}
  diagnostics   http://127.0.0.1:{args.api_port}/
  envoy admin   http://127.0.0.1:{args.envoy_admin_port}/
  logs          {files.root}/logs/

Try, in a second terminal (this one runs the gateway; Ctrl-C stops it):
  curl -i {web}/orders/public/menu                    # public route: 200
  curl -i {web}/orders/42                             # no token: 401
  TOKEN=$({_legation_command()} token --state-dir {files.root} --sub alice --scope orders:read)
  curl -i -H "Authorization: Bearer $TOKEN" {web}/orders/42          # 200, x-user-id: alice upstream
  curl -i -X POST -H "Authorization: Bearer $TOKEN" {web}/orders/42  # scope missing: 403
  for i in $(seq 6); do curl -s -o /dev/null -w '%{{http_code}} ' {web}/catalog/search?q=tea; done  # 429s
  for i in $(seq 10); do curl -s {web}/catalog/items | grep -o '"name": *"[^"]*"'; done       # canary split
  curl -i --cacert {cert} https://{TLS_HOSTNAMES[0]}:{args.https_port}/catalog/items   # TLS with SNI
  curl -i -H 'Host: {TLS_HOSTNAMES[0]}' {web}/catalog/items           # 301 to https
""",
        flush=True,
    )


def _legation_command() -> str:
    """How to run `legation` from another terminal: its name when that terminal's PATH finds this
    very script (an activated venv), else the script's path (a new user's shell has no `legation`
    until `source .venv/bin/activate`)."""
    script = Path(sys.argv[0]).resolve()
    if script.name != "legation":  # python -m legation
        return f"{sys.executable} -m legation"
    found = shutil.which("legation")
    if found is not None and Path(found).resolve() == script:
        return "legation"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _opens(host: str, port: int) -> Callable[[], bool]:
    return lambda: _port_open(host, port)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((_HOST, 0))
        port: int = s.getsockname()[1]
        return port
