"""What every service's `run(args)` shares: the common flags, reporting a config that will not
load, and running the server coroutine on uvloop until it stops."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from legation.errors import ConfigErrors

__all__ = ["add_common_arguments", "refuse_config", "run_until_stopped"]

log = logging.getLogger("legation")


def add_common_arguments(parser: argparse.ArgumentParser, *, listen: str, grace: float, what: str) -> None:
    """--listen, --metrics-listen, --shutdown-grace, --check and --log-level."""
    parser.add_argument(
        "--listen", default=listen, metavar="HOST:PORT", help="gRPC address (default %(default)s)"
    )
    parser.add_argument(
        "--metrics-listen", metavar="HOST:PORT", help="serve /metrics, /healthz and /readyz here"
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=grace,
        metavar="SECONDS",
        help="drain time on SIGTERM (default %(default)s)",
    )
    parser.add_argument(
        "--check", action="store_true", help=f"validate the {what}, print problems, exit 1 if any"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def refuse_config(exc: ConfigErrors) -> int:
    """Print every problem (file:line: field: reason) on stderr, log them, return exit code 1."""
    for err in exc.errors:
        print(str(err), file=sys.stderr)
    log.error("invalid config, not starting", extra={"errors": [str(e) for e in exc.errors]})
    return 1


def run_until_stopped(main: Coroutine[Any, Any, None]) -> int:
    """Run the server on uvloop; 1 if it could not start (e.g. its port is taken), else 0."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.Runner()
    with runner:
        try:
            runner.run(main)
        except OSError as exc:
            log.error("cannot start", extra={"error": str(exc)})
            return 1
    return 0
