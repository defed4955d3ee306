"""Tenant safety end to end, through `legation up` (controller, authz and rate limit services
following the controller's feeds, a real Envoy): a team cannot publish the gateway's own
endpoints, one team's bad key set leaves the other teams' policy changes working, and omitting a
rate rule's claim or header does not escape the limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.gateway import Gateway, start_gateway, stop_gateway
from fixtures.managed import free_port
from fixtures.processes import Launcher

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ISSUER = "https://demo-issuer.legation.localhost/"
UPSTREAM = free_port()  # a demo upstream `legation up` starts for the Mappings below


def _policy(rules: str) -> str:
    # team-orders: where `legation up` publishes the demo issuer's keys (Secret demo-issuer-jwks).
    return f"""apiVersion: legation.dev/v1alpha1
kind: JWTPolicy
metadata: {{name: b-jwt, namespace: team-orders}}
spec:
  providers:
    - name: demo
      issuer: {ISSUER}
      jwks: {{secretRef: {{name: demo-issuer-jwks, key: jwks.json}}}}
      algorithms: [ES256]
  rules:
{rules}
  metadataClaims: [sub]
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {{name: b, namespace: team-orders}}
spec: {{prefix: /b/, service: 127.0.0.1:{UPSTREAM}, auth: {{policy: b-jwt}}}}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata:
  name: rl-claim
  namespace: team-orders
  annotations: {{legation.dev/rate-limit: "2/m per claim:sub"}}
spec: {{prefix: /rl-claim/, service: 127.0.0.1:{UPSTREAM}, auth: {{disabled: true}}}}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata:
  name: rl-header
  namespace: team-orders
  annotations: {{legation.dev/rate-limit: "2/m per header:x-api-key"}}
