"""End to end through `legation up` and a real Envoy, at the edges of HTTP:

- `Host: admin.example.com.` (an absolute name) is admin.example.com: its policy rule applies and
  its Host's http→https redirect happens (Envoy strips the dot before routing and ext_authz).
- A token whose forwarded claim holds a control character is refused (401), never cleaned.
- Method-override headers are removed before authorization and never reach the upstream, so a
  GET-only rule cannot admit what the upstream runs as DELETE; a route that opts in
  (`allowMethodOverride`) passes them, and the policy checks the overriding method too.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fixtures.gateway import Gateway, Response, start_gateway, stop_gateway
from fixtures.managed import free_port
from fixtures.processes import Launcher

pytestmark = pytest.mark.e2e

OVERRIDES = ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override")

MANIFESTS = """\
apiVersion: legation.dev/v1alpha1
kind: JWTPolicy
metadata: {name: edges, namespace: team-orders}
spec:
  namespaceDefault: true
  # Native (the default): the answers of the service are what these edges pin down, and Envoy
  # gives them too (a claim with a control character: 401, never a header Envoy cannot set).
  enforcement: auto
  providers:
    - name: demo
      issuer: https://demo-issuer.legation.localhost/
      audiences: [orders]
      jwks: {secretRef: {name: demo-issuer-jwks, key: jwks.json}}
      algorithms: [ES256]
  rules:
    - match: {hosts: [admin.example.com]}
      requires: {anyOf: [demo]}
      claims: {scope: [admin]}
    - match: {methods: [GET]}
      public: true
    - match: {}
      requires: {anyOf: [demo]}
      claims: {scope: [write]}
  claimsToHeaders: {sub: x-user-id, plan: x-user-plan}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: reports, namespace: team-orders}
spec: {prefix: /reports/, service: "127.0.0.1:%(port)d"}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: legacy, namespace: team-orders}
spec: {prefix: /legacy/, service: "127.0.0.1:%(port)d", allowMethodOverride: true}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: shop, namespace: team-catalog}
spec: {hostname: shop.localhost, prefix: /cart, service: "127.0.0.1:%(port)d"}  # not / : that would overlap team-orders' * routes
---
apiVersion: legation.dev/v1alpha1
kind: Host
metadata: {name: shop, namespace: team-catalog}
spec: {hostname: shop.localhost, tlsSecret: {name: demo-tls}, insecure: {action: Redirect}}
"""


@pytest.fixture(scope="module")
def gateway(module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("edges")
    source = root / "manifests"
    source.mkdir()
    (source / "edges.yaml").write_text(MANIFESTS % {"port": free_port()})
    gateway = start_gateway(module_launcher, source, root / "state")
    gateway.wait_until(lambda: gateway.request("GET", "/reports/x").status == 200, what="the reports route")
    yield gateway
    envoys = gateway.api_json("/api/envoys")
    assert envoys["nacks"] == [], f"Envoy rejected configuration: {envoys['nacks']}"
    assert stop_gateway(gateway) == 0, gateway.process.stdout_text()


def get(gateway: Gateway, path: str, host: str, token: str | None = None, method: str = "GET") -> int:
    headers = {"Host": host, **({"Authorization": f"Bearer {token}"} if token else {})}
    return gateway.request(method, path, headers=headers).status


# --- trailing dots ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["admin.example.com", "admin.example.com.", "ADMIN.example.com.:80"])
def test_a_policy_rule_for_a_host_applies_to_its_absolute_name(gateway: Gateway, host: str) -> None:
    assert get(gateway, "/reports/1", "api.example.com") == 200  # GET is public elsewhere
    assert get(gateway, "/reports/1", host) == 401
    assert get(gateway, "/reports/1", host, gateway.token()) == 403
    admin = gateway.request(
        "GET",
        "/reports/1",
        headers={"Host": host, "Authorization": f"Bearer {gateway.token(scopes=['admin'])}"},
    )
    assert (
        admin.status == 200 and admin.json()["headers"]["host"].lower() == "admin.example.com"
    )  # no dot, no port


def test_the_redirect_to_https_happens_for_the_absolute_name(gateway: Gateway) -> None:
    for host in ("shop.localhost", "shop.localhost."):
        response = gateway.request("GET", "/cart?x=1", headers={"Host": host})
        assert response.status == 301, host
        assert response.headers["location"] == f"https://shop.localhost:{gateway.https_port}/cart?x=1"


# --- claims with control characters ----------------------------------------------------------------


def test_the_edges_are_enforced_natively(gateway: Gateway) -> None:
    [policy] = [r for r in gateway.api_json("/api/resources")["resources"] if r["name"] == "edges"]
    # All but the route that allows method override (which only the service can check).
    assert policy["enforcement"].startswith("native, except Mapping team-orders/legacy (service: "), policy
    assert policy["enforcement"].count("Mapping ") == 1, policy


def test_a_forwarded_claim_with_a_control_character_is_refused(gateway: Gateway) -> None:
    def post(plan: str) -> Response:  # POST needs a token (GET is public: no claims forwarded)
        token = gateway.token(scopes=["write"], plan=plan)
        return gateway.request("POST", "/reports/1", headers={"Authorization": f"Bearer {token}"}, body=b"{}")

    clean = post("gold")
    assert clean.status == 200 and clean.json()["headers"]["x-user-plan"] == "gold"
    refused = post("gold\u0000admin")
    assert refused.status == 401
    challenge = refused.headers["www-authenticate"]
    assert 'error="invalid_token"' in challenge
    assert 'error_description="claim plan holds control characters"' in challenge


# --- method override --------------------------------------------------------------------------------


@pytest.mark.parametrize("header", OVERRIDES)
def test_override_headers_never_reach_authorization_or_the_upstream(gateway: Gateway, header: str) -> None:
    # GET is public: with the header removed, the upstream runs a GET, never a DELETE.
    response = gateway.request("GET", "/reports/1", headers={header: "DELETE"})
    assert response.status == 200
    echoed = response.json()
    assert echoed["method"] == "GET" and header.lower() not in echoed["headers"]
    # A POST still needs its own rule's token: the override does not make it a GET.
    assert gateway.request("POST", "/reports/1", headers={header: "GET"}, body=b"{}").status == 401


@pytest.mark.parametrize("header", OVERRIDES)
def test_a_route_that_opts_in_passes_them_and_authorizes_the_overriding_method(
    gateway: Gateway, header: str
) -> None:
    assert gateway.request("GET", "/legacy/1").status == 200
    assert gateway.request("GET", "/legacy/1", headers={header: "DELETE"}).status == 401
    reader = gateway.token()
    assert (
        gateway.request(
            "GET", "/legacy/1", headers={header: "DELETE", "Authorization": f"Bearer {reader}"}
        ).status
        == 403
    )
    writer = gateway.token(scopes=["write"])
    response = gateway.request(
        "GET", "/legacy/1", headers={header: "DELETE", "Authorization": f"Bearer {writer}"}
    )
    assert response.status == 200 and response.json()["headers"][header.lower()] == "DELETE"
