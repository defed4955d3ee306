"""Remote JWKS under native enforcement: jwt_authn `remote_jwks`, one cluster per JWKS origin
(TLS with SNI and name validation), the algorithm check RBAC adds, and the URIs a hostile team may
not name (compiler/jwks_uris.py, compiler/remote_jwks.py, translate/remote_jwks.py). What Envoy
answers is tested in tests/e2e/test_native_remote_jwks.py."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from fixtures.manifests import resource

from legation.api.v1alpha1 import parse_resource
from legation.controller.compiler.compile import Tenancy, compile_resources
from legation.controller.compiler.ir import CompileResult, Origin
from legation.controller.compiler.jwks_uris import jwks_uri_problem
from legation.controller.compiler.upstreams import UpstreamRules
from legation.controller.translate.envoy import HTTP_LISTENER, HTTP_ROUTES, EnvoyOptions, translate
from legation.controller.xds.snapshot import CLUSTER, LISTENER, ROUTE
from legation.core.yamlfile import load_documents

AUTH = resource(
    "AuthService", "default", {"service": "authz.legation-system:9001"}, namespace="legation-system"
)
RESERVED = ("127.0.0.1:18000", "127.0.0.1:8877", "legation-controller.legation-system:18000")


def provider(uri: str, name: str = "corp", **jwks: Any) -> dict[str, Any]:
    return {
        "name": name,
        "issuer": f"https://{name}/",
        "audiences": ["api"],
        "jwks": {"uri": uri, **jwks},
        "algorithms": ["RS256", "ES256"],
    }


def manifests(*providers: dict[str, Any], name: str = "jwt", namespace: str = "demo") -> str:
    spec = {"providers": list(providers), "rules": [{"requires": {"anyOf": [p["name"] for p in providers]}}]}
    mapping = {"prefix": f"/{name}/", "service": "api.demo:8080", "auth": {"policy": name}}
    return resource("JWTPolicy", name, spec, namespace=namespace) + resource(
        "Mapping", name, mapping, namespace=namespace
    )


def compiled(text: str, **rules: Any) -> CompileResult:
    resources = []
    for doc in load_documents(AUTH + text, file="m.yaml"):
        parsed = parse_resource(doc)
        assert not isinstance(parsed, list)
        resources.append((Origin.of(doc), parsed))
    rules.setdefault("native_remote_jwks", True)  # what these tests are about; the default: below
    return compile_resources(resources, tenancy=Tenancy(), upstreams=UpstreamRules(**rules))


def jwt_config(result: CompileResult, options: EnvoyOptions | None = None) -> jwt.JwtAuthentication:
    listener = translate(result.ir, options or EnvoyOptions())[LISTENER][HTTP_LISTENER]
    manager = hcm.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    [found] = [f for f in manager.http_filters if f.name == "envoy.filters.http.jwt_authn"]
    config = jwt.JwtAuthentication()
    assert found.typed_config.Unpack(config)
    return config


def test_a_remote_provider_becomes_remote_jwks_with_async_fetch_cache_and_retries() -> None:
    result = compiled(
        manifests(provider("https://idp.example.com/keys?v=1", cacheDuration="90s", refetchCooldown="10s"))
    )
    assert result.status("JWTPolicy", "demo", "jwt").enforcement == "native"  # type: ignore[union-attr]
    remote = jwt_config(result).providers["demo/jwt/corp"].remote_jwks
    assert remote.http_uri.uri == "https://idp.example.com/keys?v=1"
    assert remote.http_uri.cluster == "jwks_https_idp.example.com_443"
    assert remote.http_uri.timeout.seconds == 2
    assert remote.cache_duration.seconds == 90
    assert remote.async_fetch.fast_listener is False  # listeners warm until the keys are there
    assert remote.async_fetch.failed_refetch_duration.seconds == 10
    assert remote.retry_policy.num_retries.value == 1
    backoff = remote.retry_policy.retry_back_off
    assert (backoff.base_interval.ToMilliseconds(), backoff.max_interval.ToMilliseconds()) == (500, 2000)


def test_sub_second_cache_durations_are_rounded_up_so_envoy_never_refetches_in_a_loop() -> None:
    result = compiled(manifests(provider("https://idp.example.com/k", cacheDuration="10ms")))
    assert jwt_config(result).providers["demo/jwt/corp"].remote_jwks.cache_duration.seconds == 1


def test_one_cluster_per_origin_with_sni_and_the_name_validated_against_the_trusted_cas() -> None:
    text = manifests(provider("https://idp.example.com/a"), provider("https://idp.example.com:443/b", "two"))
    text += manifests(provider("https://idp.example.com:8443/c"), name="other", namespace="team-b")
    options = EnvoyOptions(jwks_trusted_ca="/etc/test/ca.pem")
    clusters = translate(compiled(text).ir, options)[CLUSTER]
    names = sorted(n for n in clusters if n.startswith("jwks_"))
    assert names == ["jwks_https_idp.example.com_443", "jwks_https_idp.example.com_8443"]
    cluster = clusters["jwks_https_idp.example.com_443"]
    assert isinstance(cluster, cluster_pb2.Cluster) and cluster.type == cluster_pb2.Cluster.STRICT_DNS
    address = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (address.address, address.port_value) == ("idp.example.com", 443)
    tls = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(tls)
    assert tls.sni == "idp.example.com"
    validation = tls.common_tls_context.validation_context
    assert validation.trusted_ca.filename == "/etc/test/ca.pem"
    [san] = validation.match_typed_subject_alt_names
    assert san.san_type == common_pb2.SubjectAltNameMatcher.DNS and san.matcher.exact == "idp.example.com"


def test_an_address_is_validated_as_an_ip_subject_alt_name_without_sni() -> None:
    clusters = translate(compiled(manifests(provider("https://8.8.8.8/jwks"))).ir, EnvoyOptions())[CLUSTER]
    cluster = clusters["jwks_https_8.8.8.8_443"]
    assert isinstance(cluster, cluster_pb2.Cluster) and cluster.type == cluster_pb2.Cluster.STATIC
    tls = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(tls)
    assert tls.sni == ""
    [san] = tls.common_tls_context.validation_context.match_typed_subject_alt_names
    assert san.san_type == common_pb2.SubjectAltNameMatcher.IP_ADDRESS and san.matcher.exact == "8.8.8.8"


def test_plain_http_to_loopback_has_no_tls_and_needs_loopback_allowed() -> None:
    text = manifests(provider("http://127.0.0.1:9999/jwks"))
    clusters = translate(compiled(text, allow_loopback=True).ir, EnvoyOptions())[CLUSTER]
    cluster = clusters["jwks_http_127.0.0.1_9999"]
    assert isinstance(cluster, cluster_pb2.Cluster) and not cluster.HasField("transport_socket")
    refused = compiled(text)
    assert refused.status("JWTPolicy", "demo", "jwt").state == "Rejected"  # type: ignore[union-attr]


def test_rbac_refuses_algorithms_the_provider_does_not_allow_since_envoy_does_not_bind_remote_keys() -> None:
    result = compiled(manifests(provider("https://idp.example.com/k")))
    route_config = translate(result.ir, EnvoyOptions())[ROUTE][HTTP_ROUTES]
    [route] = [r for v in route_config.virtual_hosts for r in v.routes if r.name == "demo/jwt#rule0"]
    rbac = rbac_pb2.RBACPerRoute()
    assert route.typed_per_filter_config["envoy.filters.http.rbac"].Unpack(rbac)
    text = str(rbac.rbac.rules.policies["2:alg"])
    assert '"alg"' in text or 'key: "alg"' in text
    assert "RS256" in text and "ES256" in text and "PS256" not in text


# --- the attack: a hostile team points jwks.uri at the gateway's own endpoints -----------------

REFUSED = {
    "https://127.0.0.1:18000/": "gateway's own endpoint 127.0.0.1:18000",  # xDS, loopback allowed
    "https://localhost:8877/api/envoy": "gateway's own endpoint 127.0.0.1:8877",  # the controller's API
    "https://127.0.0.2:18000/": "gateway's own endpoint",
    "https://[::1]:8877/": "gateway's own endpoint",
    "https://legation-controller.legation-system.svc:18000/": "gateway's own endpoint",
    "https://169.254.169.254/latest/meta-data/": "link-local",
    "https://0.0.0.0:9901/": "unspecified",
    "https://10.0.0.7/jwks": "not a public address",
    "https://[fd00::1]/jwks": "not a public address",
    "https://[64:ff9b::a00:1]/jwks": "not a public address",
    "http://idp.example.com/jwks": "must use https",
    "https://user:pw@idp.example.com/jwks": "user:password",
    "https://idp.example.com:99999/jwks": "port",
    "https://idp_example.com/jwks": "neither a DNS name",
    "https://idp.example.com/\r\nx-evil: 1": "printable ASCII",
}


@pytest.mark.parametrize("uri", sorted(REFUSED))
def test_a_refused_jwks_uri_rejects_the_policy_and_its_mapping_with_the_reason(uri: str) -> None:
    text = manifests(provider(uri)) + manifests(provider("https://idp.example.com/k"), name="fine")
    result = compiled(text, allow_loopback=True, reserved=RESERVED)
    status = result.status("JWTPolicy", "demo", "jwt")
    assert status is not None and status.state == "Rejected"
    [problem] = status.problems
    assert problem.path == ("spec", "providers", 0, "jwks", "uri")
    assert REFUSED[uri] in problem.reason
    assert result.status("Mapping", "demo", "jwt").state == "Rejected"  # type: ignore[union-attr]
    assert not any(
        c.startswith("jwks_") and "idp.example.com" not in c
        for c in translate(result.ir, EnvoyOptions())[CLUSTER]
    )
    assert [p.key for p in result.policies] == ["demo/fine"]  # never in the feed either
    assert result.status("JWTPolicy", "demo", "fine").enforcement == "native"  # type: ignore[union-attr]


def test_loopback_is_refused_unless_allowed_and_enforcement_service_is_checked_too() -> None:
    uri = "http://127.0.0.1:9999/jwks"
    assert "--allow-loopback-upstreams" in (jwks_uri_problem(uri, UpstreamRules()) or "")
    assert jwks_uri_problem(uri, UpstreamRules(allow_loopback=True)) is None
    spec = {
        "providers": [provider(uri)],
        "rules": [{"requires": {"anyOf": ["corp"]}}],
        "enforcement": "service",
    }
    result = compiled(resource("JWTPolicy", "jwt", spec))
    assert result.status("JWTPolicy", "demo", "jwt").state == "Rejected"  # type: ignore[union-attr]


def test_public_names_and_addresses_are_accepted() -> None:
    for uri in ("https://idp.example.com/jwks", "https://8.8.8.8/k", "https://[2001:4860::8888]:8443/k"):
        assert jwks_uri_problem(uri, UpstreamRules(reserved=RESERVED)) is None, uri


def test_by_default_the_service_fetches_remote_jwks_and_the_status_says_how_to_change_it() -> None:
    # A hostile team's IdP could make Envoy buffer 32 MiB a fetch, every `cacheDuration`.
    result = compiled(manifests(provider("https://idp.example.com/k")), native_remote_jwks=False)
    status = result.status("JWTPolicy", "demo", "jwt")
    assert status is not None and status.enforcement is not None
    assert status.enforcement.startswith(
        "service (provider corp: remote JWKS are fetched by the authz service"
    )
    assert "--native-remote-jwks" in status.enforcement
    assert not result.ir.native_policies
