"""The compiler (legation.controller.compiler.compile): statuses, IR, authz feed and rate-limit feed, as a pure
function of the resources."""

from __future__ import annotations

import random
from typing import Any

import pytest
import yaml
from fixtures.jwks_server import jwks_json, make_rsa_key
from fixtures.manifests import self_signed

from legation.api.ratelimit import DomainConfig
from legation.api.v1alpha1 import AuthService, Host, JWTPolicy, Mapping, Resource, Secret
from legation.api.v1alpha1.fields import parse_service
from legation.controller.compiler.clusters import cluster_name
from legation.controller.compiler.compile import Tenancy, compile_resources
from legation.controller.compiler.ir import CompileResult, DescriptorEntry, Origin, Route
from legation.controller.compiler.ratelimits import DOMAIN, MAPPING_KEY
from legation.core.yamlfile import load_documents
from legation.ratelimit.config import load_config_texts

API = "legation.dev/v1alpha1"
TRUSTED = Tenancy(trusted_timestamps=True)
"""As from Kubernetes: creation timestamps settle conflicts."""


# --- builders ----------------------------------------------------------------------------------


def meta(
    name: str, ns: str, ts: str | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    data: dict[str, Any] = {"name": name, "namespace": ns}
    if ts is not None:
        data["creationTimestamp"] = ts
    if annotations:
        data["annotations"] = annotations
    return data


def mapping(
    name: str, ns: str = "team-a", *, ts: str | None = None, limit: str | None = None, **spec: Any
) -> Mapping:
    spec.setdefault("service", f"{name}.{ns}:8080")
    if not {"prefix", "path", "regex"} & spec.keys():
        spec["prefix"] = f"/{name}/"
    annotations = {"legation.dev/rate-limit": limit} if limit is not None else None
    return Mapping.model_validate(
        {"apiVersion": API, "kind": "Mapping", "metadata": meta(name, ns, ts, annotations), "spec": spec}
    )


def policy(
    name: str, ns: str = "team-a", *, default: bool = False, ts: str | None = None, jwks: Any = None
) -> JWTPolicy:
    provider = {
        "name": "corp",
        "issuer": "https://idp.example.com/",
        "jwks": jwks or {"uri": "https://idp/j"},
    }
    spec = {
        "namespaceDefault": default,
        "providers": [provider],
        "rules": [{"requires": {"anyOf": ["corp"]}}],
    }
    return JWTPolicy.model_validate(
        {"apiVersion": API, "kind": "JWTPolicy", "metadata": meta(name, ns, ts), "spec": spec}
    )


def secret(name: str, ns: str = "team-a", *, kind: str = "Opaque", **string_data: str) -> Secret:
    return Secret.model_validate(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta(name, ns),
            "type": kind,
            "stringData": string_data,
        }
    )


def host(
    name: str,
    ns: str = "team-a",
    *,
    hostname: str = "api.example.com",
    tls: str = "api-tls",
    ts: str | None = None,
) -> Host:
    return Host.model_validate(
        {
            "apiVersion": API,
            "kind": "Host",
            "metadata": meta(name, ns, ts),
            "spec": {"hostname": hostname, "tlsSecret": {"name": tls}},
        }
    )


def auth_service(name: str = "default", ts: str | None = None) -> AuthService:
    return AuthService.model_validate(
        {
            "apiVersion": API,
            "kind": "AuthService",
            "metadata": meta(name, "legation-system", ts),
            "spec": {"service": "legation-authz.legation-system:9001"},
        }
    )


@pytest.fixture(scope="module")
def tls_pair() -> dict[str, str]:
    certificate, key = self_signed("api.example.com")
    return {"tls.crt": certificate, "tls.key": key}


def run(*resources: Resource) -> CompileResult:
    return compile_resources([(Origin("test.yaml", i), r) for i, r in enumerate(resources)], tenancy=TRUSTED)


def state(result: CompileResult, kind: str, ns: str, name: str) -> tuple[str, str | None]:
    status = result.status(kind, ns, name)
    assert status is not None
    return status.state, status.reason


def route(result: CompileResult, route_id: str) -> Route:
    (found,) = [r for r in result.ir.routes if r.id == route_id]
    return found


