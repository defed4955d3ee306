"""What the authz bench sends: an RS256 key, tokens, the JWTPolicy, CheckRequests, Envoy configs.

Everything is generated per run (a fresh RSA 2048 key), nothing is read from ``tests/``. The
policy and Envoy's native ``jwt_authn`` provider use the same issuer, audience, keys (the JWKS
inline in both) and token location, so both paths accept exactly the same tokens.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from envoy.service.auth.v3 import external_auth_pb2
from jwt.algorithms import RSAAlgorithm

AUTHZ_PATH = "/envoy.service.auth.v3.Authorization/Check"
ISSUER = "https://idp.bench.example/"
AUDIENCE = "orders"
KID = "bench-rsa-1"
NAMESPACE, POLICY_NAME = "bench", "orders"
POLICY = f"{NAMESPACE}/{POLICY_NAME}"
REQUEST_PATH = "/orders/items?page=2"
REQUEST_HOST = "api.bench.example"
TEAM = "orders"


@dataclass(frozen=True)
class Keys:
    private_key: rsa.RSAPrivateKey
    kid: str = KID

    @staticmethod
    def generate() -> Keys:
        return Keys(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwks_json(self) -> str:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return json.dumps({"keys": [jwk]}, separators=(",", ":"))

    def token(self, i: int, *, lifetime: float = 3 * 3600, team: str = TEAM) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": [AUDIENCE],
            "sub": subject(i),
            "scope": "orders:read orders:write",
            "org": {"team": team},
            "plan": "pro",
            "iat": now,
            "nbf": now - 5,
            "exp": now + int(lifetime),
            "jti": f"bench-{i}",
        }
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": self.kid})


def subject(i: int) -> str:
    return f"user-{i:05d}"


def policy_document(jwks_json: str) -> dict[str, Any]:
    """A JWTPolicy as a team would apply it: RS256 provider with inline keys, a claims rule."""
    return {
        "apiVersion": "legation.dev/v1alpha1",
        "kind": "JWTPolicy",
        "metadata": {"name": POLICY_NAME, "namespace": NAMESPACE},
        "spec": {
            "providers": [
                {
                    "name": "corp",
                    "issuer": ISSUER,
                    "audiences": [AUDIENCE],
                    "jwks": {"inline": jwks_json},
                    "algorithms": ["RS256"],
                    "tokenSources": [{"header": "Authorization", "prefix": "Bearer "}],
                }
            ],
            "rules": [
                {"match": {"pathPrefix": "/orders/public"}, "public": True},
                {
                    "match": {"pathPrefix": "/orders", "methods": ["GET", "HEAD"]},
                    "requires": {"anyOf": ["corp"]},
                    "claims": {"scope": ["orders:read"], "org.team": [TEAM]},
                },
                {
                    "match": {"pathPrefix": "/orders"},
                    "requires": {"anyOf": ["corp"]},
                    "claims": {"scope": ["orders:write"], "org.team": [TEAM]},
                },
            ],
            "claimsToHeaders": {"sub": "x-user-id", "org.team": "x-team"},
            "metadataClaims": ["sub", "plan"],
        },
    }


def check_request(token: str | None) -> bytes:
    """A serialized CheckRequest shaped like the ones Envoy's ext_authz filter sends."""
    req = external_auth_pb2.CheckRequest()
    attrs = req.attributes
    attrs.source.address.socket_address.address = "127.0.0.1"
    attrs.source.address.socket_address.port_value = 50_000
    attrs.destination.address.socket_address.address = "127.0.0.1"
    attrs.destination.address.socket_address.port_value = 8080
    http = attrs.request.http
    request_id = str(uuid.uuid4())
    http.id = "1234567890"
    http.method = "GET"
    http.path = REQUEST_PATH
    http.host = REQUEST_HOST
    http.scheme = "http"
    http.protocol = "HTTP/2"
    http.headers.update(
        {
            ":method": "GET",
            ":path": REQUEST_PATH,
            ":authority": REQUEST_HOST,
            ":scheme": "http",
            "accept": "application/json",
            "user-agent": "h2load nghttp2/1.x",
            "x-forwarded-proto": "http",
            "x-request-id": request_id,
        }
    )
    if token is not None:
        http.headers["authorization"] = f"Bearer {token}"
    attrs.context_extensions["legation.policy"] = POLICY
    return bytes(req.SerializeToString())


# ---------------------------------------------------------------------------------------------
# Envoy

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
_EXT_AUTHZ_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
_JWT_AUTHN = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_H2_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def envoy_config(
    mode: str, *, port: int, admin_port: int, authz_port: int | None = None, jwks_json: str | None = None
) -> dict[str, Any]:
    """Envoy, one listener answering 200 with a ``direct_response``, behind one auth filter.

    ``mode``: ``ext_authz`` (gRPC ext_authz to ``authz_port``, ``failure_mode_allow: false``,
    the policy named in the route's ``context_extensions``), ``jwt_authn`` (native, the same
    issuer/audience/keys inline, ``forward: false``, ``sub`` and ``org.team`` copied to the same
    identity headers) or ``none``. The route echoes the identity headers the filter set
    (``x-seen-user``/``x-seen-team``), so a check can tell the filter really ran.
    """
    route: dict[str, Any] = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": "ok\n"}},
        "response_headers_to_add": [
            {"header": {"key": "x-seen-user", "value": "%REQ(x-user-id)%"}},
            {"header": {"key": "x-seen-team", "value": "%REQ(x-team)%"}},
            {"header": {"key": "x-seen-authorization", "value": "%REQ(authorization)%"}},
        ],
    }
    filters: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    if mode == "ext_authz":
        assert authz_port is not None
        route["typed_per_filter_config"] = {
            "envoy.filters.http.ext_authz": {
                "@type": _EXT_AUTHZ_ROUTE,
                "check_settings": {"context_extensions": {"legation.policy": POLICY}},
            }
        }
        filters.append(
            {
                "name": "envoy.filters.http.ext_authz",
                "typed_config": {
                    "@type": _EXT_AUTHZ,
                    "transport_api_version": "V3",
                    "failure_mode_allow": False,
                    "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "2s"},
                },
            }
        )
        clusters.append(
            {
                "name": "authz",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": _H2_OPTIONS,
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                },
                "load_assignment": {
                    "cluster_name": "authz",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "127.0.0.1",
                                                "port_value": authz_port,
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            }
        )
    elif mode == "jwt_authn":
        assert jwks_json is not None
        filters.append(
            {
                "name": "envoy.filters.http.jwt_authn",
                "typed_config": {
                    "@type": _JWT_AUTHN,
                    "providers": {
                        "corp": {
                            "issuer": ISSUER,
                            "audiences": [AUDIENCE],
                            "local_jwks": {"inline_string": jwks_json},
                            "from_headers": [{"name": "Authorization", "value_prefix": "Bearer "}],
                            "forward": False,
                            "claim_to_headers": [
                                {"header_name": "x-user-id", "claim_name": "sub"},
                                {"header_name": "x-team", "claim_name": "org.team"},
                            ],
                        }
                    },
                    "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}],
                },
            }
        )
    elif mode != "none":
        raise ValueError(f"unknown Envoy mode {mode!r}")
    filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}})
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "front",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": _HCM,
                                        "stat_prefix": "front",
                                        "codec_type": "AUTO",
                                        "route_config": {
                                            "name": "front",
                                            "virtual_hosts": [
                                                {"name": "all", "domains": ["*"], "routes": [route]}
                                            ],
                                        },
                                        "http_filters": filters,
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }
