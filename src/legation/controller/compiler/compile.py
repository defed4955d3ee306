"""The compiler: validated resources → statuses, IR, authz feed and rate-limit feed.

`compile` is a pure function: no I/O, no clock, no randomness, and its output does not depend on
the order of its input (everything is sorted by kind, namespace and name, and ties are broken by
origin). A resource that is wrong, or that loses a conflict, is Rejected with a reason and the
path of the field at fault; it never affects the other resources, except the ones that depend on
it, which fail closed (a Mapping whose JWTPolicy is rejected is rejected, never served without
authorization), and say why that one is rejected (also when it was invalid on its own and never
reached the compiler: `rejected`).

Rules, in the order they are applied:

1. Duplicates: one resource per (kind, namespace, name); later origins are rejected.
2. Secrets: accepted (a kubernetes.io/tls pair Envoy would refuse is rejected).
3. JWTPolicies: provider and rule names resolve; a `jwks.secretRef` names a Secret of the
   policy's namespace with that key, and is resolved to `jwks.inline` in the authz feed. One
   `namespaceDefault: true` policy per namespace: the oldest; the others are rejected.
4. AuthService: one for the gateway, the oldest; the others are rejected.
5. Hosts: `tlsSecret` names a kubernetes.io/tls Secret of the Host's namespace; one Host per
   hostname, the oldest; the others are rejected.
6. Mappings: the rate-limit annotation parses; the policy is `auth.policy` (a JWTPolicy of the
   Mapping's own namespace, which must be accepted), else the namespace's default policy (which
   must be accepted if it exists), else none; `auth.disabled: true` means none.
7. Matches: Mappings with an equal match (hostname, prefix/path/regex, methods, headers, query
   parameters) form one route. If they come from several namespaces, the namespace of the
   oldest Mapping wins and the others are rejected naming it. Within a namespace they are
   canaries: the oldest is the primary and gives the route its settings; another Mapping may
   leave route settings unset (it inherits them) or repeat them, but not set them differently.
   Weighted Mappings take their percent, in age order; one that would bring the total over 100
   is rejected. Mappings without weight share what is left equally (the remainder of the
   division goes to the first by name). If every Mapping sets a weight, weights are relative.

"Oldest" means: by `metadata.creationTimestamp` (Kubernetes sets it); a resource without one
counts as newer than any resource with one; ties (and resources without timestamps, as in the
directory source) are decided by namespace, then name. Name order rather than file order keeps
the outcome unchanged when files are moved or renamed.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import hashlib
import re
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from legation.api.ratelimit import Descriptor, DomainConfig, RateLimit
from legation.api.v1alpha1 import (
    AuthService,
    CircuitBreakers,
    Host,
    JWTPolicy,
    Mapping,
    MappingSpec,
    Resource,
    ResourceId,
    Secret,
    resource_id,
)
from legation.api.v1alpha1.fields import Upstream, parse_service
from legation.api.v1alpha1.ratelimit_annotation import (
    ANNOTATION,
    RateKey,
    RateLimitAnnotationError,
    RateLimitRule,
)
from legation.controller.compiler.ir import (
    IR,
    AuthServiceIR,
    Cluster,
    CompileResult,
    DescriptorEntry,
    Destination,
    HostIR,
    Origin,
    Problem,
    RateLimitIR,
    Rejected,
    ResourceStatus,
    Route,
    RouteMatch,
    TlsSecret,
)

__all__ = [
    "DOMAIN",
    "MAPPING_KEY",
    "ROUTE_FIELDS",
    "cluster_name",
    "compile",
    "descriptor_entry",
    "gc_paused",
    "missing_policy",
]

DOMAIN = "legation"
"""The rate-limit domain of every route's descriptors."""
MAPPING_KEY = "mapping"
"""The descriptor key whose value ("namespace/name") keeps each route's counters apart."""
ROUTE_FIELDS = (
    "rewrite",
    "timeout",
    "retries",
    "cors",
    "allow_upgrade",
    "auth",
    "add_request_headers",
    "remove_request_headers",
    "add_response_headers",
    "remove_response_headers",
)
"""MappingSpec fields that belong to the route (shared by its canaries), not to a destination."""

