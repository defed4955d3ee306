"""End to end on examples/: `legation up` starts the whole gateway (controller on a copy of
examples/, authz, ratelimit in memory, demo upstreams, real Envoy) and the README's walkthrough
is checked request by request: routing, auth (200/401/403 with identity headers at the upstream),
per-user and per-address limits (429), the canary split, TLS with SNI and the http→https redirect.
Then live changes to the copy: an edited Mapping is served, a deleted one is gone, a bad one is
rejected with its reason while the rest keeps serving. Envoy must never NACK anything.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.gateway import Gateway, copy_examples, start_gateway, stop_gateway
from fixtures.processes import Launcher

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gateway(module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("up")
    gateway = start_gateway(module_launcher, copy_examples(root / "examples"), root / "state")
    yield gateway
    envoys = gateway.api_json("/api/envoys")
    assert envoys["nacks"] == [], f"Envoy rejected configuration: {envoys['nacks']}"
    assert stop_gateway(gateway) == 0, gateway.process.stdout_text()


def _user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


# --- routing and auth ------------------------------------------------------------------------------


def test_public_route_reaches_the_orders_upstream(gateway: Gateway) -> None:
    response = gateway.request("GET", "/orders/public/menu")
    assert response.status == 200, response.body
    echoed = response.json()
    assert echoed["name"] == "team-orders/orders"
    assert echoed["path"] == "/orders/public/menu"
    assert response.headers["x-served-by"] == "team-orders"


def test_unknown_path_is_404(gateway: Gateway) -> None:
    assert gateway.request("GET", "/nowhere").status == 404


def test_protected_route_without_token_is_401_with_a_bearer_challenge(gateway: Gateway) -> None:
    response = gateway.request("GET", "/orders/42")
    assert response.status == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_token_with_the_read_scope_is_allowed_and_identity_reaches_the_upstream(gateway: Gateway) -> None:
    user = _user()
    token = gateway.token(sub=user, scopes=["orders:read"], plan="gold")
    response = gateway.request(
        "GET",
        "/orders/42",
        headers={"Authorization": f"Bearer {token}", "x-user-id": "mallory"},  # a forged copy
    )
    assert response.status == 200, response.body
    headers = response.json()["headers"]
    assert headers["x-user-id"] == user
    assert headers["x-user-plan"] == "gold"
    assert "authorization" not in headers  # the token is not forwarded


def test_write_without_the_write_scope_is_403(gateway: Gateway) -> None:
    token = gateway.token(sub=_user(), scopes=["orders:read"])
    response = gateway.request("POST", "/orders/42", headers={"Authorization": f"Bearer {token}"}, body=b"{}")
    assert response.status == 403
    assert "insufficient_scope" in response.headers.get("www-authenticate", "")


def test_token_for_another_audience_is_refused(gateway: Gateway) -> None:
    token = gateway.token(aud="billing", scopes=["orders:read"])
    response = gateway.request("GET", "/orders/1", headers={"Authorization": f"Bearer {token}"})
    # A valid token issued for another API: authenticated, not authorized here (see README).
    assert response.status == 403
    assert response.json()["reason"] == "audience not allowed"


# --- rate limits -----------------------------------------------------------------------------------


def test_per_user_limit_counts_each_user_separately(gateway: Gateway) -> None:
    alice, bob = (gateway.token(sub=_user(), scopes=["orders:read"]) for _ in range(2))
    statuses = [
        gateway.request("GET", "/orders/1", headers={"Authorization": f"Bearer {alice}"}).status
        for _ in range(11)
    ]
    assert statuses[:10] == [200] * 10, statuses
    assert statuses[10] == 429
    assert gateway.request("GET", "/orders/1", headers={"Authorization": f"Bearer {bob}"}).status == 200


def test_per_address_limit_on_search_which_is_rewritten(gateway: Gateway) -> None:
    responses = [gateway.request("GET", "/catalog/search?q=tea") for _ in range(6)]
    statuses = [r.status for r in responses]
    assert statuses[:5] == [200] * 5, statuses
    assert statuses[5] == 429
    assert responses[0].json()["path"] == "/search"  # prefix /catalog/search rewritten to /search


def test_canary_split_is_within_tolerance(gateway: Gateway) -> None:
    names = Counter(gateway.request("GET", "/catalog/items").json()["name"] for _ in range(300))
    assert set(names) == {"team-catalog/catalog", "team-catalog/catalog-canary"}, names
    share = names["team-catalog/catalog-canary"] / 300
    # 20% configured; 300 draws: standard deviation ~2.3 points, so ±8 points is > 3 sigma.
    assert 0.12 <= share <= 0.28, names


def test_cors_preflight_is_answered_by_envoy(gateway: Gateway) -> None:
    response = gateway.request(
        "OPTIONS",
        "/catalog/items",
        headers={"Origin": "https://shop.localhost", "Access-Control-Request-Method": "GET"},
    )
    assert response.status == 200
    assert response.headers["access-control-allow-origin"] == "https://shop.localhost"


# --- TLS -------------------------------------------------------------------------------------------


def test_tls_with_sni_serves_the_host(gateway: Gateway) -> None:
    response = gateway.request_tls("/catalog/items", server_name="shop.localhost")
    assert response.status == 200
    assert response.json()["name"].startswith("team-catalog/catalog")


def test_plain_http_for_the_tls_host_redirects_to_https(gateway: Gateway) -> None:
    response = gateway.request("GET", "/catalog/items", headers={"Host": "shop.localhost"})
    assert response.status == 301
    assert response.headers["location"].startswith("https://shop.localhost")


# --- live changes ----------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    """As editors do: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    tmp.replace(path)


