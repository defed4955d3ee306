"""Which upstreams a Mapping may name (and an AuthService): the gateway never proxies to itself.

Rules, each refusal naming the rule and what would allow it:

1. **Reserved** (`UpstreamRules.reserved`, the controller's `--reserved-upstream HOST:PORT`): the
   gateway's own endpoints (Envoy admin, controller, authz, rate limit, Redis) are never an
   upstream, whatever else is allowed. A reserved entry whose host is on this machine (a
   loopback or unspecified address, `localhost`) covers every such address at that port
   (`127.0.0.2`, `[::1]`, `0.0.0.0`, `localhost`), and a Kubernetes Service name covers each of
   its DNS forms. The AuthService may name the authz service the controller was given
   (`authz_service`), and nothing else reserved.
2. **This machine and the link**: loopback (127.0.0.0/8, ::1, `localhost`, `*.localhost`, also
   written as `127.1` or `2130706433`, or IPv4-mapped), unspecified (0.0.0.0, ::: connecting
   there reaches this machine) and link-local (169.254.0.0/16 with cloud metadata services,
   fe80::/10) addresses. Loopback is allowed with `allow_loopback` (`--allow-loopback-upstreams`,
   which `legation up` passes for its demo upstreams); unspecified and link-local never are.
   Names are not resolved here (compilation is pure): a DNS name that resolves to such an
   address is not caught by this rule; on Kubernetes the namespace rule keeps teams to names
   the platform controls.
3. **Namespaces** (`namespaced`, on with `--kubernetes`): a Mapping names a Service of its own
   namespace (`name`, `name.ns`, `name.ns.svc`, `name.ns.svc.cluster.local`; a bare `name` is
   sent to Envoy as `name.ns`, since Envoy would resolve it in the gateway's own namespace);
   anything else (another namespace's Service, an external name, an IP address) needs an
   accepted UpstreamGrant that opens it to the Mapping's namespace. In directory mode this rule
   is off unless asked for (`--namespaced-upstreams`), so a laptop's `service: httpbin.org` works.

UpstreamGrants are accepted only from platform namespaces; they never lift rules 1 and 2.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from legation.api.v1alpha1 import AuthService, Mapping, UpstreamGrant
from legation.api.v1alpha1.fields import Upstream, parse_service
from legation.controller.compiler.entries import Entry, age

__all__ = [
    "Grants",
    "UpstreamRules",
    "check_auth_service",
    "compile_grants",
    "mapping_upstream",
    "qualified",
    "reserved_problem",
    "upstream_address",
    "upstream_kind",
    "upstream_problem",
]

CLUSTER_DOMAIN = "cluster.local"
_LOCAL_NAMES = frozenset(("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"))


@dataclass(frozen=True, kw_only=True)
class UpstreamRules:
    """What the platform allows; see the module docstring."""

    allow_loopback: bool = False
    """Loopback upstreams are allowed (local runs: `legation up`, tests)."""
    reserved: tuple[str, ...] = ()
    """`HOST:PORT` of the gateway's own endpoints: never an upstream."""
    namespaced: bool = False
    """A Mapping names its own namespace's Services, or what an UpstreamGrant opens to it."""
    authz_service: str | None = None
    """The authz service the controller was given: the one reserved address an AuthService may name."""
    platform_namespaces: frozenset[str] = field(default_factory=lambda: frozenset({"legation-system"}))
    """Namespaces whose UpstreamGrants are accepted."""
    native_remote_jwks: bool = False
    """Envoy may fetch a team's remote JWKS itself (native enforcement of policies with `jwks.uri`).
    Off by default: Envoy buffers up to 32 MiB per fetch, as often as a team's `cacheDuration`
    says, so a hostile team's IdP could weigh on the shared gateway; the authz service fetches
    with a 1 MiB cap and a refetch cooldown. `legation up` turns it on (one team, one laptop)."""

    def __post_init__(self) -> None:
        for entry in self.reserved:
            parse_service(entry)  # ValueError for a malformed entry, at start rather than per compile


