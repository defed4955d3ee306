"""`legation validate DIR`: the controller's loading and validation, offline.

Reads DIR with the directory source, validates every resource on its own, then runs the checks
between resources that need no compiler: duplicate names, references to JWTPolicies and Secrets
(which must be in the referring resource's namespace), one AuthService, one default JWTPolicy per
namespace. Prints one line per problem, `file:line: Kind namespace/name: field.path: reason`, and
exits 1 if there is any; otherwise prints a one-line summary and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from legation.api.v1alpha1.resources import (
    AuthService,
    Host,
    JWTPolicy,
    Mapping,
    Resource,
    ResourceError,
    ResourceId,
    Secret,
    parse_resource,
    raw_id,
    resource_id,
)
from legation.controller.compiler.compile import missing_policy
from legation.controller.sources import SourceSnapshot
from legation.controller.sources.directory import DirectorySource
from legation.controller.sources.merged import merge
from legation.core.errors import ConfigError
from legation.core.yamlfile import Document

__all__ = ["Report", "add_arguments", "cross_checks", "run", "validate_snapshot"]

_Report = Callable[[tuple[str | int, ...], str], None]  # records one problem of the resource at hand


@dataclass(frozen=True)
class Report:
    """The outcome of validating one snapshot."""

    resources: tuple[Resource, ...]
    """Every resource that is valid on its own (cross-resource problems do not remove it)."""
    problems: tuple[ConfigError, ...]
    """Every problem, ordered by file and line."""
    files: int
    """How many files were read."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dir", metavar="DIR", nargs="+", help="directories (or files) of YAML manifests, read recursively"
    )


def run(args: argparse.Namespace) -> int:
    report = validate_snapshot(merge([DirectorySource(d).load() for d in args.dir]))
    for problem in report.problems:
        print(problem)
    if report.problems:
        print(f"{len(report.problems)} problem(s)", file=sys.stderr)
        return 1
    kinds = Counter(r.kind for r in report.resources)
    detail = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    print(
        f"ok: {len(report.resources)} resource(s) in {report.files} file(s)"
        + (f" ({detail})" if detail else "")
    )
    return 0


def validate_snapshot(snapshot: SourceSnapshot) -> Report:
    """Validate every document of `snapshot`, then the references between them (pure)."""
    problems: list[ConfigError] = list(snapshot.errors)
    parsed: list[tuple[Document, Resource]] = []
    for doc in snapshot.documents:
        result = parse_resource(doc)
        if isinstance(result, list):
            problems.extend(result)
        else:
            parsed.append((doc, result))
    problems.extend(cross_checks(snapshot.documents, parsed))
    problems.sort(key=lambda e: (e.file, e.line or 0))
    return Report(
        resources=tuple(r for _, r in parsed), problems=tuple(problems), files=len(snapshot.origins)
    )


def cross_checks(
    documents: Sequence[Document], parsed: Sequence[tuple[Document, Resource]]
) -> list[ResourceError]:
    """Problems between resources. `documents` are all of them (an invalid resource still
    counts as present for references and duplicates); `parsed` the valid ones."""
    errors = _duplicates(documents)
    present = {rid: doc for doc in documents if (rid := raw_id(doc.data)) is not None}
    secrets = {resource_id(r): r for _, r in parsed if isinstance(r, Secret)}
    singletons: dict[str, tuple[Document, str]] = {}
    for doc, resource in parsed:
        rid = resource_id(resource)

        def error(
            path: tuple[str | int, ...], reason: str, doc: Document = doc, rid: ResourceId = rid
        ) -> None:
            errors.append(ResourceError.of(doc.error(path, reason), rid))

        if isinstance(resource, Mapping) and resource.spec.auth and resource.spec.auth.policy:
            _check_policy_ref(resource.spec.auth.policy, rid, present, error)
        elif isinstance(resource, Host):
            _check_secret(
                ("spec", "tlsSecret", "name"),
                resource.spec.tls_secret.name,
                None,
                rid,
                present,
                secrets,
                error,
            )
        elif isinstance(resource, JWTPolicy):
            for i, provider in enumerate(resource.spec.providers):
                ref = provider.jwks.secret_ref
                if ref is not None:
                    path = ("spec", "providers", i, "jwks", "secretRef", "name")
                    _check_secret(path, ref.name, ref.key, rid, present, secrets, error)
        _check_singleton(doc, resource, singletons, error)
    return errors


def _duplicates(documents: Sequence[Document]) -> list[ResourceError]:
    errors: list[ResourceError] = []
    seen: dict[ResourceId, Document] = {}
    for doc in documents:
        rid = raw_id(doc.data)
        if rid is None:
            continue
        first = seen.setdefault(rid, doc)
        if first is not doc:
            where = f"{first.file}:{first.line_of(('metadata', 'name'))}"
            errors.append(
                ResourceError.of(doc.error(("metadata", "name"), f"duplicate {rid} (also in {where})"), rid)
            )
    return errors


def _check_policy_ref(
    name: str, rid: ResourceId, present: dict[ResourceId, Document], error: _Report
) -> None:
    if ResourceId("JWTPolicy", rid.namespace, name) not in present:
        error(("spec", "auth", "policy"), missing_policy(name, rid.namespace, present))


def _check_secret(
    path: tuple[str | int, ...],
    name: str,
    key: str | None,
    rid: ResourceId,
    present: dict[ResourceId, Document],
    secrets: dict[ResourceId, Secret],
    error: _Report,
) -> None:
    sid = ResourceId("Secret", rid.namespace, name)
    secret = secrets.get(sid)
    if sid not in present:
        error(path, f"no Secret {name!r} in namespace {rid.namespace}")
    elif secret is None:
        return  # present but invalid: its own errors say why
    elif key is None and secret.type != "kubernetes.io/tls":
        error(path, f"Secret {rid.namespace}/{name} has type {secret.type}, not kubernetes.io/tls")
    elif key is not None and secret.value(key) is None:
        error((*path[:-1], "key"), f"Secret {rid.namespace}/{name} has no key {key!r}")


def _check_singleton(
    doc: Document, resource: Resource, seen: dict[str, tuple[Document, str]], error: _Report
) -> None:
    if isinstance(resource, AuthService):
        slot, what = "AuthService", "only one AuthService is allowed"
    elif isinstance(resource, JWTPolicy) and resource.spec.namespace_default:
        slot, what = (
            f"default:{resource.metadata.namespace}",
            "only one JWTPolicy per namespace may set namespaceDefault",
        )
    else:
        return
    if slot not in seen:
        seen[slot] = (doc, str(resource_id(resource)))
        return
    first, name = seen[slot]
    if name == str(resource_id(resource)):
        return  # the same resource twice: reported as a duplicate
    path = ("spec", "namespaceDefault") if isinstance(resource, JWTPolicy) else ("metadata", "name")
    error(path, f"{what} (also {name} in {first.file}:{first.line_of(path)})")
