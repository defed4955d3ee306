"""`legation controller`: a source → the pipeline → ADS, the config feeds and the HTTP API.

One event loop holds everything: the ADS server (grpc.aio) on `--xds-listen`, the HTTP API and
page (uvicorn) on `--http-listen`, and the loop that turns each source snapshot into new stages.
The pipeline runs in a worker thread so that a big compile never stalls the xDS streams.
A run that fails (a bug, not bad input: bad input is rejected resource by resource) keeps the
previous stages in force and is shown on the page.

ADS carries private keys (SDS), so it is mTLS (`--xds-tls-cert`, `--xds-tls-key`,
`--xds-client-ca`, re-read when they change) with each stream's node id bound to its client
certificate; plaintext is allowed on a loopback address only.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import logging
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvicorn
from fastapi import FastAPI
from prometheus_client import Gauge, Histogram

from legation.controller.compiler.upstreams import UpstreamRules
from legation.controller.serving.access import HttpAccess
from legation.controller.serving.api import create_app
from legation.controller.serving.dns_check import DnsChecker
from legation.controller.serving.feed import Feed
from legation.controller.serving.pipeline import ControllerState, Stages, status_errors
from legation.controller.serving.platform import (
    add_gateway_argument,
    add_platform_argument,
    platform_namespaces,
)
from legation.controller.serving.publisher import Publisher
from legation.controller.serving.upstream_flags import add_upstream_arguments, upstream_rules
from legation.controller.serving.upstream_health import EnvoyAdminPoller
from legation.controller.sources import Source, StatusSink
from legation.controller.sources.directory import DirectorySource
from legation.controller.sources.merged import MergedSource
from legation.controller.translate.envoy import EnvoyOptions
from legation.controller.xds.server import SERVICE, XdsServer
from legation.core.bearer import TokenFile, TokenFileError
from legation.core.errors import format_path
from legation.core.grpc_runtime import Health, ServerSettings, run_server, split_host_port
from legation.core.grpc_tls import ServerTls, TlsFilesError
from legation.core.logs import setup_logging
from legation.core.names import DEFAULT_GATEWAY
from legation.core.service_main import run_until_stopped

__all__ = ["add_arguments", "run"]

log = logging.getLogger("legation.controller")

FEEDS = ("authz", "ratelimit")

COMPILE_SECONDS = Histogram(
    "legation_controller_compile_seconds",
    "Time of one pipeline run (resources → IR → Envoy snapshot and feeds).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RESOURCES = Gauge("legation_controller_resources", "Resources in the latest run, by state.", ["state"])
XDS_KEEPALIVE_MIN_INTERVAL = 15.0
"""Seconds: half the 30 s keepalive of `legation envoy-bootstrap`, so jittered pings never strike."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--source",
        action="append",
        metavar="DIR",
        help="directory (or file) of YAML manifests, followed for changes; repeat to merge several",
    )
    source.add_argument("--kubernetes", action="store_true", help="read resources from the Kubernetes API")
    parser.add_argument(
        "--namespace", action="append", metavar="NS", help="with --kubernetes: only these namespaces"
    )
    kube = parser.add_argument_group("with --kubernetes")
    kube.add_argument(
        "--kubeconfig",
        metavar="PATH",
        help="kubeconfig file (default: KUBECONFIG, ~/.kube/config, then the pod's service account)",
    )
    kube.add_argument("--no-status", action="store_true", help="do not write status back to the objects")
    kube.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write status only while holding the Lease (default); --no-leader-elect: a single replica",
    )
    kube.add_argument("--lease-name", default="legation-controller", help="the coordination.k8s.io Lease")
    kube.add_argument(
        "--lease-namespace",
        metavar="NS",
        help="namespace of the Lease (default: the pod's own namespace, else legation-system)",
    )
    kube.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS", help="lease duration")
    kube.add_argument("--lease-renew", type=float, default=5.0, metavar="SECONDS", help="renew period")
    add_gateway_argument(
        parser,
        what="serve the Mappings, Hosts and AuthServices whose spec.gateways name this gateway "
        "(absent there = default, * = every gateway)",
    )
    kube.add_argument(
        "--secret-poll-interval",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how often each Secret a Host or JWTPolicy names is read again (Secrets are read by name "
        "with GET, never listed or watched)",
    )
    parser.add_argument("--xds-listen", default="127.0.0.1:18000", metavar="HOST:PORT", help="ADS (gRPC)")
    xds = parser.add_argument_group("ADS security (mTLS; required unless --xds-listen is a loopback address)")
    xds.add_argument("--xds-tls-cert", type=Path, metavar="PATH", help="the controller's certificate (PEM)")
    xds.add_argument("--xds-tls-key", type=Path, metavar="PATH", help="its private key (PEM)")
    xds.add_argument(
        "--xds-client-ca",
        type=Path,
        metavar="PATH",
        help="CA bundle that client certificates must chain to (the three files are re-read on change)",
    )
    xds.add_argument(
        "--xds-keepalive-min-interval",
        type=float,
        default=XDS_KEEPALIVE_MIN_INTERVAL,
        metavar="SECONDS",
        help="accept keepalive pings this often (default %(default)s; below Envoy's "
        "connection_keepalive interval, 30s in `legation envoy-bootstrap`)",
    )
    parser.add_argument(
        "--http-listen", default="127.0.0.1:8877", metavar="HOST:PORT", help="HTTP API, page, feeds"
    )
    _add_http_security(parser)
    d = EnvoyOptions()
    parser.add_argument(
        "--envoy-listen-address", default=d.listen_address, help="address Envoy's listeners bind"
    )
    parser.add_argument("--envoy-http-port", type=int, default=d.http_port, help="Envoy's HTTP listener")
    parser.add_argument("--envoy-https-port", type=int, default=d.https_port, help="Envoy's HTTPS listener")
    parser.add_argument(
        "--ratelimit-service",
        default=d.ratelimit_service,
        metavar="HOST:PORT",
        help="the rate limit service Envoy calls; 'none' leaves the rate limit filter out",
    )
    parser.add_argument(
        "--authz-service",
        default=d.default_authz_service,
        metavar="HOST:PORT",
        help="the authz service Envoy calls when no AuthService resource is given",
    )
    parser.add_argument(
        "--envoy-jwks-trusted-ca",
        default=d.jwks_trusted_ca,
        metavar="PATH",
        help="CA bundle on Envoy's machine that https JWKS servers of native policies are validated "
        "against (default: the system trust store of the official Envoy image, %(default)s)",
    )
    add_platform_argument(parser)
    add_upstream_arguments(parser)
    parser.add_argument(
        "--envoy-admin",
        action="append",
        default=[],
        type=_admin_url,
        metavar="URL",
        help="an Envoy's admin interface (http://HOST:PORT), read for upstream health on the page "
        "(GET /clusters only); repeat per Envoy",
    )
    parser.add_argument("--shutdown-grace", type=float, default=2.0, metavar="SECONDS")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _admin_url(text: str) -> str:
    if not text.startswith(("http://", "https://")) or "?" in text or "#" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected http://HOST:PORT (Envoy's admin address)")
    return text.rstrip("/")


def _add_http_security(parser: argparse.ArgumentParser) -> None:
    http = parser.add_argument_group("HTTP listener security (who may read the feeds and the API)")
    http.add_argument(
        "--feed-token-file",
        action="append",
        default=[],
        metavar="FEED=PATH",
        help="bearer tokens (one per line) that may read /feed/FEED (authz or ratelimit); repeat per "
        "feed. A feed without one is read by no one",
    )
    http.add_argument(
        "--api-token-file",
        metavar="PATH",
        help="bearer tokens that may read /api/* and the page from other addresses than loopback",
    )
    http.add_argument("--http-tls-cert", metavar="PATH", help="serve HTTPS with this certificate (PEM)")
    http.add_argument("--http-tls-key", metavar="PATH", help="the certificate's private key (PEM)")


def http_access(args: argparse.Namespace) -> HttpAccess:
    """The credentials the flags name; ValueError (the message says which flag) when unusable."""
    feed_tokens: dict[str, TokenFile] = {}
    for item in args.feed_token_file:
        name, sep, path = item.partition("=")
        if not sep or name not in FEEDS or not path:
            raise ValueError(
                f"--feed-token-file {item!r}: expected FEED=PATH with FEED one of {', '.join(FEEDS)}"
            )
        feed_tokens[name] = TokenFile(path)
    api = TokenFile(args.api_token_file) if args.api_token_file else None
    if bool(args.http_tls_cert) != bool(args.http_tls_key):
        raise ValueError("--http-tls-cert and --http-tls-key go together")
    return HttpAccess(feed_tokens=feed_tokens, api_tokens=api)


def run(args: argparse.Namespace) -> int:
    setup_logging("controller", args.log_level)
    try:
        access = http_access(args)
    except (ValueError, TokenFileError) as exc:
        print(f"legation controller: {exc}", file=sys.stderr)
        return 2
    platform = platform_namespaces(args)
    if args.kubernetes:
        from legation.controller.kubernetes.source import (
            KubernetesOptions,
            KubernetesSource,
            default_lease_namespace,
        )

        platform = platform_namespaces(args, own=default_lease_namespace())

        if args.lease_renew <= 0 or args.lease_renew >= args.lease_duration:
            print(
                "legation controller: --lease-renew must be positive and below --lease-duration",
                file=sys.stderr,
            )
            return 2
        source: Source = KubernetesSource(
            KubernetesOptions(
                namespaces=tuple(args.namespace or ()),
                kubeconfig=args.kubeconfig,
                write_status=not args.no_status,
                leader_elect=args.leader_elect,
                lease_name=args.lease_name,
                lease_namespace=args.lease_namespace,
                lease_seconds=args.lease_duration,
                renew_seconds=args.lease_renew,
                gateway=args.gateway,
                secret_poll_seconds=max(0.1, args.secret_poll_interval),
            )
        )
        description = "kubernetes " + (", ".join(args.namespace) if args.namespace else "(all namespaces)")
    else:
        dirs: Sequence[str] = args.source
        sources = [DirectorySource(d) for d in dirs]
        source = sources[0] if len(sources) == 1 else MergedSource(sources)
        description = "directory " + ", ".join(dirs)
    try:
        xds_security = _xds_security(args)
    except (ValueError, TlsFilesError) as exc:
        print(f"legation controller: {exc}", file=sys.stderr)
        return 2
    options = EnvoyOptions(
        listen_address=args.envoy_listen_address,
        http_port=args.envoy_http_port,
        https_port=args.envoy_https_port,
        ratelimit_service=None if args.ratelimit_service in (None, "", "none") else args.ratelimit_service,
        default_authz_service=args.authz_service or None,
        jwks_trusted_ca=args.envoy_jwks_trusted_ca,
    )
    rules = upstream_rules(
        args, kubernetes=args.kubernetes, platform=platform, authz_service=args.authz_service or None
    )
    return run_until_stopped(
        serve(
            source,
            options,
            upstreams=rules,
            description=description,
            xds_listen=args.xds_listen,
            http_listen=args.http_listen,
            access=access,
            http_tls=(args.http_tls_cert, args.http_tls_key) if args.http_tls_cert else None,
            grace=args.shutdown_grace,
            gateway=args.gateway,
            xds_security=xds_security,
            platform=platform,
            envoy_admins=args.envoy_admin,
        )
    )


def _xds_security(args: argparse.Namespace) -> XdsSecurity:
    """TLS credentials and keepalive policy for the ADS port, from the flags."""
    files = (args.xds_tls_cert, args.xds_tls_key, args.xds_client_ca)
    if any(files) and not all(files):
        raise ValueError("--xds-tls-cert, --xds-tls-key and --xds-client-ca go together")
    if args.xds_keepalive_min_interval <= 0:
        raise ValueError("--xds-keepalive-min-interval must be positive")
    if not any(files):
        host, _ = split_host_port(args.xds_listen)
        if not _is_loopback(host):
            raise ValueError(
                f"--xds-listen {args.xds_listen} is not a loopback address: ADS carries private keys, "
                "so it needs mTLS (--xds-tls-cert, --xds-tls-key, --xds-client-ca)"
            )
        log.warning("ADS is plaintext, on loopback only", extra={"listen": args.xds_listen})
        return XdsSecurity(None, keepalive_min_interval=args.xds_keepalive_min_interval)
    tls = ServerTls(cert=args.xds_tls_cert, key=args.xds_tls_key, client_ca=args.xds_client_ca)
    return XdsSecurity(tls.credentials(), keepalive_min_interval=args.xds_keepalive_min_interval)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class XdsSecurity:
    """How the ADS port is protected, and the keepalive policy it enforces on clients."""

    credentials: grpc.ServerCredentials | None
    """mTLS requiring a client certificate; None: plaintext (loopback only)."""
    keepalive_min_interval: float = XDS_KEEPALIVE_MIN_INTERVAL
    """Seconds: the shortest interval between client pings that is not a strike."""

    def server_options(self) -> list[tuple[str, int]]:
        """gRPC's ping policy, matched to Envoy's keepalive: its defaults (a ping at most every
        5 minutes while no data flows, GOAWAY after 2 strikes) cut Envoy's 30 s pings on a quiet
        ADS stream after about 2 minutes. We also ping Envoys, to drop streams of vanished ones."""
        return [
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", int(self.keepalive_min_interval * 1000)),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
        ]


async def serve(
    source: Source,
    options: EnvoyOptions,
    *,
    upstreams: UpstreamRules | None = None,
    description: str,
    xds_listen: str,
    http_listen: str,
    access: HttpAccess | None = None,
    http_tls: tuple[str, str] | None = None,
    grace: float = 2.0,
    gateway: str = DEFAULT_GATEWAY,
    xds_security: XdsSecurity | None = None,
    platform: frozenset[str] = frozenset({"legation-system"}),
    envoy_admins: Sequence[str] = (),
) -> None:
    security = xds_security or XdsSecurity(None)
    state = ControllerState(source_description=description)
    xds = XdsServer(require_peer=security.credentials is not None)
    feeds = {name: Feed() for name in FEEDS}
    poller = EnvoyAdminPoller(envoy_admins) if envoy_admins else None
    dns = DnsChecker(lambda: _upstream_hosts(state))
    app = create_app(state, xds, feeds, access=access, upstreams=poller, dns=dns.cache)
    http = _HttpServer(app, http_listen, tls=http_tls)  # binds now: a taken port stops us
    health = Health([SERVICE])
    await health.set_component("pipeline", False)

    async def drain() -> None:
        for feed in feeds.values():  # end held long polls, or uvicorn waits for them
            feed.close()
        http.should_exit = True
        await xds.close()

    await run_server(
        settings=ServerSettings(
            listen=xds_listen,
            grace=grace,
            credentials=security.credentials,
            options=security.server_options(),
        ),
        handlers=[xds.handler()],
        health=health,
        reflect=[SERVICE],
        background=[
            _follow(
                source,
                options,
                state,
                xds,
                feeds,
                health,
                gateway=gateway,
                platform=platform,
                upstreams=upstreams,
            ),
            http.serve(sockets=[http.socket]),
            dns.run(),
            *([poller.run()] if poller is not None else []),
        ],
        on_drain=drain,
    )


def _upstream_hosts(state: ControllerState) -> list[str]:
    """The host names of the current snapshot's upstreams (for the background DNS check)."""
    return [c.host for c in state.stages.result.ir.clusters] if state.stages is not None else []


async def _follow(
    source: Source,
    options: EnvoyOptions,
    state: ControllerState,
    xds: XdsServer,
    feeds: dict[str, Feed],
    health: Health,
    *,
    gateway: str,
    platform: frozenset[str],
    upstreams: UpstreamRules | None,
) -> None:
    # Sources that write verdicts back (Kubernetes status) take each run's statuses.
    sink = source if isinstance(source, StatusSink) else None
    publisher = Publisher(
        options=options,
        state=state,
        xds=xds,
        feeds=feeds,
        sink=sink,
        gateway=gateway,
        platform=platform,
        upstreams=upstreams,
    )
    async for snapshot in source.snapshots():
        stages = await publisher.run(snapshot)
        if stages is None:
            continue
        COMPILE_SECONDS.observe(stages.seconds)
        rejected = stages.rejected
        RESOURCES.labels("Accepted").set(len(stages.statuses) - len(rejected))
        RESOURCES.labels("Rejected").set(len(rejected))
        log.info(
            "configuration compiled",
            extra={
                "source_version": snapshot.version,
                "envoy_version": stages.envoy.version,
                "resources": len(stages.statuses),
                "rejected": len(rejected),
                "quarantined": len(stages.quarantined),
                "routes": len(stages.result.ir.routes),
                "seconds": round(stages.seconds, 4),
            },
        )
        _log_problems(stages)
        if not health.ready():
            await health.set_component("pipeline", True)
            await health.publish()


def _log_problems(stages: Stages) -> None:
    """One line per problem, with the same `file:line` and field path as the page, the API and
    `legation validate`."""
    for status in stages.rejected:
        for error in status_errors(status):
            log.warning(
                "resource rejected",
                extra={
                    "resource": str(status.id),
                    "where": error.where,
                    "path": format_path(error.path),
                    "reason": error.reason,
                    "error": str(error),
                },
            )
    kept = set(stages.source.kept)
    for file_error in stages.file_errors:
        log.warning(
            "input not read", extra={"error": str(file_error), "last_good_kept": file_error.file in kept}
        )


class _HttpServer(uvicorn.Server):
    """uvicorn on a socket bound up front, without its own signal handling: the gRPC runtime
    owns SIGTERM/SIGINT and stops this server through `should_exit`."""

    def __init__(self, app: FastAPI, listen: str, *, tls: tuple[str, str] | None = None) -> None:
        host, port = split_host_port(listen)
        cert, key = tls if tls is not None else (None, None)
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, ssl_certfile=cert, ssl_keyfile=key
        )
        config.load()  # reads the certificate now: a bad one stops the controller at start
        super().__init__(config)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.socket.set_inheritable(True)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
