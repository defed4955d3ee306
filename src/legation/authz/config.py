"""The authz service's config: JWTPolicy documents from a file or directory, validated one by one.

The same YAML a team applies to Kubernetes. Every problem is reported with file, line and field;
two policies with the same namespace/name are an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from legation.api.v1alpha1 import JWTPolicy, parse_resource
from legation.core.digest import content_version
from legation.core.errors import ConfigError, ConfigErrors
from legation.core.yamlfile import Document, load_documents, read_config_files

__all__ = ["LoadedPolicies", "load_policies", "load_policy_texts"]


@dataclass(frozen=True)
class LoadedPolicies:
    policies: tuple[JWTPolicy, ...]
    version: str
    files: tuple[str, ...]
    origin: dict[str, str]  # policy key -> the file it came from (relative key files resolve there)


def _policy(doc: Document, errors: list[ConfigError]) -> JWTPolicy | None:
    """The document as a JWTPolicy, read the way the controller reads it (the schema's one parser
    and kinds registry), or None with its problems added to `errors`."""
    kind = doc.data.get("kind") if isinstance(doc.data, dict) else None
    if kind != "JWTPolicy":
        errors.append(doc.error(("kind",), f"the authz service reads JWTPolicy documents, not {kind!r}"))
        return None
    resource = parse_resource(doc)
    if isinstance(resource, list):
        errors.extend(resource)
        return None
    assert isinstance(resource, JWTPolicy)  # the registry maps kind JWTPolicy to its model
    return resource


def load_policies(path: str | Path) -> LoadedPolicies:
    return load_policy_texts(read_config_files(path))


def load_policy_texts(texts: Sequence[tuple[str, str]]) -> LoadedPolicies:
    errors: list[ConfigError] = []
    policies: list[JWTPolicy] = []
    seen: dict[str, str] = {}
    for file, text in texts:
        try:
            documents = load_documents(text, file=file)
        except ConfigError as exc:
            errors.append(exc)
            continue
        for doc in documents:
            policy = _policy(doc, errors)
            if policy is None:
                continue
            if policy.key in seen:
                errors.append(
                    doc.error(
                        ("metadata", "name"), f"duplicate policy {policy.key} (also in {seen[policy.key]})"
                    )
                )
                continue
            seen[policy.key] = file
            policies.append(policy)
    if errors:
        raise ConfigErrors(errors)
    return LoadedPolicies(
        policies=tuple(policies),
        version=content_version(texts),
        files=tuple(f for f, _ in texts),
        origin=seen,
    )
