"""The authorizer's memo of allow verdicts: reused only for the very same policy, rule, verified
claims and Cookie header; never across reloads, rules, tokens or claim failures."""

from __future__ import annotations

import json

from fixtures.jwks_server import jwks_json, make_rsa_key, mint

from legation.authz.authorizer import Authorizer, HttpRequest
from legation.authz.config import load_policy_texts
from legation.authz.jwks import StaticKeySource
from legation.authz.policy import compile_policy
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
    - match: {pathPrefix: /admin}
      requires: {anyOf: [corp]}
      claims: {scope: [admin]}
    - match: {pathPrefix: /}
      requires: {anyOf: [corp]}
  claimsToHeaders: {sub: x-user-id}
"""


def authorizer() -> Authorizer:
    (policy,) = load_policy_texts([("p.yaml", POLICY % jwks_json([KEY]))]).policies
    compiled = compile_policy(
        policy, lambda pid, p: StaticKeySource(data=p.jwks.inline, algorithms=p.algorithms, source=pid)
    )
    return Authorizer({compiled.key: compiled}, default_policy=None, cache=TokenCache())


def request(token: str, path: str = "/orders", cookie: str | None = None) -> HttpRequest:
    headers = {"authorization": f"Bearer {token}"}
    if cookie is not None:
        headers["cookie"] = cookie
    return HttpRequest(method="GET", host="api", path=path, headers=headers, policy="ns/p")


async def test_repeated_token_reuses_the_verdict() -> None:
    az = authorizer()
    token = mint(KEY, {"iss": "https://idp/", "sub": "alice"})
    first, second = await az.check(request(token)), await az.check(request(token))
    assert first.allow and first is second
    assert first.set_headers == (("x-user-id", "alice"),)


async def test_different_tokens_rules_and_cookies_get_their_own_verdicts() -> None:
    az = authorizer()
    alice = mint(KEY, {"iss": "https://idp/", "sub": "alice"})
    bob = mint(KEY, {"iss": "https://idp/", "sub": "bob", "scope": "admin"})
    a, b = await az.check(request(alice)), await az.check(request(bob))
    assert dict(a.set_headers)["x-user-id"] == "alice" and dict(b.set_headers)["x-user-id"] == "bob"
    assert (await az.check(request(bob, "/admin/x"))).allow
    denied = await az.check(request(alice, "/admin/x"))  # same token, other rule: claims fail
    assert not denied.allow and denied.status == 403
    assert not (await az.check(request(alice, "/admin/x"))).allow
    with_cookie = await az.check(request(alice, cookie="theme=dark"))
    assert with_cookie.allow and with_cookie is not a


async def test_a_reload_never_reuses_old_verdicts() -> None:
    old, new = authorizer(), authorizer()
    token = mint(KEY, {"iss": "https://idp/", "sub": "alice"})
    shared = TokenCache()
    old.cache = new.cache = shared
    assert (await old.check(request(token))) is not (await new.check(request(token)))
    assert json.dumps(sorted(old.policies)) == json.dumps(sorted(new.policies))
