"""Mapping: one route (or one canary share of a route), as teams apply it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from legation.api.v1alpha1.base import SpecModel
from legation.api.v1alpha1.fields import (
    GatewayNames,
    HeaderName,
    HeaderValue,
    Hostname,
    Method,
    MutableHeader,
    ServiceAddress,
    Upstream,
    UrlPath,
    check_origin,
    check_regex,
    check_retry_on,
    gateways_field,
    parse_service,
    unique,
)
from legation.api.v1alpha1.meta import ApiVersion, ObjectMeta, Status, TypedObject
from legation.api.v1alpha1.ratelimit_annotation import ANNOTATION, RateLimitRule, parse_rate_limit
from legation.core.durations import Duration
from legation.core.names import DNS_NAME

__all__ = [
    "METHOD_OVERRIDE_HEADERS",
    "AuthRef",
    "CircuitBreakers",
    "Cors",
    "Mapping",
    "MappingSpec",
    "Retries",
]

METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")
"""Headers some frameworks read as the request's method (a POST acting as a DELETE). Removed from
every request before authorization unless the route sets `allowMethodOverride`: otherwise a rule
or route for GET would admit a request the upstream runs as DELETE."""


class Retries(SpecModel):
    """Envoy retry policy for the route.

    YAML 1.1 (PyYAML, and Kubernetes' own YAML reader) reads an unquoted `on:` key as the boolean
    true; that key, and the string "true" it becomes in JSON, are taken as `on`."""

    attempts: int = Field(ge=1, le=10, description="Retries after the first try (1-10).")
    on: Annotated[str, AfterValidator(check_retry_on)] = Field(
        default="5xx,reset,connect-failure",
        description="Envoy retry_on conditions, comma-separated (5xx, gateway-error, reset, connect-failure, "
        "retriable-4xx, refused-stream, …).",
    )
    per_try_timeout: Duration | None = Field(
        default=None, gt=0, description="Timeout of each try; absent = the route timeout."
    )

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        if isinstance(data, dict) and "on" not in data:
            for key in (True, "true"):
                if key in data:
                    data = {("on" if k == key else k): v for k, v in data.items()}
        return data


class Cors(SpecModel):
    """CORS answered by Envoy for the route."""

    origins: list[Annotated[str, AfterValidator(check_origin)]] = Field(
        min_length=1,
        description="Allowed origins: exact `https://shop.example.com`, `https://*.example.com` (any "
        "subdomain) or `*` (any).",
    )
    methods: Annotated[list[Method], AfterValidator(unique)] = Field(
        default_factory=list, description="Access-Control-Allow-Methods."
    )
    headers: Annotated[list[HeaderName], AfterValidator(unique)] = Field(
        default_factory=list, description="Access-Control-Allow-Headers."
    )
    expose_headers: Annotated[list[HeaderName], AfterValidator(unique)] = Field(
        default_factory=list, description="Access-Control-Expose-Headers."
    )
    credentials: bool = Field(default=False, description="Access-Control-Allow-Credentials: true.")
    max_age: Duration | None = Field(default=None, description="Access-Control-Max-Age (whole seconds sent).")

    @model_validator(mode="after")
    def _no_wildcard_credentials(self) -> Cors:
        if self.credentials and "*" in self.origins:
            raise ValueError("credentials: true cannot be combined with origin * (browsers refuse it)")
        return self


class AuthRef(SpecModel):
    """Authorization of the route: a JWTPolicy of the Mapping's namespace, or none at all."""

    policy: str | None = Field(default=None, description="Name of a JWTPolicy in the Mapping's namespace.")
    disabled: bool | None = Field(
        default=None, description="true: no authorization, even with a default policy."
    )

    @field_validator("policy")
    @classmethod
    def _own_namespace(cls, policy: str | None) -> str | None:
        if policy is not None and "/" in policy:
            raise ValueError("name a JWTPolicy of the Mapping's own namespace (no namespace/ prefix)")
        if policy is not None and not DNS_NAME.fullmatch(policy):
            raise ValueError(f"invalid policy name {policy!r}")
        return policy

    @model_validator(mode="after")
    def _one(self) -> AuthRef:
        if (self.policy is None) == (self.disabled is None) or self.disabled is False:
            raise ValueError("set either policy: NAME or disabled: true")
        return self


class CircuitBreakers(SpecModel):
    """Envoy circuit-breaker thresholds of the upstream cluster; absent = Envoy's defaults (1024)."""

    max_connections: int | None = Field(default=None, ge=1, description="Connections to the upstream.")
    max_pending_requests: int | None = Field(
        default=None, ge=1, description="Requests queued for a connection."
    )
    max_requests: int | None = Field(default=None, ge=1, description="Requests in flight (HTTP/2).")
    max_retries: int | None = Field(default=None, ge=1, description="Retries in flight.")


class MappingSpec(SpecModel):
    """One route: what it matches, where it goes, and what Envoy does on the way."""

    gateways: GatewayNames = gateways_field()
    hostname: Hostname = Field(default="*", description="Exact host, `*.example.com`, or `*` (any host).")
    prefix: UrlPath | None = Field(
        default=None, description="Path prefix match (one of prefix, path, regex)."
    )
    path: UrlPath | None = Field(default=None, description="Exact path match, query string excluded.")
    regex: Annotated[str, AfterValidator(check_regex)] | None = Field(
        default=None, description="RE2 regex matched against the whole path."
    )
    methods: Annotated[list[Method], AfterValidator(unique)] = Field(
        default_factory=list, description="Methods matched; empty = any."
    )
    headers: dict[HeaderName, str] = Field(
        default_factory=dict, description="Request headers that must match: exact value, or `*` = present."
    )
    query_parameters: dict[str, str] = Field(
        default_factory=dict, description="Query parameters that must match: exact value, or `*` = present."
    )
    service: ServiceAddress = Field(description="Upstream: `host:port`, or `http(s)://host[:port]`.")
    rewrite: UrlPath | None = Field(
        default=None, description="Replaces the matched prefix (or the whole path); absent = path kept."
    )
    timeout: Duration = Field(default=15.0, description="Whole-request timeout; 0 = none. Default 15s.")
    retries: Retries | None = Field(default=None, description="Retry policy; absent = no retries.")
    weight: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Percent of the traffic of Mappings with the same match (a canary share); Mappings "
        "without weight share what the weighted ones leave. 0 = none.",
    )
    cors: Cors | None = Field(default=None, description="CORS policy; absent = no CORS handling.")
    allow_upgrade: Annotated[list[Literal["websocket"]], AfterValidator(unique)] = Field(
        default_factory=list, description="Connection upgrades passed to the upstream."
    )
    auth: AuthRef | None = Field(
        default=None,
        description="Authorization; absent = the namespace's default JWTPolicy if any, else none.",
    )
    allow_method_override: bool = Field(
        default=False,
        description="Pass X-HTTP-Method-Override, X-HTTP-Method and X-Method-Override to the upstream "
        "(removed before authorization otherwise); a policy's rules must then allow the request's "
        "method and every overriding one.",
    )
    add_request_headers: dict[MutableHeader, HeaderValue] = Field(
        default_factory=dict,
        description="Set on the request to the upstream (overwriting client copies); Envoy %VARIABLES% work.",
    )
    remove_request_headers: Annotated[list[MutableHeader], AfterValidator(unique)] = Field(
        default_factory=list, description="Removed from the request before it goes upstream."
    )
    add_response_headers: dict[MutableHeader, HeaderValue] = Field(
        default_factory=dict, description="Set on the response to the client (overwriting the upstream's)."
    )
    remove_response_headers: Annotated[list[MutableHeader], AfterValidator(unique)] = Field(
        default_factory=list, description="Removed from the response before it goes to the client."
    )
    http2: bool = Field(
        default=False, description="Speak HTTP/2 to the upstream (gRPC, h2c; ALPN h2 with https)."
    )
    circuit_breakers: CircuitBreakers | None = Field(
        default=None, description="Thresholds for the upstream cluster."
    )

    @field_validator("headers", "query_parameters", mode="before")
    @classmethod
    def _quoted_booleans(cls, values: Any) -> Any:
        for name, value in values.items() if isinstance(values, dict) else ():
            if isinstance(value, bool):
                raise ValueError(f"the value of {name!r} must be a string: quote it ('{str(value).lower()}')")
        return values

    @field_validator("headers", "query_parameters")
    @classmethod
    def _match_values(cls, values: dict[str, str]) -> dict[str, str]:
        for name, value in values.items():
            if not name:
                raise ValueError("a name cannot be empty")
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"the value of {name!r} cannot contain CR, LF or NUL")
        return values

    @model_validator(mode="after")
    def _one_match(self) -> MappingSpec:
        if sum(x is not None for x in (self.prefix, self.path, self.regex)) != 1:
            raise ValueError("set exactly one of prefix, path, regex")
        if self.rewrite is not None and self.regex is not None:
            raise ValueError("rewrite needs a prefix or path match, not regex")
        return self

    @property
    def upstream(self) -> Upstream:
        return parse_service(self.service)


class Mapping(TypedObject):
    """One route (or one canary share of a route)."""

    api_version: ApiVersion
    kind: Literal["Mapping"] = Field(description="Mapping")
    metadata: ObjectMeta = Field(description="Name, namespace, and the rate-limit annotation.")
    spec: MappingSpec = Field(description="The route.")
    status: Status = None

    @property
    def rate_limits(self) -> tuple[RateLimitRule, ...]:
        """The rules of the rate-limit annotation (raises RateLimitAnnotationError if invalid)."""
        value = self.metadata.annotations.get(ANNOTATION)
        return parse_rate_limit(value) if value is not None else ()