def test_an_edited_mapping_is_served(gateway: Gateway) -> None:
    path = gateway.source / "team-orders" / "orders.yaml"
    original = path.read_text()
    _write(path, original.replace("x-served-by: team-orders", "x-served-by: team-orders-v2"))
    try:
        gateway.wait_until(
            lambda: gateway.request("GET", "/orders/public/x").headers.get("x-served-by") == "team-orders-v2",
            what="the edited header",
        )
    finally:
        _write(path, original)
    gateway.wait_until(
        lambda: gateway.request("GET", "/orders/public/x").headers.get("x-served-by") == "team-orders",
        what="the original header",
    )


def test_a_deleted_mapping_is_404_and_a_new_one_is_served(gateway: Gateway) -> None:
    path = gateway.source / "team-catalog" / "extra.yaml"
    _write(
        path,
        """apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: extra, namespace: team-catalog}
spec: {prefix: /extra/, service: 127.0.0.1:9082}
""",
    )
    gateway.wait_until(lambda: gateway.request("GET", "/extra/1").status == 200, what="the new Mapping")
    path.unlink()
    gateway.wait_until(lambda: gateway.request("GET", "/extra/1").status == 404, what="the deleted Mapping")


def test_a_bad_mapping_is_rejected_and_the_rest_keeps_serving(gateway: Gateway) -> None:
    path = gateway.source / "team-catalog" / "broken.yaml"
    _write(
        path,
        """apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: broken, namespace: team-catalog}
spec: {regex: "/broken/(unclosed", service: 127.0.0.1:9082}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: fine, namespace: team-catalog}
spec: {prefix: /fine/, service: 127.0.0.1:9082}
""",
    )
    try:
        gateway.wait_until(lambda: gateway.request("GET", "/fine/1").status == 200, what="the good neighbour")

        def rejected() -> list[dict[str, object]]:
            return [
                r
                for r in gateway.api_json("/api/resources")["resources"]
                if r["name"] == "broken" and r["state"] == "Rejected"
            ]

        found = gateway.wait_until(rejected, what="the Rejected status")
        reason = str(found[0]["problems"])
        assert "regex" in reason.lower() or "missing" in reason.lower(), reason
        page = gateway.api_text("/")
        assert "broken" in page and "Rejected" in page
        assert gateway.request("GET", "/orders/public/menu").status == 200
        assert gateway.request("GET", "/catalog/items").status == 200
    finally:
        path.unlink()
