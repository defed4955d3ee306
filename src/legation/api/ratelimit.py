"""The rate limit config format: envoyproxy/ratelimit's YAML, accepted unchanged, plus extensions.

These pydantic models are the one schema source of that format: the rate limit service loads its
config with them, and the controller builds its rate limit feed with them. Extensions over the
reference format:

- `rate_limit.unit_multiplier`: the window is `unit_multiplier` units (15 minutes).
- `rate_limits:` a list of limits on one descriptor; the strictest decides.
- `algorithm: sliding_window | fixed_window`, per file (domain default) or per limit.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

__all__ = ["UNIT_SECONDS", "Algorithm", "Descriptor", "DomainConfig", "RateLimit", "Replaces"]

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
    name: str = Field(default="", description="Name of a limit that this one replaces when both apply.")

    @field_validator("name", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return "" if value is None else value  # `- name:` with nothing: the reference's own message

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

    key: str = Field(default="", description="Descriptor entry key; required.")
    value: str | None = Field(default=None, description="Exact value, `*` wildcards allowed; absent = any.")
    rate_limit: RateLimit | None = None
    rate_limits: list[RateLimit] | None = Field(
        default=None, description="Extension: several limits; the strictest decides."
    )
    descriptors: list[Descriptor] = Field(default_factory=list, description="Nested levels; null = none.")
    shadow_mode: bool = Field(default=False, description="Count and report, never deny.")
    quota_mode: bool = Field(
        default=False, description="Over the limit only counts when every quota descriptor of the request is."
    )
    detailed_metric: bool = Field(default=False, description="Label metrics with the full value.")
    value_to_metric: bool = Field(default=False, description="Put the request's value in the metric name.")
    share_threshold: bool = Field(
        default=False, description="Every value matching this wildcard shares one counter."
    )
    metadata: dict[str, JsonValue] | None = Field(
        default=None, description="Arbitrary data, returned as response dynamic metadata when enabled."
    )

    @field_validator("descriptors", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return [] if value is None else value  # `descriptors:` with nothing under it, as the reference

    @model_validator(mode="after")
    def _valid(self) -> Descriptor:
        if not self.key:
            raise ValueError("descriptor has empty key")
        if self.share_threshold and "*" not in (self.value or ""):
            composite = self.key + (f"_{self.value}" if self.value else "")
            raise ValueError(
                "share_threshold can only be used with wildcard values (containing '*'), "
                f"but found key '{composite}'"
            )
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
    descriptors: list[Descriptor] = Field(default_factory=list, description="Null = none.")
    algorithm: Algorithm = Field(default="sliding_window", description="Extension: default algorithm.")

    @field_validator("descriptors", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        return [] if value is None else value  # `descriptors:` with nothing under it, as the reference

    @field_validator("domain", mode="before")
    @classmethod
    def _null_domain(cls, value: object) -> object:
        return "" if value is None else value  # `domain:` with nothing: the empty-domain error

    @field_validator("domain")
    @classmethod
    def _named(cls, domain: str) -> str:
        if not domain:
            raise ValueError("config file cannot have empty domain")
        return domain
