"""The HTTP filter chain, in order: method-override header removal (before anything decides on
the method), CORS (answers preflights before anyone asks for a token), native JWTPolicies'
identity-header removal, jwt_authn and RBAC (translate/jwt.py), ext_authz (when an authz
service is known), ratelimit (after ext_authz, whose dynamic metadata carries the claims that
`per claim:` limits count), router.

CORS, ext_authz and the native policies' filters are off by default (`HttpFilter.disabled`):
Envoy adds them to a request's chain only when its route configures them, which is also where
they have something to do. A filter that is on and told per route to do nothing still costs its
instantiation and lookups: profiled with `bench native`, ~3.5 µs of the ~35 µs of Envoy CPU a
route without auth takes, and as much on a native route (its ext_authz and CORS)."""

from __future__ import annotations

from typing import Any

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.config.ratelimit.v3 import rls_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from google.protobuf.message import Message

from legation.api.v1alpha1 import AuthServiceSpec
from legation.api.v1alpha1.mapping import METHOD_OVERRIDE_HEADERS
from legation.controller.compiler.ir import IR
from legation.controller.translate.options import (
    AUTHZ_CLUSTER,
    CORS_FILTER,
    EXT_AUTHZ_FILTER,
    METHOD_OVERRIDE_FILTER,
    RATELIMIT_CLUSTER,
    RATELIMIT_FILTER,
    ROUTER_FILTER,
    EnvoyOptions,
    duration,
    pack,
)

__all__ = ["auth_service", "http_filters"]


def auth_service(ir: IR, options: EnvoyOptions) -> tuple[str, AuthServiceSpec] | None:
    """(cluster, settings) of the ext_authz service, or None when there is none."""
    if ir.auth_service is not None:
        return ir.auth_service.cluster, ir.auth_service.spec
    if options.default_authz_service is not None:
        return AUTHZ_CLUSTER, AuthServiceSpec.model_validate({"service": options.default_authz_service})
    return None


def http_filters(
    auth: tuple[str, AuthServiceSpec] | None, options: EnvoyOptions, *, native: list[Any] | None = None
) -> list[Any]:
    """`native`: the filters of native JWTPolicies (translate/jwt.py), before ext_authz."""
    filters = [
        _filter(METHOD_OVERRIDE_FILTER, _method_override()),
        _filter(CORS_FILTER, cors_pb2.Cors(), disabled=True),
    ]
    filters += native or []
    if auth is not None:
        filters.append(_filter(EXT_AUTHZ_FILTER, _ext_authz(*auth), disabled=True))
    if options.ratelimit_service is not None:
        filters.append(_filter(RATELIMIT_FILTER, _ratelimit(options)))
    filters.append(_filter(ROUTER_FILTER, router_pb2.Router()))
    return filters


def _filter(name: str, config: Message, *, disabled: bool = False) -> hcm.HttpFilter:
    """`disabled`: only on routes that configure the filter (a route without authorization then
    never runs ext_authz, which is what route translation means by leaving it out)."""
    return hcm.HttpFilter(name=name, typed_config=pack(config), disabled=disabled)


def _method_override() -> header_mutation_pb2.HeaderMutation:
    # An HTTP filter, not the connection manager's early header mutation (which runs before a
    # route is chosen): a route can opt out of a filter, and ext_authz and the router come after,
    # so neither authorization nor the upstream sees the headers. The router's
    # request_headers_to_remove would be too late: it applies after ext_authz.
    config = header_mutation_pb2.HeaderMutation()
    config.mutations.request_mutations.extend(
        mutation_rules_pb2.HeaderMutation(remove=name) for name in METHOD_OVERRIDE_HEADERS
    )
    return config


def _ext_authz(cluster: str, spec: AuthServiceSpec) -> ext_authz_pb2.ExtAuthz:
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


def _ratelimit(options: EnvoyOptions) -> rate_limit_pb2.RateLimit:
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
