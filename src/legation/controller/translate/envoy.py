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
  service and `legation_authz` for the default authz service when the IR has no AuthService.
- One SDS Secret per IR TLS Secret.

HTTP filters, in order: CORS (answers preflights before anyone asks for a token), ext_authz
(when an authz service is known), ratelimit (after ext_authz, whose dynamic metadata carries the
claims that `per claim:` limits count), router.

Stability: names come from hostnames, namespace/name ids and cluster names only, and the
listeners do not depend on the routes, so a change to one Mapping changes only the route
configurations that hold it (and clusters, if it brings or drops an upstream).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.core.v3 import protocol_pb2 as protocol
from envoy.config.listener.v3 import listener_pb2
from envoy.config.ratelimit.v3 import rls_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf.message import Message

from legation.api.v1alpha1 import AuthServiceSpec
from legation.api.v1alpha1.fields import is_ip_literal, parse_service
from legation.controller.compiler.compile import DOMAIN
from legation.controller.compiler.ir import IR, Cluster, HostIR, TlsSecret
from legation.controller.translate.routes import (
    CORS_FILTER,
    EXT_AUTHZ_FILTER,
    RouteOptions,
    duration,
    pack,
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

HTTP_LISTENER = "http"
HTTPS_LISTENER = "https"
HTTP_ROUTES = "http"
HTTPS_ROUTES = "https"
RATELIMIT_CLUSTER = "legation_ratelimit"
AUTHZ_CLUSTER = "legation_authz"
"""Generated cluster names; IR clusters are all `svc_…`, so these never collide."""

RATELIMIT_FILTER = "envoy.filters.http.ratelimit"
ROUTER_FILTER = "envoy.filters.http.router"
_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

ACCESS_LOG_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "authority": "%REQ(:AUTHORITY)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "route": "%ROUTE_NAME%",
    "user_agent": "%REQ(USER-AGENT)%",
}
"""The JSON access log's fields (Envoy command operators)."""


@dataclass(frozen=True)
class EnvoyOptions:
    """How the gateway is wired: ports, and where the Legation services are."""

    listen_address: str = "127.0.0.1"
    http_port: int = 8080
    https_port: int = 8443
    redirect_port: int | None = None
    """The port put in http→https redirects; None = https_port. Set 443 when something in front
    (a Kubernetes Service, a load balancer) maps 443 to https_port."""
    ratelimit_service: str | None = "127.0.0.1:8081"
    """host:port of the Legation rate limit gRPC service; None = no ratelimit filter."""
    ratelimit_timeout: float = 0.1
    ratelimit_failure_mode_deny: bool = False
    ratelimit_domain: str = DOMAIN
    """Must be the domain the compiler writes the descriptor trees under."""
    default_authz_service: str | None = "127.0.0.1:9001"
    """host:port of the authz service used when the IR has no AuthService. None: without an
    AuthService, routes that have a policy answer 503 (never served unauthenticated)."""
    access_log_path: str | None = "/dev/stdout"
    """JSON access log file; None = no access log."""
    connect_timeout: float = 2.0
    """Upstream connect timeout of every cluster."""


def translate(ir: IR, options: EnvoyOptions) -> dict[str, dict[str, Message]]:
    """Type URL → resource name → message, for `Snapshot.build`. Pure and deterministic."""
    auth = _auth_service(ir, options)
    route_options = RouteOptions(
        authz=auth is not None, redirect_port=options.redirect_port or options.https_port
    )
    filters = _http_filters(auth, options)
    listeners = {HTTP_LISTENER: _http_listener(options, filters)}
    if ir.hosts:
        listeners[HTTPS_LISTENER] = _https_listener(ir.hosts, options, filters)
    names = {HTTP_ROUTES: True, HTTPS_ROUTES: False} if ir.hosts else {HTTP_ROUTES: True}
    routes = route_configurations(ir, route_options, names)
    clusters = {c.name: _cluster(c, options) for c in ir.clusters}
    if auth is not None and auth[0] == AUTHZ_CLUSTER:
        clusters[AUTHZ_CLUSTER] = _service_cluster(AUTHZ_CLUSTER, auth[1].service, options)
    if options.ratelimit_service is not None:
        clusters[RATELIMIT_CLUSTER] = _service_cluster(RATELIMIT_CLUSTER, options.ratelimit_service, options)
    return {
        LISTENER: dict(listeners),
        ROUTE: dict(routes),
        CLUSTER: dict(sorted(clusters.items())),
        SECRET: {s.name: _secret(s) for s in ir.tls_secrets},
    }


# --- listeners ---------------------------------------------------------------------------------


