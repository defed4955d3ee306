"""JWTPolicy validation: the DESIGN example loads; every rule of the schema has its error."""

from __future__ import annotations

import textwrap

import pytest

from legation.authz.config import load_policy_texts
from legation.core.errors import ConfigErrors

DESIGN_EXAMPLE = """
apiVersion: legation.dev/v1alpha1
kind: JWTPolicy
metadata: {name: orders-jwt, namespace: team-orders}
spec:
  namespaceDefault: false
  providers:
    - name: corp
      issuer: https://idp.example.com/
      audiences: [orders]
      jwks: {uri: https://idp.example.com/jwks.json, cacheDuration: 10m}
      algorithms: [RS256, ES256]
      tokenSources: [{header: Authorization, prefix: "Bearer "}, {cookie: session}, {query: access_token}]
      clockSkew: 60s
  rules:
    - match: {pathPrefix: /orders/public}
      public: true
    - match: {pathPrefix: /orders, methods: [GET]}
      requires: {anyOf: [corp]}
      claims: {scope: ["orders:read"]}
    - match: {pathPrefix: /orders}
      requires: {anyOf: [corp]}
      claims: {scope: ["orders:write"], "org.team": ["orders"]}
  claimsToHeaders: {sub: x-user-id, "org.team": x-team}
  metadataClaims: [sub, plan]
  forwardToken: false
"""


def test_design_example_loads() -> None:
    loaded = load_policy_texts([("p.yaml", DESIGN_EXAMPLE)])
    (policy,) = loaded.policies
    assert policy.key == "team-orders/orders-jwt"
    provider = policy.spec.providers[0]
    assert provider.jwks.cache_duration == 600.0 and provider.clock_skew == 60.0
    assert [s.cookie for s in provider.token_sources] == [None, "session", None]
    assert policy.spec.rules[2].claims == {"scope": ["orders:write"], "org.team": ["orders"]}
    assert loaded.origin == {"team-orders/orders-jwt": "p.yaml"}


def spec(body: str) -> str:
    return (
        "apiVersion: legation.dev/v1alpha1\nkind: JWTPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n"
        + textwrap.indent(textwrap.dedent(body).strip("\n"), "  ")
        + "\n"
    )


PROVIDER = """
providers:
  - name: corp
    issuer: https://idp/
    jwks: {inline: '{"keys": []}'}
"""

CASES = {
    "none algorithm": (
        spec(PROVIDER.replace("jwks:", "algorithms: [none]\n    jwks:") + "rules: [{public: true}]"),
        "p.yaml:8: JWTPolicy ns/p: spec.providers[0].algorithms[0]: Input should be 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA', 'HS256', 'HS384' or 'HS512'",
    ),
    "HS mixed with RS": (
        spec(PROVIDER.replace("jwks:", "algorithms: [HS256, RS256]\n    jwks:") + "rules: [{public: true}]"),
        "p.yaml:8: JWTPolicy ns/p: spec.providers[0].algorithms: HS* algorithms cannot be mixed with asymmetric ones in one provider",
    ),
    "HS with a JWKS uri": (
        spec(
            "providers:\n  - name: corp\n    issuer: https://idp/\n    algorithms: [HS256]\n"
            "    jwks: {uri: https://idp/jwks}\nrules: [{public: true}]"
        ),
        "p.yaml:6: JWTPolicy ns/p: spec.providers[0]: HS* algorithms need a secret key source (inline, file or secretRef), not a uri",
    ),
    "clock skew too large": (
        spec(PROVIDER.replace("jwks:", "clockSkew: 10m\n    jwks:") + "rules: [{public: true}]"),
        "p.yaml:8: JWTPolicy ns/p: spec.providers[0].clockSkew: clockSkew must be at most 300s",
    ),
    "two jwks sources": (
        spec(PROVIDER.replace("{inline", "{uri: https://x/, inline") + "rules: [{public: true}]"),
        "p.yaml:8: JWTPolicy ns/p: spec.providers[0].jwks: set exactly one of uri, inline, file, secretRef",
    ),
    "unknown provider in a rule": (
        spec(PROVIDER + "rules: [{requires: {anyOf: [other]}}]"),
        "p.yaml:9: JWTPolicy ns/p: spec.rules[0].requires: unknown provider 'other'",
    ),
    "rule neither public nor requires": (
        spec(PROVIDER + "rules: [{match: {pathPrefix: /x}}]"),
        "p.yaml:9: JWTPolicy ns/p: spec.rules[0]: a rule is either public: true or has requires",
    ),
    "bad RE2": (
        spec(PROVIDER + "rules: [{match: {regex: '(?=x)'}, public: true}]"),
        "p.yaml:9: JWTPolicy ns/p: spec.rules[0].match.regex: invalid RE2 regex: invalid perl operator: (?=",
    ),
    "unknown field": (
        spec(PROVIDER + "rules: [{public: true}]\nclaimToHeaders: {sub: x-user}"),
        "p.yaml:10: JWTPolicy ns/p: spec.claimToHeaders: unknown key (did you mean 'claimsToHeaders'?)",
    ),
    "no rules": (spec(PROVIDER), "p.yaml:4: JWTPolicy ns/p: spec.rules: Field required"),
    "unknown method": (
        spec(PROVIDER + "rules: [{match: {methods: [FETCH]}, public: true}]"),
        "p.yaml:9: JWTPolicy ns/p: spec.rules[0].match.methods: unknown HTTP method 'FETCH'",
    ),
    "token source with two places": (
        spec(
            PROVIDER.replace("jwks:", "tokenSources: [{header: A, cookie: b}]\n    jwks:")
            + "rules: [{public: true}]"
        ),
        "p.yaml:8: JWTPolicy ns/p: spec.providers[0].tokenSources[0]: set exactly one of header, cookie, query",
    ),
    "wrong kind": (
        spec(PROVIDER + "rules: [{public: true}]").replace("kind: JWTPolicy", "kind: JwtPolicy"),
        "p.yaml:2: kind: the authz service reads JWTPolicy documents, not 'JwtPolicy'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_policies(case: str) -> None:
    text, expected = CASES[case]
    with pytest.raises(ConfigErrors) as info:
        load_policy_texts([("p.yaml", text)])
    assert [str(e) for e in info.value.errors] == [expected]


def test_duplicate_policy_names() -> None:
    text = spec(PROVIDER + "rules: [{public: true}]")
    with pytest.raises(ConfigErrors, match="duplicate policy ns/p"):
        load_policy_texts([("a.yaml", text), ("b.yaml", text)])
