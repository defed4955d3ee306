"""The flags that say which gateway this is and whose namespaces are the platform's, shared by
`legation controller`, `legation validate` and `legation up`: `--gateway` (the resources whose
`spec.gateways` name it) and `--platform-namespace` (who may create the gateway-wide kinds:
AuthService, the `*` Host, UpstreamGrant)."""

from __future__ import annotations

import argparse

from legation.core.names import DEFAULT_GATEWAY, dns_label

__all__ = ["DEFAULT", "add_gateway_argument", "add_platform_argument", "platform_namespaces"]

DEFAULT = "legation-system"


def add_gateway_argument(parser: argparse.ArgumentParser, *, what: str) -> None:
    """`--gateway NAME`; `what` says what the command does for that gateway."""
    parser.add_argument(
        "--gateway",
        default=DEFAULT_GATEWAY,
        type=dns_label,
        metavar="NAME",
        help=f"{what} (default %(default)s)",
    )


def add_platform_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--platform-namespace",
        action="append",
        metavar="NS",
        help="a namespace that may create AuthServices and the Host for * (repeat for several; "
        f"default {DEFAULT}; on Kubernetes the controller's own namespace is one too)",
    )


def platform_namespaces(args: argparse.Namespace, *, own: str | None = None) -> frozenset[str]:
    """The flag's namespaces (its default when absent), plus the gateway's own namespace if known."""
    given = frozenset(getattr(args, "platform_namespace", None) or (DEFAULT,))
    return given | ({own} if own else frozenset())
