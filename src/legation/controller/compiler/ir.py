"""The controller's intermediate representation: what `legation.controller.compiler.compile.compile` produces.

Everything here is a frozen dataclass of plain values (plus the validated pydantic models it
points at), so that the IR compares by value, can be dumped as JSON, and two compiles of the
same resources give equal IRs. Names are stable: derived from namespaces, names and service
addresses, never from list positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from legation.api.ratelimit import DomainConfig
from legation.api.v1alpha1 import AuthServiceSpec, Cors, ResourceId, Retries
from legation.api.v1alpha1.jwtpolicy import JWTPolicy
from legation.api.v1alpha1.ratelimit_annotation import RateLimitRule
from legation.controller.compiler.native import NativePolicy
from legation.core.errors import FieldPath, format_path
from legation.core.yamlfile import Document

__all__ = [
    "IR",
    "AuthServiceIR",
    "Cluster",
    "CompileResult",
    "DescriptorEntry",
    "Destination",
    "HostIR",
    "Origin",
    "Problem",
    "Programmed",
    "RateLimitIR",
    "Rejected",
    "ResourceStatus",
    "Route",
    "RouteMatch",
    "TlsSecret",
]


@dataclass(frozen=True, order=True)
class Origin:
    """Where a resource came from: a file (or an object reference such as
    `kubernetes:Mapping/ns/name`) and the document's position in it."""

    file: str
    index: int = 0
    line: int | None = field(default=None, compare=False)

    @classmethod
    def of(cls, doc: Document) -> Origin:
        return cls(file=doc.file, index=doc.index, line=doc.line)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else f"{self.file}#{self.index}"


# --- status ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """Why a resource was rejected: the field at fault (path from the resource's root) and why."""

    path: FieldPath
    reason: str
    line: int | None = None
    """1-based line of the field in its file (of its key, for a mapping entry); None when unknown."""

    def __str__(self) -> str:
        return f"{format_path(self.path)}: {self.reason}" if self.path else self.reason


@dataclass(frozen=True)
class Rejected:
    """An input that was invalid on its own, as the resources that depend on it see it."""

    reason: str
    """Its problems, each with its field path."""
    namespace_default: bool = False
    """It claims `spec.namespaceDefault: true` (a JWTPolicy): its namespace's Mappings without
    `auth` are rejected (fail closed) rather than served without it."""


@dataclass(frozen=True)
class ResourceStatus:
    """The outcome for one input resource."""

    id: ResourceId
    origin: Origin
    state: Literal["Accepted", "Rejected"]
    problems: tuple[Problem, ...] = ()
    warnings: tuple[str, ...] = ()
    """What an Accepted resource should see to (a Host whose certificate expires within 14 days);
    never a reason to reject. Set by the pipeline run, which knows the time (the compiler does not)."""
    enforcement: str | None = None
    """Valid JWTPolicies: `native` (Envoy's jwt_authn and RBAC), `service (reason)` (ext_authz), or
    `unused (…)` when no route uses it. The pipeline adds the routes that stay on the service
    although their policy is native: `native, except Mapping ns/name (service: reason)`."""

    @property
    def accepted(self) -> bool:
        return self.state == "Accepted"

    @property
    def reason(self) -> str | None:
        """All problems in one line, or None when accepted."""
        return "; ".join(p.reason for p in self.problems) or None


@dataclass(frozen=True)
class Programmed:
    """Whether a gateway's Envoys run a resource's current content (the `Programmed` condition,
    next to `Accepted`). Only for what reaches Envoy: Mappings, Hosts and AuthServices."""

    programmed: bool
    reason: Literal["Programmed", "Pending", "NoEnvoy", "Nacked", "Rejected"]
    message: str
    envoys: int = 0
    """Connected Envoys of the gateway."""
    seconds: float | None = None
    """From the pipeline run that first held this content to the last Envoy's ACK, once
    programmed."""


# --- routes ------------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class RouteMatch:
    """What a route matches. Two Mappings with equal matches claim the same traffic.

    Collections are sorted tuples, so equal matches compare (and hash) equal whatever the order
    in which the Mappings listed them."""

    hostname: str
    kind: Literal["prefix", "path", "regex"]
    value: str
    methods: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    """(lowercase name, exact value, or `*` = present)."""
    query_parameters: tuple[tuple[str, str], ...] = ()
    """(name, exact value, or `*` = present)."""

    def __str__(self) -> str:
        parts = [f"{self.hostname} {self.kind} {self.value}"]
        if self.methods:
            parts.append(f"methods {','.join(self.methods)}")
        parts += [f"header {n}={v}" for n, v in self.headers]
        parts += [f"query {n}={v}" for n, v in self.query_parameters]
        return ", ".join(parts)


@dataclass(frozen=True)
class Destination:
    """One weighted share of a route: the cluster and the Mapping that sent it."""

    mapping: str
    """"namespace/name" of the Mapping."""
    cluster: str
    weight: int
    """A share of the route's total weight (integers; 100 in total unless every Mapping of the
    route set a weight, in which case the weights are relative and may sum to anything)."""


@dataclass(frozen=True)
class DescriptorEntry:
    """One entry of the rate-limit descriptor Envoy builds for a request: the descriptor `key`
    and where its value comes from. The Envoy translator turns this into a rate_limit action:

    - generic_key: the constant `value` (`descriptor_key` = key);
    - remote_address: the client address;
    - request_header: the header named `value` (`:path` and `:method` for path and method);
    - dynamic_metadata: the JWT claim named `value`, as emitted by the authz service.
    """

    key: str
    source: Literal["generic_key", "remote_address", "request_header", "dynamic_metadata"]
    value: str | None = None


