"""The controller checks static key sets (inline, or a Secret through secretRef) with the authz
service's own parser: a key set the service could not load rejects that JWTPolicy (and the
Mappings using it), and only that one, so one team's bad keys never reach the shared feed."""

from __future__ import annotations

from fixtures.jwks_server import jwks_json, make_ec_key, make_rsa_key
from test_compile import mapping, policy, run, secret

GOOD = jwks_json([make_rsa_key("good")])


def test_a_secret_that_is_not_a_jwks_rejects_only_its_policy() -> None:
    result = run(
        secret("tls-ish", ns="team-a", jwks="-----BEGIN CERTIFICATE-----\nMIIB...\n"),
        policy("bad", ns="team-a", jwks={"secretRef": {"name": "tls-ish", "key": "jwks"}}),
        mapping("uses-bad", ns="team-a", auth={"policy": "bad"}),
        secret("keys", ns="team-b", jwks=GOOD),
        policy("good", ns="team-b", jwks={"secretRef": {"name": "keys", "key": "jwks"}}),
        mapping("uses-good", ns="team-b", auth={"policy": "good"}),
    )
    bad = result.status("JWTPolicy", "team-a", "bad")
    assert bad is not None and bad.state == "Rejected"
    assert bad.problems[0].path == ("spec", "providers", 0, "jwks", "secretRef")
    assert "Secret team-a/tls-ish key 'jwks': JWKS is not valid JSON" in (bad.reason or "")
    uses_bad = result.status("Mapping", "team-a", "uses-bad")
    assert uses_bad is not None and uses_bad.state == "Rejected"
    assert "JWTPolicy team-a/bad is rejected" in (uses_bad.reason or "")
    assert [p.key for p in result.policies] == ["team-b/good"]
    assert [r.id for r in result.ir.routes] == ["team-b/uses-good"]


def test_an_inline_jwks_without_a_usable_key_is_rejected() -> None:
    # An EC key, but the provider accepts RS256 only (the default): the service would load no key.
    ec_only = jwks_json([make_ec_key("ec")])
    result = run(
        policy("empty", jwks={"inline": '{"keys": []}'}),
        policy("wrong-alg", jwks={"inline": ec_only}),
        policy("not-json", jwks={"inline": "{keys"}),
        policy("ok", jwks={"inline": GOOD}),
        *(mapping(f"uses-{n}", auth={"policy": n}) for n in ("empty", "wrong-alg", "not-json", "ok")),
    )
    for name, reason in (
        ("empty", "no usable keys"),
        ("wrong-alg", "no usable keys"),
        ("not-json", "not valid JSON"),
    ):
        status = result.status("JWTPolicy", "team-a", name)
        assert status is not None and status.state == "Rejected", name
        assert status.problems[0].path == ("spec", "providers", 0, "jwks", "inline")
        assert "inline JWKS" in (status.reason or "") and reason in (status.reason or ""), status.reason
    assert [p.key for p in result.policies] == ["team-a/ok"]


def test_the_reason_never_holds_key_material() -> None:
    # A private JWK in a Secret is still loaded (its public half); a broken one says why
    # without echoing the document.
    secret_text = '{"keys": [{"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}]}'
    result = run(
        secret("hs", jwks=secret_text),
        policy("p", jwks={"secretRef": {"name": "hs", "key": "jwks"}}),
    )
    status = result.status("JWTPolicy", "team-a", "p")
    assert status is not None and status.state == "Rejected"
    assert "c2VjcmV0" not in (status.reason or "")


def test_uri_and_file_key_sets_are_left_to_the_authz_service() -> None:
    result = run(
        policy("remote"),
        policy("local", jwks={"file": "/etc/keys/jwks.json"}),
        mapping("a", auth={"policy": "remote"}),
        mapping("b", auth={"policy": "local"}),
    )
    assert sorted(p.key for p in result.policies) == ["team-a/local", "team-a/remote"]
