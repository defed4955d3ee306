"""`legation validate DIR`: the controller's pipeline, offline.

Reads DIR with the directory source and runs the same pipeline as the controller (source
snapshot → resources → compile → statuses), so that its verdicts are the controller's: the same
duplicates, references, singletons and conflicts, and the resources rejected because something
they depend on is rejected. There is no last good version of a file here: a file that does not
parse is reported and contributes nothing. Prints one line per problem,
`file:line: Kind namespace/name: field.path: reason`, and exits 1 if there is any; otherwise
prints a one-line summary and exits 0. The upstream flags are the controller's
(`--allow-loopback-upstreams`, `--reserved-upstream`, `--namespaced-upstreams`,
`--platform-namespace`): `legation validate --allow-loopback-upstreams examples` checks what
`legation up examples` serves.

`--explain` adds, after the problems, one line per valid JWTPolicy saying who enforces it and the
Mappings it governs: `file:line: JWTPolicy ns/name: enforcement: native; Mappings: ns/a, ns/b`,
or `enforcement: service (why, and what would make it native)`, or `enforcement: unused (…)`
(see `legation.controller.serving.enforcement`). The exit status stays that of the problems.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass

from legation.api.v1alpha1 import Resource
from legation.controller.compiler.upstreams import UpstreamRules
from legation.controller.serving.pipeline import Stages, build, problem_errors
from legation.controller.serving.platform import (
    DEFAULT,
    add_gateway_argument,
    add_platform_argument,
    platform_namespaces,
)
from legation.controller.serving.upstream_flags import add_upstream_arguments, upstream_rules
from legation.controller.sources import SourceSnapshot
from legation.controller.sources.directory import DirectorySource
from legation.controller.sources.merged import merge
from legation.controller.translate.envoy import EnvoyOptions
from legation.core.errors import ConfigError
from legation.core.names import DEFAULT_GATEWAY

__all__ = ["Report", "add_arguments", "run", "validate_snapshot"]


@dataclass(frozen=True)
class Report:
    """The outcome of validating one snapshot."""

    resources: tuple[Resource, ...]
    """Every resource that is valid on its own (problems between resources do not remove it)."""
    problems: tuple[ConfigError, ...]
    """Every problem, ordered by file and line."""
    files: int
    """How many files were read."""
    enforcement: tuple[str, ...] = ()
    """One line per valid JWTPolicy: its enforcement and the Mappings it governs (`--explain`)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir", metavar="DIR", nargs="+", help="directories (or files) of YAML manifests, read recursively"
    )
    add_gateway_argument(parser, what="validate as the controller of this gateway would")
    add_platform_argument(parser)
    add_upstream_arguments(parser)
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also print, per JWTPolicy, whether Envoy enforces it natively or the authz service "
        "does (and why), and the Mappings it governs",
    )


def run(args: argparse.Namespace) -> int:
    snapshot = merge([DirectorySource(d).load() for d in args.dir])
    platform = platform_namespaces(args)
    rules = upstream_rules(args, kubernetes=False, platform=platform)
    report = validate_snapshot(snapshot, gateway=args.gateway, platform=platform, upstreams=rules)
    for problem in report.problems:
        print(problem)
    for line in report.enforcement if args.explain else ():
        print(line)
    if report.problems:
        print(f"{len(report.problems)} problem(s)", file=sys.stderr)
        return 1
    print(_summary(report))
    return 0


def validate_snapshot(
    snapshot: SourceSnapshot,
    *,
    gateway: str = DEFAULT_GATEWAY,
    platform: frozenset[str] = frozenset({DEFAULT}),
    upstreams: UpstreamRules | None = None,
) -> Report:
    """What `gateway`'s controller would reject in `snapshot`, and why (pure)."""
    stages = build(
        snapshot, EnvoyOptions(), gateway=gateway, platform_namespaces=platform, upstreams=upstreams
    )
    return Report(
        resources=tuple(resource for _, resource in stages.resources),
        problems=tuple(problem_errors(stages)),
        files=len(snapshot.origins),
        enforcement=tuple(_enforcement_lines(stages)),
    )


def _enforcement_lines(stages: Stages) -> list[str]:
    lines = []
    for status in sorted(stages.statuses, key=lambda s: s.origin):
        if status.id.kind != "JWTPolicy" or status.enforcement is None:
            continue  # rejected: a problem line says why
        key = f"{status.id.namespace}/{status.id.name}"
        mappings = [m for g in stages.governed.get(key, ()) for m in g.mappings]
        governs = f"; Mappings: {', '.join(mappings)}" if mappings else ""
        lines.append(f"{status.origin}: JWTPolicy {key}: enforcement: {status.enforcement}{governs}")
    return lines


def _summary(report: Report) -> str:
    kinds = Counter(r.kind for r in report.resources)
    detail = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    return f"ok: {len(report.resources)} resource(s) in {report.files} file(s)" + (
        f" ({detail})" if detail else ""
    )