def weights(r: Route) -> dict[str, int]:
    return {d.mapping: d.weight for d in r.destinations}


# --- basics ------------------------------------------------------------------------------------


def test_one_mapping_gives_a_route_and_a_cluster() -> None:
    result = run(
        mapping(
            "orders",
            "team-orders",
            service="orders.team-orders:8080",
            prefix="/orders/",
            hostname="api.example.com",
            methods=["POST", "GET"],
            headers={"x-canary": "true"},
            queryParameters={"v": "*"},
            rewrite="/",
            timeout="3s",
        )
    )
    assert state(result, "Mapping", "team-orders", "orders") == ("Accepted", None)
    (r,) = result.ir.routes
    assert r.id == "team-orders/orders"
    assert (r.match.hostname, r.match.kind, r.match.value) == ("api.example.com", "prefix", "/orders")
    assert r.match.methods == ("GET", "POST")
    assert r.match.headers == (("x-canary", "true"),)
    assert r.match.query_parameters == (("v", "*"),)
    assert (r.rewrite, r.timeout, r.policy) == ("/", 3.0, None)
    assert r.destinations[0].cluster == "svc_orders_team-orders_8080"
    assert r.destinations[0].weight == 100
    (c,) = result.ir.clusters
    assert (c.name, c.host, c.port, c.tls, c.http2) == (
        "svc_orders_team-orders_8080",
        "orders.team-orders",
        8080,
        False,
        False,
    )


def test_cluster_names_are_stable_and_shared() -> None:
    assert cluster_name(parse_service("https://api.example.com")) == "svc_api_example_com_443_tls"
    assert cluster_name(parse_service("[::1]:9000"), http2=True) == "svc___1_9000_h2"
    result = run(
        mapping("a", service="shared.ns:80"),
        mapping("b", service="shared.ns:80"),
        mapping("c", service="shared.ns:80", http2=True),
        mapping("d", service="shared.ns:80", circuitBreakers={"maxConnections": 10}),
    )
    names = [c.name for c in result.ir.clusters]
    assert names[:2] == ["svc_shared_ns_80", "svc_shared_ns_80_cb" + names[1][-8:]]
    assert "svc_shared_ns_80_h2" in names
    assert len(names) == 3
    breakers = next(c for c in result.ir.clusters if c.max_connections is not None)
    assert breakers.max_connections == 10


def test_same_input_in_any_order_gives_identical_output(tls_pair: dict[str, str]) -> None:
    resources: list[Resource] = [
        policy("p", "team-a", default=True),
        policy("q", "team-b"),
        mapping("a1", "team-a", prefix="/x/", limit="10/s per ip"),
        mapping("a2", "team-a", prefix="/x/", weight=20),
        mapping("b1", "team-b", prefix="/x/"),
        mapping("b2", "team-b", prefix="/y/", auth={"policy": "q"}, limit="5/m per claim:sub; 1/s"),
        mapping("b3", "team-b", path="/y/z"),
        mapping("bad", "team-b", auth={"policy": "missing"}),
        secret("api-tls", kind="kubernetes.io/tls", **tls_pair),
        host("api"),
        host("api2", hostname="api.example.com"),
        auth_service("default"),
        auth_service("other"),
    ]
    origins = [(Origin(f"f{i}.yaml"), r) for i, r in enumerate(resources)]
    expected = compile_resources(origins, tenancy=TRUSTED)
    assert expected.rejected  # the test covers rejections too
    rng = random.Random(4)
    for _ in range(10):
        shuffled = origins[:]
        rng.shuffle(shuffled)
        assert compile_resources(shuffled, tenancy=TRUSTED) == expected


def test_routes_are_ordered_most_specific_first() -> None:
    result = run(
        mapping("short", prefix="/a/"),
        mapping("long", prefix="/a/b/"),
        mapping("exact", path="/a/b/c"),
        mapping("re", regex="/a/[0-9]+"),
        mapping("hdr", prefix="/a/", headers={"x-v": "2"}),
        mapping("other-host", prefix="/", hostname="a.example.com"),
    )
    assert [r.id.split("/")[1] for r in result.ir.routes] == [
        "other-host",
        "exact",
        "re",
        "long",
        "hdr",
        "short",
    ]


