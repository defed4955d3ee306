"""The flags that say which upstreams Mappings may name (`compiler.upstreams`), shared by
`legation controller` and `legation validate` so that the two cannot disagree."""

from __future__ import annotations

import argparse

from legation.api.v1alpha1.fields import parse_service
from legation.controller.compiler.upstreams import UpstreamRules

__all__ = ["add_upstream_arguments", "upstream_rules"]


def _host_port(value: str) -> str:
    try:
        parse_service(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{value!r}: give HOST:PORT, without a scheme")
    return value


def add_upstream_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("upstreams Mappings may name")
    group.add_argument(
        "--allow-loopback-upstreams",
        action="store_true",
        help="allow loopback upstreams (127.0.0.0/8, ::1, localhost): local runs only; `legation up` "
        "passes it for its demo upstreams",
    )
    group.add_argument(
        "--reserved-upstream",
        action="append",
        default=[],
        metavar="HOST:PORT",
        type=_host_port,
        help="one of the gateway's own endpoints (Envoy admin, controller, authz, rate limit, Redis): "
        "never an upstream, even with loopback allowed (a loopback HOST covers every loopback and "
        "unspecified address at PORT); repeat for each",
    )
    group.add_argument(
        "--native-remote-jwks",
        action="store_true",
        help="let Envoy fetch teams' remote JWKS (jwks.uri) and enforce their policies natively; "
        "without it the authz service fetches them (1 MiB cap, refetch cooldown): Envoy buffers up "
        "to 32 MiB per fetch, as often as a team's cacheDuration says; `legation up` passes it",
    )
    group.add_argument(
        "--namespaced-upstreams",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a Mapping names its own namespace's Services, or what an UpstreamGrant opens to it "
        "(default: on with --kubernetes, off for directories)",
    )


def upstream_rules(
    args: argparse.Namespace,
    *,
    kubernetes: bool,
    platform: frozenset[str],
    authz_service: str | None = None,
) -> UpstreamRules:
    """The rules the flags say; `platform` (`--platform-namespace`, see `serving.platform`) is
    where UpstreamGrants are accepted from, as AuthServices are."""
    namespaced = args.namespaced_upstreams if args.namespaced_upstreams is not None else kubernetes
    return UpstreamRules(
        allow_loopback=args.allow_loopback_upstreams,
        reserved=tuple(args.reserved_upstream),
        namespaced=namespaced,
        authz_service=authz_service,
        platform_namespaces=platform,
        native_remote_jwks=args.native_remote_jwks,
    )
