"""What the native enforcement bench serves: the manifests Legation compiles, and the static Envoy
configs (the upstream, the hand-written ``jwt_authn`` gateway, and the same with the policy's claim
rules written by hand as Envoy's RBAC).

The policy is the authz bench's (:func:`bench.authz_fixtures.policy_document`: RS256, inline keys,
claim rules on ``scope`` and ``org.team``, ``claimsToHeaders``), once as ``bench/orders``
(``enforcement: auto``, compiled into Envoy's filters) and once copied as
``bench/orders-service`` with ``enforcement: service`` (ext_authz -> ``legation authz``). The
three Mappings differ only in their hostname and ``auth``; every route of the run goes to the
same upstream Envoy, which answers every request itself (``direct_response`` 200).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.authz_fixtures import AUDIENCE, ISSUER, NAMESPACE, POLICY_NAME, REQUEST_PATH, TEAM, policy_document
from legation.controller.translate.options import ACCESS_LOG_FORMAT

__all__ = [
    "HOSTS",
    "REQUEST_PATH",
    "SERVICE_POLICY_NAME",
    "UPSTREAM_BODY",
    "Route",
    "handwritten_claims_envoy_config",
    "handwritten_envoy_config",
    "manifests",
    "upstream_envoy_config",
]

SERVICE_POLICY_NAME = f"{POLICY_NAME}-service"
UPSTREAM_BODY = "ok\n"
HOSTS = {
    "open": "open.bench.example",
    "native": "native.bench.example",
    "service": "service.bench.example",
    "jwt_authn": "jwt.bench.example",
    "jwt_rbac": "jwt-rbac.bench.example",
}
"""Target tag -> the Host header its requests carry (its Mapping's ``hostname``)."""

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_JWT_AUTHN = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
_FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
_RBAC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
_JWT_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig"
_ROUTE_TIMEOUT = "15s"
"""The timeout Legation gives a Mapping's route when it sets none."""


@dataclass(frozen=True)
class Route:
    """One Mapping of the manifests: its name, hostname and ``auth`` (None: no auth at all)."""

    name: str
    hostname: str
    auth: dict[str, Any] | None


ROUTES = (
    Route("open", HOSTS["open"], None),
    Route("native", HOSTS["native"], {"policy": POLICY_NAME}),
    Route("service", HOSTS["service"], {"policy": SERVICE_POLICY_NAME}),
)


def _mapping(route: Route, upstream_port: int) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "hostname": route.hostname,
        "prefix": "/orders/",
        "service": f"127.0.0.1:{upstream_port}",
    }
    if route.auth is not None:
        spec["auth"] = route.auth
    return {
        "apiVersion": "legation.dev/v1alpha1",
        "kind": "Mapping",
        "metadata": {"name": route.name, "namespace": NAMESPACE},
        "spec": spec,
    }


def manifests(
    jwks_json: str, *, upstream_port: int, routes: Sequence[Route] = ROUTES
) -> list[dict[str, Any]]:
    """The two JWTPolicies (native and ``enforcement: service``) and the Mappings."""
    native = policy_document(jwks_json)
    service = copy.deepcopy(native)
    service["metadata"]["name"] = SERVICE_POLICY_NAME
    service["spec"]["enforcement"] = "service"
    return [native, service, *(_mapping(r, upstream_port) for r in routes)]


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _listener(
    port: int, *, routes: list[dict[str, Any]], filters: list[dict[str, Any]], access_log: bool = False
) -> dict[str, Any]:
    manager: dict[str, Any] = {
        "@type": _HCM,
        "stat_prefix": "front",
        "codec_type": "AUTO",
        "route_config": {
            "name": "front",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}}],
    }
    if access_log:
        log = {"@type": _FILE_LOG, "path": "/dev/stdout", "log_format": {"json_format": ACCESS_LOG_FORMAT}}
        manager["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": log}]
    return {
        "name": "front",
        "address": _address(port),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}]}],
    }  # fmt: skip


def _bootstrap(admin_port: int, listener: dict[str, Any], clusters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "admin": {"address": _address(admin_port)},
        "static_resources": {"listeners": [listener], "clusters": clusters},
    }


def upstream_envoy_config(*, port: int, admin_port: int) -> dict[str, Any]:
    """The upstream: one listener answering every request 200 ``ok`` itself."""
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": UPSTREAM_BODY}},
    }
    return _bootstrap(admin_port, _listener(port, routes=[route], filters=[]), [])


