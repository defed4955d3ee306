"""One YAML document → one validated resource, or errors naming file, line, resource and field.

A resource is validated on its own here; references between resources are the compiler's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from legation.api.v1alpha1.jwtpolicy import JWTPolicy
from legation.api.v1alpha1.kinds import KINDS, Resource, ResourceId, raw_id
from legation.api.v1alpha1.mapping import Mapping
from legation.api.v1alpha1.ratelimit_annotation import ANNOTATION, RateLimitAnnotationError
from legation.api.v1alpha1.secret import Secret
from legation.core.errors import ConfigError, FieldPath, format_path
from legation.core.names import DNS_LABEL, DNS_NAME
from legation.core.yamlfile import Document

__all__ = ["ResourceError", "parse_resource"]


@dataclass(frozen=True)
class ResourceError(ConfigError):
    """A ConfigError that also names the resource: `file:line: Kind ns/name: field: reason`."""

    resource: ResourceId | None = None

    def __str__(self) -> str:
        parts = [self.where]
        if self.resource is not None:
            parts.append(str(self.resource))
        if self.path:
            parts.append(format_path(self.path))
        return ": ".join([*parts, self.reason])

    @classmethod
    def of(cls, error: ConfigError, resource: ResourceId | None) -> ResourceError:
        path = tuple(p for p in error.path if p != "[key]")  # pydantic's marker for a dict key
        return cls(file=error.file, reason=error.reason, line=error.line, path=path, resource=resource)


def parse_resource(doc: Document) -> Resource | list[ResourceError]:
    """The document as the model its apiVersion and kind name, or every problem found in it."""
    rid = raw_id(doc.data)
    errors: list[ConfigError] = []
    model = _model_for(doc, errors)
    if model is not None:
        errors.extend(doc.error(path, reason) for path, reason in _name_errors(doc.data.get("metadata")))
    resource = doc.validate(model, errors) if model is not None else None
    if resource is not None:
        errors.extend(doc.error(path, reason) for path, reason in _own_checks(resource))
    if errors or resource is None:
        return [ResourceError.of(e, rid) for e in errors]
    return resource


def _model_for(doc: Document, errors: list[ConfigError]) -> type[Resource] | None:
    data = doc.data
    if not isinstance(data, dict):
        errors.append(doc.error((), "a resource must be a mapping with apiVersion, kind, metadata and spec"))
        return None
    kind, api_version = data.get("kind"), data.get("apiVersion")
    if not isinstance(kind, str) or kind not in KINDS:
        reason = f"unknown kind {kind!r}" if kind is not None else "missing kind"
        errors.append(doc.error(("kind",), f"{reason} (expected one of {', '.join(sorted(KINDS))})"))
        return None
    expected, model = KINDS[kind].api_version, KINDS[kind].model
    if api_version != expected:
        got = f"not {api_version!r}" if api_version is not None else "missing"
        errors.append(doc.error(("apiVersion",), f"{kind} needs apiVersion {expected} ({got})"))
        return None
    return cast("type[Resource]", model)


def _own_checks(resource: Resource) -> list[tuple[FieldPath, str]]:
    """Checks that need the whole validated resource, each pointing at its own field."""
    errors: list[tuple[FieldPath, str]] = []
    if isinstance(resource, JWTPolicy):
        errors.extend((("spec", *path), reason) for path, reason in resource.spec.reference_errors())
    elif isinstance(resource, Secret):
        errors.extend(resource.tls_errors())
    elif isinstance(resource, Mapping) and ANNOTATION in resource.metadata.annotations:
        try:
            resource.rate_limits  # noqa: B018 - parsed for its errors
        except RateLimitAnnotationError as exc:
            path = ("metadata", "annotations", ANNOTATION)
            errors.extend((path, str(problem)) for problem in exc.problems)
    return errors


def _name_errors(metadata: Any) -> list[tuple[FieldPath, str]]:
    """Kubernetes naming rules, checked on the raw metadata so that they are reported even when
    the rest of the resource is invalid (and for JWTPolicy, whose model is the authz service's)."""
    if not isinstance(metadata, dict):
        return []
    name, namespace = metadata.get("name"), metadata.get("namespace", "default")
    errors: list[tuple[FieldPath, str]] = []
    if isinstance(name, str) and name and (len(name) > 253 or not DNS_NAME.fullmatch(name)):
        errors.append((("metadata", "name"), "must be lowercase letters, digits, '-' and '.' (DNS-1123)"))
    if isinstance(namespace, str) and (len(namespace) > 63 or not DNS_LABEL.fullmatch(namespace)):
        errors.append(
            (("metadata", "namespace"), "must be lowercase letters, digits and '-' (DNS-1123 label)")
        )
    return errors
