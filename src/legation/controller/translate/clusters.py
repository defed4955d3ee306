"""Clusters (one per IR cluster, plus the Legation services') and the SDS secrets of Hosts."""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from legation.api.v1alpha1.fields import is_ip_literal, parse_service
from legation.controller.compiler.ir import Cluster, TlsSecret
from legation.controller.translate.options import (
    HTTP_PROTOCOL_OPTIONS,
    EnvoyOptions,
    duration,
    pack,
)

__all__ = ["cluster", "endpoint_cluster", "secret", "service_cluster"]


def cluster(spec: Cluster, options: EnvoyOptions) -> cluster_pb2.Cluster:
    cluster = endpoint_cluster(spec.name, spec.host, spec.port, options)
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


def service_cluster(name: str, address: str, options: EnvoyOptions) -> cluster_pb2.Cluster:
    """A cluster for one of Legation's gRPC services (host:port; HTTP/2 cleartext)."""
    upstream = parse_service(address)
    cluster = endpoint_cluster(name, upstream.host, upstream.port, options)
    _http2(cluster)
    return cluster


def endpoint_cluster(name: str, host: str, port: int, options: EnvoyOptions) -> cluster_pb2.Cluster:
    """One endpoint, by address (STATIC) or by name (STRICT_DNS), without TLS."""
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


def _http2(message: cluster_pb2.Cluster) -> None:
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.SetInParent()
    message.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].CopyFrom(pack(options))


def secret(tls: TlsSecret) -> secret_pb2.Secret:
    message = secret_pb2.Secret(name=tls.name)
    message.tls_certificate.certificate_chain.inline_string = tls.certificate_chain
    message.tls_certificate.private_key.inline_string = tls.private_key
    return message