spec: {{prefix: /rl-header/, service: 127.0.0.1:{UPSTREAM}, auth: {{disabled: true}}}}
"""


PUBLIC_ONLY = "    - match: {pathPrefix: /b/public}\n      public: true\n"
WITH_PRIVATE = PUBLIC_ONLY + "    - match: {pathPrefix: /b/private}\n      requires: {anyOf: [demo]}\n"

# team-a: a JWTPolicy whose Secret holds no key set (a TLS certificate, say), and a Mapping using it.
BAD_KEYS = f"""apiVersion: v1
kind: Secret
metadata: {{name: not-a-jwks, namespace: team-a}}
stringData: {{jwks.json: "-----BEGIN CERTIFICATE-----"}}
---
apiVersion: legation.dev/v1alpha1
kind: JWTPolicy
metadata: {{name: a-jwt, namespace: team-a}}
spec:
  providers:
    - {{name: corp, issuer: https://idp.a/, jwks: {{secretRef: {{name: not-a-jwks, key: jwks.json}}}}}}
  rules: [{{requires: {{anyOf: [corp]}}}}]
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {{name: a, namespace: team-a}}
spec: {{prefix: /a/, service: 127.0.0.1:{UPSTREAM}, auth: {{policy: a-jwt}}}}
"""


@pytest.fixture(scope="module")
def gateway(module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("tenants")
    source = root / "manifests"
    (source / "team-orders").mkdir(parents=True)
    (source / "team-orders" / "b.yaml").write_text(_policy(PUBLIC_ONLY))
    gateway = start_gateway(module_launcher, source, root / "state")
    gateway.wait_until(lambda: gateway.request("GET", "/b/public/x").status == 200, what="team-orders served")
    yield gateway
    assert gateway.api_json("/api/envoys")["nacks"] == []
    assert stop_gateway(gateway) == 0, gateway.process.stdout_text()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    tmp.replace(path)


def _status(gateway: Gateway, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    for r in gateway.api_json("/api/resources")["resources"]:
        if (r["kind"], r["namespace"], r["name"]) == (kind, namespace, name):
            return dict(r)
    return None


def _rejected(gateway: Gateway, kind: str, namespace: str, name: str) -> str:
    """Waits for the resource's verdict; its reasons (it must be Rejected)."""
    status = gateway.wait_until(
        lambda: _status(gateway, kind, namespace, name), what=f"{kind} {namespace}/{name} compiled"
    )
    assert status["state"] == "Rejected", status
    return " ".join(p["reason"] for p in status["problems"])


def test_the_gateways_own_endpoints_are_rejected_and_never_routed(gateway: Gateway) -> None:
    mappings = {
        "adm": f"127.0.0.1:{gateway.admin_port}",  # Envoy's admin
        "adm-v6": f"[::1]:{gateway.admin_port}",
        "adm-name": f"localhost:{gateway.admin_port}",
        "ctl": f"127.0.0.1:{gateway.api_port}",  # the controller's API and feeds
    }
    text = "---\n".join(
        "apiVersion: legation.dev/v1alpha1\nkind: Mapping\n"
        f"metadata: {{name: {name}, namespace: team-evil}}\n"
        f"spec: {{prefix: /x-{name}/, rewrite: /, service: '{service}', auth: {{disabled: true}}}}\n"
        for name, service in mappings.items()
    )
    (gateway.source / "team-evil").mkdir(exist_ok=True)
    _write(gateway.source / "team-evil" / "evil.yaml", text)
    for name in mappings:
        reason = _rejected(gateway, "Mapping", "team-evil", name)
        assert "the gateway's own endpoint" in reason, reason
    before = gateway.api_json("/api/envoys")
    for name in mappings:
        assert gateway.request("POST", f"/x-{name}/quitquitquit").status == 404
        assert gateway.request("GET", f"/x-{name}/feed/authz").status == 404
    assert gateway.request("GET", "/b/public/x").status == 200  # Envoy still serves
    assert gateway.api_json("/api/envoys")["nodes"] == before["nodes"]


def test_a_bad_key_set_in_one_team_leaves_the_other_teams_changes_working(gateway: Gateway) -> None:
    (gateway.source / "team-a").mkdir(exist_ok=True)
    _write(gateway.source / "team-a" / "a.yaml", BAD_KEYS)
    reason = _rejected(gateway, "JWTPolicy", "team-a", "a-jwt")
    assert "not a usable key set" in reason and "JWKS is not valid JSON" in reason, reason
    assert "JWTPolicy team-a/a-jwt is rejected" in _rejected(gateway, "Mapping", "team-a", "a")
    feeds = gateway.api_text("/api/feeds")
    assert "b-jwt" in feeds and "a-jwt" not in feeds  # the bad policy never reaches the authz service

    # team-orders changes its policy meanwhile: the authz service applies it.
    assert gateway.request("GET", "/b/private/x").status == 403  # no rule matches yet
    _write(gateway.source / "team-orders" / "b.yaml", _policy(WITH_PRIVATE))
    gateway.wait_until(lambda: gateway.request("GET", "/b/private/x").status == 401, what="new rule applied")
    token = gateway.token(sub="bob")
    allowed = gateway.request("GET", "/b/private/x", headers={"Authorization": f"Bearer {token}"})
    assert allowed.status == 200, allowed.body
    assert gateway.request("GET", "/a/x").status == 404  # team-a's route is not served at all


def _statuses(gateway: Gateway, path: str, n: int, headers: dict[str, str] | None = None) -> list[int]:
    return [gateway.request("GET", path, headers=headers).status for _ in range(n)]


def test_requests_without_the_claim_or_header_share_one_bucket(gateway: Gateway) -> None:
    gateway.wait_until(
        lambda: gateway.request("GET", "/rl-header/warm", headers={"x-api-key": "warm"}).status == 200,
        what="rl route",
    )
    # No token on a public route: no `sub`; all such requests share the rule's bucket.
    assert _statuses(gateway, "/rl-claim/x", 3) == [200, 200, 429]
    # No x-api-key: one shared bucket too; a key of its own still has its own budget.
    assert _statuses(gateway, "/rl-header/x", 3) == [200, 200, 429]
    assert _statuses(gateway, "/rl-header/x", 2, {"x-api-key": "k1"}) == [200, 200]
    assert _statuses(gateway, "/rl-header/x", 1, {"x-api-key": "k1"}) == [429]
