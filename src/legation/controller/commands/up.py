"""`legation up [DIR]`: the whole gateway on one machine, for trying it out and for demos.

First it checks that nothing is in the way: no other `up` on the same state directory (a lock
held while it runs), no port of its own already taken (each refusal names the flag that avoids
it); only then does it write anything. Then it starts, in order, each waiting for the previous
to be ready: a demo upstream (`legation echo`) for every loopback service the Mappings name,
the controller on DIR (plus the demo Secrets it generates into the state directory), the authz
and rate limit services following the controller's feeds, and Envoy with a bootstrap pointing
at the controller. Then it prints the URLs and a few curl lines, and follows the Mappings: a
loopback service added later gets its demo upstream, one no longer named loses it. Ctrl-C (or
SIGTERM) stops everything in reverse order; if any process but a demo upstream dies, the rest
are stopped too and the exit code is 1. Each process logs to `<state-dir>/logs/<name>.log`
(the previous run's logs are kept as `<name>.log.1`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from legation.controller.commands.up_preflight import (
    PORT_FLAGS,
    PreflightError,
    check_ports,
    gateway_ports,
    lock_state,
)
from legation.controller.serving.platform import add_gateway_argument, add_platform_argument

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir", nargs="?", default="examples", metavar="DIR", help="manifests (default examples/)"
    )
    parser.add_argument(
        "--redis-url", metavar="URL", help="rate limit counters in Redis (default: in memory)"
    )
    add_gateway_argument(parser, what="serve the resources whose spec.gateways name this gateway")
    parser.add_argument(
        "--state-dir",
        default=".legation",
        help="demo keys, logs, bootstrap; one `up` at a time per directory (default %(default)s)",
    )
    ports = parser.add_argument_group("ports (all on 127.0.0.1)")
    for flag, default, what in PORT_FLAGS:
        ports.add_argument(flag, type=int, default=default, help=f"{what} (default %(default)s)")
    parser.add_argument(
        "--no-demo-upstreams", action="store_true", help="do not start demo upstreams for loopback services"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=60.0, help="seconds each process has to be ready"
    )
    add_platform_argument(parser)


_HOST = "127.0.0.1"
_LOG_LEVEL = "info"
_LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


def run(args: argparse.Namespace) -> int:
    state = Path(args.state_dir)
    try:
        lock = lock_state(state)  # first: nothing in a running instance's state dir is touched
    except PreflightError as exc:
        return _refuse(exc)
    try:
        check_ports(gateway_ports(args))
        # Imported only now: the gateway's modules (schema, crypto, ...) take a second or two to
        # load, and a refused `up` should answer at once.
        from legation.controller.commands.up_run import run_locked

        return run_locked(args, state)
    except PreflightError as exc:
        return _refuse(exc)
    finally:
        lock.release()


def _refuse(exc: PreflightError) -> int:
    print(f"legation up: {exc}", file=sys.stderr, flush=True)
    return 1
