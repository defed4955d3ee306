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
    "ratelimit": ("services.ratelimit.app", "the rate limit service (Envoy RLS, sliding windows)"),
    "authz": ("services.authz.app", "the authorization service (Envoy ext_authz, JWT policies)"),
    "validate": ("controller.validate", "validate a directory of manifests offline; exit 1 on any problem"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="legation", description="API gateway services around Envoy.")
    parser.add_argument("--version", action="version", version=f"legation {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, summary) in COMMANDS.items():
        cmd = sub.add_parser(name, help=summary, description=summary)
        cmd.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = importlib.import_module(args._module).run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
