"""``python -m bench NAME [options]``: run one benchmark scenario (from the repository root)."""

from __future__ import annotations

import argparse
import sys

from bench import authz, controller, controller_live, ratelimit
from bench.harness.scenario import Scenario

SCENARIOS: dict[str, Scenario] = {
    s.name: s for s in (ratelimit.SCENARIO, authz.SCENARIO, controller.SCENARIO, controller_live.SCENARIO)
}


def parser() -> argparse.ArgumentParser:
    """The top-level parser: one sub-command per scenario, each with its own options."""
    top = argparse.ArgumentParser(
        prog="python -m bench",
        description="Legation benchmarks. Results: tables on stdout, JSON under bench/results/.",
    )
    subs = top.add_subparsers(dest="scenario", required=True, metavar="NAME")
    for s in SCENARIOS.values():
        sub = subs.add_parser(
            s.name,
            help=s.summary,
            description=s.description,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        s.configure(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return SCENARIOS[args.scenario].main(args)


if __name__ == "__main__":
    sys.exit(main())