def _http_listener(options: EnvoyOptions, filters: list[Any]) -> Any:
    listener = _listener(HTTP_LISTENER, options.listen_address, options.http_port)
    chain = listener.filter_chains.add()
    chain.filters.add(name="envoy.filters.network.http_connection_manager").typed_config.CopyFrom(
        pack(_connection_manager("http", HTTP_ROUTES, filters, options))
    )
    return listener


def _https_listener(hosts: tuple[HostIR, ...], options: EnvoyOptions, filters: list[Any]) -> Any:
    listener = _listener(HTTPS_LISTENER, options.listen_address, options.https_port)
    # SNI is read by the TLS inspector before a filter chain is chosen.
    listener.listener_filters.add(name="envoy.filters.listener.tls_inspector").typed_config.CopyFrom(
        pack(tls_inspector_pb2.TlsInspector())
    )
    manager = pack(_connection_manager("https", HTTPS_ROUTES, filters, options))
    for host in hosts:
        chain = listener.filter_chains.add(name=host.id)
        if host.hostname != "*":
            chain.filter_chain_match.server_names.append(host.hostname)
        tls = tls_pb2.DownstreamTlsContext()
        tls.common_tls_context.alpn_protocols.extend(["h2", "http/1.1"])
        sds = tls.common_tls_context.tls_certificate_sds_secret_configs.add(name=host.secret)
        sds.sds_config.CopyFrom(_ads())
        chain.transport_socket.name = "envoy.transport_sockets.tls"
        chain.transport_socket.typed_config.CopyFrom(pack(tls))
        chain.filters.add(name="envoy.filters.network.http_connection_manager").typed_config.CopyFrom(manager)
    return listener


def _listener(name: str, address: str, port: int) -> Any:
    listener = listener_pb2.Listener(name=name)
    listener.address.socket_address.address = address
    listener.address.socket_address.port_value = port
    return listener


def _ads() -> Any:
    return config_source_pb2.ConfigSource(ads={}, resource_api_version=config_source_pb2.V3)


def _connection_manager(stat_prefix: str, routes: str, filters: list[Any], options: EnvoyOptions) -> Any:
    manager = hcm.HttpConnectionManager(stat_prefix=stat_prefix, codec_type=hcm.HttpConnectionManager.AUTO)
    manager.rds.route_config_name = routes
    manager.rds.config_source.CopyFrom(_ads())
    manager.http_filters.extend(filters)
    # The client is the peer of this connection (Envoy is the edge), so remote_address rate
    # limits and X-Forwarded-For cannot be forged by a client-sent header.
    manager.use_remote_address.value = True
    # One path for everyone. Envoy resolves dot segments (percent-encoded ones too), turns
    # backslashes into slashes and merges slashes before any filter or route sees the path; the
    # authz service's normalize_path (src/legation/authz/policy.py) resolves `.`/`..` and merges
    # slashes the same way, so it finds nothing left to change: the route match, the policy rule
    # match and the upstream all see one path, and `/public/../admin` cannot match a /public
    # route and reach /admin. Encoded slashes and backslashes (%2F, %5C), which authz refuses as
    # ambiguous, are refused here (400) for every route, also routes without a policy, so that
    # no upstream that decodes them sees another path than the one the route matched.
    manager.normalize_path.value = True
    manager.merge_slashes = True
    manager.path_with_escaped_slashes_action = hcm.HttpConnectionManager.REJECT_REQUEST
    # Identity headers (x-user-id, …) are set by authz with dashes; some upstreams read
    # `x_user_id` as the same header, so a client must not be able to send that spelling.
    manager.common_http_protocol_options.headers_with_underscores_action = (
        protocol.HttpProtocolOptions.DROP_HEADER
    )
    # Virtual hosts are plain hostnames: `Host: api.example.com:8080` must select them too.
    manager.strip_any_host_port = True
    if options.access_log_path is not None:
        log = file_pb2.FileAccessLog(path=options.access_log_path)
        log.log_format.json_format.update(ACCESS_LOG_FORMAT)
        manager.access_log.add(name="envoy.access_loggers.file").typed_config.CopyFrom(pack(log))
    return manager


# --- HTTP filters ------------------------------------------------------------------------------


def _auth_service(ir: IR, options: EnvoyOptions) -> tuple[str, AuthServiceSpec] | None:
    """(cluster, settings) of the ext_authz service, or None when there is none."""
    if ir.auth_service is not None:
        return ir.auth_service.cluster, ir.auth_service.spec
    if options.default_authz_service is not None:
        return AUTHZ_CLUSTER, AuthServiceSpec.model_validate({"service": options.default_authz_service})
    return None


