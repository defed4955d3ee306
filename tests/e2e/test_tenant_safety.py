"""End to end, one namespace hostile: `legation up` (real Envoy, authz, controller) on a directory
where team-orders protects `/orders/` with its JWTPolicy, team-catalog owns the hostname
shop.localhost and delegates `/reviews` on it to team-reviews. Then, while the gateway runs, an
attacker namespace adds every capture the issue lists: each match kind over `/orders/`, the same
prefix with a header (`authorization: *`), a query parameter or a method, hostname-specific and
wildcard-hostname copies, a `*` Host with `insecure: Reject`, a Host for team-catalog's name, a
Host for 127.0.0.1 with `insecure: Reject`, and an AuthService with `failureModeAllow` pointing
nowhere. Every attempt must be Rejected (in /api/resources, with the owner named), the victim's
requests must keep the victim's answers (401 with its realm, 200 with a token), and the
neighbours and the attacker's own distinct prefix keep working.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.gateway import Gateway, Response, start_gateway, stop_gateway
from fixtures.managed import free_port
from fixtures.manifests import self_signed, tls_secret
from fixtures.processes import Launcher

pytestmark = pytest.mark.e2e

REALM = 'Bearer realm="team-orders/orders-jwt"'
API = "legation.dev/v1alpha1"


def doc(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> str:
    body = {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    return "---\n" + yaml.safe_dump(body, sort_keys=False)


def outside_the_grant(ports: dict[str, int]) -> str:
    spec = {"hostname": "shop.localhost", "prefix": "/basket/", "service": f"127.0.0.1:{ports['outside']}"}
    return doc("Mapping", "outside", "team-reviews", spec)


def victim_and_neighbours(ports: dict[str, int]) -> dict[str, str]:
    policy = {
        "namespaceDefault": True,
        "providers": [
            {
                "name": "demo",
                "issuer": "https://demo-issuer.legation.localhost/",
                "audiences": ["orders"],
                "jwks": {"secretRef": {"name": "demo-issuer-jwks", "key": "jwks.json"}},
                "algorithms": ["ES256"],
            }
        ],
        "rules": [{"match": {"pathPrefix": "/orders"}, "requires": {"anyOf": ["demo"]}}],
    }
    shop = {
        "hostname": "shop.localhost",
        "tlsSecret": {"name": "demo-tls"},
        "insecure": {"action": "Route"},
        "delegate": [{"namespace": "team-reviews", "prefixes": ["/reviews"]}],
    }
    return {
        "orders.yaml": doc("JWTPolicy", "orders-jwt", "team-orders", policy)
        + doc(
            "Mapping",
            "orders",
            "team-orders",
            {"prefix": "/orders/", "service": f"127.0.0.1:{ports['orders']}"},
        ),
        "catalog.yaml": doc(
            "Mapping",
            "catalog",
            "team-catalog",
            {"prefix": "/catalog/", "service": f"127.0.0.1:{ports['catalog']}"},
        )
        + doc("Host", "shop", "team-catalog", shop),
        "reviews.yaml": doc(
            "Mapping",
            "reviews",
            "team-reviews",
            {"hostname": "shop.localhost", "prefix": "/reviews/", "service": f"127.0.0.1:{ports['reviews']}"},
        ),
    }


CAPTURES: dict[str, dict[str, Any]] = {
    "exact": {"path": "/orders/42"},
    "longer": {"prefix": "/orders/4"},
    "same": {"prefix": "/orders/"},
    "bearer": {"prefix": "/orders/", "headers": {"authorization": "*"}},
    "query": {"prefix": "/orders/", "queryParameters": {"debug": "*"}},
    "method": {"prefix": "/orders/", "methods": ["GET"]},
    "regex": {"regex": "/orders/.*"},
    "root": {"prefix": "/"},
    "loopback": {"hostname": "127.0.0.1", "prefix": "/orders/"},
    "wildcard": {"hostname": "*.localhost", "prefix": "/orders/"},
    "wildcard-example": {"hostname": "*.example", "prefix": "/orders/"},
    "shop-host": {"hostname": "shop.localhost", "prefix": "/orders/"},
}
"""The attacker's Mappings, each with `auth: {disabled: true}` and its own upstream."""


