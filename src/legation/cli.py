"""The `legation` command. Each subcommand lives with its component and is imported only when
used, so `legation --help` stays fast and this module depends on no component."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from legation import __version__

__all__ = ["main"]

# name → (module providing add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "ratelimit": ("legation.ratelimit.app", "the rate limit service (Envoy RLS, sliding windows)"),
    "authz": ("legation.authz.app", "the authorization service (Envoy ext_authz, JWT policies)"),
    "validate": (
        "legation.controller.commands.validate",
        "validate a directory of manifests offline; exit 1 on any problem",
    ),
    "controller": (
        "legation.controller.serving.app",
        "the route controller (resources -> Envoy over ADS, feeds, HTTP API)",
    ),
    "up": (
        "legation.controller.commands.up",
        "everything on one machine: controller, authz, ratelimit, demo upstream, Envoy",
    ),
    "envoy-bootstrap": (
        "legation.controller.commands.bootstrap",
        "print an Envoy bootstrap pointing at a controller",
    ),
    "token": (
        "legation.controller.commands.token",
        "mint a demo JWT signed with the local demo issuer's key",
    ),
    "echo": (
        "legation.controller.commands.echo",
        "a demo upstream that echoes each request (and identity headers) as JSON",
    ),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported (for its flags). A service process thus
    never loads the other components, and a broken one cannot stop the rest from starting."""
    parser = argparse.ArgumentParser(prog="legation", description="API gateway services around Envoy.")
    parser.add_argument("--version", action="version", version=f"legation {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, summary) in COMMANDS.items():
        cmd = sub.add_parser(name, help=summary, description=summary)
        cmd.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in arguments if not a.startswith("-")), None)
    args = build_parser(command).parse_args(arguments)
    code: int = importlib.import_module(args._module).run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
