"""The rate limit config: envoyproxy/ratelimit's YAML format, accepted unchanged, plus extensions.

The pydantic models below are the one schema source: the loader validates with them, and the
controller builds configs with them. Extensions over the reference format:

- `rate_limit.unit_multiplier`: the window is `unit_multiplier` units (15 minutes).
- `rate_limits:` a list of limits on one descriptor; the strictest decides.
- `algorithm: sliding_window | fixed_window`, per file (domain default) or per limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from legation.core.errors import ConfigError, ConfigErrors
from legation.core.yamlfile import Document, content_version, load_documents, read_config_files
from legation.ratelimit.rules import Limit, Node, RuleSet, make_limit, wildcard_pattern

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

Algorithm = Literal["sliding_window", "fixed_window"]

# The reference's unit lengths: a month is 30 days, a year 365.
UNIT_SECONDS: dict[str, int] = {
    "second": 1,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "month": 30 * 86400,
    "year": 365 * 86400,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class Replaces(_Strict):
    name: str = Field(description="Name of a limit that this one replaces when both apply.")

    @model_validator(mode="after")
    def _named(self) -> Replaces:
        if not self.name:
            raise ValueError("should not have an empty replaces entry")
        return self


class RateLimit(_Strict):
    """`rate_limit:` of a descriptor: N requests per window."""

    unit: str | None = Field(default=None, description="second, minute, hour, day, week, month or year.")
    requests_per_unit: Annotated[int, Field(ge=0, le=2**32 - 1)] = Field(
        default=0, description="Requests admitted per window."
    )
    unit_multiplier: Annotated[int, Field(ge=1, le=10_000)] = Field(
        default=1, description="Extension: the window is this many units (e.g. 15 minutes)."
    )
    unlimited: bool = Field(default=False, description="Never limit this descriptor.")
    name: str = Field(default="", description="Name for metrics and for `replaces`.")
    replaces: list[Replaces] = Field(default_factory=list, description="Limits this one replaces.")
    algorithm: Algorithm | None = Field(default=None, description="Extension: overrides the file's.")

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, unit: str | None) -> str | None:
        if unit is not None and unit.lower() not in UNIT_SECONDS:
            raise ValueError(f"invalid rate limit unit '{unit}' (expected one of {', '.join(UNIT_SECONDS)})")
        return unit

    @model_validator(mode="after")
    def _consistent(self) -> RateLimit:
        if self.unlimited and self.unit:
            raise ValueError("should not specify rate limit unit when unlimited")
        if not self.unlimited and not self.unit:
            raise ValueError("missing rate limit unit (or set unlimited: true)")
        if any(r.name == self.name for r in self.replaces) and self.name:
            raise ValueError("replaces should not contain name of same descriptor")
        return self

    @property
    def window_seconds(self) -> int:
        return UNIT_SECONDS[(self.unit or "").lower()] * self.unit_multiplier


class Descriptor(_Strict):
    """One level of the descriptor tree: matches one entry of a request descriptor."""

    key: str = Field(description="Descriptor entry key; required.")
    value: str | None = Field(default=None, description="Exact value, `*` wildcards allowed; absent = any.")
    rate_limit: RateLimit | None = None
    rate_limits: list[RateLimit] | None = Field(
        default=None, description="Extension: several limits; the strictest decides."
    )
    descriptors: list[Descriptor] = Field(default_factory=list)
    shadow_mode: bool = Field(default=False, description="Count and report, never deny.")
    detailed_metric: bool = Field(default=False, description="Label metrics with the full value.")

    @model_validator(mode="after")
    def _valid(self) -> Descriptor:
        if not self.key:
            raise ValueError("descriptor has empty key")
        if self.rate_limit is not None and self.rate_limits is not None:
            raise ValueError("use either rate_limit or rate_limits, not both")
        if self.rate_limits is not None and not self.rate_limits:
            raise ValueError("rate_limits must not be empty")
        return self

    @property
    def limits(self) -> tuple[RateLimit, ...]:
        if self.rate_limit is not None:
            return (self.rate_limit,)
        return tuple(self.rate_limits or ())


class DomainConfig(_Strict):
    """One config file (or YAML document): a domain and its descriptor tree."""

    domain: str = Field(
        default="", validate_default=True, description="The domain Envoy names in its requests."
    )
    descriptors: list[Descriptor] = Field(default_factory=list)
    algorithm: Algorithm = Field(default="sliding_window", description="Extension: default algorithm.")

    @field_validator("domain")
    @classmethod
    def _named(cls, domain: str) -> str:
        if not domain:
            raise ValueError("config file cannot have empty domain")
        return domain


@dataclass(frozen=True)
class LoadedConfig:
    """A validated, compiled config and the version that identifies it."""

    rules: RuleSet
    domains: tuple[DomainConfig, ...]
    version: str
    files: tuple[str, ...]


def load_config(path: str | Path) -> LoadedConfig:
    """Load a file, or every `*.yaml`/`*.yml` in a directory (hidden entries skipped).

    Raises ConfigErrors listing every problem with file, line and field.
    """
    return load_config_texts(read_config_files(path))


def load_config_texts(texts: Sequence[tuple[str, str]]) -> LoadedConfig:
    """Validate and compile (file name, YAML text) pairs into one config."""
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
    errors.extend(_cross_checks(parsed))
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


def _cross_checks(parsed: list[tuple[Document, DomainConfig]]) -> list[ConfigError]:
    errors: list[ConfigError] = []
    seen_domains: dict[str, str] = {}
    for doc, model in parsed:
        if model.domain in seen_domains:
            errors.append(
                doc.error(
                    ("domain",), f"duplicate domain '{model.domain}' (also in {seen_domains[model.domain]})"
                )
            )
        seen_domains.setdefault(model.domain, doc.file)
        errors.extend(_duplicate_keys(doc, model.descriptors, ("descriptors",), model.domain))
    return errors


def _duplicate_keys(
    doc: Document, descriptors: Sequence[Descriptor], path: tuple[str | int, ...], parent: str
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
    """Build the lookup tree from validated domain configs (pure)."""
    trees: dict[str, Node] = {}
    has_replaces = False
    for domain in domains:
        root = Node(path=domain.domain)
        _fill(root, domain.descriptors, domain.algorithm)
        trees[domain.domain] = root
        has_replaces = has_replaces or _uses_replaces(domain.descriptors)
    return RuleSet(domains=trees, has_replaces=has_replaces)


def _fill(parent: Node, descriptors: Sequence[Descriptor], algorithm: Algorithm) -> None:
    for d in descriptors:
        path = f"{parent.path}.{d.key}" + (f"_{d.value}" if d.value else "")
        node = Node(path=path, limits=tuple(_limit(d, rl, path, algorithm) for rl in d.limits))
        _fill(node, d.descriptors, algorithm)
        if not d.value:
            parent.by_key[d.key] = node
        elif "*" in d.value:
            parent.wildcards.append((d.key, wildcard_pattern(d.value), node))
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
    )


def _uses_replaces(descriptors: Sequence[Descriptor]) -> bool:
    return any(any(rl.replaces for rl in d.limits) or _uses_replaces(d.descriptors) for d in descriptors)
