"""What every translation module shares: the names of what the translator generates, how the
gateway is wired (`EnvoyOptions`), and packing protobuf values."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from legation.controller.compiler.ratelimits import DOMAIN

__all__ = [
    "ACCESS_LOG_FORMAT",
    "AUTHZ_CLUSTER",
    "CORS_FILTER",
    "EXT_AUTHZ_FILTER",
    "EXT_AUTHZ_METADATA_NAMESPACE",
    "HTTPS_LISTENER",
    "HTTPS_ROUTES",
    "HTTP_LISTENER",
    "HTTP_PROTOCOL_OPTIONS",
    "HTTP_ROUTES",
    "METHOD_OVERRIDE_CONTEXT_KEY",
    "METHOD_OVERRIDE_FILTER",
    "POLICY_CONTEXT_KEY",
    "RATELIMIT_CLUSTER",
    "RATELIMIT_FILTER",
    "ROUTER_FILTER",
    "EnvoyOptions",
    "duration",
    "pack",
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
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

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
    jwks_trusted_ca: str = "/etc/ssl/certs/ca-certificates.crt"
    """The CA bundle (a file on Envoy's machine) Envoy validates https JWKS servers against: the
    system trust store of the official Envoy image, as the authz service uses its own."""


EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
CORS_FILTER = "envoy.filters.http.cors"
EXT_AUTHZ_METADATA_NAMESPACE = "envoy.filters.http.ext_authz"
"""Where Envoy files the ext_authz CheckResponse's dynamic_metadata (the filter's name; the
filter is given exactly this name so that both agree)."""
POLICY_CONTEXT_KEY = "legation.policy"
"""The context extension the authz service reads the route's JWTPolicy from."""
METHOD_OVERRIDE_FILTER = "legation.method_override"
"""The header_mutation filter that removes method-override headers (disabled per route by
`allowMethodOverride`). Its own name, not the extension's: the name is what routes refer to."""
METHOD_OVERRIDE_CONTEXT_KEY = "legation.methodOverride"
"""Set to "allow" on routes that pass method-override headers: the authz service then checks the
request's rules for the overriding methods too (and refuses such headers on other routes)."""


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d