def test_duplicate_resources_reject_the_later_origin() -> None:
    first, second = mapping("m", prefix="/one/"), mapping("m", prefix="/two/")
    result = compile_resources([(Origin("b.yaml"), second), (Origin("a.yaml"), first)], tenancy=TRUSTED)
    assert [s.state for s in result.statuses] == ["Accepted", "Rejected"]
    assert result.statuses[1].origin == Origin("b.yaml")
    assert result.statuses[1].reason == "duplicate Mapping team-a/m (also in a.yaml#0)"
    assert result.statuses[1].problems[0].path == ("metadata", "name")
    assert [r.match.value for r in result.ir.routes] == ["/one"]


# --- canaries ----------------------------------------------------------------------------------


def test_canary_takes_its_weight_and_the_rest_goes_to_the_unweighted() -> None:
    result = run(
        mapping("stable", prefix="/c/"), mapping("canary", prefix="/c/", weight=10, service="v2.ns:80")
    )
    (r,) = result.ir.routes
    assert r.id == "team-a/canary"  # the oldest (no timestamps: by name) is the primary
    assert r.mappings == ("team-a/canary", "team-a/stable")
    assert weights(r) == {"team-a/canary": 10, "team-a/stable": 90}
    assert {d.cluster for d in r.destinations} == {"svc_v2_ns_80", "svc_stable_team-a_8080"}


def test_unweighted_share_the_rest_evenly_remainder_to_first_by_name() -> None:
    result = run(mapping("a", prefix="/c/"), mapping("b", prefix="/c/"), mapping("c", prefix="/c/"))
    assert weights(result.ir.routes[0]) == {"team-a/a": 34, "team-a/b": 33, "team-a/c": 33}
    result = run(
        mapping("a", prefix="/c/"), mapping("b", prefix="/c/"), mapping("w", prefix="/c/", weight=10)
    )
    assert weights(result.ir.routes[0]) == {"team-a/a": 45, "team-a/b": 45, "team-a/w": 10}


def test_all_weighted_weights_are_relative_and_zero_means_none() -> None:
    result = run(mapping("a", prefix="/c/", weight=30), mapping("b", prefix="/c/", weight=10))
    assert weights(result.ir.routes[0]) == {"team-a/a": 30, "team-a/b": 10}
    result = run(mapping("a", prefix="/c/", weight=0))
    assert result.ir.routes[0].total_weight == 0


def test_weights_over_100_reject_the_newer_mapping() -> None:
    result = run(
        mapping("a", prefix="/c/", weight=60, ts="2024-01-02T00:00:00Z"),
        mapping("b", prefix="/c/", weight=50, ts="2024-01-01T00:00:00Z"),
        mapping("c", prefix="/c/"),
    )
    assert state(result, "Mapping", "team-a", "b")[0] == "Accepted"
    status = result.status("Mapping", "team-a", "a")
    assert status is not None and status.state == "Rejected"
    assert status.problems[0].path == ("spec", "weight")
    assert "would add up to 110" in (status.reason or "")
    assert weights(result.ir.routes[0]) == {"team-a/b": 50, "team-a/c": 50}


def test_canaries_inherit_route_settings_but_cannot_contradict_them() -> None:
    result = run(
        mapping("a", prefix="/c/", timeout="3s", limit="10/s"),
        mapping("b", prefix="/c/", weight=10),  # unset: inherits
        mapping("c", prefix="/c/", weight=10, timeout="3s", limit="10/s"),  # equal: fine
        mapping("d", prefix="/c/", weight=10, timeout="5s"),
        mapping("e", prefix="/c/", weight=10, limit="20/s"),
    )
    (r,) = result.ir.routes
    assert r.mappings == ("team-a/a", "team-a/b", "team-a/c")
    assert r.timeout == 3.0
    d = result.status("Mapping", "team-a", "d")
    e = result.status("Mapping", "team-a", "e")
    assert d is not None and d.problems[0].path == ("spec", "timeout")
    assert "differs from Mapping team-a/a" in (d.reason or "")
    assert e is not None and e.problems[0].path == ("metadata", "annotations", "legation.dev/rate-limit")


# --- conflicts between namespaces --------------------------------------------------------------


