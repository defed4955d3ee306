"""Black box: HTTP through a real Envoy whose ext_authz filter calls `legation authz`.

Envoy bootstrap: tests/fixtures/envoy_authz.yaml (per-route policy names in
`check_settings.context_extensions`, one route with ext_authz disabled); policies:
tests/fixtures/authz_policies.yaml. The upstream echoes the headers it received, so the tests see
exactly what reached it; every request carries a unique `x-test-id` to tell whether it did.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures.authz_stack import AuthzStack, Team, start_stack
from fixtures.probes import HttpResponse, metric_sum
from fixtures.processes import Launcher, http_get

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def stack(module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthzStack]:
    with start_stack(module_launcher, tmp_path_factory.mktemp("authz-envoy")) as gw:
        yield gw


def _send(stack: AuthzStack, path: str, headers: dict[str, str] | None = None) -> tuple[HttpResponse, bool]:
    """(response, whether the request reached the upstream)."""
    marker = uuid.uuid4().hex
    resp = stack.get(path, {**(headers or {}), "x-test-id": marker})
    return resp, stack.echo.saw(marker)


def _upstream_headers(resp: HttpResponse) -> dict[str, str]:
    assert resp.status == 200, resp
    headers: dict[str, str] = json.loads(resp.body)["headers"]
    return headers


def _bearer(team: Team, **claims: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {team.token(**claims)}"}


def test_allowed_request_reaches_upstream_with_identity_and_without_token(stack: AuthzStack) -> None:
    headers = {
        **_bearer(stack.a, sub="alice", org={"team": "orders"}),
        "x-user-id": "mallory",
        "x-team": "evil",
    }
    resp, reached = _send(stack, "/a/items", headers)
    assert reached
    seen = _upstream_headers(resp)
    assert seen["x-user-id"] == "alice"  # the client's copy is overwritten, not appended
    assert seen["x-team"] == "orders"
    assert "authorization" not in seen


def test_identity_header_of_an_absent_claim_is_removed(stack: AuthzStack) -> None:
    # The token has no org.team claim: the client's x-team must not reach the upstream either.
    resp, reached = _send(stack, "/a/items", {**_bearer(stack.a, sub="bob"), "x-team": "admins"})
    assert reached
    seen = _upstream_headers(resp)
    assert seen["x-user-id"] == "bob"
    assert "x-team" not in seen


def test_token_from_cookie_is_accepted(stack: AuthzStack) -> None:
    resp, reached = _send(stack, "/a/items", {"cookie": f"theme=dark; session={stack.a.token(sub='carol')}"})
    assert reached
    assert _upstream_headers(resp)["x-user-id"] == "carol"


def test_missing_token_is_401_with_bare_challenge(stack: AuthzStack) -> None:
    resp, reached = _send(stack, "/a/items")
    assert not reached
    assert resp.status == 401
    assert resp.header("www-authenticate") == 'Bearer realm="team-a/orders"'
    assert json.loads(resp.body) == {"error": "unauthorized", "reason": "missing token"}
    assert resp.header("content-type") == "application/json"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": 1_000_000}, "token expired"),
        ({"iss": "https://idp.team-a.example"}, "untrusted issuer"),
    ],
)
def test_invalid_token_is_401_invalid_token(
    stack: AuthzStack, claims: dict[str, object], reason: str
) -> None:
    resp, reached = _send(stack, "/a/items", _bearer(stack.a, **claims))
    assert not reached
    assert resp.status == 401
    assert resp.header("www-authenticate") == (
        f'Bearer realm="team-a/orders", error="invalid_token", error_description="{reason}"'
    )
    assert json.loads(resp.body) == {"error": "invalid_token", "reason": reason}


def test_wrong_audience_is_403_insufficient_scope(stack: AuthzStack) -> None:
    resp, reached = _send(stack, "/a/items", _bearer(stack.a, aud="billing"))
    assert not reached
    assert resp.status == 403
    assert resp.header("www-authenticate") == (
        'Bearer realm="team-a/orders", error="insufficient_scope", error_description="audience not allowed"'
    )
    assert json.loads(resp.body) == {"error": "insufficient_scope", "reason": "audience not allowed"}


def test_missing_claim_is_403_and_present_claim_is_allowed(stack: AuthzStack) -> None:
    resp, reached = _send(stack, "/a/admin/users", _bearer(stack.a, scope="orders:read"))
    assert not reached
    assert resp.status == 403
    assert json.loads(resp.body) == {"error": "insufficient_scope", "reason": "missing required scope"}
    assert 'error="insufficient_scope"' in (resp.header("www-authenticate") or "")
    resp, reached = _send(stack, "/a/admin/users", _bearer(stack.a, scope="orders:read orders:admin"))
    assert reached and resp.status == 200


def test_public_route_removes_spoofed_identity_headers(stack: AuthzStack) -> None:
    resp, reached = _send(stack, "/a/public/menu", {"x-user-id": "admin", "x-team": "root"})
    assert reached
    seen = _upstream_headers(resp)
    assert "x-user-id" not in seen
    assert "x-team" not in seen


def test_disabled_route_needs_no_token(stack: AuthzStack) -> None:
    before = stack.service.metrics_text()
    resp, reached = _send(stack, "/open/anything", {"x-user-id": "whoever"})
    assert reached and resp.status == 200
    # ext_authz is off here: the service was not asked, so nothing strips the header either.
    assert _upstream_headers(resp)["x-user-id"] == "whoever"
    total = "legation_authz_decisions_total"
    assert metric_sum(stack.service.metrics_text(), total) == metric_sum(before, total)


@pytest.mark.parametrize(
    ("path", "reason"), [("/ghost/x", "unknown policy"), ("/nopolicy/x", "no policy for this route")]
)
def test_route_without_a_known_policy_is_403_without_challenge(
    stack: AuthzStack, path: str, reason: str
) -> None:
    resp, reached = _send(stack, path, _bearer(stack.a))
    assert not reached
    assert resp.status == 403
    assert resp.header("www-authenticate") is None
    assert json.loads(resp.body)["reason"] == reason


def test_other_teams_route_rejects_the_token(stack: AuthzStack) -> None:
    resp, reached = _send(stack, "/b/invoices", _bearer(stack.a))
    assert not reached
    assert resp.status == 401
    assert json.loads(resp.body) == {"error": "invalid_token", "reason": "untrusted issuer"}
    assert 'realm="team-b/billing"' in (resp.header("www-authenticate") or "")
    resp, reached = _send(stack, "/b/invoices", _bearer(stack.b, sub="bill"))
    assert reached
    assert _upstream_headers(resp)["x-user-id"] == "bill"


def test_decisions_are_counted_by_policy_result_status_and_reason(stack: AuthzStack) -> None:
    metrics = stack.service.metrics_text()
    name = "legation_authz_decisions_total"
    assert metric_sum(metrics, name, policy="team-a/orders", result="allow", status="200") >= 3
    assert (
        metric_sum(metrics, name, policy="team-a/orders", result="deny", status="401", reason="missing token")
        >= 1
    )
    assert metric_sum(metrics, name, policy="team-b/billing", result="deny", reason="untrusted issuer") >= 1
    # Envoy saw no failed calls to the service.
    stats = stack.envoy.stats()
    assert stats.get("cluster.echo.ext_authz.error", 0) == 0
    assert stats.get("http.front.ext_authz.error", 0) == 0


def test_service_is_healthy_over_grpc_and_http(stack: AuthzStack) -> None:
    assert stack.service.health() == "SERVING"
    for probe in ("healthz", "readyz"):
        status, _ = http_get(f"http://127.0.0.1:{stack.service.metrics_port}/{probe}")
        assert status == 200, probe


def test_unreachable_signing_keys_are_503_and_public_rules_still_work(stack: AuthzStack) -> None:
    token = stack.a.token(iss="https://idp.team-c.example/")
    resp, reached = _send(stack, "/c/orders", {"authorization": f"Bearer {token}"})
    assert not reached
    assert resp.status == 503, resp
    assert json.loads(resp.body)["reason"] == "signing keys unavailable"
    assert resp.header("www-authenticate") is None
    resp, reached = _send(stack, "/c/public/status")
    assert reached and resp.status == 200
