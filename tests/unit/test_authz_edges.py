"""The authorizer at the edges of HTTP: a host with a trailing dot is the same host (a rule for
admin.example.com applies to `admin.example.com.`), claims with control characters are refused
rather than cleaned (`alice\\0admin` never becomes `aliceadmin`), and method-override headers
never let a GET-only rule admit a request the upstream runs as another method."""

from __future__ import annotations

import pytest
from fixtures.jwks_server import jwks_json, make_rsa_key, mint

from legation.authz.authorizer import Authorizer, HttpRequest
from legation.authz.config import load_policy_texts
from legation.authz.jwks import StaticKeySource
from legation.authz.policy import compile_policy, has_control_characters, normalize_host
from legation.authz.tokens import TokenCache

KEY = make_rsa_key("k1")
POLICY = """
apiVersion: legation.dev/v1alpha1
kind: JWTPolicy
metadata: {name: p, namespace: ns}
spec:
  providers:
    - name: corp
      issuer: https://idp/
      jwks: {inline: '%s'}
  rules:
    - match: {hosts: [admin.example.com]}
      requires: {anyOf: [corp]}
      claims: {scope: [admin]}
    - match: {pathPrefix: /reports, methods: [GET]}
      public: true
    - match: {pathPrefix: /reports, methods: [DELETE]}
      requires: {anyOf: [corp]}
      claims: {scope: [admin]}
    - match: {pathPrefix: /}
      requires: {anyOf: [corp]}
  claimsToHeaders: {sub: x-user-id, "org.team": x-team}
  metadataClaims: [plan]
"""


@pytest.fixture
def az() -> Authorizer:
    (policy,) = load_policy_texts([("p.yaml", POLICY % jwks_json([KEY]))]).policies
    compiled = compile_policy(
        policy, lambda pid, p: StaticKeySource(data=p.jwks.inline, algorithms=p.algorithms, source=pid)
    )
    return Authorizer({compiled.key: compiled}, default_policy=None, cache=TokenCache())


def request(
    method: str = "GET",
    host: str = "api.example.com",
    path: str = "/reports/1",
    headers: dict[str, str] | None = None,
    *,
    override: bool = False,
) -> HttpRequest:
    return HttpRequest(
        method=method, host=host, path=path, headers=headers or {}, policy="ns/p", method_override=override
    )


def bearer(**claims: object) -> dict[str, str]:
    return {"authorization": f"Bearer {mint(KEY, {'iss': 'https://idp/', 'sub': 'alice', **claims})}"}


# --- hosts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "host"),
    [
        ("admin.example.com", "admin.example.com"),
        ("admin.example.com.", "admin.example.com"),
        ("Admin.Example.COM.:8443", "admin.example.com"),
        ("[::1]:8080", "[::1]"),
        ("", ""),
        ("admin.example.com..", None),
        ("admin..example.com", None),
        (".admin.example.com", None),
        (".", None),
    ],
)
def test_normalize_host(raw: str, host: str | None) -> None:
    assert normalize_host(raw) == host


@pytest.mark.parametrize("host", ["admin.example.com", "admin.example.com.", "ADMIN.example.com.:80"])
async def test_a_host_rule_applies_to_the_absolute_name_too(az: Authorizer, host: str) -> None:
    public_elsewhere = await az.check(request(host="api.example.com"))
    assert public_elsewhere.allow and public_elsewhere.reason == "public"
    missing = await az.check(request(host=host))
    assert (missing.allow, missing.status) == (False, 401)  # the admin rule, not the public one
    user = await az.check(request(host=host, headers=bearer()))
    assert (user.allow, user.status, user.reason) == (False, 403, "missing required scope")
    assert (await az.check(request(host=host, headers=bearer(scope="admin")))).allow


async def test_a_host_no_rule_could_mean_is_refused(az: Authorizer) -> None:
    verdict = await az.check(request(host="admin.example.com.."))
    assert (verdict.allow, verdict.status, verdict.reason) == (False, 400, "ambiguous host")


# --- claims with control characters ---------------------------------------------------------------


def test_control_characters() -> None:
    assert not has_control_characters("alice") and not has_control_characters("Zoë 🚀")
    for bad in ("alice\0admin", "a\r\nx-admin: 1", "tab\there", "del\x7f", "c1\x85"):
        assert has_control_characters(bad), repr(bad)


@pytest.mark.parametrize(
    ("claims", "claim"),
    [
        ({"sub": "alice\0admin"}, "sub"),  # claimsToHeaders and metadata
        ({"org": {"team": "a\r\nx-admin: true"}}, "org.team"),  # claimsToHeaders, nested
        ({"plan": ["gold", "x\x1b[31m"]}, "plan"),  # metadataClaims, in an array
    ],
)
async def test_a_claim_to_forward_with_control_characters_is_refused(
    az: Authorizer, claims: dict[str, object], claim: str
) -> None:
    verdict = await az.check(request(path="/orders", headers=bearer(**claims)))
    assert (verdict.allow, verdict.status, verdict.error) == (False, 401, "invalid_token")
    assert verdict.reason == f"claim {claim} holds control characters"
    assert verdict.www_authenticate is not None
    assert f'error_description="claim {claim} holds control characters"' in verdict.www_authenticate


async def test_a_claim_that_is_not_forwarded_may_hold_anything(az: Authorizer) -> None:
    verdict = await az.check(request(path="/orders", headers=bearer(note="line\nbreak")))
    assert verdict.allow and dict(verdict.set_headers)["x-user-id"] == "alice"


# --- method override --------------------------------------------------------------------------------

OVERRIDES = ["x-http-method-override", "x-http-method", "x-method-override"]


@pytest.mark.parametrize("header", OVERRIDES)
async def test_override_headers_are_refused_where_the_route_does_not_allow_them(
    az: Authorizer, header: str
) -> None:
    assert (await az.check(request())).allow  # GET /reports is public
    verdict = await az.check(request(headers={header: "DELETE"}))
    assert (verdict.allow, verdict.status, verdict.reason) == (False, 400, "method override not allowed")


@pytest.mark.parametrize("header", OVERRIDES)
async def test_where_allowed_every_overriding_method_must_pass_its_rules(az: Authorizer, header: str) -> None:
    # GET is public, DELETE needs an admin: GET + override DELETE is a DELETE upstream.
    anonymous = await az.check(request(headers={header: "delete"}, override=True))
    assert (anonymous.allow, anonymous.status) == (False, 401)
    user = await az.check(request(headers={header: "DELETE", **bearer()}, override=True))
    assert (user.allow, user.status) == (False, 403)
    admin = await az.check(request(headers={header: "DELETE", **bearer(scope="admin")}, override=True))
    assert admin.allow
    # POST + override GET: the POST itself must pass too (no rule for POST /reports: the catch-all).
    post = await az.check(request("POST", headers={header: "GET"}, override=True))
    assert (post.allow, post.status) == (False, 401)
    same = await az.check(request(headers={header: "GET"}, override=True))
    assert same.allow and same.reason == "public"


async def test_several_override_values_must_all_pass(az: Authorizer) -> None:
    headers = {"x-http-method-override": "GET", "x-method-override": "GET, DELETE"}
    verdict = await az.check(request(headers=headers, override=True))
    assert (verdict.allow, verdict.status) == (False, 401)