FieldPath = tuple[str | int, ...]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(eq=False)
class _Entry:
    id: ResourceId
    origin: Origin
    resource: Resource | None
    """None for a stand-in of an input that was invalid on its own (see `_stand_ins`)."""
    problems: list[Problem] = field(default_factory=list)

    @functools.cached_property
    def key(self) -> str:
        # Once per resource: the IR refers to it from several places (route, destination,
        # descriptor), and a new string per use was 2.3 MB at 10k Mappings.
        return f"{self.id.namespace}/{self.id.name}"

    @property
    def ok(self) -> bool:
        return not self.problems

    def reject(self, path: FieldPath, reason: str) -> None:
        self.problems.append(Problem(path, reason))


@dataclass(frozen=True, eq=False)
class _Accepted:
    """A Mapping that passed its own checks, with what the checks resolved."""

    entry: _Entry
    mapping: Mapping
    match: RouteMatch
    policy: str | None
    rules: tuple[RateLimitRule, ...]
    cluster: Cluster


def compile(
    resources: Sequence[tuple[Origin, Resource]], rejected: dict[ResourceId, Rejected] | None = None
) -> CompileResult:
    """Compile resources (each with its origin) into statuses, IR and feeds. Pure.

    `rejected` names the inputs that were invalid on their own: they get no status here, but a
    reference to one says it is rejected and why, rather than that it does not exist, and one
    that claims to be its namespace's default JWTPolicy fails that namespace closed."""
    with gc_paused():
        return _compile(resources, rejected or {})


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_resume = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Defer Python's cyclic garbage collector while building a large, acyclic structure.

    Profile (10k Mappings): the collector ran a full collection each time the number of live
    container objects grew by a quarter, and each one walked every resource and IR object built so
    far (~0.7 µs per pydantic object): 0.36 of the 0.76 s of `compile`, 0.30 of the 0.55 s of
    parsing. Nothing built here forms reference cycles (reference counting frees all of it), so
    the collector only waits; it runs as usual once the outermost pause, in any thread, ends."""
    global _gc_pausers, _gc_resume
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_resume = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_resume:
                gc.enable()


def _compile(
    resources: Sequence[tuple[Origin, Resource]], rejected: dict[ResourceId, Rejected]
) -> CompileResult:
    entries = sorted(
        (_Entry(resource_id(r), origin, r) for origin, r in resources), key=lambda e: (e.id, e.origin)
    )
    current: dict[ResourceId, _Entry] = {}
    for entry in entries:
        first = current.setdefault(entry.id, entry)
        if first is not entry:
            entry.reject(("metadata", "name"), f"duplicate {entry.id} (also in {first.origin})")
    stand_ins = _stand_ins(rejected, current)

    def of_kind(kind: type[Any]) -> list[_Entry]:
        return [e for e in current.values() if isinstance(e.resource, kind)]

    current |= stand_ins
    secrets = {e.id: e for e in of_kind(Secret)}
    for entry in secrets.values():
        _check_secret(entry)
    secrets |= {rid: e for rid, e in stand_ins.items() if rid.kind == "Secret"}
    policies, defaults = _compile_policies(of_kind(JWTPolicy), secrets)
    for rid in sorted(r for r, why in rejected.items() if why.namespace_default and r in stand_ins):
        defaults.setdefault(rid.namespace, stand_ins[rid])
    auth_service = _compile_auth_service(of_kind(AuthService))
    hosts = _compile_hosts(of_kind(Host), secrets)
    upstreams: dict[tuple[Upstream, bool, CircuitBreakers | None], Cluster] = {}
    accepted = [
        a for e in of_kind(Mapping) if (a := _check_mapping(e, current, defaults, upstreams)) is not None
    ]
    routes = _compile_routes(accepted)

    clusters: dict[str, Cluster] = {}
    for route in routes:
        for member, _ in route[1]:
            clusters[member.cluster.name] = member.cluster
    auth_ir = None
    if auth_service is not None:
        assert isinstance(auth_service.resource, AuthService)
        auth_spec = auth_service.resource.spec
        cluster = _cluster(parse_service(auth_spec.service), True, None)
        clusters[cluster.name] = cluster
        auth_ir = AuthServiceIR(id=auth_service.key, cluster=cluster.name, spec=auth_spec)

    route_irs = sorted((_route(primary, members) for primary, members in routes), key=_route_order)
    ir = IR(
        routes=tuple(route_irs),
        clusters=tuple(clusters[name] for name in sorted(clusters)),
        hosts=tuple(sorted(hosts, key=lambda h: (h.hostname, h.id))),
        tls_secrets=_tls_secrets(hosts, secrets),
        auth_service=auth_ir,
    )
    statuses = tuple(
        ResourceStatus(
            id=e.id,
            origin=e.origin,
            state="Accepted" if e.ok else "Rejected",
            problems=tuple(e.problems),
        )
        for e in entries
    )
    feed = tuple(policy for entry, policy in sorted(policies.items(), key=lambda p: p[0].id) if entry.ok)
    return CompileResult(statuses=statuses, ir=ir, policies=feed, ratelimit=(_domain(route_irs),))


def _stand_ins(
    rejected: dict[ResourceId, Rejected], current: dict[ResourceId, _Entry]
) -> dict[ResourceId, _Entry]:
    """An already rejected entry (no resource, no status) per input that was invalid on its own
    and has no valid namesake, so that references to it find it and say why it is rejected."""
    stand_ins: dict[ResourceId, _Entry] = {}
    for rid, why in rejected.items():
        if rid not in current:
            stand_ins[rid] = _Entry(rid, Origin(file=""), None, [Problem((), why.reason)])
    return stand_ins


# --- age ---------------------------------------------------------------------------------------


def _age(entry: _Entry) -> tuple[int, float, str, str]:
    """Sort key: oldest first (see the module docstring)."""
    assert entry.resource is not None  # stand-ins are never sorted by age
    meta: BaseModel = entry.resource.metadata
    stamp = getattr(meta, "creation_timestamp", None) or (meta.model_extra or {}).get("creationTimestamp")
    seconds = _parse_timestamp(stamp) if isinstance(stamp, str) else None
    return (0 if seconds is not None else 1, seconds or 0.0, entry.id.namespace, entry.id.name)


def _parse_timestamp(text: str) -> float | None:
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


# --- secrets, policies, auth service, hosts -----------------------------------------------------


def _check_secret(entry: _Entry) -> None:
    assert isinstance(entry.resource, Secret)
    for path, reason in entry.resource.tls_errors():
        entry.reject(path, reason)


def _compile_policies(
    entries: list[_Entry], secrets: dict[ResourceId, _Entry]
) -> tuple[dict[_Entry, JWTPolicy], dict[str, _Entry]]:
    """The resolved policy of each JWTPolicy entry, and each namespace's default policy entry."""
    resolved: dict[_Entry, JWTPolicy] = {}
    for entry in entries:
        policy = entry.resource
        assert isinstance(policy, JWTPolicy)
        for where, reason in policy.spec.reference_errors():
            entry.reject(("spec", *where), reason)
        data = policy.model_dump(mode="json", by_alias=True, exclude={"status"})
        for i, provider in enumerate(policy.spec.providers):
            ref = provider.jwks.secret_ref
            if ref is None:
                continue
            path: FieldPath = ("spec", "providers", i, "jwks", "secretRef")
            value = _secret_value(entry, secrets, path, ref.name, ref.key)
            if value is not None:
                jwks = data["spec"]["providers"][i]["jwks"]
                jwks.pop("secretRef")
                jwks["inline"] = value
        if entry.ok:
            try:
                resolved[entry] = JWTPolicy.model_validate(data)
            except ValidationError as exc:  # pragma: no cover - the input was already valid
                entry.reject(("spec",), str(exc))
    defaults: dict[str, _Entry] = {}
    for entry in sorted(entries, key=_age):
        assert isinstance(entry.resource, JWTPolicy)
        if not entry.resource.spec.namespace_default:
            continue
        winner = defaults.setdefault(entry.id.namespace, entry)
        if winner is not entry:
            entry.reject(
                ("spec", "namespaceDefault"),
                f"only one JWTPolicy per namespace may set namespaceDefault; {winner.id} is older",
            )
    return {e: p for e, p in resolved.items() if e.ok}, defaults


