"""The native enforcement bench's pure parts: judging a run, medians, ratios and goals, the
table, and the configurations it serves (the manifests compile as it claims)."""

from __future__ import annotations

import json

import pytest
import yaml

from bench.authz_fixtures import Keys
from bench.harness.wrk import WrkResult, wrk_command
from bench.native_fixtures import (
    HOSTS,
    handwritten_claims_envoy_config,
    handwritten_envoy_config,
    manifests,
    upstream_envoy_config,
)
from bench.native_results import (
    AUTHZ_CALLS,
    GOALS,
    Goal,
    Sample,
    Summary,
    goal_results,
    results_table,
    run_problems,
    summarize,
)
from legation.api.v1alpha1 import parse_resource
from legation.controller.compiler.compile import Tenancy, compile_resources
from legation.controller.compiler.ir import Origin
from legation.controller.compiler.upstreams import UpstreamRules
from legation.core.yamlfile import load_documents


def _wrk(requests: int = 1000, *, rate: float = 100.0, non_2xx: int = 0, p99: float = 2.0) -> WrkResult:
    return WrkResult(requests=requests, non_2xx=non_2xx, socket_errors=0, p99_ms=p99, req_per_s=rate)


def _verified(prefix: str, n: float) -> dict[str, float]:
    return {f"envoy:http.{prefix}.jwt_authn.jwt_cache_miss": n, f"envoy:http.{prefix}.jwt_authn.allowed": n}


UPSTREAM_OK = {"envoy:http.front.downstream_rq_2xx": 1000.0}


def test_a_clean_run_of_each_target_has_no_problem() -> None:
    gateway = {
        "open": {"envoy:http.http.jwt_authn.allowed": 1000.0},  # allowed also counts routes requiring nothing
        "native": _verified("http", 1000),
        "service": {"envoy:http.http.ext_authz.ok": 1000.0, AUTHZ_CALLS: 1000.0},
        "jwt_authn": _verified("front", 1000),
    }
    for tag, delta in gateway.items():
        assert run_problems(tag, _wrk(), delta, UPSTREAM_OK) == {}, tag


def test_the_native_route_calling_ext_authz_is_a_failed_run() -> None:
    delta = {**_verified("http", 1000), AUTHZ_CALLS: 3.0}
    assert run_problems("native", _wrk(), delta, UPSTREAM_OK) == {"ext_authz called": 3.0}


def test_a_route_that_skips_its_auth_is_a_failed_run() -> None:
    assert run_problems("native", _wrk(), _verified("http", 990), UPSTREAM_OK) == {
        "jwt_authn verified fewer than the requests": 10.0
    }
    short = {"envoy:http.http.ext_authz.ok": 10.0, AUTHZ_CALLS: 10.0}
    assert run_problems("service", _wrk(), short, UPSTREAM_OK) == {"ext_authz.ok short of requests": 990.0}
    assert run_problems("open", _wrk(), _verified("http", 5), UPSTREAM_OK) == {
        "jwt_authn verified tokens": 5.0
    }


def test_non_2xx_answers_and_local_answers_are_failed_runs() -> None:
    delta = {**_verified("front", 1000), "envoy:http.front.downstream_rq_4xx": 7.0}
    problems = run_problems(
        "jwt_authn", _wrk(non_2xx=7), delta, {"envoy:http.front.downstream_rq_2xx": 993.0}
    )
    assert problems == {"wrk non-2xx": 7.0, "Envoy non-2xx": 7.0, "answers not from the upstream": 7.0}
    assert run_problems("open", _wrk(requests=0), {}, {}) == {"no requests": 1.0}


def _sample(tag: str, rate: float, *, cpu: float = 50.0, round_no: int = 1, **problems: float) -> Sample:
    return Sample(tag, round_no, _wrk(rate=rate, p99=rate / 1000), cpu, 99.0, 60.0, dict(problems))


def test_summary_is_the_median_of_the_runs() -> None:
    samples = [_sample("native", r, round_no=i) for i, r in enumerate((900.0, 1000.0, 5000.0))]
    summary = summarize("native", [*samples, _sample("open", 1.0)])
    assert summary.valid
    assert (summary.req_per_s, summary.p99_ms, summary.runs) == (1000.0, 1.0, [900.0, 1000.0, 5000.0])


def test_one_failed_run_leaves_the_target_without_a_number() -> None:
    samples = [_sample("native", 1000.0), _sample("native", 1100.0, **{"wrk non-2xx": 4.0})]
    summary = summarize("native", samples)
    assert not summary.valid
    assert summary.req_per_s is None
    assert summary.problems == {"wrk non-2xx": 4.0}
    assert not summarize("service", samples).valid  # never measured


def _summaries(**rates: float) -> dict[str, Summary]:
    return {tag: summarize(tag, [_sample(tag, rate, cpu=1e6 / rate)]) for tag, rate in rates.items()}


def test_goals_compare_native_with_each_baseline() -> None:
    summaries = _summaries(open=10_000, native=5_000, service=2_000, jwt_authn=6_000)
    results = {g.goal.baseline: g for g in goal_results(summaries)}
    assert results["jwt_authn"].ratio == pytest.approx(5 / 6)
    assert results["jwt_authn"].cpu_ratio == pytest.approx(5 / 6)
    assert results["jwt_authn"].passed  # >= 0.8
    assert results["open"].ratio == pytest.approx(0.5)
    assert not results["open"].passed  # < 0.6
    assert results["service"].ratio == pytest.approx(2.5)
    assert not results["service"].passed  # < 3
    assert goal_results(summaries, [Goal("service", 2.5)])[0].passed
    context = goal_results(_summaries(native=5_000, jwt_rbac=10_000), [Goal("jwt_rbac", None)])[0]
    assert context.ratio == pytest.approx(0.5) and context.passed


