"""``python -m bench NAME [options]``: run one benchmark scenario (from the repository root).

Only the chosen scenario's module is imported: the controller bench measures the peak RSS of its
children, and on Linux a child's ``ru_maxrss`` starts from its parent's RSS at fork, so the parent
stays as lean as the scenario itself.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bench.harness.scenario import Scenario

SCENARIOS = {
    "ratelimit": "rate limit service vs a no-op grpcio ceiling (h2load)",
    "authz": "authz service, and Envoy ext_authz / jwt_authn, vs no-op ceilings (h2load)",
    "controller": "controller pipeline in-process: load, parse, compile, translate, snapshot, RSS",
    "controller_live": "a manifest change until Envoy serves it, and wrk during changes",
    "native": "native JWT enforcement vs no auth, ext_authz and hand-written jwt_authn (wrk)",
    "ratelimit_cluster": "rate limit decisions on a 1- and a 3-shard Redis Cluster: keys and CPU per shard",
}
"""Scenario name (also its module, ``bench.NAME``) -> one line for ``--help``."""


def top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<16} {summary}" for name, summary in SCENARIOS.items())
    top = argparse.ArgumentParser(
        prog="python -m bench",
        description="Legation benchmarks. Tables on stdout, JSON results under bench/results/.",
        epilog=f"scenarios:\n{lines}\n\n`python -m bench NAME --help` shows a scenario's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("scenario", choices=list(SCENARIOS), metavar="NAME", help="the scenario to run")
    top.add_argument("options", nargs=argparse.REMAINDER, help="the scenario's options")
    return top


def scenario(name: str) -> Scenario:
    found: Scenario = importlib.import_module(f"bench.{name}").SCENARIO
    return found


def scenario_parser(s: Scenario) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m bench {s.name}", description=s.description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    s.configure(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    top = top_parser().parse_args(argv)
    chosen = scenario(top.scenario)
    return chosen.main(scenario_parser(chosen).parse_args(top.options))


if __name__ == "__main__":
    sys.exit(main())