def _secret_value(
    entry: _Entry, secrets: dict[ResourceId, _Entry], path: FieldPath, name: str, key: str
) -> str | None:
    secret = secrets.get(ResourceId("Secret", entry.id.namespace, name))
    if secret is None:
        entry.reject((*path, "name"), f"no Secret {name!r} in namespace {entry.id.namespace}")
        return None
    if not secret.ok:
        entry.reject((*path, "name"), f"{secret.id} is rejected: {_reason(secret)}")
        return None
    assert isinstance(secret.resource, Secret)
    value = secret.resource.value(key)
    if value is None:
        entry.reject((*path, "key"), f"{secret.id} has no key {key!r}")
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        entry.reject((*path, "key"), f"key {key!r} of {secret.id} is not UTF-8 text")
        return None


def _compile_auth_service(entries: list[_Entry]) -> _Entry | None:
    winner: _Entry | None = None
    for entry in sorted(entries, key=_age):
        if winner is None:
            winner = entry
        else:
            entry.reject(("metadata", "name"), f"only one AuthService is allowed; {winner.id} is older")
    return winner


def _compile_hosts(entries: list[_Entry], secrets: dict[ResourceId, _Entry]) -> list[HostIR]:
    by_hostname: dict[str, _Entry] = {}
    for entry in sorted(entries, key=_age):
        host = entry.resource
        assert isinstance(host, Host)
        path: FieldPath = ("spec", "tlsSecret", "name")
        secret = secrets.get(ResourceId("Secret", entry.id.namespace, host.spec.tls_secret.name))
        if secret is None:
            entry.reject(path, f"no Secret {host.spec.tls_secret.name!r} in namespace {entry.id.namespace}")
        elif not secret.ok:
            entry.reject(path, f"{secret.id} is rejected: {_reason(secret)}")
        elif isinstance(secret.resource, Secret) and secret.resource.type != "kubernetes.io/tls":
            entry.reject(path, f"{secret.id} has type {secret.resource.type}, not kubernetes.io/tls")
        if not entry.ok:
            continue
        winner = by_hostname.setdefault(host.spec.hostname, entry)
        if winner is not entry:
            entry.reject(
                ("spec", "hostname"), f"hostname {host.spec.hostname} is already served by {winner.id}"
            )
    return [
        HostIR(
            id=e.key,
            hostname=host.spec.hostname,
            secret=f"{e.id.namespace}/{host.spec.tls_secret.name}",
            insecure=host.spec.insecure.action,
        )
        for e in by_hostname.values()
        if isinstance(host := e.resource, Host)
    ]


