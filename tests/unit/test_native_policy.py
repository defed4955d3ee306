"""Native enforcement: which JWTPolicies Envoy enforces itself, why others stay on the service,
and the shape of the routes a native policy's Mapping becomes (compiler/native.py,
translate/jwt.py, translate/native_routes.py). What Envoy answers is tested in
tests/e2e/test_native_differential.py."""

from __future__ import annotations

import json
from typing import Any

from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.extensions.rate_limit_descriptors.expr.v3 import expr_pb2
from fixtures.jwks_server import jwks_json, make_rsa_key
from fixtures.manifests import compile_manifests, resource

from legation.controller.compiler.native import bind_jwks
from legation.controller.translate.envoy import HTTP_LISTENER, HTTP_ROUTES, EnvoyOptions, translate
from legation.controller.xds.snapshot import LISTENER, ROUTE

KEY = make_rsa_key("k1")
AUTH = resource(
    "AuthService", "default", {"service": "authz.legation-system:9001"}, namespace="legation-system"
)


def policy(**spec: Any) -> str:
    spec.setdefault(
        "providers", [{"name": "corp", "issuer": "https://idp/", "jwks": {"inline": jwks_json([KEY])}}]
    )
    spec.setdefault("rules", [{"requires": {"anyOf": ["corp"]}}])
    return resource("JWTPolicy", "jwt", spec)


def mapping(**spec: Any) -> str:
    spec = {"prefix": "/api/", "service": "api.demo:8080", "auth": {"policy": "jwt"}, **spec}
    return resource("Mapping", "api", spec)


def routes(text: str) -> list[rc.Route]:
    result = compile_manifests(AUTH + text)
    assert not result.rejected, [(s.id, s.reason) for s in result.rejected]
    config = translate(result.ir, EnvoyOptions())[ROUTE][HTTP_ROUTES]
    return [r for v in config.virtual_hosts for r in v.routes]


def unpack(route: rc.Route, name: str, cls: Any) -> Any:
    message = cls()
    assert route.typed_per_filter_config[name].Unpack(message)
    return message


def enforcement(text: str) -> str | None:
    status = compile_manifests(AUTH + text).status("JWTPolicy", "demo", "jwt")
    assert status is not None
    return status.enforcement


def test_inline_keys_are_native_and_the_status_says_so() -> None:
    assert enforcement(policy() + mapping()) == "native"


def test_remote_jwks_stay_on_the_service_unless_the_platform_lets_envoy_fetch_them() -> None:
    remote = [{"name": "corp", "issuer": "https://idp/", "jwks": {"uri": "https://idp/jwks.json"}}]
    assert (enforcement(policy(providers=remote) + mapping()) or "").startswith(
        "service (provider corp: remote JWKS are fetched by the authz service"
    )
    text = policy(providers=remote, enforcement="service") + mapping()
    assert enforcement(text) == "service (enforcement: service)"
    [route] = routes(text)
    per_route = unpack(route, "envoy.filters.http.ext_authz", ext_authz_pb2.ExtAuthzPerRoute)
    assert per_route.check_settings.context_extensions["legation.policy"] == "demo/jwt"


def test_enforcement_service_forces_the_service() -> None:
    assert enforcement(policy(enforcement="service") + mapping()) == "service (enforcement: service)"


def test_two_token_sources_stay_on_the_service() -> None:
    sources = [{"header": "Authorization", "prefix": "Bearer "}, {"cookie": "session"}]
    providers = [
        {
            "name": "corp",
            "issuer": "https://i/",
            "jwks": {"inline": jwks_json([KEY])},
            "tokenSources": sources,
        }
    ]
    assert "several token sources" in (enforcement(policy(providers=providers) + mapping()) or "")


def test_rules_become_routes_in_order_then_a_deny_route() -> None:
    rules = [
        {"match": {"pathPrefix": "/api/public"}, "public": True},
        {"match": {"pathPrefix": "/other"}, "public": True},  # never intersects /api/: no route
        {
            "match": {"pathPrefix": "/api/", "methods": ["GET"]},
            "requires": {"anyOf": ["corp"]},
            "claims": {"scope": ["read"]},
        },
    ]
    out = routes(policy(rules=rules, claimsToHeaders={"sub": "x-user-id"}) + mapping())
    assert [r.name for r in out] == ["demo/api#rule0", "demo/api#rule2", "demo/api#norule"]
    public, guarded, deny = out
    assert public.match.path_separated_prefix == "/api/public"  # whole segments, as the service
    assert "envoy.filters.http.jwt_authn" not in public.typed_per_filter_config  # off by default
    assert (
        unpack(guarded, "envoy.filters.http.jwt_authn", jwt.PerRouteConfig).requirement_name == "demo/jwt#2"
    )
    assert [h.string_match.exact for h in guarded.match.headers if h.name == ":method"] == ["GET"]
    rbac = unpack(guarded, "envoy.filters.http.rbac", rbac_pb2.RBACPerRoute)
    # in the order Envoy tries them (by name), which is the service's order of checks
    assert sorted(rbac.rbac.rules.policies) == [
        "1:crit",
        "3:iat",
        "4:claim:00:scope",
        "5:unforwardable:00:sub",
    ]  # no `iss` test: jwt_authn compared it with the provider's plain issuer
    checks = unpack(guarded, "legation.token_checks", rbac_pb2.RBACPerRoute)
    assert sorted(checks.rbac.rules.policies) == ["token:jwe", "token:too-large"]
    assert not public.typed_per_filter_config.get("legation.token_checks")
    for route in out:  # never a call to the authz service (its filter is off by default)
        assert "envoy.filters.http.ext_authz" not in route.typed_per_filter_config
    assert deny.direct_response.status == 403 and deny.match.path_separated_prefix == "/api"
    assert json.loads(deny.direct_response.body.inline_string) == {
        "error": "forbidden",
        "reason": "no rule matches",
    }


