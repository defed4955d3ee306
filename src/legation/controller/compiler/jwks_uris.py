"""Which JWKS URIs (`jwks.uri`) a team may name.

A native policy's remote keys are fetched by Envoy itself (jwt_authn `remote_jwks`), through one
cluster per JWKS origin (`compiler.remote_jwks`). The URI is written by a team that may be hostile, so
it obeys the rules of Mapping upstreams (`compiler.upstreams`) and the authz service's rules for
JWKS (`legation.authz.jwks_remote`), whichever is stricter:

- https; plain http only to a loopback host, and only where loopback upstreams are allowed
  (`--allow-loopback-upstreams`: local runs and tests). No `user:password@`, nothing but printable
  ASCII, a host that is a DNS name or an IP literal.
- never one of the gateway's own endpoints (`--reserved-upstream`), even with loopback allowed;
- never a loopback address (unless allowed), an unspecified or link-local one (cloud metadata), nor
  an IP literal that is not public (private, shared, reserved, multicast), as the service refuses;
- a DNS name is not resolved here (compiling is pure). Envoy validates the server's certificate
  against the trusted CAs (the system trust store) *and* the name, so a name that resolves to an
  internal address reaches only a server holding a publicly trusted certificate for that very name:
  no HTTP request is sent before that handshake. (The service checks each resolved address when
  connecting instead.)
- the namespace rule (`--namespaced-upstreams`) does not apply: an identity provider lies outside
  the cluster by nature, and the service does not restrict JWKS hosts to Services either.

Checked for every policy whatever its enforcement, so that neither Envoy nor the service is ever
handed such a URI. A refused URI rejects the policy (and so its Mappings, which fail closed), with
the reason at `spec.providers[i].jwks.uri`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from legation.api.v1alpha1 import JWTPolicy
from legation.api.v1alpha1.fields import Upstream
from legation.controller.compiler.entries import Entry
from legation.controller.compiler.remote_jwks import jwks_origin
from legation.controller.compiler.upstreams import (
    UpstreamRules,
    reserved_problem,
    upstream_address,
    upstream_kind,
)

__all__ = ["check_jwks_uris", "jwks_uri_problem"]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def jwks_uri_problem(uri: str, rules: UpstreamRules) -> str | None:
    """Why Envoy (or the service) must not fetch keys from `uri`, or None."""
    try:
        origin = jwks_origin(uri)
    except ValueError as exc:
        return str(exc)
    problem = reserved_problem(origin, rules)
    if problem is not None:
        return problem.replace("no Mapping may name it", "no JWKS uri may name it")
    kind, where = upstream_kind(origin), _where(origin)
    if kind in ("unspecified", "link-local"):
        return f"{where} is {'an' if kind == 'unspecified' else 'a'} {kind} address: never a JWKS server"
    if kind == "loopback" and not rules.allow_loopback:
        return (
            f"{where} is a loopback address (this machine, where the gateway's own endpoints are): not a "
            "JWKS server unless the controller runs with --allow-loopback-upstreams"
        )
    address = upstream_address(origin)
    if kind == "ip" and address is not None and not _public(address):
        return f"{where} is not a public address: JWKS are fetched from public addresses only"
    if not origin.tls and kind != "loopback":
        return "the JWKS uri must use https (plain http only to a loopback host, for local runs)"
    return None


def _where(origin: Upstream) -> str:
    host = f"[{origin.host}]" if ":" in origin.host else origin.host
    return f"{host}:{origin.port}"


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routable unicast, also for IPv4 inside IPv6 (6to4, NAT64), as the service checks."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.sixtofour
        if inner is None and address in _NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if inner is not None and not _public(inner):
            return False
    return address.is_global and not address.is_multicast


def check_jwks_uris(entries: Iterable[Entry[JWTPolicy]], rules: UpstreamRules) -> None:
    """Reject each accepted policy that names a JWKS uri the rules refuse."""
    for entry in entries:
        if not entry.ok:
            continue
        for i, provider in enumerate(entry.resource.spec.providers):
            uri = provider.jwks.uri
            problem = None if uri is None else jwks_uri_problem(uri, rules)
            if problem is not None:
                entry.reject(("spec", "providers", i, "jwks", "uri"), problem)