def _tls_secrets(hosts: Iterable[HostIR], secrets: dict[ResourceId, _Entry]) -> tuple[TlsSecret, ...]:
    found: dict[str, TlsSecret] = {}
    for host in hosts:
        namespace, name = host.secret.split("/", 1)
        secret = secrets[ResourceId("Secret", namespace, name)].resource
        assert isinstance(secret, Secret)
        found[host.secret] = TlsSecret(
            name=host.secret,
            certificate_chain=(secret.value("tls.crt") or b"").decode(),
            private_key=(secret.value("tls.key") or b"").decode(),
        )
    return tuple(found[name] for name in sorted(found))


def _reason(entry: _Entry) -> str:
    """Why `entry` is rejected, each problem with its field path (for those that depend on it)."""
    return "; ".join(str(p) for p in entry.problems)


# --- mappings and routes -----------------------------------------------------------------------


def _check_mapping(
    entry: _Entry,
    current: dict[ResourceId, _Entry],
    defaults: dict[str, _Entry],
    clusters: dict[tuple[Upstream, bool, CircuitBreakers | None], Cluster],
) -> _Accepted | None:
    mapping = entry.resource
    assert isinstance(mapping, Mapping)
    if not entry.ok:  # a duplicate
        return None
    rules: tuple[RateLimitRule, ...] = ()
    try:
        rules = mapping.rate_limits
    except RateLimitAnnotationError as exc:
        for problem in exc.problems:
            entry.reject(("metadata", "annotations", ANNOTATION), str(problem))
    policy = _policy_of(entry, mapping, current, defaults)
    if entry.problems:
        return None
    spec = mapping.spec
    # One Cluster per distinct upstream, shared by the Mappings that use it.
    cluster_key = (spec.upstream, spec.http2, spec.circuit_breakers)
    cluster = clusters.get(cluster_key)
    if cluster is None:
        cluster = clusters[cluster_key] = _cluster(*cluster_key)
    return _Accepted(
        entry=entry, mapping=mapping, match=_match(spec), policy=policy, rules=rules, cluster=cluster
    )


