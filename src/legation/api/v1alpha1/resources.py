"""The controller's resources: Mapping, AuthService, Host (legation.dev/v1alpha1), JWTPolicy
(re-exported from the authz service, which owns it) and core/v1 Secret.

These pydantic models are the one schema source: the controller validates manifests with them
and the CRD schemas are generated from them, so every field carries a description. Field names
are camelCase on the wire, snake_case in Python; unknown keys are errors everywhere except in
Kubernetes `metadata`, where the API server's own fields pass.

`parse_resource` turns one YAML document into one of these models, or into errors that name the
file, line, resource and field. It validates a resource on its own; references between resources
are the compiler's (and `legation validate`'s) business.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from legation.api.v1alpha1.base import SpecModel
from legation.api.v1alpha1.fields import (
    API_VERSION,
    DNS_LABEL,
    DNS_NAME,
    MAX_REGEX_PROGRAM_SIZE,
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
    check_status,
    parse_service,
    unique,
)
from legation.api.v1alpha1.jwtpolicy import HTTP_METHODS, JWTPolicy, Metadata
from legation.api.v1alpha1.ratelimit_annotation import (
    ANNOTATION,
    RateLimitAnnotationError,
    RateLimitRule,
    parse_rate_limit,
)
from legation.core.durations import Duration
from legation.core.errors import ConfigError, format_path
from legation.core.yamlfile import Document

__all__ = [
    "API_VERSION",
    "HTTP_METHODS",
    "KINDS",
    "MAX_REGEX_PROGRAM_SIZE",
    "AuthRef",
    "AuthService",
    "AuthServiceSpec",
    "CircuitBreakers",
    "Cors",
    "Host",
    "HostSpec",
    "IncludeBody",
    "Insecure",
    "JWTPolicy",
    "Mapping",
    "MappingSpec",
    "ObjectMeta",
    "Resource",
    "ResourceError",
    "ResourceId",
    "Retries",
    "Secret",
    "SecretName",
    "Upstream",
    "parse_resource",
    "parse_service",
    "raw_id",
    "resource_id",
]


# --- metadata ----------------------------------------------------------------------------------


class ObjectMeta(Metadata):
    """Kubernetes object metadata. `name` and `namespace` identify the resource; labels and
    annotations are read; the API server's own fields (uid, resourceVersion, …) pass through."""

    name: str = Field(min_length=1, description="Unique per kind and namespace (DNS-1123 subdomain).")
    namespace: str = Field(default="default", description="The resource's namespace (DNS-1123 label).")
    labels: dict[str, str] = Field(default_factory=dict, description="Kubernetes labels.")
    annotations: dict[str, str] = Field(
        default_factory=dict, description=f"Kubernetes annotations; `{ANNOTATION}` on a Mapping sets limits."
    )
    creation_timestamp: str | None = Field(
        default=None, alias="creationTimestamp", description="Set by Kubernetes; older wins conflicts."
    )

    @field_validator("labels", "annotations", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class _Object(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# The fields every legation.dev kind has besides kind, metadata and spec.
_ApiVersion = Annotated[
    Literal["legation.dev/v1alpha1"], Field(alias="apiVersion", description="legation.dev/v1alpha1")
]
_Status = Annotated[dict[str, Any] | None, Field(description="Written by the controller; ignored on input.")]


# --- Mapping -----------------------------------------------------------------------------------


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


class Mapping(_Object):
    """One route (or one canary share of a route)."""

    api_version: _ApiVersion
    kind: Literal["Mapping"] = Field(description="Mapping")
    metadata: ObjectMeta = Field(description="Name, namespace, and the rate-limit annotation.")
    spec: MappingSpec = Field(description="The route.")
    status: _Status = None

    @property
    def rate_limits(self) -> tuple[RateLimitRule, ...]:
        """The rules of the rate-limit annotation (raises RateLimitAnnotationError if invalid)."""
        value = self.metadata.annotations.get(ANNOTATION)
        return parse_rate_limit(value) if value is not None else ()


# --- AuthService ---------------------------------------------------------------------------------


class IncludeBody(SpecModel):
    """Send the request body to the authorization service."""

    max_bytes: int = Field(ge=1, le=2**32 - 1, description="Most body bytes buffered and sent.")
    allow_partial_message: bool = Field(
        default=False, description="Send the first maxBytes of a bigger body (false: answer 413)."
    )


class AuthServiceSpec(SpecModel):
    """How Envoy calls the ext_authz service, gateway-wide."""

    service: ServiceAddress = Field(description="The authz gRPC service: `host:port` (https:// = TLS).")
    timeout: Duration = Field(default=0.2, gt=0, description="Per-check timeout. Default 200ms.")
    failure_mode_allow: bool = Field(
        default=False, description="Let requests through when the service fails (true) or deny (false)."
    )
    status_on_error: Annotated[int, AfterValidator(check_status)] = Field(
        default=503,
        description="Status sent when the service fails and failureModeAllow is false. Default 503 "
        "(Envoy's own default is 403, which blames the client).",
    )
    include_body: IncludeBody | None = Field(
        default=None, description="Send the body; absent = headers only."
    )


class AuthService(_Object):
    """Gateway-wide ext_authz settings."""

    api_version: _ApiVersion
    kind: Literal["AuthService"] = Field(description="AuthService")
    metadata: ObjectMeta = Field(description="Name and namespace.")
    spec: AuthServiceSpec = Field(description="The ext_authz settings.")
    status: _Status = None


# --- Host --------------------------------------------------------------------------------------


class SecretName(SpecModel):
    """A Secret in the referring resource's namespace."""

    name: str = Field(min_length=1, description="The Secret's name.")


class Insecure(SpecModel):
    """What plain-HTTP requests for the host get."""

    action: Literal["Redirect", "Reject", "Route"] = Field(
        default="Redirect", description="Redirect to https (301), Reject (403), or Route as usual."
    )


class HostSpec(SpecModel):
    """TLS termination for one hostname (SNI)."""

    hostname: Hostname = Field(description="Exact name, `*.example.com`, or `*` (the default certificate).")
    tls_secret: SecretName = Field(description="A kubernetes.io/tls Secret in the Host's namespace.")
    insecure: Insecure = Field(default_factory=Insecure, description="Plain-HTTP handling; default Redirect.")


class Host(_Object):
    """TLS termination for a hostname."""

    api_version: _ApiVersion
    kind: Literal["Host"] = Field(description="Host")
    metadata: ObjectMeta = Field(description="Name and namespace.")
    spec: HostSpec = Field(description="The hostname and its certificate.")
    status: _Status = None


# --- Secret ------------------------------------------------------------------------------------


def _base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("not valid base64 (use stringData for plain text)") from None
    return value


_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _secret_keys(values: dict[str, str]) -> dict[str, str]:
    for key in values:
        if not _SECRET_KEY.fullmatch(key):
            raise ValueError(f"invalid key {key!r} (letters, digits, '-', '_' and '.' only)")
    return values


class Secret(_Object):
    """A core/v1 Secret: `kubernetes.io/tls` for Hosts, Opaque (e.g. a JWKS) for JWTPolicies.
    Other types are accepted and ignored by the compiler."""

    api_version: Literal["v1"] = Field(alias="apiVersion", description="v1")
    kind: Literal["Secret"] = Field(description="Secret")
    metadata: ObjectMeta = Field(description="Name and namespace.")
    type: str = Field(default="Opaque", description="kubernetes.io/tls (tls.crt, tls.key) or Opaque.")
    data: Annotated[dict[str, Annotated[str, AfterValidator(_base64)]], AfterValidator(_secret_keys)] = Field(
        default_factory=dict, description="Values, base64-encoded."
    )
    string_data: Annotated[dict[str, str], AfterValidator(_secret_keys)] = Field(
        default_factory=dict, alias="stringData", description="Values as plain text; win over data."
    )
    immutable: bool | None = Field(default=None, description="Kubernetes: the data cannot change.")

    @field_validator("data", "string_data", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    def value(self, key: str) -> bytes | None:
        """The decoded value of `key` (stringData first, as Kubernetes merges them)."""
        if key in self.string_data:
            return self.string_data[key].encode()
        return base64.b64decode(self.data[key]) if key in self.data else None

    def tls_errors(self) -> list[tuple[tuple[str | int, ...], str]]:
        """(field path, reason) for a kubernetes.io/tls Secret whose pair Envoy would refuse."""
        if self.type != "kubernetes.io/tls":
            return []
        missing = [k for k in ("tls.crt", "tls.key") if self.value(k) is None]
        if missing:
            return [(("data",), f"a kubernetes.io/tls Secret needs {' and '.join(missing)}")]
        return _check_pair(
            self._where("tls.crt"),
            self.value("tls.crt") or b"",
            self._where("tls.key"),
            self.value("tls.key") or b"",
        )

    def _where(self, key: str) -> tuple[str | int, ...]:
        return ("stringData", key) if key in self.string_data else ("data", key)


def _check_pair(
    crt_path: tuple[str | int, ...], crt: bytes, key_path: tuple[str | int, ...], key: bytes
) -> list[tuple[tuple[str | int, ...], str]]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    errors: list[tuple[tuple[str | int, ...], str]] = []
    try:
        cert: x509.Certificate | None = x509.load_pem_x509_certificates(crt)[0]
    except ValueError:
        cert = None
        errors.append((crt_path, "not a PEM certificate"))
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        reason = "the key is encrypted" if isinstance(exc, TypeError) else "not a PEM private key"
        return [*errors, (key_path, reason)]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert is not None and cert.public_key().public_bytes(*spki) != private.public_key().public_bytes(*spki):
        errors.append((key_path, "the key does not match the certificate"))
    return errors


# --- identity and loading ----------------------------------------------------------------------

Resource = Mapping | JWTPolicy | AuthService | Host | Secret
KINDS: dict[str, tuple[str, type[Resource]]] = {
    "Mapping": (API_VERSION, Mapping),
    "JWTPolicy": (API_VERSION, JWTPolicy),
    "AuthService": (API_VERSION, AuthService),
    "Host": (API_VERSION, Host),
    "Secret": ("v1", Secret),
}
"""kind → (the apiVersion it needs, its model)."""


class ResourceId(NamedTuple):
    """What identifies a resource: unique per kind and namespace, as in Kubernetes."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def resource_id(resource: Resource) -> ResourceId:
    return ResourceId(resource.kind, resource.metadata.namespace, resource.metadata.name)


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


def raw_id(data: Any) -> ResourceId | None:
    """The identity a document claims, read without validating it; None if it names none."""
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        return None
    metadata = data.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        return None
    namespace = metadata.get("namespace")
    return ResourceId(data["kind"], namespace if isinstance(namespace, str) else "default", metadata["name"])


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
    expected, model = KINDS[kind]
    if api_version != expected:
        got = f"not {api_version!r}" if api_version is not None else "missing"
        errors.append(doc.error(("apiVersion",), f"{kind} needs apiVersion {expected} ({got})"))
        return None
    return model


def _own_checks(resource: Resource) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks that need the whole validated resource, each pointing at its own field."""
    errors: list[tuple[tuple[str | int, ...], str]] = []
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


def _name_errors(metadata: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """Kubernetes naming rules, checked on the raw metadata so that they are reported even when
    the rest of the resource is invalid (and for JWTPolicy, whose model is the authz service's)."""
    if not isinstance(metadata, dict):
        return []
    name, namespace = metadata.get("name"), metadata.get("namespace", "default")
    errors: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(name, str) and name and (len(name) > 253 or not DNS_NAME.fullmatch(name)):
        errors.append((("metadata", "name"), "must be lowercase letters, digits, '-' and '.' (DNS-1123)"))
    if isinstance(namespace, str) and (len(namespace) > 63 or not DNS_LABEL.fullmatch(namespace)):
        errors.append(
            (("metadata", "namespace"), "must be lowercase letters, digits and '-' (DNS-1123 label)")
        )
    return errors
