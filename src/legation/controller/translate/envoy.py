"""The Envoy stage: IR → xDS resources (listeners, route configurations, clusters, secrets).

`translate(ir, options)` is a pure function: protobuf messages from `xds-protos`, keyed by type
URL and resource name, ready for `Snapshot.build`. Same IR and options, same bytes.

What it builds:

- Listener `http` on `http_port`: one HTTP connection manager, routes from RDS `http`.
- Listener `https` on `https_port` (only when there are Hosts): one filter chain per Host, chosen
  by SNI (`server_names`; the Host `*` has none, so it takes every other name and no SNI), its
  certificate from SDS (the Secret named `namespace/name`), routes from RDS `https`.
- Route configurations `http` and `https` (see `legation.controller.translate.routes`).
- One cluster per IR cluster (by its name), plus `legation_ratelimit` for the rate limit
  service, `legation_authz` for the default authz service when the IR has no AuthService, and
  `jwks_…` per origin of native policies' remote JWKS (translate/jwks_clusters.py).
- One SDS Secret per IR TLS Secret.

HTTP filters, in order: CORS (answers preflights before anyone asks for a token), ext_authz
(when an authz service is known), ratelimit (after ext_authz, whose dynamic metadata carries the
claims that `per claim:` limits count), router.

Stability: names come from hostnames, namespace/name ids and cluster names only, and the
listeners do not depend on the routes, so a change to one Mapping changes only the route
configurations that hold it (and clusters, if it brings or drops an upstream).
"""

from __future__ import annotations

from google.protobuf.message import Message

from legation.controller.compiler.ir import IR
from legation.controller.translate.clusters import cluster, secret, service_cluster
from legation.controller.translate.filters import auth_service, http_filters
from legation.controller.translate.jwks_clusters import jwks_clusters
from legation.controller.translate.jwt import jwt_http_filters
from legation.controller.translate.jwt_denials import local_reply_config
from legation.controller.translate.listeners import http_listener, https_listener
from legation.controller.translate.options import (
    ACCESS_LOG_FORMAT,
    AUTHZ_CLUSTER,
    HTTP_LISTENER,
    HTTP_ROUTES,
    HTTPS_LISTENER,
    HTTPS_ROUTES,
    RATELIMIT_CLUSTER,
    EnvoyOptions,
)
from legation.controller.translate.routes import (
    RouteOptions,
    route_configurations,
)
from legation.core.envoy_types import CLUSTER, LISTENER, ROUTE, SECRET

__all__ = [
    "ACCESS_LOG_FORMAT",
    "AUTHZ_CLUSTER",
    "HTTPS_LISTENER",
    "HTTPS_ROUTES",
    "HTTP_LISTENER",
    "HTTP_ROUTES",
    "RATELIMIT_CLUSTER",
    "EnvoyOptions",
    "translate",
]


def translate(ir: IR, options: EnvoyOptions) -> dict[str, dict[str, Message]]:
    """Type URL → resource name → message, for `Snapshot.build`. Pure and deterministic."""
    auth = auth_service(ir, options)
    route_options = RouteOptions(
        authz=auth is not None, redirect_port=options.redirect_port or options.https_port
    )
    filters = http_filters(auth, options, native=jwt_http_filters(ir.native_policies))
    reply = local_reply_config(ir.native_policies)
    listeners = {HTTP_LISTENER: http_listener(options, filters, local_reply=reply)}
    tls_hosts = tuple(h for h in ir.hosts if h.tls)  # a Host withheld from Envoy has no TLS
    if tls_hosts:
        listeners[HTTPS_LISTENER] = https_listener(tls_hosts, options, filters, local_reply=reply)
    names = {HTTP_ROUTES: True, HTTPS_ROUTES: False} if tls_hosts else {HTTP_ROUTES: True}
    routes = route_configurations(ir, route_options, names)
    clusters = {c.name: cluster(c, options) for c in ir.clusters}
    clusters |= jwks_clusters(ir.native_policies, options)
    if auth is not None and auth[0] == AUTHZ_CLUSTER:
        clusters[AUTHZ_CLUSTER] = service_cluster(AUTHZ_CLUSTER, auth[1].service, options)
    if options.ratelimit_service is not None:
        clusters[RATELIMIT_CLUSTER] = service_cluster(RATELIMIT_CLUSTER, options.ratelimit_service, options)
    return {
        LISTENER: dict(listeners),
        ROUTE: dict(routes),
        CLUSTER: dict(sorted(clusters.items())),
        SECRET: {s.name: secret(s) for s in ir.tls_secrets},
    }
