"""The Envoy stage (legation.controller.translate.envoy.translate): compiled manifests → xDS messages.

Pure tests: manifests are YAML text, parsed and compiled as the controller does, translated, and
the messages inspected. That Envoy accepts them is tests/e2e/test_envoy_routes.py's job."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Mapping
from typing import Any

import pytest
import re2
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from fixtures.jwks_server import jwks_json, make_rsa_key, mint
from fixtures.manifests import compile_manifests, resource, self_signed, tls_secret
from google.protobuf import json_format, struct_pb2

from legation.api.v1alpha1.fields import MAX_REGEX_PROGRAM_SIZE
from legation.authz.authorizer import Authorizer, HttpRequest
from legation.authz.jwks import StaticKeySource
from legation.authz.policy import compile_policy
from legation.authz.server import response_for
from legation.authz.tokens import TokenCache
from legation.controller.compiler.ratelimits import ABSENT, DOMAIN
from legation.controller.translate.envoy import (
    ACCESS_LOG_FORMAT,
    AUTHZ_CLUSTER,
    HTTP_LISTENER,
    HTTP_ROUTES,
    HTTPS_LISTENER,
    HTTPS_ROUTES,
    RATELIMIT_CLUSTER,
    EnvoyOptions,
    translate,
)
from legation.controller.translate.options import EXT_AUTHZ_METADATA_NAMESPACE
from legation.controller.translate.routes import covers
from legation.controller.xds.snapshot import CLUSTER, LISTENER, ROUTE, SECRET, Snapshot
from legation.ratelimit.config import load_config_texts

Resources = dict[str, dict[str, Any]]


# --- helpers -----------------------------------------------------------------------------------


def mapping(name: str, namespace: str = "demo", limit: str | None = None, **spec: Any) -> str:
    spec.setdefault("service", f"{name}.{namespace}:8080")
    if not {"prefix", "path", "regex"} & spec.keys():
        spec["prefix"] = f"/{name}/"
    annotations = {"legation.dev/rate-limit": limit} if limit is not None else None
    return resource("Mapping", name, spec, namespace=namespace, annotations=annotations)


def translated(text: str, **options: Any) -> Resources:
    # `demo` plays the platform namespace here (the `*` Host, the AuthService).
    result = compile_manifests(text, platform=frozenset({"demo", "legation-system"}))
    assert not result.rejected, [(s.id, s.reason) for s in result.rejected]
    return translate(result.ir, EnvoyOptions(**options))


def unpack(packed: Any, cls: Any) -> Any:
    message = cls()
    assert packed.Unpack(message), f"{packed.type_url} is not a {cls.DESCRIPTOR.full_name}"
    return message


def manager(listener: Any, chain: int = 0) -> Any:
    [network] = listener.filter_chains[chain].filters
    assert network.name == "envoy.filters.network.http_connection_manager"
    return unpack(network.typed_config, hcm.HttpConnectionManager)


def http_filter(listener: Any, name: str) -> Any:
    return next(f for f in manager(listener).http_filters if f.name == name)


def vhost(config: Any, name: str) -> Any:
    [found] = [v for v in config.virtual_hosts if v.name == name]
    return found


def route(config: Any, vhost_name: str, route_name: str) -> Any:
    [found] = [r for r in vhost(config, vhost_name).routes if r.name == route_name]
    return found


def route_names(config: Any, vhost_name: str) -> list[str]:
    return [r.name for r in vhost(config, vhost_name).routes]


def authz_per_route(item: Any) -> Any:
    return unpack(
        item.typed_per_filter_config["envoy.filters.http.ext_authz"], ext_authz_pb2.ExtAuthzPerRoute
    )


def encoded(resources: Resources) -> Mapping[str, Mapping[str, bytes]]:
    return Snapshot.build(resources).encoded


# --- listeners and connection manager ----------------------------------------------------------


def test_without_resources_only_the_http_listener_and_the_service_clusters() -> None:
    out = translated("")
    assert set(out[LISTENER]) == {HTTP_LISTENER}
    assert list(out[ROUTE]) == [HTTP_ROUTES] and not out[ROUTE][HTTP_ROUTES].virtual_hosts
    assert list(out[CLUSTER]) == [AUTHZ_CLUSTER, RATELIMIT_CLUSTER]
    assert out[SECRET] == {}
    listener = out[LISTENER][HTTP_LISTENER]
    address = listener.address.socket_address
    assert (address.address, address.port_value) == ("127.0.0.1", 8080)
    Snapshot.build(out)  # every message is of its type URL and carries its key as its name


def test_filter_order_method_override_cors_authz_ratelimit_router() -> None:
    listener = translated("")[LISTENER][HTTP_LISTENER]
    assert [f.name for f in manager(listener).http_filters] == [
        "legation.method_override",
        "envoy.filters.http.cors",
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.ratelimit",
        "envoy.filters.http.router",
    ]
    without = translated("", ratelimit_service=None, default_authz_service=None)
    assert [f.name for f in manager(without[LISTENER][HTTP_LISTENER]).http_filters] == [
        "legation.method_override",
        "envoy.filters.http.cors",
        "envoy.filters.http.router",
    ]
    assert without[CLUSTER] == {}


def test_connection_manager_edge_settings_and_json_access_log() -> None:
    m = manager(translated("", http_port=18080, access_log_path="/tmp/access.log")[LISTENER][HTTP_LISTENER])
    assert m.stat_prefix == "http"
    assert m.rds.route_config_name == HTTP_ROUTES and m.rds.config_source.HasField("ads")
    assert m.use_remote_address.value is True
    assert m.normalize_path.value is True and m.merge_slashes is True
    assert m.path_with_escaped_slashes_action == hcm.HttpConnectionManager.REJECT_REQUEST
    assert m.strip_any_host_port is True and m.strip_trailing_host_dot is True
    assert m.common_http_protocol_options.headers_with_underscores_action == 2  # DROP_HEADER
    [log] = m.access_log
    config = unpack(log.typed_config, file_pb2.FileAccessLog)
    assert config.path == "/tmp/access.log"
    fields = json_format.MessageToDict(config.log_format.json_format)
    assert fields == ACCESS_LOG_FORMAT
    for wanted in ("start_time", "method", "path", "authority", "status", "response_flags", "duration_ms"):
        assert wanted in fields
    assert fields["upstream_cluster"] == "%UPSTREAM_CLUSTER%"
    assert fields["request_id"] == "%REQ(X-REQUEST-ID)%" and fields["route"] == "%ROUTE_NAME%"
    assert not manager(translated("", access_log_path=None)[LISTENER][HTTP_LISTENER]).access_log


def test_ratelimit_filter_settings_and_domain_matches_the_compiler() -> None:
    assert EnvoyOptions().ratelimit_domain == DOMAIN
    assert compile_manifests(mapping("a", limit="1/s")).ratelimit[0].domain == EnvoyOptions().ratelimit_domain
    out = translated(
        "", ratelimit_service="10.0.0.7:8181", ratelimit_timeout=0.25, ratelimit_failure_mode_deny=True
    )
    config = unpack(
        http_filter(out[LISTENER][HTTP_LISTENER], "envoy.filters.http.ratelimit").typed_config,
        rate_limit_pb2.RateLimit,
    )
    assert config.domain == "legation"
    assert config.timeout.ToMilliseconds() == 250 and config.failure_mode_deny is True
    assert config.enable_x_ratelimit_headers == rate_limit_pb2.RateLimit.DRAFT_VERSION_03
    assert config.rate_limit_service.grpc_service.envoy_grpc.cluster_name == RATELIMIT_CLUSTER
    assert config.rate_limit_service.transport_api_version == 2  # V3
    cluster = out[CLUSTER][RATELIMIT_CLUSTER]
    assert cluster.type == cluster_pb2.Cluster.STATIC
    endpoint = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (endpoint.address, endpoint.port_value) == ("10.0.0.7", 8181)
    assert http2(cluster)


# --- routes ------------------------------------------------------------------------------------


def test_match_kinds_methods_headers_and_query_parameters() -> None:
    text = (
        mapping("pre", prefix="/orders/", methods=["GET"], headers={"x-canary": "true", "x-trace": "*"})
        + mapping("exact", path="/health", methods=["GET", "HEAD"], queryParameters={"v": "2", "debug": "*"})
        + mapping("rx", regex="/items/[0-9]+")
    )
    config = translated(text)[ROUTE][HTTP_ROUTES]
    pre = route(config, "*", "demo/pre").match
    assert pre.path_separated_prefix == "/orders" and not pre.prefix  # whole segments
    assert [(h.name, h.string_match.exact, h.present_match) for h in pre.headers] == [
        (":method", "GET", False),
        ("x-canary", "true", False),
        ("x-trace", "", True),
    ]
    exact = route(config, "*", "demo/exact").match
    assert exact.path == "/health"
    [method] = exact.headers
    assert method.name == ":method" and method.string_match.safe_regex.regex == "GET|HEAD"
    assert re2.fullmatch(method.string_match.safe_regex.regex, "HEAD")
    assert not re2.fullmatch(method.string_match.safe_regex.regex, "POST")
    assert [(q.name, q.string_match.exact, q.present_match) for q in exact.query_parameters] == [
        ("debug", "", True),
        ("v", "2", False),
    ]
    assert route(config, "*", "demo/rx").match.safe_regex.regex == "/items/[0-9]+"
    # most specific first, as compiled: exact path, then regex, then prefixes
    assert route_names(config, "*") == ["demo/exact", "demo/rx", "demo/pre"]


def test_the_methods_regex_stays_within_envoys_regex_program_size() -> None:
    every = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
    config = translated(mapping("all", methods=every))[ROUTE][HTTP_ROUTES]
    [method] = route(config, "*", "demo/all").match.headers
    assert re2.compile(method.string_match.safe_regex.regex).programsize <= MAX_REGEX_PROGRAM_SIZE
    assert all(re2.fullmatch(method.string_match.safe_regex.regex, m) for m in every)


def test_route_action_rewrite_timeout_retries_upgrade_and_headers() -> None:
    text = mapping(
        "api",
        service="api.demo:8080",
        rewrite="/v2/",
        timeout="3s",
        retries={"attempts": 2, "on": "5xx,reset", "perTryTimeout": "500ms"},
        allowUpgrade=["websocket"],
        addRequestHeaders={"x-env": "prod"},
        removeRequestHeaders=["x-debug"],
        addResponseHeaders={"x-served-by": "legation"},
        removeResponseHeaders=["server"],
    ) + mapping("forever", timeout="0s")
    config = translated(text)[ROUTE][HTTP_ROUTES]
    api = route(config, "*", "demo/api")
    action = api.route
    assert action.cluster == "svc_api_demo_8080"
    # `/api/x` → `/v2/x` (not `/v2//x`), `/api` → `/v2/`
    assert not action.prefix_rewrite
    assert (action.regex_rewrite.pattern.regex, action.regex_rewrite.substitution) == ("^/api/*", "/v2/")
    assert action.timeout.ToMilliseconds() == 3000
    assert action.retry_policy.retry_on == "5xx,reset"
    assert action.retry_policy.num_retries.value == 2
    assert action.retry_policy.per_try_timeout.ToMilliseconds() == 500
    assert [u.upgrade_type for u in action.upgrade_configs] == ["websocket"]
    [added] = api.request_headers_to_add
    assert (added.header.key, added.header.value) == ("x-env", "prod")
    assert added.append_action == added.OVERWRITE_IF_EXISTS_OR_ADD  # a client's copy is replaced
    assert list(api.request_headers_to_remove) == ["x-debug"]
    [added] = api.response_headers_to_add
    assert (added.header.key, added.header.value, added.append_action) == (
        "x-served-by",
        "legation",
        added.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    assert list(api.response_headers_to_remove) == ["server"]
    forever = route(config, "*", "demo/forever").route
    assert forever.HasField("timeout") and forever.timeout.ToNanoseconds() == 0  # 0 = no timeout
    assert not forever.HasField("retry_policy") and not forever.upgrade_configs
    assert not forever.prefix_rewrite


def test_canaries_are_weighted_clusters_and_zero_weight_is_a_direct_503() -> None:
    text = (
        mapping("main", prefix="/shop/", service="blue.demo:80", weight=90)
        + mapping("canary", prefix="/shop/", service="green.demo:80", weight=10)
        + mapping("off", prefix="/off/", service="blue.demo:80", weight=0)
        + mapping("half", prefix="/half/", service="blue.demo:80", weight=50)
        + mapping("half-zero", prefix="/half/", service="green.demo:80", weight=0)
    )
    out = translated(text)
    config = out[ROUTE][HTTP_ROUTES]
    [shop] = [r for r in vhost(config, "*").routes if r.match.path_separated_prefix == "/shop"]
    assert shop.name == "demo/canary"  # the primary (oldest; by name without timestamps)
    weighted = [(c.name, c.weight.value) for c in shop.route.weighted_clusters.clusters]
    assert sorted(weighted) == [("svc_blue_demo_80", 90), ("svc_green_demo_80", 10)]
    off = route(config, "*", "demo/off")
    assert not off.HasField("route") and off.direct_response.status == 503
    [half] = [r for r in vhost(config, "*").routes if r.match.path_separated_prefix == "/half"]
    assert half.route.cluster == "svc_blue_demo_80"  # a share of 0 is left out
    assert "svc_green_demo_80" in out[CLUSTER]


def test_cors_policy_per_route_with_exact_wildcard_and_any_origins() -> None:
    cors = {
        "origins": ["https://shop.example.com", "https://*.example.org", "http://*.local.test:8080"],
        "methods": ["GET", "POST"],
        "headers": ["authorization", "content-type"],
        "exposeHeaders": ["x-request-id"],
        "credentials": True,
        "maxAge": "10m",
    }
    text = mapping("web", cors=cors) + mapping("open", cors={"origins": ["*"]}) + mapping("plain")
    config = translated(text)[ROUTE][HTTP_ROUTES]
    web = route(config, "*", "demo/web")
    policy = unpack(web.typed_per_filter_config["envoy.filters.http.cors"], cors_pb2.CorsPolicy)
    assert policy.allow_methods == "GET,POST"
    assert policy.allow_headers == "authorization,content-type"
    assert policy.expose_headers == "x-request-id"
    assert policy.max_age == "600" and policy.allow_credentials.value is True
    exact, wild, ported = policy.allow_origin_string_match
    assert exact.exact == "https://shop.example.com"

    def allowed(matcher: Any, origin: str) -> bool:
        return re2.fullmatch(matcher.safe_regex.regex, origin) is not None

    assert allowed(wild, "https://a.example.org") and allowed(wild, "https://a.b.example.org")
    for origin in (
        "https://example.org",
        "http://a.example.org",
        "https://a.example.org.evil.com",
        "https://aexample.org",
    ):
        assert not allowed(wild, origin), origin
    assert allowed(ported, "http://x.local.test:8080")
    assert not allowed(ported, "http://x.local.test") and not allowed(ported, "http://x.local.test:80801")
    any_origin = unpack(
        route(config, "*", "demo/open").typed_per_filter_config["envoy.filters.http.cors"],
        cors_pb2.CorsPolicy,
    )
    [matcher] = any_origin.allow_origin_string_match
    assert allowed(matcher, "https://anything.example") and not any_origin.HasField("allow_credentials")
    assert "envoy.filters.http.cors" not in route(config, "*", "demo/plain").typed_per_filter_config


# --- virtual hosts and TLS ---------------------------------------------------------------------


def test_virtual_hosts_hold_every_route_whose_hostname_covers_them_most_specific_first() -> None:
    text = (
        mapping("exact", hostname="api.example.com", prefix="/")
        + mapping("wild", hostname="*.example.com", prefix="/w/")
        + mapping("deeper", hostname="*.eu.example.com", prefix="/eu/")
        + mapping("any", hostname="*", prefix="/health")
    )
    config = translated(text)[ROUTE][HTTP_ROUTES]
    assert [v.name for v in config.virtual_hosts] == [
        "api.example.com",
        "*.eu.example.com",
        "*.example.com",
        "*",
    ]
    for v in config.virtual_hosts:
        assert list(v.domains) == [v.name]
    assert route_names(config, "api.example.com") == ["demo/exact", "demo/wild", "demo/any"]
    assert route_names(config, "*.eu.example.com") == ["demo/deeper", "demo/wild", "demo/any"]
    assert route_names(config, "*.example.com") == ["demo/wild", "demo/any"]
    assert route_names(config, "*") == ["demo/any"]


@pytest.mark.parametrize(
    ("pattern", "hostname", "expected"),
    [
        ("*", "anything.example", True),
        ("api.example.com", "api.example.com", True),
        ("api.example.com", "www.example.com", False),
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "badexample.com", False),
        ("*.example.com", "*.eu.example.com", True),
        ("*.eu.example.com", "*.example.com", False),
        ("*.example.com", "*.example.com", True),
        ("api.example.com", "*", False),
    ],
)
def test_hostname_coverage_follows_envoy_domain_matching(pattern: str, hostname: str, expected: bool) -> None:
    assert covers(pattern, hostname) is expected


@pytest.fixture(scope="module")
def certificates() -> dict[str, tuple[str, str]]:
    return {name: self_signed(name) for name in ("api.example.com", "default.example", "shop.example.com")}


def hosts_text(certificates: dict[str, tuple[str, str]]) -> str:
    return (
        tls_secret("api-tls", *certificates["api.example.com"])
        + tls_secret("default-tls", *certificates["default.example"])
        + tls_secret("shop-tls", *certificates["shop.example.com"], namespace="shop")
        + resource("Host", "api", {"hostname": "api.example.com", "tlsSecret": {"name": "api-tls"}})
        + resource(
            "Host",
            "shop",
            {
                "hostname": "*.shop.example.com",
                "tlsSecret": {"name": "shop-tls"},
                "insecure": {"action": "Reject"},
            },
            namespace="shop",
        )
        + resource(
            "Host",
            "any",
            {"hostname": "*", "tlsSecret": {"name": "default-tls"}, "insecure": {"action": "Route"}},
        )
        + mapping("app", prefix="/app/")
        + mapping("api", hostname="api.example.com", prefix="/v1/")
    )


def test_https_listener_has_one_sni_chain_per_host_with_sds_certificates(
    certificates: dict[str, tuple[str, str]],
) -> None:
    out = translated(hosts_text(certificates), https_port=18443)
    listener = out[LISTENER][HTTPS_LISTENER]
    assert listener.address.socket_address.port_value == 18443
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    chains = {c.name: c for c in listener.filter_chains}
    assert list(chains) == ["demo/any", "shop/shop", "demo/api"]  # Hosts by hostname
    assert list(chains["demo/api"].filter_chain_match.server_names) == ["api.example.com"]
    assert list(chains["shop/shop"].filter_chain_match.server_names) == ["*.shop.example.com"]
    assert not chains["demo/any"].HasField("filter_chain_match")  # `*`: every other name, and no SNI
    for name, secret in [
        ("demo/api", "demo/api-tls"),
        ("shop/shop", "shop/shop-tls"),
        ("demo/any", "demo/default-tls"),
    ]:
        socket = chains[name].transport_socket
        assert socket.name == "envoy.transport_sockets.tls"
        tls = unpack(socket.typed_config, tls_pb2.DownstreamTlsContext)
        [sds] = tls.common_tls_context.tls_certificate_sds_secret_configs
        assert sds.name == secret and sds.sds_config.HasField("ads")
        assert list(tls.common_tls_context.alpn_protocols) == ["h2", "http/1.1"]
    for index in range(3):
        m = manager(listener, index)
        assert m.stat_prefix == "https" and m.rds.route_config_name == HTTPS_ROUTES
    assert sorted(out[SECRET]) == ["demo/api-tls", "demo/default-tls", "shop/shop-tls"]
    secret = out[SECRET]["demo/api-tls"]
    assert secret.tls_certificate.certificate_chain.inline_string == certificates["api.example.com"][0]
    assert secret.tls_certificate.private_key.inline_string == certificates["api.example.com"][1]


def test_plain_http_follows_each_hosts_insecure_action(certificates: dict[str, tuple[str, str]]) -> None:
    out = translated(hosts_text(certificates), https_port=18443)
    http, https = out[ROUTE][HTTP_ROUTES], out[ROUTE][HTTPS_ROUTES]
    # The Host's namespace's routes (its own, and its `*` ones), then what no route matches.
    api, app, redirect = vhost(http, "api.example.com").routes
    assert (api.name, app.name) == ("demo/api:redirect", "demo/app:redirect")
    assert api.redirect.https_redirect and api.match.path_separated_prefix == "/v1"
    assert redirect.name == "host:demo/api:redirect" and redirect.match.prefix == "/"
    assert redirect.redirect.https_redirect is True
    assert redirect.redirect.response_code == rc.RedirectAction.MOVED_PERMANENTLY
    assert redirect.redirect.port_redirect == 18443
    # Envoy answers itself: no authz call (ext_authz is off where a route does not configure it)
    assert "envoy.filters.http.ext_authz" not in redirect.typed_per_filter_config
    # Another namespace's Host decides nothing for demo's `*` route (it follows demo's `*` Host).
    app, reject = vhost(http, "*.shop.example.com").routes
    assert app.name == "demo/app" and app.route.cluster
    assert reject.name == "host:shop/shop:reject" and reject.direct_response.status == 403
    assert route_names(http, "*") == ["demo/app"]  # the `*` Host routes plain HTTP
    assert route_names(https, "api.example.com") == ["demo/api", "demo/app"]
    assert route_names(https, "*") == ["demo/app"]
    assert [v.name for v in https.virtual_hosts] == ["api.example.com", "*.shop.example.com", "*"]
    # behind something that maps 443 to the https port: no port in the Location
    redirect = vhost(
        translated(hosts_text(certificates), redirect_port=443)[ROUTE][HTTP_ROUTES], "api.example.com"
    )
    assert redirect.routes[0].redirect.port_redirect == 0


def test_tls_routes_hold_only_the_hostnames_a_host_covers(certificates: dict[str, tuple[str, str]]) -> None:
    # Without a `*` Host, TLS connections exist only for the Hosts' SNI names; a Host header
    # naming another hostname over such a connection must not reach that hostname's routes.
    text = (
        tls_secret("api-tls", *certificates["api.example.com"])
        + resource("Host", "api", {"hostname": "api.example.com", "tlsSecret": {"name": "api-tls"}})
        + mapping("app", prefix="/app/")
        + mapping("api", hostname="api.example.com", prefix="/v1/")
        + mapping("other", hostname="other.example.com", prefix="/other/")
    )
    out = translated(text)
    https, http = out[ROUTE][HTTPS_ROUTES], out[ROUTE][HTTP_ROUTES]
    assert [v.name for v in https.virtual_hosts] == ["api.example.com"]
    assert route_names(https, "api.example.com") == ["demo/api", "demo/app"]  # `*` routes included
    assert route_names(http, "other.example.com") == ["demo/other", "demo/app"]  # plain HTTP as before


def test_without_hosts_there_is_no_https_listener() -> None:
    out = translated(mapping("a"))
    assert HTTPS_LISTENER not in out[LISTENER] and HTTPS_ROUTES not in out[ROUTE]


# --- clusters ----------------------------------------------------------------------------------


def http2(cluster: Any) -> bool:
    key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    if key not in cluster.typed_extension_protocol_options:
        return False
    options = unpack(
        cluster.typed_extension_protocol_options[key], http_protocol_options_pb2.HttpProtocolOptions
    )
    return bool(options.explicit_http_config.HasField("http2_protocol_options"))


def test_clusters_static_dns_http2_tls_and_circuit_breakers() -> None:
    text = (
        mapping("ip", service="10.1.2.3:8080")
        + mapping("name", service="orders.demo:8080")
        + mapping("grpc", service="grpc.demo:9000", http2=True)
        + mapping("secure", service="https://pay.example.com")
        + mapping("v6", service="[::1]:8080")
        + mapping("cb", service="orders.demo:8080", circuitBreakers={"maxConnections": 10, "maxRetries": 3})
    )
    clusters = translated(text, connect_timeout=1.5)[CLUSTER]
    ip = clusters["svc_10_1_2_3_8080"]
    assert ip.type == cluster_pb2.Cluster.STATIC and ip.connect_timeout.ToMilliseconds() == 1500
    endpoint = ip.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (endpoint.address, endpoint.port_value) == ("10.1.2.3", 8080)
    assert ip.load_assignment.cluster_name == "svc_10_1_2_3_8080"
    assert not http2(ip) and not ip.HasField("transport_socket") and not ip.HasField("circuit_breakers")
    name = clusters["svc_orders_demo_8080"]
    assert name.type == cluster_pb2.Cluster.STRICT_DNS
    assert name.dns_lookup_family == cluster_pb2.Cluster.V4_PREFERRED
    assert http2(clusters["svc_grpc_demo_9000_h2"])
    secure = clusters["svc_pay_example_com_443_tls"]
    tls = unpack(secure.transport_socket.typed_config, tls_pb2.UpstreamTlsContext)
    assert tls.sni == "pay.example.com" and list(tls.common_tls_context.alpn_protocols) == ["http/1.1"]
    v6 = clusters["svc___1_8080"]
    assert v6.type == cluster_pb2.Cluster.STATIC
    assert ipaddress.ip_address(
        v6.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address
    )
    [cb] = [c for n, c in clusters.items() if "_cb" in n]
    [threshold] = cb.circuit_breakers.thresholds
    assert threshold.max_connections.value == 10 and threshold.max_retries.value == 3
    assert not threshold.HasField("max_requests") and not threshold.HasField("max_pending_requests")
    assert list(clusters) == sorted(clusters)


# --- ext_authz ---------------------------------------------------------------------------------

POLICY = resource(
    "JWTPolicy",
    "jwt",
    {
        "providers": [
            {
                "name": "corp",
                "issuer": "https://idp.example.com/",
                "jwks": {"uri": "https://idp.example.com/jwks"},
            }
        ],
        "rules": [{"requires": {"anyOf": ["corp"]}}],
        "enforcement": "service",  # these tests are about ext_authz (remote JWKS alone are native)
    },
)
AUTH_SERVICE = resource(
    "AuthService",
    "default",
    {
        "service": "authz.legation-system:9001",
        "timeout": "300ms",
        "failureModeAllow": True,
        "statusOnError": 502,
        "includeBody": {"maxBytes": 4096, "allowPartialMessage": True},
    },
    namespace="legation-system",
)


def test_ext_authz_filter_from_the_auth_service_and_policy_per_route() -> None:
    text = AUTH_SERVICE + POLICY + mapping("private", auth={"policy": "jwt"}) + mapping("public")
    out = translated(text)
    config = unpack(
        http_filter(out[LISTENER][HTTP_LISTENER], "envoy.filters.http.ext_authz").typed_config,
        ext_authz_pb2.ExtAuthz,
    )
    assert config.grpc_service.envoy_grpc.cluster_name == "svc_authz_legation-system_9001_h2"
    assert config.grpc_service.timeout.ToMilliseconds() == 300
    assert config.transport_api_version == 2  # V3
    assert config.failure_mode_allow is True and config.status_on_error.code == 502
    assert config.with_request_body.max_request_bytes == 4096
    assert config.with_request_body.allow_partial_message is True
    # Off by default: only a route that names a policy runs it.
    assert http_filter(out[LISTENER][HTTP_LISTENER], "envoy.filters.http.ext_authz").disabled is True
    assert http2(out[CLUSTER]["svc_authz_legation-system_9001_h2"])
    assert AUTHZ_CLUSTER not in out[CLUSTER]  # the AuthService replaces the default
    routes = out[ROUTE][HTTP_ROUTES]
    private = authz_per_route(route(routes, "*", "demo/private"))
    assert dict(private.check_settings.context_extensions) == {"legation.policy": "demo/jwt"}
    assert not private.disabled
    assert "envoy.filters.http.ext_authz" not in route(routes, "*", "demo/public").typed_per_filter_config


def test_method_override_headers_are_removed_first_unless_the_route_allows_them() -> None:
    text = AUTH_SERVICE + POLICY + mapping("private", auth={"policy": "jwt"}, allowMethodOverride=True)
    out = translated(text + mapping("public", allowMethodOverride=True) + mapping("plain"))
    removal = unpack(
        http_filter(out[LISTENER][HTTP_LISTENER], "legation.method_override").typed_config,
        header_mutation_pb2.HeaderMutation,
    )
    assert [m.remove for m in removal.mutations.request_mutations] == [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ]
    routes = out[ROUTE][HTTP_ROUTES]
    for name in ("demo/private", "demo/public"):
        opt_in = route(routes, "*", name).typed_per_filter_config["legation.method_override"]
        assert unpack(opt_in, rc.FilterConfig).disabled is True
    assert "legation.method_override" not in route(routes, "*", "demo/plain").typed_per_filter_config
    private = authz_per_route(route(routes, "*", "demo/private")).check_settings.context_extensions
    assert dict(private) == {"legation.policy": "demo/jwt", "legation.methodOverride": "allow"}


def test_default_authz_service_when_there_is_no_auth_service() -> None:
    out = translated(
        POLICY + mapping("private", auth={"policy": "jwt"}), default_authz_service="127.0.0.1:9911"
    )
    config = unpack(
        http_filter(out[LISTENER][HTTP_LISTENER], "envoy.filters.http.ext_authz").typed_config,
        ext_authz_pb2.ExtAuthz,
    )
    assert config.grpc_service.envoy_grpc.cluster_name == AUTHZ_CLUSTER
    assert config.failure_mode_allow is False and config.status_on_error.code == 503
    assert config.grpc_service.timeout.ToMilliseconds() == 200
    assert not config.HasField("with_request_body")
    cluster = out[CLUSTER][AUTHZ_CLUSTER]
    assert http2(cluster)
    assert (
        cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value
        == 9911
    )
    private = route(out[ROUTE][HTTP_ROUTES], "*", "demo/private")
    assert (
        private.route.cluster
        and authz_per_route(private).check_settings.context_extensions["legation.policy"] == "demo/jwt"
    )


def test_without_any_authz_service_a_route_with_a_policy_fails_closed() -> None:
    out = translated(
        POLICY + mapping("private", auth={"policy": "jwt"}) + mapping("public"), default_authz_service=None
    )
    names = [f.name for f in manager(out[LISTENER][HTTP_LISTENER]).http_filters]
    assert "envoy.filters.http.ext_authz" not in names
    routes = out[ROUTE][HTTP_ROUTES]
    private = route(routes, "*", "demo/private")
    assert not private.HasField("route") and private.direct_response.status == 503
    public = route(routes, "*", "demo/public")
    assert public.route.cluster == "svc_public_demo_8080"
    assert "envoy.filters.http.ext_authz" not in public.typed_per_filter_config


# --- rate limits -------------------------------------------------------------------------------


def test_rate_limit_actions_per_annotation_key() -> None:
    text = mapping(
        "api", limit="100/m per ip; 1000/h per claim:org.team; 20/s; 5/s per header:x-api-key,path,method"
    )
    action = route(translated(text)[ROUTE][HTTP_ROUTES], "*", "demo/api").route
    limits = [[json_format.MessageToDict(a) for a in limit.actions] for limit in action.rate_limits]
    head = {"genericKey": {"descriptorKey": "mapping", "descriptorValue": "demo/api"}}
    claim = {
        "metadata": {
            "descriptorKey": "claim_org.team",
            "metadataKey": {"key": "envoy.filters.http.ext_authz", "path": [{"key": "org.team"}]},
        }
    }
    header = {"requestHeaders": {"headerName": "x-api-key", "descriptorKey": "header_x-api-key"}}
    no_header = {
        "headerValueMatch": {
            "descriptorKey": "header_x-api-key",
            "descriptorValue": ABSENT,
            "expectMatch": False,
            "headers": [{"name": "x-api-key", "presentMatch": True}],
        }
    }
    path = {"requestHeaders": {"headerName": ":path", "descriptorKey": "path"}}
    method = {"requestHeaders": {"headerName": ":method", "descriptorKey": "method"}}
    assert limits == [
        [head, {"remoteAddress": {}}],
        [head, {"metadata": {**claim["metadata"], "defaultValue": ABSENT}}],
        [head],
        [head, header, path, method],  # with the header
        [head, no_header, path, method],  # without it: one shared bucket, not a way out
    ]
    assert action.rate_limits[1].actions[1].metadata.source == rc.RateLimit.Action.MetaData.DYNAMIC
    assert not route(translated(mapping("free"))[ROUTE][HTTP_ROUTES], "*", "demo/free").route.rate_limits


def envoy_descriptors(
    route_action: Any, *, client: str, headers: Mapping[str, str], metadata: Mapping[str, Any]
) -> list[list[tuple[str, str]]]:
    """The descriptors Envoy builds from a route's rate_limits for one request (a model of Envoy's
    actions: a missing header, or metadata value without default_value, drops that whole
    descriptor; header_value_match appends its value when the match is as expected)."""
    found = []
    for limit in route_action.rate_limits:
        entries: list[tuple[str, str]] | None = []
        for action in limit.actions:
            kind = action.WhichOneof("action_specifier")
            if kind == "generic_key":
                entries.append(
                    (action.generic_key.descriptor_key or "generic_key", action.generic_key.descriptor_value)
                )
            elif kind == "remote_address":
                entries.append(("remote_address", client))
            elif kind == "request_headers":
                value = headers.get(action.request_headers.header_name)
                if value is None:
                    entries = None
                    break
                entries.append((action.request_headers.descriptor_key, value))
            elif kind == "header_value_match":
                match = action.header_value_match
                assert all(h.present_match for h in match.headers)
                matched = all(h.name in headers for h in match.headers)
                if matched != match.expect_match.value:
                    entries = None
                    break
                entries.append((match.descriptor_key or "header_match", match.descriptor_value))
            elif kind == "metadata":
                assert action.metadata.source == rc.RateLimit.Action.MetaData.DYNAMIC
                node: Any = metadata.get(action.metadata.metadata_key.key)
                for segment in action.metadata.metadata_key.path:
                    node = node.get(segment.key) if isinstance(node, dict) else None
                if not isinstance(node, str):
                    node = action.metadata.default_value or None
                if node is None:
                    entries = None
                    break
                entries.append((action.metadata.descriptor_key, node))
            else:
                raise AssertionError(f"unexpected action {kind}")
        if entries is not None:
            found.append(entries)
    return found


def test_descriptors_envoy_sends_match_the_compiled_rate_limit_config() -> None:
    """The route's actions (Envoy side) and the descriptor trees (rate limit service side) come
    from the same IR; the claim value comes from the real authz service's CheckResponse."""
    key = make_rsa_key("k1")
    policy = resource(
        "JWTPolicy",
        "jwt",
        {
            "providers": [{"name": "corp", "issuer": "https://idp/", "jwks": {"inline": jwks_json([key])}}],
            "rules": [{"requires": {"anyOf": ["corp"]}}],
            "metadataClaims": ["org.team", "plan"],
            "enforcement": "service",
        },
    )
    annotation = "100/m per ip; 1000/h per claim:org.team; 20/s; 50/s per ip; 5/s per header:x-api-key,method"
    result = compile_manifests(
        AUTH_SERVICE + policy + mapping("api", auth={"policy": "jwt"}, limit=annotation)
    )
    assert not result.rejected
    action = route(translate(result.ir, EnvoyOptions())[ROUTE][HTTP_ROUTES], "*", "demo/api").route

    # the authz service's answer for a token with a nested claim, as Envoy receives it
    [jwt_policy] = result.policies
    compiled = compile_policy(
        jwt_policy, lambda pid, p: StaticKeySource(data=p.jwks.inline, algorithms=p.algorithms, source=pid)
    )
    authorizer = Authorizer({compiled.key: compiled}, default_policy=None, cache=TokenCache())
    token = mint(key, {"iss": "https://idp/", "sub": "alice", "org": {"team": "orders"}})
    request = HttpRequest(
        method="GET",
        host="api",
        path="/api/x",
        headers={"authorization": f"Bearer {token}"},
        policy="demo/jwt",
    )
    verdict = asyncio.run(authorizer.check(request))
    assert verdict.allow
    dynamic = response_for(verdict).dynamic_metadata
    assert isinstance(dynamic, struct_pb2.Struct)
    metadata = {EXT_AUTHZ_METADATA_NAMESPACE: json_format.MessageToDict(dynamic)}

    [domain] = result.ratelimit
    feed = yaml.safe_dump(domain.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    rules = load_config_texts([("legation.yaml", feed)]).rules
    descriptors = envoy_descriptors(
        action,
        client="192.0.2.7",
        headers={"x-api-key": "k", ":method": "GET", ":path": "/api/x"},
        metadata=metadata,
    )
    assert descriptors == [
        [("mapping", "demo/api"), ("remote_address", "192.0.2.7")],
        [("mapping", "demo/api"), ("claim_org.team", "orders")],
        [("mapping", "demo/api")],
        [("mapping", "demo/api"), ("header_x-api-key", "k"), ("method", "GET")],
    ]
    found = []
    for entries in descriptors:
        limits = rules.lookup(DOMAIN, entries)
        assert limits, f"no limit for the descriptor Envoy sends: {entries}"
        found.append(sorted((limit.requests, limit.window_ms // 1000) for limit in limits))
    # 100/m and 50/s share the `per ip` descriptor; every annotation rule is reached exactly once
    assert found == [[(50, 1), (100, 60)], [(1000, 3600)], [(20, 1)], [(5, 1)]]
    # Without the claim or the header, the request is still counted, in one bucket per rule.
    anonymous = envoy_descriptors(action, client="192.0.2.7", headers={":method": "GET"}, metadata={})
    assert anonymous == [
        [("mapping", "demo/api"), ("remote_address", "192.0.2.7")],
        [("mapping", "demo/api"), ("claim_org.team", ABSENT)],
        [("mapping", "demo/api")],
        [("mapping", "demo/api"), ("header_x-api-key", ABSENT), ("method", "GET")],
    ]
    assert [sorted(limit.requests for limit in rules.lookup(DOMAIN, d) or ()) for d in anonymous] == [
        [50, 100],
        [1000],
        [20],
        [5],
    ]


# --- stability ---------------------------------------------------------------------------------


def changed(before: Resources, after: Resources) -> dict[str, set[str]]:
    a, b = encoded(before), encoded(after)
    diff: dict[str, set[str]] = {}
    for type_url in set(a) | set(b):
        names = {
            n
            for n in set(a.get(type_url, {})) | set(b.get(type_url, {}))
            if a.get(type_url, {}).get(n) != b.get(type_url, {}).get(n)
        }
        if names:
            diff[type_url] = names
    return diff


def gateway(extra: str, timeout: str = "5s", certificates: dict[str, tuple[str, str]] | None = None) -> str:
    base = (
        AUTH_SERVICE
        + POLICY
        + mapping("orders", timeout=timeout, limit="10/s per ip", auth={"policy": "jwt"})
    )
    base += mapping("users", hostname="api.example.com") + mapping("shop", service="shop.demo:80")
    return base + extra


def test_changing_one_mapping_changes_only_the_route_configurations(
    certificates: dict[str, tuple[str, str]],
) -> None:
    hosts = hosts_text(certificates)
    before = translated(gateway(hosts))
    assert changed(before, translated(gateway(hosts))) == {}
    assert changed(before, translated(gateway(hosts, timeout="7s"))) == {ROUTE: {HTTP_ROUTES, HTTPS_ROUTES}}
    # a Mapping whose host redirects plain HTTP: its redirect carries its match
    edited = gateway(hosts).replace("prefix: /users/", "prefix: /people/")
    assert changed(before, translated(edited)) == {ROUTE: {HTTP_ROUTES, HTTPS_ROUTES}}
    # a new Mapping to an existing upstream; then one with a new upstream (its cluster appears)
    assert changed(before, translated(gateway(hosts + mapping("more", service="shop.demo:80")))) == {
        ROUTE: {HTTP_ROUTES, HTTPS_ROUTES}
    }
    assert changed(before, translated(gateway(hosts + mapping("new")))) == {
        ROUTE: {HTTP_ROUTES, HTTPS_ROUTES},
        CLUSTER: {"svc_new_demo_8080"},
    }


def test_translation_is_deterministic_whatever_the_document_order(
    certificates: dict[str, tuple[str, str]],
) -> None:
    docs = [d for d in re.split(r"(?m)^---\n", gateway(hosts_text(certificates))) if d.strip()]
    first = Snapshot.build(translated("---\n" + "---\n".join(docs)))
    second = Snapshot.build(translated("---\n" + "---\n".join(reversed(docs))))
    assert first.version == second.version
    assert first.encoded == second.encoded