@dataclass(frozen=True)
class RateLimitIR:
    """One descriptor Envoy sends for the route, and the limits the service applies to it."""

    entries: tuple[DescriptorEntry, ...]
    """In order; the first is always the generic key naming the Mapping."""
    rules: tuple[RateLimitRule, ...]
    """The annotation rules counted on this descriptor (several when they share the keys)."""


@dataclass(frozen=True)
class Route:
    """One route: a match, the Mappings that share it (canaries), and what Envoy does with it.

    Route-level settings come from the route's primary Mapping (its oldest); other Mappings of
    the same match only add weighted destinations."""

    id: str
    """"namespace/name" of the primary Mapping; also the route's Envoy name."""
    namespace: str
    match: RouteMatch
    destinations: tuple[Destination, ...]
    """Sorted by Mapping id."""
    mappings: tuple[str, ...]
    """Ids of every Mapping of the route, primary first."""
    policy: str | None
    """"namespace/name" of the JWTPolicy that authorizes the route; None = no ext_authz."""
    rate_limits: tuple[RateLimitIR, ...] = ()
    rewrite: str | None = None
    timeout: float = 15.0
    retries: Retries | None = None
    cors: Cors | None = None
    allow_upgrade: tuple[str, ...] = ()
    allow_method_override: bool = False
    add_request_headers: tuple[tuple[str, str], ...] = ()
    remove_request_headers: tuple[str, ...] = ()
    add_response_headers: tuple[tuple[str, str], ...] = ()
    remove_response_headers: tuple[str, ...] = ()

    @property
    def total_weight(self) -> int:
        """0 means every share is 0: the translator answers 503 (no upstream)."""
        return sum(d.weight for d in self.destinations)


@dataclass(frozen=True)
class Cluster:
    """One upstream: a distinct (scheme, host, port, protocol, circuit breakers)."""

    name: str
    host: str
    port: int
    tls: bool = False
    http2: bool = False
    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True)
class HostIR:
    """TLS termination for one hostname."""

    id: str
    """"namespace/name" of the Host."""
    hostname: str
    secret: str
    """"namespace/name" of its kubernetes.io/tls Secret (served over SDS)."""
    insecure: Literal["Redirect", "Reject", "Route"]
    namespaces: tuple[str, ...] = ()
    """Its namespace, then the namespaces it delegates prefixes to: the routes whose plain-HTTP
    handling (`insecure`) it decides. Other namespaces' `*` routes on its hostname keep their own."""
    certificate_names: tuple[str, ...] = ()
    """The names its certificate covers (subjectAltName; the CN without one)."""
    not_after: str | None = None
    """When its certificate expires, ISO 8601 UTC; None if the certificate could not be read."""
    tls: bool = True
    """False for a Host withheld from Envoy (Envoy rejected it): no TLS for its hostname, whose
    plain-HTTP requests are refused (`insecure` Reject) rather than served without it."""


@dataclass(frozen=True)
class TlsSecret:
    """A certificate and its key, served to Envoy over SDS under `name`.

    The key never appears in a repr, and dumps of the IR (HTTP API) must leave it out."""

    name: str
    """"namespace/name" of the kubernetes.io/tls Secret."""
    certificate_chain: str = field(repr=False)
    private_key: str = field(repr=False)


@dataclass(frozen=True)
class AuthServiceIR:
    """The gateway-wide ext_authz settings."""

    id: str
    cluster: str
    spec: AuthServiceSpec


@dataclass(frozen=True)
class IR:
    """The compiled gateway: every list sorted, every name stable."""

    routes: tuple[Route, ...] = ()
    """Grouped by hostname (exact names, then `*.domain`, then `*`); most specific first within a
    hostname: exact paths, then regexes, then prefixes
    (longest first); more constraints (methods, headers, query) before fewer; then by id."""
    clusters: tuple[Cluster, ...] = ()
    """Sorted by name; includes the AuthService's cluster."""
    hosts: tuple[HostIR, ...] = ()
    tls_secrets: tuple[TlsSecret, ...] = ()
    """The Secrets of accepted Hosts, sorted by name."""
    auth_service: AuthServiceIR | None = None
    native_policies: tuple[NativePolicy, ...] = ()
    """Policies Envoy enforces itself (compiler/native.py), sorted by key; routes naming one of
    them get jwt_authn and RBAC instead of ext_authz."""


@dataclass(frozen=True)
class CompileResult:
    """Everything the compiler produces from one set of resources."""

    statuses: tuple[ResourceStatus, ...]
    """One per input resource, sorted by (kind, namespace, name, origin)."""
    ir: IR
    policies: tuple[JWTPolicy, ...]
    """The authz feed: accepted JWTPolicies, sorted by namespace/name, Secret-backed JWKS
    resolved to `inline`."""
    ratelimit: tuple[DomainConfig, ...]
    """The rate-limit feed: one domain (`legation`) with one descriptor tree per route."""

    def status(self, kind: str, namespace: str, name: str) -> ResourceStatus | None:
        """The status of the first resource with that identity (by origin), if any."""
        rid = ResourceId(kind, namespace, name)
        return next((s for s in self.statuses if s.id == rid), None)

    @property
    def rejected(self) -> tuple[ResourceStatus, ...]:
        return tuple(s for s in self.statuses if not s.accepted)