def _policy_of(
    entry: _Entry, mapping: Mapping, current: dict[ResourceId, _Entry], defaults: dict[str, _Entry]
) -> str | None:
    auth, ns = mapping.spec.auth, entry.id.namespace
    if auth is not None and auth.disabled:
        return None
    if auth is not None and auth.policy is not None:
        policy = current.get(ResourceId("JWTPolicy", ns, auth.policy))
        path: FieldPath = ("spec", "auth", "policy")
        if policy is None:
            entry.reject(path, missing_policy(auth.policy, ns, current))
            return None
        if not policy.ok:
            entry.reject(path, f"{policy.id} is rejected: {_reason(policy)}")
            return None
        return policy.key
    default = defaults.get(ns)
    if default is None:
        return None
    if not default.ok:
        entry.reject(
            ("spec", "auth"),
            f"the namespace's default {default.id} is rejected ({_reason(default)}); "
            "the Mapping is not served without it (set auth to override)",
        )
        return None
    return default.key


def missing_policy(name: str, namespace: str, present: Iterable[ResourceId]) -> str:
    """Why a Mapping of `namespace` cannot use the JWTPolicy `name`: none of `present` is it
    (pointing at a JWTPolicy of that name in another namespace, the likely mistake)."""
    elsewhere = sorted(r.namespace for r in present if r.kind == "JWTPolicy" and r.name == name)
    hint = (
        f" (JWTPolicy {elsewhere[0]}/{name} exists, but a Mapping may only use its own namespace's)"
        if elsewhere
        else ""
    )
    return f"no JWTPolicy {name!r} in namespace {namespace}{hint}"


def _match(spec: MappingSpec) -> RouteMatch:
    if spec.prefix is not None:
        kind, value = "prefix", spec.prefix
    elif spec.path is not None:
        kind, value = "path", spec.path
    else:
        kind, value = "regex", spec.regex or ""
    return RouteMatch(
        hostname=spec.hostname,
        kind=kind,  # type: ignore[arg-type]
        value=value,
        methods=tuple(sorted(spec.methods)),
        headers=tuple(sorted(spec.headers.items())),
        query_parameters=tuple(sorted(spec.query_parameters.items())),
    )


def _match_path(spec: MappingSpec) -> FieldPath:
    return ("spec", "prefix" if spec.prefix is not None else "path" if spec.path is not None else "regex")


def _compile_routes(accepted: list[_Accepted]) -> list[tuple[_Accepted, list[tuple[_Accepted, int]]]]:
    """(primary, [(member, weight)…]) per route; rejects conflicting Mappings."""
    groups: dict[RouteMatch, list[_Accepted]] = defaultdict(list)
    for a in accepted:
        groups[a.match].append(a)
    routes = []
    for match in sorted(groups, key=_match_key):
        members = groups[match]
        if len(members) > 1:
            members.sort(key=lambda a: _age(a.entry))
        primary = members[0]
        kept: list[_Accepted] = []
        for a in members:
            if a.entry.id.namespace != primary.entry.id.namespace:
                a.entry.reject(
                    _match_path(a.mapping.spec),
                    f"Mapping {primary.entry.key} (namespace {primary.entry.id.namespace}) already "
                    f"claims this match ({match}); the oldest Mapping wins",
                )
            elif a is primary or _agrees(a, primary):
                kept.append(a)
        routes.append((primary, _weights(kept)))
    return routes