def _provider(jwks_json: str) -> dict[str, Any]:
    return {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"inline_string": jwks_json},
        "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
        "forward": False,
        "jwt_cache_config": {"jwt_cache_size": 100},
        "claim_to_headers": [
            {"header_name": "x-user-id", "claim_name": "sub"},
            {"header_name": "x-team", "claim_name": "org.team"},
        ],
    }


def _upstream_cluster(upstream_port: int) -> dict[str, Any]:
    return {
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(upstream_port)}}]}],
        },
    }


def handwritten_envoy_config(
    *, port: int, admin_port: int, upstream_port: int, jwks_json: str
) -> dict[str, Any]:
    """What one would write by hand for the policy's provider: ``jwt_authn`` with the same issuer,
    audience, keys (``local_jwks`` inline), token header, ``forward: false`` and the same
    ``claimsToHeaders``, required on one route to the upstream, the same token cache as Legation's
    (``jwt_cache_config``, 100 tokens) and the same JSON access log (to stdout, like Legation's
    gateway), so that the ratio measures what Legation's policy adds, not what every Legation
    route pays (the route without auth measures that). It has none of the rest of the policy
    (claim rules, removal of client-sent identity headers)."""
    jwt_filter = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": _JWT_AUTHN,
            "providers": {"corp": _provider(jwks_json)},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}],
        },
    }
    route = {"match": {"prefix": "/orders/"}, "route": {"cluster": "upstream", "timeout": _ROUTE_TIMEOUT}}
    listener = _listener(port, routes=[route], filters=[jwt_filter], access_log=True)
    return _bootstrap(admin_port, listener, [_upstream_cluster(upstream_port)])


def _claim(path: list[str], value: str, *, listed: bool) -> dict[str, Any]:
    """A principal: the verified payload's claim at ``path`` is ``value`` (or, ``listed``, holds it)."""
    string = {"string_match": {"exact": value}}
    matcher = {
        "filter": "envoy.filters.http.jwt_authn",
        "path": [{"key": k} for k in ["corp", *path]],
        "value": {"list_match": {"one_of": string}} if listed else string,
    }
    return {"sourced_metadata": {"metadata_matcher": matcher}}  # dynamic metadata, by default


def _claims_route(match: dict[str, Any], scope: str | None) -> dict[str, Any]:
    """A route of the policy's rules: no token needed (``scope`` None), or the token and a
    per-route RBAC that allows the rule's scope and team only."""
    route: dict[str, Any] = {"match": match, "route": {"cluster": "upstream", "timeout": _ROUTE_TIMEOUT}}
    if scope is None:
        return route
    claims = [_claim(["scope"], scope, listed=True), _claim(["org", "team"], TEAM, listed=False)]
    policy = {"permissions": [{"any": True}], "principals": [{"and_ids": {"ids": claims}}]}
    route["typed_per_filter_config"] = {
        "envoy.filters.http.jwt_authn": {"@type": _JWT_PER_ROUTE, "requirement_name": "corp"},
        "envoy.filters.http.rbac": {
            "@type": _RBAC_PER_ROUTE,
            "rbac": {"rules": {"action": "ALLOW", "policies": {"claims": policy}}},
        },
    }
    return route


def handwritten_claims_envoy_config(
    *, port: int, admin_port: int, upstream_port: int, jwks_json: str
) -> dict[str, Any]:
    """The hand-written ``jwt_authn`` gateway plus the policy's three rules, as one writes claim
    rules in plain Envoy (and as Envoy Gateway compiles its JWT claim authorization): the verified
    payload in dynamic metadata (``scope`` split at spaces), and per route an RBAC allowing the
    rule's scope and team. What Envoy itself charges for claim rules; still none of the checks
    jwt_authn does not make that Legation adds (``crit``, ``iat``, control characters, token size,
    JWE) nor the removal of client-sent identity headers."""
    provider = _provider(jwks_json) | {
        "payload_in_metadata": "corp",
        "normalize_payload_in_metadata": {"space_delimited_claims": ["scope"]},
    }
    jwt_filter = {
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": _JWT_AUTHN,
            "providers": {"corp": provider},
            "requirement_map": {"corp": {"provider_name": "corp"}},
        },
    }
    rbac = {"name": "envoy.filters.http.rbac", "typed_config": {"@type": _RBAC}}
    methods = {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}
    routes = [
        _claims_route({"path_separated_prefix": "/orders/public"}, None),
        _claims_route({"path_separated_prefix": "/orders", "headers": [methods]}, "orders:read"),
        _claims_route({"path_separated_prefix": "/orders"}, "orders:write"),
    ]
    listener = _listener(port, routes=routes, filters=[jwt_filter, rbac], access_log=True)
    return _bootstrap(admin_port, listener, [_upstream_cluster(upstream_port)])
