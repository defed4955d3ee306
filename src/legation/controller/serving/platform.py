"""`--platform-namespace`: the namespaces that may create the gateway-wide kinds (AuthService, the
`*` Host), shared by `legation controller`, `legation validate` and `legation up`."""

from __future__ import annotations

import argparse

__all__ = ["DEFAULT", "add_platform_argument", "platform_namespaces"]

DEFAULT = "legation-system"


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