def _agrees(member: _Accepted, primary: _Accepted) -> bool:
    """Whether a canary leaves the route's settings to the primary; rejects it if not."""
    spec, main = member.mapping.spec, primary.mapping.spec
    for name in ROUTE_FIELDS:
        if name in spec.model_fields_set and getattr(spec, name) != getattr(main, name):
            alias = MappingSpec.model_fields[name].alias or name
            member.entry.reject(
                ("spec", alias),
                f"differs from Mapping {primary.entry.key}, which has the same match and sets the "
                f"route's {alias} (leave it unset in canaries, or make it equal)",
            )
            return False
    own = member.mapping.metadata.annotations.get(ANNOTATION)
    if own is not None and own != primary.mapping.metadata.annotations.get(ANNOTATION):
        member.entry.reject(
            ("metadata", "annotations", ANNOTATION),
            f"differs from Mapping {primary.entry.key}, which has the same match and sets the "
            "route's rate limits (leave it unset in canaries, or make it equal)",
        )
        return False
    return True


def _weights(members: list[_Accepted]) -> list[tuple[_Accepted, int]]:
    """Each member's share (members oldest first); rejects weights that overflow 100."""
    weights: dict[_Accepted, int] = {}
    total = 0
    for a in members:
        weight = a.mapping.spec.weight
        if weight is None:
            continue
        if total + weight > 100:
            a.entry.reject(
                ("spec", "weight"),
                f"the weights of the Mappings with this match would add up to {total + weight} "
                f"(more than 100; older ones already take {total})",
            )
            continue
        weights[a] = weight
        total += weight
    rest = sorted(
        (a for a in members if a.mapping.spec.weight is None),
        key=lambda a: (a.entry.id.namespace, a.entry.id.name),
    )
    if rest:
        share, extra = divmod(100 - total, len(rest))
        for i, a in enumerate(rest):
            weights[a] = share + (1 if i < extra else 0)
    return [(a, weights[a]) for a in members if a in weights]


def _route(primary: _Accepted, members: list[tuple[_Accepted, int]]) -> Route:
    spec = primary.mapping.spec
    route_id = primary.entry.key
    return Route(
        id=route_id,
        namespace=primary.entry.id.namespace,
        match=primary.match,
        destinations=tuple(
            sorted(
                (
                    Destination(mapping=a.entry.key, cluster=a.cluster.name, weight=weight)
                    for a, weight in members
                ),
                key=lambda d: d.mapping,
            )
        ),
        mappings=tuple(a.entry.key for a, _ in members),
        policy=primary.policy,
        rate_limits=_rate_limits(route_id, primary.rules),
        rewrite=spec.rewrite,
        timeout=spec.timeout,
        retries=spec.retries,
        cors=spec.cors,
        allow_upgrade=tuple(spec.allow_upgrade),
        add_request_headers=tuple(sorted(spec.add_request_headers.items())),
        remove_request_headers=tuple(spec.remove_request_headers),
        add_response_headers=tuple(sorted(spec.add_response_headers.items())),
        remove_response_headers=tuple(spec.remove_response_headers),
    )


def _route_order(route: Route) -> tuple[Any, ...]:
    m = route.match
    rank = {"path": 0, "regex": 1, "prefix": 2}[m.kind]
    constraints = bool(m.methods) + len(m.headers) + len(m.query_parameters)
    wildcard = 2 if m.hostname == "*" else 1 if m.hostname.startswith("*.") else 0
    return (
        wildcard,
        m.hostname,
        rank,
        -len(m.value) if m.kind == "prefix" else 0,
        -constraints,
        _match_key(m),
        route.id,
    )


def _match_key(m: RouteMatch) -> tuple[Any, ...]:
    # The order of RouteMatch itself (dataclass order=True compares the fields as a tuple), without
    # its Python-level __lt__: 76k calls were 5% of a 10k-Mapping compile.
    return (m.hostname, m.kind, m.value, m.methods, m.headers, m.query_parameters)


# --- clusters ----------------------------------------------------------------------------------


