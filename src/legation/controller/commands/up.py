"""`legation up [DIR]`: the whole gateway on one machine, for trying it out and for demos.

Starts, in order, each waiting for the previous to be ready: a demo upstream (`legation echo`)
for every loopback service the Mappings name, the controller on DIR (plus the demo Secrets it
generates into the state directory), the authz and rate limit services following the
controller's feeds, and Envoy with a bootstrap pointing at the controller. Then it prints the
URLs and a few curl lines, and waits. Ctrl-C (or SIGTERM) stops everything in reverse order;
if any process dies, the rest are stopped too and the exit code is 1. Each process logs to
`<state-dir>/logs/<name>.log`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from legation.api.v1alpha1 import Mapping
from legation.api.v1alpha1.fields import parse_service
from legation.controller.commands.bootstrap import bootstrap
from legation.controller.commands.demo import TLS_HOSTNAMES, DemoFiles
from legation.controller.commands.validate import validate_snapshot
from legation.controller.sources.directory import DirectorySource

__all__ = ["add_arguments", "run"]

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir", nargs="?", default="examples", metavar="DIR", help="manifests (default examples/)"
    )
    parser.add_argument(
        "--redis-url", metavar="URL", help="rate limit counters in Redis (default: in memory)"
    )
    parser.add_argument(
        "--state-dir", default=".legation", help="demo keys, logs, bootstrap (default %(default)s)"
    )
    ports = parser.add_argument_group("ports (all on 127.0.0.1)")
    for flag, default, what in (
        ("--http-port", 8080, "Envoy HTTP"),
        ("--https-port", 8443, "Envoy HTTPS"),
        ("--envoy-admin-port", 9901, "Envoy admin"),
        ("--xds-port", 18000, "controller ADS"),
        ("--api-port", 8877, "controller HTTP API and page"),
        ("--authz-port", 9001, "authz gRPC"),
        ("--ratelimit-port", 8081, "rate limit gRPC"),
    ):
        ports.add_argument(flag, type=int, default=default, help=f"{what} (default %(default)s)")
    parser.add_argument(
        "--no-demo-upstreams", action="store_true", help="do not start demo upstreams for loopback services"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=60.0, help="seconds each process has to be ready"
    )


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass
class _Stack:
    log_dir: Path
    children: list[_Child] = field(default_factory=list)

    def start(self, name: str, argv: Sequence[str]) -> _Child:
        log = self.log_dir / f"{name}.log"
        out: IO[bytes] = log.open("wb")
        # Own session: a terminal's Ctrl-C reaches only us, and we stop the children in order.
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent
        )
        out.close()
        child = _Child(name, process, log)
        self.children.append(child)
        return child

    def dead(self) -> _Child | None:
        return next((c for c in self.children if c.process.poll() is not None), None)

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while child.process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            if child.process.poll() is None:
                child.process.kill()
                child.process.wait()


class _Stopped(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    state = Path(args.state_dir)
    files = DemoFiles(state)
    files.ensure()
    (state / "logs").mkdir(exist_ok=True)
    stack = _Stack(state / "logs")
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    def interrupted() -> bool:
        return stop_requested

    code = 0
    try:
        _start_all(args, files, stack, interrupted)
        _print_ready(args, files)
        while not stop_requested:
            died = stack.dead()
            if died is not None:
                print(f"\n{died.name} exited with code {died.process.returncode}; see {died.log}", flush=True)
                code = 1
                break
            time.sleep(0.2)
    except _Stopped as exc:
        print(f"\n{exc}", flush=True)
        code = 1 if not stop_requested else 0
    finally:
        print("stopping…", flush=True)
        stack.stop()
        print("stopped", flush=True)
    return code


def _start_all(
    args: argparse.Namespace, files: DemoFiles, stack: _Stack, interrupted: Callable[[], bool]
) -> None:
    legation = _binary("legation")
    host = "127.0.0.1"
    api = f"http://{host}:{args.api_port}"
    log_level = "info"

    def wait(what: str, ready: Callable[[], bool], child: _Child) -> None:
        start = time.monotonic()
        print(f"  {what:<24} ", end="", flush=True)
        while not ready():
            if interrupted():
                raise _Stopped("interrupted")
            if child.process.poll() is not None:
                print("failed", flush=True)
                tail = child.log.read_text(errors="replace").splitlines()[-15:]
                raise _Stopped(
                    f"{child.name} exited with code {child.process.returncode}:\n" + "\n".join(tail)
                )
            if time.monotonic() - start > args.ready_timeout:
                print("timed out", flush=True)
                raise _Stopped(f"{child.name} not ready after {args.ready_timeout:.0f} s; see {child.log}")
            time.sleep(0.05)
        print(f"ready in {time.monotonic() - start:.1f} s", flush=True)

    print(f"legation up: {args.dir} (state and logs in {files.root}/)", flush=True)
    if not args.no_demo_upstreams:
        for (svc_host, port), name in _loopback_services(args.dir).items():
            if _port_open(svc_host, port):
                print(
                    f"  upstream {svc_host}:{port:<8} already served by something else: left alone",
                    flush=True,
                )
                continue
            child = stack.start(
                f"upstream-{port}", [legation, "echo", "--listen", f"{svc_host}:{port}", "--name", name]
            )
            wait(f"upstream {port} ({name})", _opens(svc_host, port), child)

    controller = stack.start(
        "controller",
        [
            legation, "controller",
            "--source", args.dir,
            "--source", str(files.manifests),
            "--xds-listen", f"{host}:{args.xds_port}",
            "--http-listen", f"{host}:{args.api_port}",
            "--envoy-listen-address", host,
            "--envoy-http-port", str(args.http_port),
            "--envoy-https-port", str(args.https_port),
            "--authz-service", f"{host}:{args.authz_port}",
            "--ratelimit-service", f"{host}:{args.ratelimit_port}",
            "--log-level", log_level,
        ],
    )  # fmt: skip
    wait("controller", lambda: _http_ok(f"{api}/readyz"), controller)

    authz_ops = _free_port()
    authz = stack.start(
        "authz",
        [
            legation, "authz",
            "--config-url", f"{api}/feed/authz",
            "--listen", f"{host}:{args.authz_port}",
            "--metrics-listen", f"{host}:{authz_ops}",
            "--log-level", log_level,
        ],
    )  # fmt: skip
    ratelimit_ops = _free_port()
    ratelimit_argv = [
        legation, "ratelimit",
        "--config-url", f"{api}/feed/ratelimit",
        "--listen", f"{host}:{args.ratelimit_port}",
        "--metrics-listen", f"{host}:{ratelimit_ops}",
        "--log-level", log_level,
    ]  # fmt: skip
    if args.redis_url:
        ratelimit_argv += ["--redis-url", args.redis_url]
    ratelimit = stack.start("ratelimit", ratelimit_argv)
    wait("authz", lambda: _http_ok(f"http://{host}:{authz_ops}/readyz"), authz)
    wait("ratelimit", lambda: _http_ok(f"http://{host}:{ratelimit_ops}/readyz"), ratelimit)

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
            _binary("envoy"),
            "-c", str(bootstrap_path),
            "--concurrency", "2",
            "--disable-hot-restart",
            "--base-id", str(os.getpid() % 60000 + 1000),
            "-l", "warning",
        ],
    )  # fmt: skip
    admin = f"http://{host}:{args.envoy_admin_port}"
    wait(
        "envoy",
        lambda: (
            _http_ok(f"{admin}/ready")
            and _port_open(host, args.http_port)
            and _port_open(host, args.https_port)
        ),
        envoy,
    )


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

Try:
  curl -i {web}/orders/public/menu                    # public route: 200
  curl -i {web}/orders/42                             # no token: 401
  TOKEN=$(legation token --state-dir {files.root} --sub alice --scope orders:read)
  curl -i -H "Authorization: Bearer $TOKEN" {web}/orders/42          # 200, x-user-id: alice upstream
  curl -i -X POST -H "Authorization: Bearer $TOKEN" {web}/orders/42  # scope missing: 403
  for i in $(seq 6); do curl -s -o /dev/null -w '%{{http_code}} ' {web}/catalog/search?q=tea; done  # 429s
  for i in $(seq 10); do curl -s {web}/catalog/items | grep -o '"name": *"[^"]*"'; done       # canary split
  curl -i --cacert {cert} https://{TLS_HOSTNAMES[0]}:{args.https_port}/catalog/items   # TLS with SNI
  curl -i -H 'Host: {TLS_HOSTNAMES[0]}' {web}/catalog/items           # 301 to https

Ctrl-C stops everything.""",
        flush=True,
    )


def _loopback_services(directory: str) -> dict[tuple[str, int], str]:
    """(host, port) of every loopback service a valid Mapping names → a name for its upstream."""
    found: dict[tuple[str, int], str] = {}
    report = validate_snapshot(DirectorySource(directory).load())
    mappings = sorted(
        (r for r in report.resources if isinstance(r, Mapping)),
        key=lambda m: (m.metadata.namespace, m.metadata.name),
    )
    for mapping in mappings:
        upstream = parse_service(mapping.spec.service)
        if upstream.host in _LOOPBACK and not upstream.tls:
            host = "127.0.0.1" if upstream.host == "localhost" else upstream.host
            found.setdefault((host, upstream.port), f"{mapping.metadata.namespace}/{mapping.metadata.name}")
    return found


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if `legation up` itself is killed (SIGKILL runs no cleanup)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _binary(name: str) -> str:
    here = str(Path(sys.executable).parent)
    found = shutil.which(name, path=here) or shutil.which(name)
    if found is None:
        raise SystemExit(f"legation up: no `{name}` found next to {sys.executable} or on PATH")
    return found


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
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
