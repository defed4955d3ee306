"""The authz service's config: JWTPolicy documents from a file or directory, validated one by one.

The same YAML a team applies to Kubernetes. Every problem is reported with file, line and field;
two policies with the same namespace/name are an error.

Strict loading (`--check`, and the config a service starts with) refuses the whole config on any
problem. Partial loading (every reload, and every config feed version) refuses only the policies
at fault: each JWTPolicy document that names itself is rejected on its own (in `rejected`, with
its problems) and the others load, so that one team's broken policy never freezes the others'.
What names no policy (a YAML syntax error, a document without kind JWTPolicy or a name, a
duplicate) still refuses the whole version: there is no policy to fail closed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from legation.api.v1alpha1 import JWTPolicy, parse_resource, raw_id
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
    rejected: Mapping[str, tuple[ConfigError, ...]] = field(default_factory=dict)
    """Partial loads only: policy key -> why that policy is not loaded (requests naming it are
    denied)."""

    def without(self, problems: Mapping[str, Sequence[ConfigError]]) -> LoadedPolicies:
        """These policies moved to `rejected`, with their problems."""
        if not problems:
            return self
        rejected = dict(self.rejected)
        for key, errors in problems.items():
            rejected[key] = (*rejected.get(key, ()), *errors)
        kept = tuple(p for p in self.policies if p.key not in problems)
        return replace(self, policies=kept, rejected=rejected)


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


def _named_policy(doc: Document) -> str | None:
    """The policy key a JWTPolicy document claims, read without validating it."""
    rid = raw_id(doc.data)
    return f"{rid.namespace}/{rid.name}" if rid is not None and rid.kind == "JWTPolicy" else None


def load_policies(path: str | Path, *, partial: bool = False) -> LoadedPolicies:
    return load_policy_texts(read_config_files(path), partial=partial)


def load_policy_texts(texts: Sequence[tuple[str, str]], *, partial: bool = False) -> LoadedPolicies:
    errors: list[ConfigError] = []
    rejected: dict[str, list[ConfigError]] = {}
    policies: list[JWTPolicy] = []
    seen: dict[str, str] = {}
    for file, text in texts:
        try:
            documents = load_documents(text, file=file)
        except ConfigError as exc:
            errors.append(exc)
            continue
        for doc in documents:
            own: list[ConfigError] = []
            policy = _policy(doc, own)
            key = policy.key if policy is not None else _named_policy(doc)
            if key is not None and key in seen:
                errors.append(
                    doc.error(("metadata", "name"), f"duplicate policy {key} (also in {seen[key]})")
                )
                continue
            if key is not None:
                seen[key] = file
            if policy is not None:
                policies.append(policy)
            elif partial and key is not None:
                rejected[key] = own
            else:
                errors.extend(own)
    if errors:
        raise ConfigErrors(errors)
    return LoadedPolicies(
        policies=tuple(policies),
        version=content_version(texts),
        files=tuple(f for f, _ in texts),
        origin=seen,
        rejected={k: tuple(v) for k, v in rejected.items()},
    )