def test_an_issuer_with_a_control_character_keeps_its_iss_test() -> None:
    providers = [{"name": "corp", "issuer": "https://idp/\u0007", "jwks": {"inline": jwks_json([KEY])}}]
    [only] = routes(policy(providers=providers) + mapping())
    rbac = unpack(only, "envoy.filters.http.rbac", rbac_pb2.RBACPerRoute)
    assert "5:unforwardable:01:iss" in rbac.rbac.rules.policies


def test_the_native_filters_run_only_on_the_routes_that_configure_them() -> None:
    result = compile_manifests(AUTH + policy() + mapping())
    listener = translate(result.ir, EnvoyOptions())[LISTENER][HTTP_LISTENER]
    manager = hcm.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    off = {f.name for f in manager.http_filters if f.disabled}
    # A filter that is on costs every request, even told per route to do nothing (bench native).
    assert off == {
        "envoy.filters.http.cors",
        "legation.identity_headers",
        "legation.token_checks",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.rbac",
        "legation.query_token_removal",
        "envoy.filters.http.ext_authz",
    }
    assert [f.name for f in manager.http_filters if not f.disabled] == [
        "legation.method_override",
        "envoy.filters.http.ratelimit",  # a route without rate_limits asks it nothing
        "envoy.filters.http.router",
    ]


def descriptors(route: rc.Route) -> list[list[tuple[str, str]]]:
    """Per rate limit: (descriptor key, what its value reads) for each claim action."""
    out = []
    for limit in route.route.rate_limits:
        entries = []
        for action in limit.actions:
            if action.HasField("extension"):
                descriptor = expr_pb2.Descriptor()
                assert action.extension.typed_config.Unpack(descriptor)
                entries.append((descriptor.descriptor_key, str(descriptor.parsed)))
        out.append(entries)
    return out


def test_per_claim_limits_read_the_jwt_payload() -> None:
    text = policy() + mapping().replace(
        "metadata:", "metadata:\n  annotations: {legation.dev/rate-limit: '5/m per claim:org.team'}", 1
    )
    [route] = [r for r in routes(text) if r.name == "demo/api#rule0"]
    [[(key, value)]] = [d for d in descriptors(route) if d]
    assert key.endswith("org.team") or "org.team" in key
    for part in ("envoy.filters.http.jwt_authn", "demo/jwt/corp", '"org"', '"team"', '"(absent)"'):
        assert part in value
    assert not any(a.HasField("metadata") for limit in route.route.rate_limits for a in limit.actions)


def test_with_any_of_a_per_claim_limit_counts_whichever_provider_verified() -> None:
    # One descriptor, whose value comes from whichever provider's token verified: a token of the
    # second provider must not land in the shared "absent" bucket (or escape the limit).
    providers = [
        {"name": "corp", "issuer": "https://idp/", "jwks": {"inline": jwks_json([KEY])}},
        {"name": "partner", "issuer": "https://partner/", "jwks": {"inline": jwks_json([KEY])}},
    ]
    rules = [{"requires": {"anyOf": ["corp", "partner"]}}]
    text = policy(providers=providers, rules=rules) + mapping().replace(
        "metadata:", "metadata:\n  annotations: {legation.dev/rate-limit: '5/m per claim:sub'}", 1
    )
    [route] = [r for r in routes(text) if r.name == "demo/api#rule0"]
    [[(_, value)]] = [d for d in descriptors(route) if d]
    assert value.index("demo/jwt/corp") < value.index("demo/jwt/partner")  # corp first, as the service


def test_keys_are_bound_to_one_algorithm_as_the_service_binds_them() -> None:
    jwk = {**KEY.public_jwk, "kid": "k1"}
    jwk.pop("alg", None)
    bound = json.loads(
        bind_jwks(json.dumps({"keys": [jwk, {**jwk, "kid": "enc", "use": "enc"}]}), ["RS384", "RS256"]) or ""
    )
    assert [(k["kid"], k["alg"]) for k in bound["keys"]] == [("k1", "RS384")]  # first allowed that fits
    assert bind_jwks(json.dumps({"keys": [{**jwk, "alg": "RS512"}]}), ["RS256"]) is None  # alg not allowed


def test_a_claim_name_that_envoy_would_read_as_code_keeps_the_policy_on_the_service() -> None:
    # A native denial names the claim in a CEL string and an Envoy format string: a hostile team's
    # claim name must not end the string (other teams' answers) or format Envoy's environment.
    for claim in ['x"] || true || response.code_details == "', "%ENVIRONMENT(HOME)%"]:
        rules = [{"requires": {"anyOf": ["corp"]}, "claims": {claim: ["a"]}}]
        assert (enforcement(policy(rules=rules) + mapping()) or "").startswith(
            f"service (claim name {claim!r}"
        )
        assert (enforcement(policy(claimsToHeaders={claim: "x-odd"}) + mapping()) or "").startswith(
            "service ("
        )
    url_claim = [{"requires": {"anyOf": ["corp"]}, "claims": {"https://example.com/roles": ["a"]}}]
    assert enforcement(policy(rules=url_claim) + mapping()) == "native"
