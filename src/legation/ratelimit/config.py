"""The rate limit service's config: files (or a feed's texts) in envoyproxy/ratelimit's YAML
format, validated with the schema in `legation.api.ratelimit`, then compiled into a rule tree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from legation.api.ratelimit import UNIT_SECONDS, Algorithm, Descriptor, DomainConfig, RateLimit, Replaces
from legation.core.digest import content_version
from legation.core.errors import ConfigError, ConfigErrors, FieldPath
from legation.core.yamlfile import Document, load_documents, read_config_files
from legation.ratelimit.rules import Limit, Node, RuleSet, Wildcard, make_limit

__all__ = [
    "UNIT_SECONDS",
    "Algorithm",
    "Descriptor",
    "DomainConfig",
    "LoadedConfig",
    "RateLimit",
    "Replaces",
    "load_config",
    "load_config_texts",
]


@dataclass(frozen=True)
class LoadedConfig:
    """A validated, compiled config and the version that identifies it."""

    rules: RuleSet
    domains: tuple[DomainConfig, ...]
    version: str
    files: tuple[str, ...]


def load_config(path: str | Path, *, merge_domains: bool = False) -> LoadedConfig:
    """Load a file, or every `*.yaml`/`*.yml` in a directory (hidden entries skipped).

    Raises ConfigErrors listing every problem with file, line and field.
    """
    return load_config_texts(read_config_files(path), merge_domains=merge_domains)


def load_config_texts(texts: Sequence[tuple[str, str]], *, merge_domains: bool = False) -> LoadedConfig:
    """Validate and compile (file name, YAML text) pairs into one config.

    A domain may appear in one file only, unless `merge_domains` (the reference's
    MERGE_DOMAIN_CONFIG): then the top-level descriptors of its files are joined, and a
    descriptor defined in two of them is an error naming both files."""
    errors: list[ConfigError] = []
    parsed: list[tuple[Document, DomainConfig]] = []
    for file, text in texts:
        try:
            documents = load_documents(text, file=file)
        except ConfigError as exc:
            errors.append(exc)
            continue
        if not documents:
            errors.append(ConfigError(file=file, line=1, reason="config file cannot have empty domain"))
        for doc in documents:
            model = _validate(doc, errors)
            if model is not None:
                parsed.append((doc, model))
    errors.extend(_cross_checks(parsed, merge_domains=merge_domains))
    if errors:
        raise ConfigErrors(errors)
    domains = tuple(model for _, model in parsed)
    return LoadedConfig(
        rules=compile_rules(domains),
        domains=domains,
        version=content_version(texts),
        files=tuple(f for f, _ in texts),
    )


def _validate(doc: Document, errors: list[ConfigError]) -> DomainConfig | None:
    if not isinstance(doc.data, dict):
        errors.append(doc.error((), "a config document must be a mapping with `domain:`"))
        return None
    return doc.validate(DomainConfig, errors)


def _cross_checks(parsed: list[tuple[Document, DomainConfig]], *, merge_domains: bool) -> list[ConfigError]:
    errors: list[ConfigError] = []
    seen_domains: dict[str, str] = {}
    top_keys: dict[tuple[str, str, str | None], Document] = {}  # (domain, key, value) → where, when merging
    for doc, model in parsed:
        first = seen_domains.get(model.domain)
        if first is not None and not merge_domains:
            errors.append(
                doc.error(("domain",), f"duplicate domain '{model.domain}' in config file (also in {first})")
            )
            continue
        seen_domains.setdefault(model.domain, doc.file)
        errors.extend(_duplicate_keys(doc, model.descriptors, ("descriptors",), model.domain))
        if merge_domains:
            errors.extend(_merge_conflicts(doc, model, top_keys))
    return errors


def _merge_conflicts(
    doc: Document, model: DomainConfig, top_keys: dict[tuple[str, str, str | None], Document]
) -> list[ConfigError]:
    errors: list[ConfigError] = []
    for i, d in enumerate(model.descriptors):
        other = top_keys.setdefault((model.domain, d.key, d.value), doc)
        if other is not doc:
            composite = f"{model.domain}.{d.key}" + (f"_{d.value}" if d.value else "")
            errors.append(
                doc.error(
                    ("descriptors", i),
                    f"duplicate descriptor composite key '{composite}' (also in {other.file}; merged domain)",
                )
            )
    return errors


def _duplicate_keys(
    doc: Document, descriptors: Sequence[Descriptor], path: FieldPath, parent: str
) -> list[ConfigError]:
    errors: list[ConfigError] = []
    seen: set[tuple[str, str | None]] = set()
    for i, d in enumerate(descriptors):
        composite = f"{parent}.{d.key}" + (f"_{d.value}" if d.value else "")
        if (d.key, d.value) in seen:
            errors.append(doc.error((*path, i), f"duplicate descriptor composite key '{composite}'"))
        seen.add((d.key, d.value))
        errors.extend(_duplicate_keys(doc, d.descriptors, (*path, i, "descriptors"), composite))
    return errors


# Unit names as the RLS proto numbers them (RateLimitResponse.RateLimit.Unit).
_UNIT_ENUM = {"second": 1, "minute": 2, "hour": 3, "day": 4, "month": 5, "year": 6, "week": 7}


def compile_rules(domains: Sequence[DomainConfig]) -> RuleSet:
    """Build the lookup tree from validated domain configs (pure). Configs naming the same
    domain (merged files) fill one tree, each with its own file's default algorithm."""
    trees: dict[str, Node] = {}
    has_replaces = False
    for domain in domains:
        root = trees.setdefault(domain.domain, Node(path=domain.domain))
        _fill(root, domain.descriptors, domain.algorithm)
        has_replaces = has_replaces or _uses_replaces(domain.descriptors)
    return RuleSet(domains=trees, has_replaces=has_replaces)


def _fill(parent: Node, descriptors: Sequence[Descriptor], algorithm: Algorithm) -> None:
    for d in descriptors:
        path = f"{parent.path}.{d.key}" + (f"_{d.value}" if d.value else "")
        node = Node(
            path=path,
            limits=tuple(_limit(d, rl, path, algorithm) for rl in d.limits),
            share=d.share_threshold,
            value_to_metric=d.value_to_metric,
            metadata=dict(d.metadata) if d.metadata else None,
        )
        _fill(node, d.descriptors, algorithm)
        if not d.value:
            parent.by_key[d.key] = node
        elif "*" in d.value:
            parent.wildcards.append((d.key, Wildcard(d.value), node))
        else:
            parent.exact[(d.key, d.value)] = node


def _limit(d: Descriptor, rl: RateLimit, path: str, algorithm: Algorithm) -> Limit:
    unit = (rl.unit or "").lower()
    return make_limit(
        requests=rl.requests_per_unit,
        unit=_UNIT_ENUM.get(unit, 0),
        window_seconds=rl.window_seconds if not rl.unlimited else 1,
        algorithm=rl.algorithm or algorithm,
        rule=rl.name or path,
        shadow=d.shadow_mode,
        unlimited=rl.unlimited,
        name=rl.name,
        replaces=frozenset(r.name for r in rl.replaces),
        detailed=d.detailed_metric,
        quota=d.quota_mode,
        path=path,
    )


def _uses_replaces(descriptors: Sequence[Descriptor]) -> bool:
    return any(any(rl.replaces for rl in d.limits) or _uses_replaces(d.descriptors) for d in descriptors)