@dataclass(frozen=True)
class _Target:
    """An upstream as the rules compare it: where it leads, and by which name."""

    local: bool  # this machine (loopback, unspecified, localhost)
    kind: str  # "loopback", "unspecified", "link-local", "ip", "name"
    host: str  # an IP address (canonical), or a lowercase name without a trailing dot
    port: int


def _target(upstream: Upstream) -> _Target:
    host = upstream.host.rstrip(".")
    address = _address(host)
    if address is None:
        local = host in _LOCAL_NAMES or host.endswith(".localhost")
        return _Target(local, "loopback" if local else "name", host, upstream.port)
    if address.is_unspecified:
        kind = "unspecified"
    elif address.is_loopback:
        kind = "loopback"
    elif address.is_link_local:
        kind = "link-local"
    else:
        kind = "ip"
    return _Target(kind in ("loopback", "unspecified"), kind, str(address), upstream.port)


def upstream_kind(upstream: Upstream) -> str:
    """`loopback`, `unspecified`, `link-local`, `ip` (any other address) or `name`, as the
    rules above classify the upstream's host (legacy IPv4 forms and IPv4-mapped IPv6 included)."""
    return _target(upstream).kind


def upstream_address(upstream: Upstream) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address an IP-literal host means to a resolver (None for a name)."""
    return _address(upstream.host.rstrip("."))


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host literal means to a resolver: canonical forms, and also the legacy
    IPv4 forms getaddrinfo accepts (`127.1`, `0x7f000001`, `2130706433`), and IPv4-mapped IPv6."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not host.replace(".", "").replace("x", "").isalnum() or not host[0].isdigit():
            return None
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _where(upstream: Upstream) -> str:
    host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
    return f"{host}:{upstream.port}"


def _service_key(host: str, namespace: str | None) -> str | None:
    """`name.ns` for a Kubernetes Service name in any of its forms (a single label is a Service
    of `namespace`), else None."""
    labels = host.split(".")
    if labels[-2:] == CLUSTER_DOMAIN.split("."):
        labels = labels[:-2]
        if labels[-1:] != ["svc"]:
            return None
    if labels[-1:] == ["svc"]:
        labels = labels[:-1]
    if len(labels) == 1 and namespace is not None:
        return f"{labels[0]}.{namespace}"
    return ".".join(labels) if len(labels) == 2 else None


def _same_endpoint(target: _Target, reserved: _Target) -> bool:
    if target.port != reserved.port:
        return False
    if reserved.local:
        return target.local
    if target.host == reserved.host:
        return True
    key = _service_key(reserved.host, None)
    return key is not None and _service_key(target.host, None) == key


def reserved_problem(upstream: Upstream, rules: UpstreamRules, *, exempt: str | None = None) -> str | None:
    """Why `upstream` is one of the gateway's own endpoints (rule 1), or None."""
    target = _target(upstream)
    for entry in rules.reserved:
        if entry == exempt:
            continue
        if _same_endpoint(target, _target(parse_service(entry))):
            return (
                f"{_where(upstream)} is the gateway's own endpoint {entry} (reserved with "
                "--reserved-upstream); no Mapping may name it, whatever else is allowed"
            )
    return None


def upstream_problem(
    upstream: Upstream, *, namespace: str, rules: UpstreamRules, grants: Grants
) -> str | None:
    """Why a Mapping of `namespace` may not name `upstream`, or None (rules 1 to 3, in order)."""
    problem = reserved_problem(upstream, rules)
    if problem is not None:
        return problem
    target = _target(upstream)
    where = _where(upstream)
    if target.kind in ("unspecified", "link-local"):
        article = "an" if target.kind == "unspecified" else "a"
        what = f"{article} {target.kind} address (this host, or its link: cloud metadata)"
        return f"{where} is {what}: never an upstream"
    if target.kind == "loopback" and not rules.allow_loopback:
        return (
            f"{where} is a loopback address (this machine, where the gateway's own endpoints are): "
            "not an upstream unless the controller runs with --allow-loopback-upstreams"
        )
    if target.kind == "loopback" or not rules.namespaced:
        return None
    own = _service_key(target.host, namespace)
    if own is not None and own.rpartition(".")[2] == namespace:
        return None
    if grants.allows(namespace, target):
        return None
    return (
        f"{where} is not a Service of namespace {namespace} (name, name.{namespace}, "
        f"name.{namespace}.svc[.{CLUSTER_DOMAIN}]); another namespace's Service, an external host or an "
        "address needs an UpstreamGrant from the platform that opens it to this namespace"
    )