def test_older_namespace_wins_a_match_and_the_loser_names_it() -> None:
    result = run(
        mapping("x", "team-a", prefix="/shop/", ts="2024-05-01T00:00:00Z"),
        mapping("y", "team-b", prefix="/shop/", ts="2024-01-01T00:00:00Z"),
        mapping("z", "team-b", prefix="/shop/", weight=5, ts="2024-06-01T00:00:00Z"),
    )
    st, reason = state(result, "Mapping", "team-a", "x")
    assert st == "Rejected"
    assert reason == "path /shop/ on host * is owned by team-b (Mapping team-b/y)"
    status = result.status("Mapping", "team-a", "x")
    assert status is not None and status.problems[0].path == ("spec", "prefix")
    (r,) = result.ir.routes
    assert r.mappings == ("team-b/y", "team-b/z")


def test_timestamps_beat_no_timestamps_and_ties_between_namespaces_reject_both() -> None:
    result = run(
        mapping("m", "team-a", prefix="/p/"), mapping("m", "team-b", prefix="/p/", ts="2030-01-01T00:00:00Z")
    )
    assert state(result, "Mapping", "team-b", "m")[0] == "Accepted"
    assert state(result, "Mapping", "team-a", "m")[0] == "Rejected"
    # A name that sorts first wins nothing: equal ages reject every party, loudly.
    result = run(mapping("m", "team-b", prefix="/p/"), mapping("m", "team-a", prefix="/p"))
    assert state(result, "Mapping", "team-a", "m") == (
        "Rejected",
        "path /p on host * overlaps path /p/ on host * of team-b (Mapping team-b/m); neither is older "
        "(same creation time), so neither is served",
    )
    assert state(result, "Mapping", "team-b", "m")[0] == "Rejected"
    assert not result.ir.routes


def test_different_methods_or_headers_are_different_matches_in_one_namespace_only() -> None:
    result = run(
        mapping("m", "team-a", prefix="/p/", methods=["GET"]),
        mapping("n", "team-a", prefix="/p/", methods=["POST"]),
        mapping("h", "team-a", prefix="/p/", headers={"x": "1"}),
    )
    assert not result.rejected
    assert len(result.ir.routes) == 3
    # Across namespaces a condition only narrows a match: the paths overlap, so they conflict.
    result = run(
        mapping("m", "team-a", prefix="/p/", ts="2024-01-01T00:00:00Z"),
        mapping("m", "team-b", prefix="/p/", methods=["POST"], ts="2024-02-01T00:00:00Z"),
        mapping("h", "team-c", prefix="/p/", headers={"authorization": "*"}, ts="2024-03-01T00:00:00Z"),
    )
    assert [s.id.namespace for s in result.rejected] == ["team-b", "team-c"]


# --- policies ----------------------------------------------------------------------------------


def test_policy_reference_default_and_disabled() -> None:
    result = run(
        policy("dflt", default=True),
        policy("strict"),
        mapping("plain"),
        mapping("named", auth={"policy": "strict"}),
        mapping("open", auth={"disabled": True}),
        mapping("elsewhere", "team-b"),
    )
    assert not result.rejected
    assert route(result, "team-a/plain").policy == "team-a/dflt"
    assert route(result, "team-a/named").policy == "team-a/strict"
    assert route(result, "team-a/open").policy is None
    assert route(result, "team-b/elsewhere").policy is None
    assert [p.key for p in result.policies] == ["team-a/dflt", "team-a/strict"]


def test_a_mapping_may_only_use_its_own_namespaces_policy() -> None:
    result = run(policy("p", "team-b"), mapping("m", "team-a", auth={"policy": "p"}), mapping("ok"))
    status = result.status("Mapping", "team-a", "m")
    assert status is not None and status.state == "Rejected"
    assert status.problems[0].path == ("spec", "auth", "policy")
    assert status.reason == (
        "no JWTPolicy 'p' in namespace team-a (JWTPolicy team-b/p exists, but a Mapping may only use its own namespace's)"
    )
    assert [r.id for r in result.ir.routes] == ["team-a/ok"]