def cluster_name(upstream: Upstream, http2: bool = False, breakers: CircuitBreakers | None = None) -> str:
    """A stable cluster name from the service address: `svc_<host, dots as _>_<port>`, with
    `_tls` for https, `_h2` for HTTP/2, and `_cb<hash>` when circuit breakers are set (so that
    Mappings with different settings for the same service get different clusters)."""
    name = f"svc_{_UNSAFE.sub('_', upstream.host.replace('.', '_'))}_{upstream.port}"
    if upstream.tls:
        name += "_tls"
    if http2:
        name += "_h2"
    if breakers is not None:
        digest = hashlib.sha256(breakers.model_dump_json().encode()).hexdigest()[:8]
        name += f"_cb{digest}"
    return name


def _cluster(upstream: Upstream, http2: bool, breakers: CircuitBreakers | None) -> Cluster:
    b = breakers or CircuitBreakers()
    return Cluster(
        name=cluster_name(upstream, http2, breakers),
        host=upstream.host,
        port=upstream.port,
        tls=upstream.tls,
        http2=http2,
        max_connections=b.max_connections,
        max_pending_requests=b.max_pending_requests,
        max_requests=b.max_requests,
        max_retries=b.max_retries,
    )


# --- rate limits -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def descriptor_entry(key: RateKey) -> DescriptorEntry:
    """The descriptor entry (key and value source) of one annotation key (immutable, shared)."""
    if key.kind == "ip":
        return DescriptorEntry("remote_address", "remote_address")
    if key.kind == "header":
        return DescriptorEntry(f"header_{key.name}", "request_header", key.name)
    if key.kind == "claim":
        return DescriptorEntry(f"claim_{key.name}", "dynamic_metadata", key.name)
    return DescriptorEntry(key.kind, "request_header", f":{key.kind}")


def _rate_limits(route_id: str, rules: Iterable[RateLimitRule]) -> tuple[RateLimitIR, ...]:
    by_keys: dict[tuple[RateKey, ...], list[RateLimitRule]] = {}
    for rule in rules:
        by_keys.setdefault(rule.keys, []).append(rule)
    head = DescriptorEntry(MAPPING_KEY, "generic_key", route_id)
    return tuple(
        RateLimitIR(entries=(head, *(descriptor_entry(k) for k in keys)), rules=tuple(group))
        for keys, group in by_keys.items()
    )


@dataclass
class _Node:
    value: str | None = None
    limits: list[RateLimitRule] = field(default_factory=list)
    children: dict[str, _Node] = field(default_factory=dict)

    def descriptor(self, key: str, limits: dict[RateLimitRule, RateLimit]) -> Descriptor:
        # Validated construction, not model_construct: pydantic's model_construct resolves each
        # default factory with inspect.signature, which made it 50 µs per RateLimit (0.6 s of a
        # 10k-Mapping compile); validating in pydantic-core takes 2 µs. Equal rules share one
        # (immutable) RateLimit.
        own = [_rate_limit(rule, limits) for rule in self.limits]
        return Descriptor(
            key=key,
            value=self.value,
            rate_limit=own[0] if len(own) == 1 else None,
            rate_limits=own if len(own) > 1 else None,
            descriptors=[child.descriptor(k, limits) for k, child in self.children.items()],
        )


def _rate_limit(rule: RateLimitRule, known: dict[RateLimitRule, RateLimit]) -> RateLimit:
    limit = known.get(rule)
    if limit is None:
        limit = RateLimit(unit=rule.unit, requests_per_unit=rule.requests, unit_multiplier=rule.multiplier)
        known[rule] = limit
    return limit


def _domain(routes: Iterable[Route]) -> DomainConfig:
    """One descriptor tree per route with limits, under `mapping: namespace/name`."""
    descriptors = []
    limits: dict[RateLimitRule, RateLimit] = {}
    for route in sorted(routes, key=lambda r: r.id):
        if not route.rate_limits:
            continue
        root = _Node(value=route.id)
        for limit in route.rate_limits:
            node = root
            for entry in limit.entries[1:]:
                node = node.children.setdefault(entry.key, _Node())
            node.limits.extend(limit.rules)
        descriptors.append(root.descriptor(MAPPING_KEY, limits))
    return DomainConfig(domain=DOMAIN, descriptors=descriptors)