def attacker(port: int) -> str:
    certificate, key = self_signed("attacker.localhost", "shop.localhost")
    text = tls_secret("attacker-tls", certificate, key, namespace="attacker")
    for name, match in CAPTURES.items():
        text += doc(
            "Mapping", name, "attacker", {**match, "service": f"127.0.0.1:{port}", "auth": {"disabled": True}}
        )
    text += doc("Mapping", "own", "attacker", {"prefix": "/attacker/", "service": f"127.0.0.1:{port}"})
    host = {"tlsSecret": {"name": "attacker-tls"}, "insecure": {"action": "Reject"}}
    text += doc("Host", "everything", "attacker", {"hostname": "*", **host})
    text += doc("Host", "shop", "attacker", {"hostname": "shop.localhost", **host})
    text += doc("Host", "loopback", "attacker", {"hostname": "127.0.0.1", **host})
    text += doc(
        "AuthService",
        "takeover",
        "attacker",
        {"service": f"127.0.0.1:{free_port()}", "failureModeAllow": True, "timeout": "100ms"},
    )
    return text


@pytest.fixture(scope="module")
def gateway(module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("tenants")
    ports = {name: free_port() for name in ("orders", "catalog", "reviews", "outside", "attacker")}
    source = root / "manifests"
    source.mkdir()
    for name, text in victim_and_neighbours(ports).items():
        (source / name).write_text(text)
    gateway = start_gateway(module_launcher, source, root / "state")
    gateway.ports = ports  # type: ignore[attr-defined]
    yield gateway
    envoys = gateway.api_json("/api/envoys")
    assert envoys["nacks"] == [], f"Envoy rejected configuration: {envoys['nacks']}"
    assert stop_gateway(gateway) == 0, gateway.process.stdout_text()


def victim_answers(gateway: Gateway, token: str) -> list[tuple[int, str]]:
    """What the victim's users get, over every way the attacker tried to capture them."""
    bearer = {"Authorization": f"Bearer {token}"}
    answers = []
    for path, headers in [
        ("/orders/42", {}),
        ("/orders/42?debug=1", {}),
        ("/orders/4", {"Host": "x.localhost"}),
        ("/orders/4", {"Host": "api.example"}),
        ("/orders/42", bearer),
        ("/orders/42?debug=1", bearer),
        ("/orders/42", {**bearer, "Host": "x.localhost"}),
    ]:
        response = gateway.request("GET", path, headers=headers)
        answers.append((response.status, _who(response)))
    return answers


def _tls(gateway: Gateway, path: str) -> Response | None:
    try:
        return gateway.request_tls(path, server_name="shop.localhost")
    except ConnectionRefusedError:
        return None  # the HTTPS listener comes with the first Host, shortly after start


def _who(response: Response) -> str:
    if response.status == 200:
        return str(response.json()["name"])
    return response.headers.get("www-authenticate", "")


EXPECTED = [(401, REALM)] * 4 + [(200, "team-orders/orders")] * 3


def rejected(gateway: Gateway) -> dict[tuple[str, str], str]:
    found = gateway.api_json("/api/resources?state=Rejected")["resources"]
    return {
        (r["kind"], r["name"]): "; ".join(p["reason"] for p in r["problems"])
        for r in found
        if r["namespace"] == "attacker"
    }


def test_tenants_on_distinct_prefixes_and_delegations_before_the_attack(gateway: Gateway) -> None:
    token = gateway.token(sub=f"u-{uuid.uuid4().hex[:6]}", scopes=[])
    assert victim_answers(gateway, token) == EXPECTED
    assert gateway.request("GET", "/catalog/items").json()["name"] == "team-catalog/catalog"
    reviews = gateway.request("GET", "/reviews/1", headers={"Host": "shop.localhost"})
    assert reviews.status == 200 and reviews.json()["name"] == "team-reviews/reviews"
    over_tls = gateway.wait_until(lambda: _tls(gateway, "/reviews/2"), what="the HTTPS listener")
    assert over_tls.status == 200 and over_tls.json()["name"] == "team-reviews/reviews"
    # The delegate routes inside its grant only: /basket/ on shop.localhost is team-catalog's.
    (gateway.source / "outside.yaml").write_text(outside_the_grant(gateway.ports))  # type: ignore[attr-defined]

    def refused() -> list[Any]:
        return gateway.api_json("/api/resources?kind=Mapping&state=Rejected")["resources"]  # type: ignore[no-any-return]

    outside = gateway.wait_until(refused, what="the Mapping outside the grant rejected")
    assert gateway.request("GET", "/basket/1", headers={"Host": "shop.localhost"}).status == 404
    assert [(r["namespace"], r["name"]) for r in outside] == [("team-reviews", "outside")]
    assert outside[0]["problems"][0]["reason"] == (
        "path /basket/ on host shop.localhost is owned by team-catalog (Host team-catalog/shop), "
        "which delegates only /reviews to team-reviews"
    )


def test_every_capture_is_rejected_and_the_victim_keeps_its_answers(gateway: Gateway) -> None:
    port = gateway.ports["attacker"]  # type: ignore[attr-defined]
    (gateway.source / "attacker.yaml").write_text(attacker(port))
    expected = {("Mapping", name) for name in CAPTURES} | {
        ("Host", "everything"),
        ("Host", "shop"),
        ("AuthService", "takeover"),
    }

    def all_rejected() -> dict[tuple[str, str], str] | None:
        now = rejected(gateway)
        return now if set(now) >= expected else None

    found = gateway.wait_until(all_rejected, what="rejections")
    assert set(found) == expected  # the own prefix and the loopback Host stand (nobody owned them)
    owner = "is owned by team-orders (Mapping team-orders/orders)"
    assert " is owned by team-" in found[("Mapping", "root")]  # `/` overlaps every team: names one
    for name in CAPTURES:
        if name not in ("shop-host", "wildcard", "root"):
            assert found[("Mapping", name)].endswith(owner), (name, found[("Mapping", name)])
    assert found[("Mapping", "shop-host")] == (
        "path /orders/ on host shop.localhost is owned by team-catalog (Host team-catalog/shop)"
    )
    assert found[("Mapping", "wildcard")] == (  # *.localhost covers shop.localhost
        "path /orders/ on host *.localhost is owned by team-catalog (Host team-catalog/shop)"
    )
    assert found[("Host", "everything")].startswith("a Host for * is gateway-wide")
    assert found[("Host", "shop")] == (
        "shop.localhost overlaps hostname shop.localhost is owned by team-catalog (Host team-catalog/shop)"
    )
    assert found[("AuthService", "takeover")].startswith("an AuthService is gateway-wide")
    gateway.wait_until(
        lambda: gateway.request("GET", "/attacker/x", headers={"Host": "neutral.test"}).status == 200,
        what="the attacker's own prefix served",
    )

    token = gateway.token(sub=f"u-{uuid.uuid4().hex[:6]}", scopes=[])
    assert victim_answers(gateway, token) == EXPECTED
    # The attacker's Host for 127.0.0.1 stands (nobody owned that name), but its `insecure: Reject`
    # applies to the attacker's own routes only: the victim's answers above came over 127.0.0.1.
    assert gateway.request("GET", "/attacker/x").status == 403
    assert gateway.request("GET", "/catalog/items").json()["name"] == "team-catalog/catalog"
    reviews = gateway.request("GET", "/reviews/1", headers={"Host": "shop.localhost"})
    assert reviews.json()["name"] == "team-reviews/reviews"
    over_tls = gateway.request_tls("/catalog/items", server_name="shop.localhost")  # team-catalog's cert
    assert over_tls.status == 200


def test_validate_reports_the_same_conflicts_and_exits_1(gateway: Gateway, tmp_path: Path) -> None:
    import subprocess

    from fixtures.managed import legation_binary

    state_manifests = gateway.state / "manifests"
    run = subprocess.run(
        # As `legation up` runs its controller: loopback demo upstreams allowed.
        [
            legation_binary(),
            "validate",
            "--allow-loopback-upstreams",
            str(gateway.source),
            str(state_manifests),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    # Read afresh, nothing was there first: the victim's conflicting Mapping is reported too.
    assert "Mapping team-orders/orders: spec.prefix:" in run.stdout
    assert "Host attacker/everything: spec.hostname: a Host for * is gateway-wide" in run.stdout