def test_only_the_oldest_default_policy_counts() -> None:
    result = run(
        policy("new", default=True, ts="2024-02-01T00:00:00Z"),
        policy("old", default=True, ts="2024-01-01T00:00:00Z"),
        mapping("m"),
    )
    status = result.status("JWTPolicy", "team-a", "new")
    assert status is not None and status.problems[0].path == ("spec", "namespaceDefault")
    assert route(result, "team-a/m").policy == "team-a/old"
    assert [p.key for p in result.policies] == ["team-a/old"]


def test_mappings_fail_closed_when_their_policy_is_rejected() -> None:
    bad_default = policy("d", default=True, jwks={"secretRef": {"name": "missing", "key": "jwks"}})
    bad_named = policy("n", "team-b", jwks={"secretRef": {"name": "missing", "key": "jwks"}})
    result = run(
        bad_default,
        bad_named,
        mapping("m"),
        mapping("o", "team-b", auth={"policy": "n"}),
        mapping("open", auth={"disabled": True}),
    )
    m, o = result.status("Mapping", "team-a", "m"), result.status("Mapping", "team-b", "o")
    assert m is not None and m.state == "Rejected" and m.problems[0].path == ("spec", "auth")
    assert "default JWTPolicy team-a/d is rejected" in (m.reason or "")
    assert o is not None and o.state == "Rejected" and "JWTPolicy team-b/n is rejected" in (o.reason or "")
    assert [r.id for r in result.ir.routes] == ["team-a/open"]
    assert result.policies == ()


def test_the_feed_holds_only_the_policies_routes_use() -> None:
    result = run(policy("used"), policy("unused"), mapping("m", auth={"policy": "used"}))
    assert [p.key for p in result.policies] == ["team-a/used"]
    assert state(result, "JWTPolicy", "team-a", "unused")[0] == "Accepted"  # valid, just not served


def test_secret_backed_jwks_is_resolved_inline() -> None:
    jwks_text = jwks_json([make_rsa_key("k")])
    result = run(
        secret("keys", jwks=jwks_text),
        policy("p", jwks={"secretRef": {"name": "keys", "key": "jwks"}}),
        policy("nokey", jwks={"secretRef": {"name": "keys", "key": "other"}}),
        policy("nosecret", jwks={"secretRef": {"name": "gone", "key": "jwks"}}),
        mapping("m", auth={"policy": "p"}),
    )
    (p,) = result.policies
    assert p.key == "team-a/p"
    jwks = p.spec.providers[0].jwks
    assert (jwks.inline, jwks.secret_ref) == (jwks_text, None)
    nokey = result.status("JWTPolicy", "team-a", "nokey")
    assert nokey is not None and nokey.problems[0].path == (
        "spec",
        "providers",
        0,
        "jwks",
        "secretRef",
        "key",
    )
    assert nokey.reason == "Secret team-a/keys has no key 'other'"
    nosecret = result.status("JWTPolicy", "team-a", "nosecret")
    assert nosecret is not None and nosecret.reason == "no Secret 'gone' in namespace team-a"


# --- hosts and the auth service ----------------------------------------------------------------


def test_hosts_need_a_tls_secret_of_their_namespace(tls_pair: dict[str, str]) -> None:
    result = run(
        secret("api-tls", kind="kubernetes.io/tls", **tls_pair),
        secret("opaque", jwks="{}"),
        host("api", ts="2024-01-01T00:00:00Z"),
        host("again", ts="2024-02-01T00:00:00Z"),
        host("wrong-type", hostname="b.example.com", tls="opaque"),
        host("missing", hostname="c.example.com", tls="nope"),
        host("other-ns", "team-b", hostname="d.example.com"),
    )
    (h,) = result.ir.hosts
    assert (h.id, h.hostname, h.secret, h.insecure) == (
        "team-a/api",
        "api.example.com",
        "team-a/api-tls",
        "Redirect",
    )
    assert state(result, "Host", "team-a", "again") == (
        "Rejected",
        "hostname api.example.com is already served by Host team-a/api",
    )
    assert (
        state(result, "Host", "team-a", "wrong-type")[1]
        == "Secret team-a/opaque has type Opaque, not kubernetes.io/tls"
    )
    assert state(result, "Host", "team-a", "missing")[1] == "no Secret 'nope' in namespace team-a"
    assert state(result, "Host", "team-b", "other-ns")[1] == "no Secret 'api-tls' in namespace team-b"


