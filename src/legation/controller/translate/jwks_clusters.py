"""One cluster per JWKS origin (scheme, host, port) of native policies' remote JWKS.

`jwks_<scheme>_<host>_<port>` (compiler/remote_jwks.py): STRICT_DNS, or STATIC for an address;
https with SNI (names only), ALPN http/1.1, and the server's certificate validated against
`EnvoyOptions.jwks_trusted_ca` (the system trust store) *and* the host name (or address) in its
subjectAltNames, as the authz service validates: Envoy checks no name unless told to, and without
the name any publicly trusted certificate would do. Plain http (loopback only, for local runs;
compiler/jwks_uris.py) has no transport socket.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from legation.api.v1alpha1.fields import is_ip_literal
from legation.controller.compiler.native import NativePolicy
from legation.controller.compiler.remote_jwks import RemoteKeys
from legation.controller.translate.clusters import endpoint_cluster
from legation.controller.translate.options import EnvoyOptions, pack

__all__ = ["jwks_clusters"]


def jwks_clusters(natives: tuple[NativePolicy, ...], options: EnvoyOptions) -> dict[str, cluster_pb2.Cluster]:
    """One cluster per JWKS origin of the native policies' remote providers."""
    origins = {keys.cluster: keys for native in natives for _, keys in native.remote}
    return {name: _cluster(keys, options) for name, keys in sorted(origins.items())}


def _cluster(keys: RemoteKeys, options: EnvoyOptions) -> cluster_pb2.Cluster:
    origin = keys.origin
    cluster = endpoint_cluster(keys.cluster, origin.host, origin.port, options)
    if origin.tls:
        cluster.transport_socket.name = "envoy.transport_sockets.tls"
        cluster.transport_socket.typed_config.CopyFrom(pack(_tls(origin.host, options)))
    return cluster


def _tls(host: str, options: EnvoyOptions) -> tls_pb2.UpstreamTlsContext:
    tls = tls_pb2.UpstreamTlsContext()
    address = is_ip_literal(host)
    if not address:  # SNI carries names only (RFC 6066)
        tls.sni = host
    common = tls.common_tls_context
    common.alpn_protocols.append("http/1.1")
    validation = common.validation_context
    validation.trusted_ca.CopyFrom(base_pb2.DataSource(filename=options.jwks_trusted_ca))
    san = common_pb2.SubjectAltNameMatcher
    validation.match_typed_subject_alt_names.append(
        san(san_type=san.IP_ADDRESS if address else san.DNS, matcher=string_pb2.StringMatcher(exact=host))
    )
    return tls
