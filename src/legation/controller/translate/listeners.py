"""Listeners: `http`, and `https` with one filter chain per Host chosen by SNI (certificates over
SDS), each with one HTTP connection manager whose routes come over RDS."""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2
from envoy.config.core.v3 import protocol_pb2 as protocol
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from legation.controller.compiler.ir import HostIR
from legation.controller.translate.options import (
    ACCESS_LOG_FORMAT,
    HTTP_LISTENER,
    HTTP_ROUTES,
    HTTPS_LISTENER,
    HTTPS_ROUTES,
    EnvoyOptions,
    pack,
)

__all__ = ["http_listener", "https_listener"]


def http_listener(
    options: EnvoyOptions, filters: list[hcm.HttpFilter], *, local_reply: hcm.LocalReplyConfig | None = None
) -> listener_pb2.Listener:
    listener = _listener(HTTP_LISTENER, options.listen_address, options.http_port)
    chain = listener.filter_chains.add()
    chain.filters.add(name="envoy.filters.network.http_connection_manager").typed_config.CopyFrom(
        pack(_connection_manager("http", HTTP_ROUTES, filters, options, local_reply))
    )
    return listener


def https_listener(
    hosts: tuple[HostIR, ...],
    options: EnvoyOptions,
    filters: list[hcm.HttpFilter],
    *,
    local_reply: hcm.LocalReplyConfig | None = None,
) -> listener_pb2.Listener:
    listener = _listener(HTTPS_LISTENER, options.listen_address, options.https_port)
    # SNI is read by the TLS inspector before a filter chain is chosen.
    listener.listener_filters.add(name="envoy.filters.listener.tls_inspector").typed_config.CopyFrom(
        pack(tls_inspector_pb2.TlsInspector())
    )
    manager = pack(_connection_manager("https", HTTPS_ROUTES, filters, options, local_reply))
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


def _listener(name: str, address: str, port: int) -> listener_pb2.Listener:
    listener = listener_pb2.Listener(name=name)
    listener.address.socket_address.address = address
    listener.address.socket_address.port_value = port
    return listener


def _ads() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads={}, resource_api_version=config_source_pb2.V3)


def _connection_manager(
    stat_prefix: str,
    routes: str,
    filters: list[hcm.HttpFilter],
    options: EnvoyOptions,
    local_reply: hcm.LocalReplyConfig | None,
) -> hcm.HttpConnectionManager:
    manager = hcm.HttpConnectionManager(stat_prefix=stat_prefix, codec_type=hcm.HttpConnectionManager.AUTO)
    manager.rds.route_config_name = routes
    manager.rds.config_source.CopyFrom(_ads())
    manager.http_filters.extend(filters)
    if local_reply is not None:  # native JWTPolicies answer as the authz service does
        manager.local_reply_config.CopyFrom(local_reply)
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
    # Virtual hosts are plain hostnames: `Host: api.example.com:8080` must select them too, and
    # so must the equivalent absolute name `api.example.com.`, or it would miss the Host's
    # redirect and the routes (and policies) of api.example.com. Stripped once, here, before any
    # filter: ext_authz and the upstream see the same host as the route match.
    manager.strip_any_host_port = True
    manager.strip_trailing_host_dot = True
    if options.access_log_path is not None:
        log = file_pb2.FileAccessLog(path=options.access_log_path)
        log.log_format.json_format.update(ACCESS_LOG_FORMAT)
        manager.access_log.add(name="envoy.access_loggers.file").typed_config.CopyFrom(pack(log))
    return manager