def test_one_auth_service_with_an_h2_cluster() -> None:
    result = run(auth_service("b", ts="2024-01-01T00:00:00Z"), auth_service("a", ts="2024-03-01T00:00:00Z"))
    assert result.ir.auth_service is not None
    assert result.ir.auth_service.id == "legation-system/b"
    assert result.ir.auth_service.cluster == "svc_legation-authz_legation-system_9001_h2"
    assert [c.name for c in result.ir.clusters] == ["svc_legation-authz_legation-system_9001_h2"]
    assert state(result, "AuthService", "legation-system", "a") == (
        "Rejected",
        "only one AuthService is allowed; AuthService legation-system/b is older",
    )


# --- rate limits -------------------------------------------------------------------------------


def test_rate_limit_actions_per_route() -> None:
    result = run(
        mapping(
            "m",
            limit="100/m per ip; 1000/h per claim:sub,header:X-Key; 20/s; 5/s per ip; 9/15m per path,method",
        )
    )
    r = route(result, "team-a/m")
    head = DescriptorEntry(MAPPING_KEY, "generic_key", "team-a/m")
    assert [lim.entries for lim in r.rate_limits] == [
        (head, DescriptorEntry("remote_address", "remote_address")),
        (
            head,
            DescriptorEntry("claim_sub", "dynamic_metadata", "sub"),
            DescriptorEntry("header_x-key", "request_header", "x-key"),
        ),
        (head,),
        (
            head,
            DescriptorEntry("path", "request_header", ":path"),
            DescriptorEntry("method", "request_header", ":method"),
        ),
    ]
    assert [str(rule) for rule in r.rate_limits[0].rules] == ["100/m per ip", "5/s per ip"]


def test_rate_limit_config_is_a_valid_namespaced_descriptor_tree() -> None:
    result = run(
        mapping("m", limit="100/m per ip; 1000/h per claim:sub; 20/s; 5/s per ip; 7/15m per ip,path"),
        mapping("n", "team-b", limit="3/s"),
        mapping("free"),
    )
    (domain,) = result.ratelimit
    assert domain.domain == DOMAIN
    assert [(d.key, d.value) for d in domain.descriptors] == [
        (MAPPING_KEY, "team-a/m"),
        (MAPPING_KEY, "team-b/n"),
    ]
    text = yaml.safe_dump(domain.model_dump(mode="json", exclude_defaults=True), sort_keys=False)
    assert DomainConfig.model_validate(yaml.safe_load(text)) == domain
    loaded = load_config_texts([("legation.yaml", text)])
    rules = loaded.rules

    def limits(*entries: tuple[str, str]) -> list[tuple[int, int]]:
        found = rules.lookup(DOMAIN, entries) or ()
        return sorted((lim.requests, lim.window_ms // 1000) for lim in found)

    assert limits((MAPPING_KEY, "team-a/m")) == [(20, 1)]
    assert limits((MAPPING_KEY, "team-a/m"), ("remote_address", "1.2.3.4")) == [(5, 1), (100, 60)]
    assert limits((MAPPING_KEY, "team-a/m"), ("remote_address", "1.2.3.4"), ("path", "/x")) == [(7, 900)]
    assert limits((MAPPING_KEY, "team-a/m"), ("claim_sub", "alice")) == [(1000, 3600)]
    assert limits((MAPPING_KEY, "team-b/n")) == [(3, 1)]
    assert limits((MAPPING_KEY, "team-a/free")) == []


def test_a_bad_annotation_rejects_only_its_mapping() -> None:
    result = run(mapping("bad", limit="lots/m"), mapping("good", limit="1/s"))
    status = result.status("Mapping", "team-a", "bad")
    assert status is not None and status.state == "Rejected"
    assert status.problems[0].path == ("metadata", "annotations", "legation.dev/rate-limit")
    assert "'lots' is not a whole number" in (status.reason or "")
    assert [r.id for r in result.ir.routes] == ["team-a/good"]
    assert [d.value for d in result.ratelimit[0].descriptors] == ["team-a/good"]


def test_origin_of_a_document() -> None:
    (doc,) = load_documents("\n\nkind: Mapping\n", file="x.yaml")
    assert Origin.of(doc) == Origin("x.yaml", 0)
    assert str(Origin.of(doc)) == "x.yaml:3"
