"""Which upstreams a Mapping may name (legation.controller.compiler.upstreams): never the
gateway's own endpoints; loopback only when allowed, link-local and unspecified never; on
Kubernetes, its own namespace's Services, or what a platform UpstreamGrant opens to it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_compile import mapping, meta

from legation.api.v1alpha1 import AuthService, Resource, UpstreamGrant
from legation.controller.compiler.compile import compile_resources
from legation.controller.compiler.ir import CompileResult, Origin
from legation.controller.compiler.upstreams import UpstreamRules

RESERVED = ("127.0.0.1:9901", "127.0.0.1:8877", "legation-controller.legation-system:8877")
LOCAL = UpstreamRules(allow_loopback=True, reserved=RESERVED)
KUBE = UpstreamRules(namespaced=True, reserved=RESERVED)


def compile_with(rules: UpstreamRules, *resources: Resource) -> CompileResult:
    return compile_resources([(Origin("t.yaml", i), r) for i, r in enumerate(resources)], upstreams=rules)


def verdict(rules: UpstreamRules, service: str, ns: str = "team-a", *extra: Resource) -> str | None:
    """None when the Mapping is accepted, else its reason (which must point at spec.service)."""
    result = compile_with(rules, mapping("m", ns, service=service), *extra)
    status = result.status("Mapping", ns, "m")
    assert status is not None
    if status.accepted:
        return None
    assert status.problems[0].path == ("spec", "service"), status.problems
    return status.reason


def grant(name: str, ns: str = "legation-system", **spec: Any) -> UpstreamGrant:
    return UpstreamGrant.model_validate(
        {
            "apiVersion": "legation.dev/v1alpha1",
            "kind": "UpstreamGrant",
            "metadata": meta(name, ns),
            "spec": spec,
        }
    )


# --- rule 1: the gateway's own endpoints --------------------------------------------------------


@pytest.mark.parametrize(
    "service",
    [
        "127.0.0.1:9901",  # Envoy admin
        "localhost:9901",
        "[::1]:9901",
        "127.0.0.2:9901",  # any loopback address reaches a 0.0.0.0 listener
        "http://127.0.0.1:8877",  # the controller's API
        "127.1:8877",
        "2130706433:8877",
        "[::ffff:127.0.0.1]:8877",
    ],
)
def test_reserved_endpoints_are_refused_even_with_loopback_allowed(service: str) -> None:
    reason = verdict(LOCAL, service)
    assert reason is not None and "the gateway's own endpoint" in reason and "--reserved-upstream" in reason


def test_a_reserved_service_name_covers_each_of_its_dns_forms() -> None:
    grants = grant("open", namespaces=["*"], upstreams=[{"host": "legation-controller.legation-system"}])
    for service in (
        "legation-controller.legation-system:8877",
        "legation-controller.legation-system.svc:8877",
        "legation-controller.legation-system.svc.cluster.local:8877",
    ):
        reason = verdict(KUBE, service, "team-a", grants)  # a grant never opens a reserved endpoint
        assert reason is not None and "own endpoint" in reason, service
    assert verdict(KUBE, "legation-controller.legation-system:9000", "team-a", grants) is None  # another port


def test_other_loopback_ports_are_allowed_with_the_flag() -> None:
    assert verdict(LOCAL, "127.0.0.1:9081") is None
    assert verdict(LOCAL, "localhost:9081") is None


# --- rule 2: this machine and its link -----------------------------------------------------------


@pytest.mark.parametrize(
    "service", ["127.0.0.1:9081", "[::1]:9081", "localhost:9081", "app.localhost:80", "0177.0.0.1:80"]
)
def test_loopback_is_refused_by_default(service: str) -> None:
    reason = verdict(UpstreamRules(), service)
    assert reason is not None and "loopback" in reason and "--allow-loopback-upstreams" in reason


@pytest.mark.parametrize(
    ("service", "kind"),
    [
        ("169.254.169.254:80", "link-local"),  # cloud metadata
        ("[fe80::1]:80", "link-local"),
        ("0.0.0.0:8080", "unspecified"),
        ("[::]:8080", "unspecified"),
        ("0:8080", "unspecified"),
    ],
)
def test_link_local_and_unspecified_are_never_upstreams(service: str, kind: str) -> None:
    reason = verdict(LOCAL, service)
    assert reason is not None and kind in reason and "never an upstream" in reason


def test_directory_mode_names_anything_else() -> None:
    assert verdict(UpstreamRules(), "httpbin.org:443") is None
    assert verdict(UpstreamRules(), "orders.team-b:8080") is None
    assert verdict(UpstreamRules(), "10.0.0.5:8080") is None


# --- rule 3: namespaces and grants ---------------------------------------------------------------


@pytest.mark.parametrize(
    "service",
    ["orders:8080", "orders.team-a:8080", "orders.team-a.svc:8080", "orders.team-a.svc.cluster.local:80"],
)
def test_own_namespace_services_are_allowed(service: str) -> None:
    assert verdict(KUBE, service) is None


def test_a_bare_name_is_sent_to_envoy_in_the_mappings_namespace() -> None:
    # Envoy resolves a bare name in its own namespace: `legation-controller` would reach the gateway.
    result = compile_with(KUBE, mapping("m", "team-a", service="legation-controller:8877"))
    assert [c.host for c in result.ir.clusters] == ["legation-controller.team-a"]


@pytest.mark.parametrize(
    "service",
    [
        "orders.team-b:8080",
        "orders.team-b.svc.cluster.local:8080",
        "api.stripe.com:443",
        "https://api.stripe.com",
        "10.96.0.10:8877",
        "orders.team-a.svc.other.domain:80",
    ],
)
def test_everything_else_needs_a_grant(service: str) -> None:
    reason = verdict(KUBE, service)
    assert reason is not None and "not a Service of namespace team-a" in reason and "UpstreamGrant" in reason


def test_grants_open_what_they_name_to_whom_they_name() -> None:
    g = grant(
        "shared",
        namespaces=["team-a"],
        upstreams=[
            {"host": "payments.team-b", "ports": [8080]},
            {"host": "*.stripe.com"},
            {"host": "10.0.0.5"},
        ],
    )
    assert verdict(KUBE, "payments.team-b:8080", "team-a", g) is None
    assert verdict(KUBE, "payments.team-b.svc.cluster.local:8080", "team-a", g) is None
    assert verdict(KUBE, "https://api.stripe.com", "team-a", g) is None
    assert verdict(KUBE, "10.0.0.5:9000", "team-a", g) is None
    assert verdict(KUBE, "payments.team-b:9090", "team-a", g) is not None  # port not granted
    assert verdict(KUBE, "stripe.com:443", "team-a", g) is not None  # *. covers names under it only
    assert verdict(KUBE, "payments.team-b:8080", "team-c", g) is not None  # namespace not granted
    assert (
        verdict(
            KUBE, "127.0.0.1:9081", "team-a", grant("lo", namespaces=["*"], upstreams=[{"host": "127.0.0.1"}])
        )
        is not None
    )


def test_grants_count_only_from_platform_namespaces() -> None:
    forged = grant("mine", "team-a", namespaces=["team-a"], upstreams=[{"host": "payments.team-b"}])
    result = compile_with(KUBE, forged, mapping("m", "team-a", service="payments.team-b:8080"))
    status = result.status("UpstreamGrant", "team-a", "mine")
    assert status is not None and not status.accepted
    assert status.problems[0].path == ("metadata", "namespace") and "platform namespaces" in (
        status.reason or ""
    )
    m = result.status("Mapping", "team-a", "m")
    assert m is not None and not m.accepted
    other = UpstreamRules(namespaced=True, platform_namespaces=frozenset({"team-a"}))
    assert compile_with(other, forged).status("UpstreamGrant", "team-a", "mine").accepted  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"namespaces": [], "upstreams": [{"host": "a.b"}]}, "at least 1 item"),
        ({"namespaces": ["Team_A"], "upstreams": [{"host": "a.b"}]}, "invalid namespace"),
        ({"namespaces": ["*"], "upstreams": [{"host": "*"}]}, "would grant every host"),
        ({"namespaces": ["a"], "upstreams": [{"host": "a.b", "ports": [0]}]}, "greater than or equal to 1"),
    ],
)
def test_grant_schema(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        grant("g", **spec)


# --- the AuthService ---------------------------------------------------------------------------


def auth_service(service: str) -> AuthService:
    return AuthService.model_validate(
        {
            "apiVersion": "legation.dev/v1alpha1",
            "kind": "AuthService",
            "metadata": meta("a", "legation-system"),
            "spec": {"service": service},
        }
    )


def test_the_auth_service_may_name_the_authz_service_but_no_other_reserved_endpoint() -> None:
    rules = UpstreamRules(reserved=("127.0.0.1:9001", "127.0.0.1:9901"), authz_service="127.0.0.1:9001")
    ok = compile_with(rules, auth_service("127.0.0.1:9001"))
    assert ok.ir.auth_service is not None  # loopback is fine for the platform's own authz service
    bad = compile_with(rules, auth_service("127.0.0.1:9901"))
    status = bad.status("AuthService", "legation-system", "a")
    assert bad.ir.auth_service is None and status is not None and not status.accepted
    assert status.problems[0].path == ("spec", "service") and "no AuthService may name it" in (
        status.reason or ""
    )


# --- legation validate takes the controller's flags ----------------------------------------------


def test_validate_cli_applies_the_upstream_flags(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(
        "apiVersion: legation.dev/v1alpha1\nkind: Mapping\nmetadata: {name: m, namespace: team-a}\n"
        "spec: {prefix: /m/, service: '127.0.0.1:9081'}\n"
    )
    legation = str(Path(sys.executable).parent / "legation")

    def validate(*flags: str) -> subprocess.CompletedProcess[str]:
        argv = [legation, "validate", *flags, str(tmp_path)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)

    refused = validate()
    assert (
        refused.returncode == 1
        and "m.yaml:4: Mapping team-a/m: spec.service: 127.0.0.1:9081 is a loopback" in refused.stdout
    )
    assert validate("--allow-loopback-upstreams").returncode == 0
    reserved = validate("--allow-loopback-upstreams", "--reserved-upstream", "localhost:9081")
    assert reserved.returncode == 1 and "the gateway's own endpoint localhost:9081" in reserved.stdout
    bad_flag = validate("--reserved-upstream", "http://x:1")
    assert bad_flag.returncode == 2 and "without a scheme" in bad_flag.stderr
