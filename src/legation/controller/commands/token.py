"""`legation token`: mint a token from the demo issuer that `legation up` set up.

    TOKEN=$(legation token --sub alice --scope orders:read)
    curl -H "Authorization: Bearer $TOKEN" localhost:8080/orders/42

For local use only: the key lives in `legation up`'s state directory and is created there on
first start (or by this command, if it runs first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from legation.controller.commands.demo import DEMO_AUDIENCE, DemoFiles
from legation.core.durations import parse_duration

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sub", default="alice", help="subject (default %(default)s)")
    parser.add_argument(
        "--scope", action="append", default=[], metavar="SCOPE", help="a scope; repeat for several"
    )
    parser.add_argument("--aud", default=DEMO_AUDIENCE, help="audience (default %(default)s)")
    parser.add_argument("--ttl", default="1h", help="lifetime, e.g. 30s, 10m, 1h (default %(default)s)")
    parser.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="an extra claim: JSON if it parses, else a string (e.g. plan=gold)",
    )
    parser.add_argument(
        "--state-dir",
        default=".legation",
        help="where `legation up` keeps the demo keys (default %(default)s)",
    )


def run(args: argparse.Namespace) -> int:
    claims: dict[str, Any] = {}
    for item in args.claim:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"legation token: --claim {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        try:
            claims[name] = json.loads(value)
        except ValueError:
            claims[name] = value
    try:
        lifetime = parse_duration(args.ttl)
    except ValueError as exc:
        print(f"legation token: --ttl: {exc}", file=sys.stderr)
        return 2
    files = DemoFiles(Path(args.state_dir))
    files.ensure()
    print(
        files.token(subject=args.sub, scopes=args.scope, audience=args.aud, lifetime=lifetime, claims=claims)
    )
    return 0