def test_a_goal_against_a_failed_measurement_is_not_passed() -> None:
    samples = [_sample("native", 5000.0), _sample("open", 6000.0, **{"Envoy non-2xx": 1.0})]
    result = goal_results({t: summarize(t, samples) for t in ("native", "open")}, [Goal("open", 0.6)])[0]
    assert result.ratio is None
    assert not result.passed
    assert [(g.baseline, g.minimum) for g in GOALS] == [
        ("jwt_authn", 0.8),
        ("open", 0.6),
        ("service", 3.0),
        ("jwt_rbac", None),  # for context: no goal, never a failure
    ]


def test_table_shows_ratio_goal_and_verdict_on_each_baseline_row() -> None:
    summaries = _summaries(open=10_000, native=5_000, service=1_000, jwt_authn=6_000)
    table = results_table(summaries, goal_results(summaries))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    assert len(rows) == 4
    assert "| 0.50 | 0.50 | ≥ 0.6 | **FAIL** |" in rows["Legation route, no auth"]
    assert "| 5.00 | 5.00 | ≥ 3 | PASS |" in rows["Legation route, same policy, enforcement: service"]
    assert "| 0.83 | 0.83 | ≥ 0.8 | PASS |" in rows["hand-written jwt_authn (static Envoy, same keys)"]
    assert "**5,000**" in rows["Legation route, native policy (enforcement: auto)"]


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys.generate()


def test_manifests_compile_to_one_native_and_one_service_policy(keys: Keys) -> None:
    docs = manifests(keys.jwks_json(), upstream_port=40_000)
    loaded = load_documents(yaml.safe_dump_all(docs), file="bench.yaml")
    parsed = [(Origin.of(d), parse_resource(d)) for d in loaded]
    resources = [(o, r) for o, r in parsed if not isinstance(r, list)]
    assert len(resources) == 5, parsed
    result = compile_resources(
        resources, tenancy=Tenancy(trusted_timestamps=True), upstreams=UpstreamRules(allow_loopback=True)
    )
    statuses = {f"{s.id.kind} {s.id.name}": s for s in result.statuses}
    assert all(s.accepted for s in statuses.values()), statuses
    assert statuses["JWTPolicy orders"].enforcement == "native"
    assert (statuses["JWTPolicy orders-service"].enforcement or "").startswith("service")
    assert [n.key for n in result.ir.native_policies] == ["bench/orders"]
    native, service = docs[0]["spec"], docs[1]["spec"]
    assert {**native, "enforcement": "service"} == service  # the same policy but for enforcement
    hosts = {d["metadata"]["name"]: d["spec"]["hostname"] for d in docs[2:]}
    assert hosts == {k: v for k, v in HOSTS.items() if not k.startswith("jwt_")}
    assert {d["spec"]["service"] for d in docs[2:]} == {"127.0.0.1:40000"}


def test_handwritten_jwt_authn_has_the_policys_keys_and_routes_to_the_upstream(keys: Keys) -> None:
    config = handwritten_envoy_config(port=1, admin_port=2, upstream_port=3, jwks_json=keys.jwks_json())
    text = json.dumps(config)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    jwt = manager["http_filters"][0]["typed_config"]
    assert jwt["providers"]["corp"]["local_jwks"]["inline_string"] == keys.jwks_json()
    assert jwt["rules"] == [{"match": {"prefix": "/"}, "requires": {"provider_name": "corp"}}]
    assert manager["http_filters"][-1]["name"] == "envoy.filters.http.router"
    assert '"port_value": 3' in text and '"path": "/dev/stdout"' in text  # the same access log as Legation's
    upstream = upstream_envoy_config(port=4, admin_port=5)
    route = upstream["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert route["route_config"]["virtual_hosts"][0]["routes"][0]["direct_response"]["status"] == 200


def test_handwritten_claim_rules_allow_the_rules_scope_and_team_only(keys: Keys) -> None:
    config = handwritten_claims_envoy_config(
        port=1, admin_port=2, upstream_port=3, jwks_json=keys.jwks_json()
    )
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    provider = manager["http_filters"][0]["typed_config"]["providers"]["corp"]
    assert provider["payload_in_metadata"] == "corp"
    assert provider["normalize_payload_in_metadata"] == {"space_delimited_claims": ["scope"]}
    public, read, write = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert "typed_per_filter_config" not in public  # the policy's public rule
    for route, scope in ((read, "orders:read"), (write, "orders:write")):
        config = route["typed_per_filter_config"]
        assert config["envoy.filters.http.jwt_authn"]["requirement_name"] == "corp"
        rules = config["envoy.filters.http.rbac"]["rbac"]["rules"]
        assert rules["action"] == "ALLOW"
        [claims] = rules["policies"]["claims"]["principals"]
        values = [m["sourced_metadata"]["metadata_matcher"]["value"] for m in claims["and_ids"]["ids"]]
        assert values == [
            {"list_match": {"one_of": {"string_match": {"exact": scope}}}},
            {"string_match": {"exact": "orders"}},
        ]


def test_wrk_command_sends_the_headers() -> None:
    cmd = wrk_command("http://127.0.0.1:1/x", duration_s=3, connections=16, headers=["Host: a", "X: b"])
    assert cmd[1:] == [
        "-t1",
        "-c16",
        "-d3s",
        "--latency",
        "-H",
        "Host: a",
        "-H",
        "X: b",
        "http://127.0.0.1:1/x",
    ]