def _http_filters(auth: tuple[str, AuthServiceSpec] | None, options: EnvoyOptions) -> list[Any]:
    filters = [_filter(CORS_FILTER, cors_pb2.Cors())]
    if auth is not None:
        filters.append(_filter(EXT_AUTHZ_FILTER, _ext_authz(*auth)))
    if options.ratelimit_service is not None:
        filters.append(_filter(RATELIMIT_FILTER, _ratelimit(options)))
    filters.append(_filter(ROUTER_FILTER, router_pb2.Router()))
    return filters


def _filter(name: str, config: Any) -> Any:
    return hcm.HttpFilter(name=name, typed_config=pack(config))


def _ext_authz(cluster: str, spec: AuthServiceSpec) -> Any:
    config = ext_authz_pb2.ExtAuthz(
        transport_api_version=config_source_pb2.V3, failure_mode_allow=spec.failure_mode_allow
    )
    config.grpc_service.envoy_grpc.cluster_name = cluster
    config.grpc_service.timeout.CopyFrom(duration(spec.timeout))
    config.status_on_error.code = spec.status_on_error
    if spec.include_body is not None:
        config.with_request_body.max_request_bytes = spec.include_body.max_bytes
        config.with_request_body.allow_partial_message = spec.include_body.allow_partial_message
    return config


def _ratelimit(options: EnvoyOptions) -> Any:
    config = rate_limit_pb2.RateLimit(
        domain=options.ratelimit_domain,
        failure_mode_deny=options.ratelimit_failure_mode_deny,
        enable_x_ratelimit_headers=rate_limit_pb2.RateLimit.DRAFT_VERSION_03,
    )
    config.timeout.CopyFrom(duration(options.ratelimit_timeout))
    config.rate_limit_service.CopyFrom(
        rls_pb2.RateLimitServiceConfig(
            grpc_service=grpc_service_pb2.GrpcService(
                envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=RATELIMIT_CLUSTER)
            ),
            transport_api_version=config_source_pb2.V3,
        )
    )
    return config


# --- clusters and secrets ----------------------------------------------------------------------


def _cluster(spec: Cluster, options: EnvoyOptions) -> Any:
    cluster = _endpoint_cluster(spec.name, spec.host, spec.port, options)
    if spec.http2:
        _http2(cluster)
    if spec.tls:
        tls = tls_pb2.UpstreamTlsContext()
        if not is_ip_literal(spec.host):  # SNI carries names only (RFC 6066)
            tls.sni = spec.host
        tls.common_tls_context.alpn_protocols.append("h2" if spec.http2 else "http/1.1")
        cluster.transport_socket.name = "envoy.transport_sockets.tls"
        cluster.transport_socket.typed_config.CopyFrom(pack(tls))
    limits = {
        "max_connections": spec.max_connections,
        "max_pending_requests": spec.max_pending_requests,
        "max_requests": spec.max_requests,
        "max_retries": spec.max_retries,
    }
    if any(v is not None for v in limits.values()):
        threshold = circuit_breaker_pb2.CircuitBreakers.Thresholds(priority=base_pb2.DEFAULT)
        for field, value in limits.items():
            if value is not None:
                getattr(threshold, field).value = value
        cluster.circuit_breakers.thresholds.append(threshold)
    return cluster


def _service_cluster(name: str, address: str, options: EnvoyOptions) -> Any:
    """A cluster for one of Legation's gRPC services (host:port; HTTP/2 cleartext)."""
    upstream = parse_service(address)
    cluster = _endpoint_cluster(name, upstream.host, upstream.port, options)
    _http2(cluster)
    return cluster


def _endpoint_cluster(name: str, host: str, port: int, options: EnvoyOptions) -> Any:
    cluster = cluster_pb2.Cluster(name=name)
    if is_ip_literal(host):
        cluster.type = cluster_pb2.Cluster.STATIC
    else:
        cluster.type = cluster_pb2.Cluster.STRICT_DNS
        # Services here listen on IPv4 loopback and cluster addresses; Envoy's default (AUTO)
        # would try an AAAA answer first, e.g. ::1 for localhost, where nothing listens.
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    cluster.connect_timeout.CopyFrom(duration(options.connect_timeout))
    cluster.load_assignment.cluster_name = name
    address = cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    address.address, address.port_value = host, port
    return cluster


def _http2(cluster: Any) -> None:
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.SetInParent()
    cluster.typed_extension_protocol_options[_HTTP_PROTOCOL_OPTIONS].CopyFrom(pack(options))


def _secret(secret: TlsSecret) -> Any:
    message = secret_pb2.Secret(name=secret.name)
    message.tls_certificate.certificate_chain.inline_string = secret.certificate_chain
    message.tls_certificate.private_key.inline_string = secret.private_key
    return message