def qualified(upstream: Upstream, *, namespace: str, rules: UpstreamRules) -> Upstream:
    """The upstream Envoy should connect to. With `namespaced`, a bare Service name is qualified
    with the Mapping's namespace: Envoy resolves a bare name in its own namespace (the gateway's),
    which would reach the gateway's Services instead of the team's."""
    if rules.namespaced and "." not in upstream.host and _address(upstream.host) is None:
        return replace(upstream, host=f"{upstream.host}.{namespace}")
    return upstream


@dataclass(frozen=True)
class _Grant:
    namespaces: frozenset[str]
    host: str
    ports: frozenset[int]


@dataclass(frozen=True)
class Grants:
    """The accepted UpstreamGrants, as lookups."""

    grants: tuple[_Grant, ...] = ()

    def allows(self, namespace: str, target: _Target) -> bool:
        return any(
            (namespace in g.namespaces or "*" in g.namespaces)
            and (not g.ports or target.port in g.ports)
            and _host_granted(g.host, target.host)
            for g in self.grants
        )


def _host_granted(granted: str, host: str) -> bool:
    if granted.startswith("*."):
        return host.endswith(granted[1:]) and len(host) > len(granted) - 1
    if host == granted:
        return True
    key = _service_key(granted, None)
    return key is not None and _service_key(host, None) == key


def compile_grants(entries: Iterable[Entry[UpstreamGrant]], rules: UpstreamRules) -> Grants:
    """The grants from platform namespaces; the others are rejected."""
    accepted = []
    for entry in sorted(entries, key=age):
        if not entry.ok:
            continue
        if entry.id.namespace not in rules.platform_namespaces:
            platform = ", ".join(sorted(rules.platform_namespaces))
            entry.reject(
                ("metadata", "namespace"),
                f"UpstreamGrants are accepted only from platform namespaces ({platform}; the controller's "
                "--platform-namespace)",
            )
            continue
        spec = entry.resource.spec
        for upstream in spec.upstreams:
            accepted.append(_Grant(frozenset(spec.namespaces), upstream.host, frozenset(upstream.ports)))
    return Grants(tuple(accepted))


def mapping_upstream(entry: Entry[Mapping], *, rules: UpstreamRules, grants: Grants) -> Upstream | None:
    """The upstream a Mapping's cluster uses, or None with the Mapping rejected (`spec.service`)."""
    namespace = entry.id.namespace
    upstream = qualified(entry.resource.spec.upstream, namespace=namespace, rules=rules)
    problem = upstream_problem(upstream, namespace=namespace, rules=rules, grants=grants)
    if problem is not None:
        entry.reject(("spec", "service"), problem)
        return None
    return upstream


def check_auth_service(entry: Entry[AuthService] | None, rules: UpstreamRules) -> Entry[AuthService] | None:
    """The AuthService, unless its service is one of the gateway's own endpoints other than the
    authz service the controller was given (rule 1 only: the AuthService is the platform's, and
    the authz service commonly runs on loopback or in another namespace)."""
    if entry is None:
        return None
    problem = reserved_problem(parse_service(entry.resource.spec.service), rules, exempt=rules.authz_service)
    if problem is None:
        return entry
    entry.reject(("spec", "service"), problem.replace("no Mapping", "no AuthService"))
    return None
