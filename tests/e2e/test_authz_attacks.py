"""Attack suite: forged, tampered and misplaced tokens are each denied with the right status.

Most cases go straight to the service over gRPC (fast); a few also go through Envoy to show the
same answer reaches the client. Every denial is checked for leaks: the body is the short JSON
`{"error", "reason"}`, the only headers are content-type and www-authenticate, and nothing in
either looks like a stack trace or key material.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from fixtures.authz_stack import AuthzStack, Decision, Team, b64url, forge, sign, start_stack
from fixtures.jwks_server import make_rsa_key, mint
from fixtures.processes import Launcher

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

PATH = "/a/items"
REALM = "team-a/orders"


@pytest.fixture(scope="module")
def stack(module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthzStack]:
    with start_stack(module_launcher, tmp_path_factory.mktemp("authz-attacks")) as gw:
        yield gw


def _leak_markers(team: Team) -> list[str]:
    jwk = team.signer.public_jwk
    return ["Traceback", 'File "', "BEGIN", "PRIVATE", jwk["n"][:24], team.signer.kid or "", "services/authz"]


def assert_clean_denial(d: Decision, team: Team) -> None:
    """No stack traces or key material: only the JSON {error, reason} and the two headers."""
    assert set(d.headers) <= {"content-type", "www-authenticate"}, d.headers
    body = d.json()
    assert isinstance(body, dict) and set(body) == {"error", "reason"}, d.body
    assert len(d.body) < 160, d.body
    text = d.body + json.dumps(d.headers)
    for marker in _leak_markers(team):
        assert marker not in text, (marker, text)


def assert_denied(d: Decision, status: int, reason: str | set[str], team: Team, realm: str = REALM) -> None:
    reasons = {reason} if isinstance(reason, str) else reason
    assert d.status == status, d
    assert d.json()["reason"] in reasons, d.body
    assert_clean_denial(d, team)
    challenge = d.headers.get("www-authenticate")
    if status == 401:
        assert challenge == (
            f'Bearer realm="{realm}", error="invalid_token", error_description="{d.json()["reason"]}"'
        )
        assert d.json()["error"] == "invalid_token"
    elif status == 403:
        assert challenge is not None and 'error="insufficient_scope"' in challenge, challenge
    elif status == 400:
        assert challenge is not None and 'error="invalid_request"' in challenge, challenge


def _segments(token: str) -> list[str]:
    return token.split(".")


def _header_and_claims(team: Team, **claims: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"alg": "RS256", "typ": "JWT", "kid": team.signer.kid}, team.claims(**claims)


# --------------------------------------------------------------------------- the attacks


def test_sanity_a_valid_token_is_allowed(stack: AuthzStack) -> None:
    d = stack.check(PATH, token=stack.a.token(sub="alice"))
    assert d.allowed, d
    assert d.headers["x-user-id"] == "alice"
    assert "authorization" in d.removed
    assert d.metadata.get("sub") == "alice" and d.metadata.get("iss") == stack.a.issuer


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none(stack: AuthzStack, alg: str) -> None:
    header, claims = _header_and_claims(stack.a)
    header["alg"] = alg
    unsigned = forge(header, claims)  # header.payload.
    d = stack.check(PATH, token=unsigned)
    assert_denied(d, 401, {"malformed token", "signing algorithm not allowed"}, stack.a)
    with_junk_sig = unsigned + b64url(b"x" * 32)
    assert_denied(stack.check(PATH, token=with_junk_sig), 401, "signing algorithm not allowed", stack.a)


def _public_pem(team: Team) -> bytes:
    public = team.signer.private_key.public_key()
    pem: bytes = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


@pytest.mark.parametrize("secret_kind", ["pem", "pem-no-newline", "jwk-json", "der"])
def test_hs256_signed_with_the_rsa_public_key(stack: AuthzStack, secret_kind: str) -> None:
    pem = _public_pem(stack.a)
    secrets = {
        "pem": pem,
        "pem-no-newline": pem.rstrip(b"\n"),
        "jwk-json": json.dumps(stack.a.signer.jwk()).encode(),
        "der": stack.a.signer.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    header, claims = _header_and_claims(stack.a)
    header["alg"] = "HS256"
    token = forge(header, claims, hs256_secret=secrets[secret_kind])
    assert_denied(stack.check(PATH, token=token), 401, "signing algorithm not allowed", stack.a)
    header.pop("kid")
    token = forge(header, claims, hs256_secret=secrets[secret_kind])
    assert_denied(stack.check(PATH, token=token), 401, "signing algorithm not allowed", stack.a)


@pytest.mark.parametrize(
    "kid",
    [
        "unknown-kid",
        "../../../../etc/passwd",
        "/dev/null",
        "a-1/../a-1",
        "' OR '1'='1",
        "a-1'; DROP TABLE keys; --",
        "a-1\u0000",
        "A-1",
        "a-1 ",
        "*",
        "x" * 2000,
    ],
)
def test_unknown_or_hostile_kid(stack: AuthzStack, kid: str) -> None:
    requests_before = stack.a.server.requests
    token = stack.a.token(headers={"kid": kid})  # signed with the real key, kid changed
    assert_denied(stack.check(PATH, token=token), 401, "unknown signing key", stack.a)
    # The first unknown kid after a fetch may refetch at once (a key rotated just now is taken at
    # its first use); then the cooldown holds: no hostile kid here causes more than that one fetch.
    assert stack.a.server.requests - requests_before <= 1


def test_kid_of_wrong_type(stack: AuthzStack) -> None:
    for kid in (1, ["a-1"], {"k": "a-1"}, None):
        header = {"alg": "RS256", "typ": "JWT"} if kid is None else {"alg": "RS256", "kid": kid}
        token = stack.a.raw_token(header)
        d = stack.check(PATH, token=token)
        if kid is None:  # no kid: every key of the algorithm is tried (as Envoy does)
            assert d.allowed, d
        else:
            assert_denied(d, 401, {"malformed token", "unknown signing key"}, stack.a)


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "token expired"),
        ({"exp": int(time.time()) - 121}, "token expired"),  # past the 60 s skew
        ({"nbf": int(time.time()) + 3600}, "token not yet valid"),
        ({"nbf": int(time.time()) + 600}, "token not yet valid"),
        ({"iat": int(time.time()) + 3600}, "token not yet valid"),
        ({"exp": None}, "missing exp claim"),
        ({"exp": "tomorrow"}, "malformed token"),
    ],
    ids=["expired-1h", "expired-past-skew", "nbf-1h", "nbf-10m", "iat-future", "no-exp", "exp-string"],
)
def test_time_claims(stack: AuthzStack, claims: dict[str, Any], reason: str) -> None:
    assert_denied(stack.check(PATH, token=stack.a.raw_token(**claims)), 401, reason, stack.a)


def test_within_clock_skew_is_allowed(stack: AuthzStack) -> None:
    now = int(time.time())
    assert stack.check(PATH, token=stack.a.token(exp=now - 20)).allowed
    assert stack.check(PATH, token=stack.a.token(nbf=now + 20)).allowed


@pytest.mark.parametrize(
    "iss",
    [
        "https://idp.team-a.example",  # prefix
        "https://idp.team-a.example/x",  # suffix
        "https://idp.team-a.example/.evil.test",
        "https://idp.team-a.example.evil.test/",
        "HTTPS://IDP.TEAM-A.EXAMPLE/",  # case
        "https://IDP.team-a.example/",
        "https://idp.team-a.example/ ",
        " https://idp.team-a.example/",
        "http://idp.team-a.example/",
        "",
    ],
)
def test_issuer_variants(stack: AuthzStack, iss: str) -> None:
    assert_denied(stack.check(PATH, token=stack.a.token(iss=iss)), 401, "untrusted issuer", stack.a)


def test_issuer_of_wrong_type(stack: AuthzStack) -> None:
    for iss in ([stack.a.issuer], {"iss": stack.a.issuer}, 7, None):
        d = stack.check(PATH, token=stack.a.raw_token(iss=iss))
        assert_denied(d, 401, {"untrusted issuer", "malformed token"}, stack.a)


@pytest.mark.parametrize(
    "aud",
    [None, "billing", ["billing"], [], "", "orders ", "ORDERS", ["Orders"], "orders-x", {"aud": "orders"}],
    ids=lambda v: repr(v),
)
def test_audience_variants(stack: AuthzStack, aud: Any) -> None:
    d = stack.check(PATH, token=stack.a.raw_token(aud=aud))
    assert d.status in (401, 403), d
    assert_denied(d, d.status, {"audience not allowed", "malformed token"}, stack.a)
    if aud is None or isinstance(aud, str | list):
        assert (d.status, d.json()["reason"]) == (403, "audience not allowed")


def test_audience_any_of_in_an_array_is_allowed(stack: AuthzStack) -> None:
    assert stack.check(PATH, token=stack.a.token(aud=["billing", "orders"])).allowed


def test_token_over_the_size_cap(stack: AuthzStack) -> None:
    big = stack.a.token(padding="x" * 9000)
    assert len(big) > 8192
    assert_denied(stack.check(PATH, token=big), 401, "token too large", stack.a)
    just_under = stack.a.token(padding="x" * 5000)
    assert len(just_under) < 8192
    assert stack.check(PATH, token=just_under).allowed


def test_jwe_shaped_token(stack: AuthzStack) -> None:
    header = b64url({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": stack.a.signer.kid})
    token = ".".join([header, b64url(b"k" * 256), b64url(b"iv" * 6), b64url(b"ct" * 40), b64url(b"t" * 16)])
    assert_denied(stack.check(PATH, token=token), 401, "encrypted tokens (JWE) are not accepted", stack.a)


def test_unknown_critical_header(stack: AuthzStack) -> None:
    token = stack.a.token(headers={"crit": ["x-legation-unknown"], "x-legation-unknown": True})
    assert_denied(stack.check(PATH, token=token), 401, "unsupported critical header", stack.a)
    token = stack.a.token(headers={"crit": ["exp"]})
    assert_denied(stack.check(PATH, token=token), 401, "unsupported critical header", stack.a)


@pytest.mark.parametrize(
    "shape",
    [
        "garbage",
        "bad-b64-header",
        "bad-b64-payload",
        "not-json",
        "array-payload",
        "two-parts",
        "dots",
        "spaces",
    ],
)
def test_malformed_tokens(stack: AuthzStack, shape: str) -> None:
    h, p, s = _segments(stack.a.token())
    tokens = {
        "garbage": "!!!.@@@.###",
        "bad-b64-header": f"{h[:-1]}*.{p}.{s}",
        "bad-b64-payload": f"{h}.{p[:5]}%%%{p[5:]}.{s}",
        "not-json": f"{b64url(b'not json')}.{p}.{s}",
        "array-payload": f"{h}.{b64url(b'[1,2,3]')}.{s}",
        "two-parts": f"{h}.{p}",
        "dots": "..",
        "spaces": f"{h} .{p}.{s}",
    }
    d = stack.check(PATH, {"authorization": f"Bearer {tokens[shape]}"})
    assert_denied(d, 401, {"malformed token", "invalid signature"}, stack.a)


def test_tampered_payload_and_stripped_signature(stack: AuthzStack) -> None:
    h, p, s = _segments(stack.a.token(sub="alice"))
    tampered = b64url({**json.loads(_unb64(p)), "sub": "admin"})
    assert_denied(stack.check(PATH, token=f"{h}.{tampered}.{s}"), 401, "invalid signature", stack.a)
    assert_denied(stack.check(PATH, token=f"{h}.{p}."), 401, "malformed token", stack.a)
    flipped = s[:-4] + ("AAAA" if not s.endswith("AAAA") else "BBBB")
    assert_denied(stack.check(PATH, token=f"{h}.{p}.{flipped}"), 401, "invalid signature", stack.a)


def _unb64(segment: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def test_algorithm_switch_on_the_same_key(stack: AuthzStack) -> None:
    # The key is bound to RS256: a PS256 or RS512 signature by the same key is refused.
    for alg in ("PS256", "RS512"):
        token = stack.a.token(alg=alg)
        assert_denied(stack.check(PATH, token=token), 401, "signing algorithm not allowed", stack.a)


def test_valid_token_of_another_teams_issuer(stack: AuthzStack) -> None:
    a, b = stack.a, stack.b
    # Team B's perfectly valid token on team A's route, and the reverse.
    assert_denied(stack.check(PATH, token=b.token()), 401, "untrusted issuer", a)
    d = stack.check("/b/invoices", token=a.token(), policy="team-b/billing")
    assert_denied(d, 401, "untrusted issuer", b, realm="team-b/billing")
    # Team B's key claiming team A's issuer and audience: the kid is not in team A's JWKS.
    forged = mint(b.signer, a.claims())
    assert_denied(stack.check(PATH, token=forged), 401, "unknown signing key", a)
    # ... and without a kid: A's keys do not verify it.
    forged = sign(b.signer, {"alg": "RS256", "typ": "JWT"}, a.claims())
    assert_denied(stack.check(PATH, token=forged), 401, "invalid signature", a)
    # A fresh key using team A's kid: the signature does not verify with A's key.
    impostor = make_rsa_key(a.signer.kid)
    assert_denied(stack.check(PATH, token=mint(impostor, a.claims())), 401, "invalid signature", a)


def test_spoofed_identity_headers_on_a_public_route_are_removed(stack: AuthzStack) -> None:
    spoof = {"x-user-id": "admin", "x-team": "root"}
    d = stack.check("/a/public/menu", spoof)
    assert d.allowed, d
    assert {"x-user-id", "x-team"} <= set(d.removed)
    assert "x-user-id" not in d.headers
    # With a (even valid) token on the public route: still nothing set from it.
    d = stack.check("/a/public/menu", spoof, token=stack.a.token(sub="alice"))
    assert d.allowed and {"x-user-id", "x-team"} <= set(d.removed), d
    # Through Envoy: the upstream does not see them.
    marker = uuid.uuid4().hex
    resp = stack.get("/a/public/menu", {**spoof, "x-test-id": marker})
    assert resp.status == 200
    seen = json.loads(resp.body)["headers"]
    assert "x-user-id" not in seen and "x-team" not in seen


def test_two_different_tokens_are_400(stack: AuthzStack) -> None:
    t1, t2 = stack.a.token(sub="alice"), stack.a.token(sub="bob")
    d = stack.check(PATH, {"authorization": f"Bearer {t1}", "cookie": f"session={t2}"})
    assert_denied(d, 400, "more than one token in the request", stack.a)
    assert d.json()["error"] == "invalid_request"
    # The same token twice is fine.
    assert stack.check(PATH, {"authorization": f"Bearer {t1}", "cookie": f"session={t1}"}).allowed
    # An invalid token next to a valid one is no way around it either.
    d = stack.check(PATH, {"authorization": f"Bearer {t1}", "cookie": "session=garbage"})
    assert_denied(d, 400, "more than one token in the request", stack.a)


@pytest.mark.parametrize(
    "path",
    [
        "/a/public/%2e%2e/admin/x",
        "/a/public/%2E%2E/admin",
        "/a/public%2f..%2fadmin",
        "/a/public/..%5cadmin",
        "/a/public\\..\\admin",
    ],
)
def test_ambiguous_paths_are_400(stack: AuthzStack, path: str) -> None:
    assert_denied(stack.check(path), 400, "ambiguous path", stack.a)


def test_dot_segments_cannot_escape_a_public_prefix(stack: AuthzStack) -> None:
    # Resolved as the upstream will see it (/a/admin/users): a token is required.
    d = stack.check("/a/public/../admin/users")
    assert d.status == 401 and d.json()["reason"] == "missing token", d
    d = stack.check("/a/public//..//admin/users")
    assert d.status == 401 and d.json()["reason"] == "missing token", d


def test_wrong_scheme_or_empty_bearer_is_missing_token(stack: AuthzStack) -> None:
    token = stack.a.token()
    for value in (f"Basic {token}", "Bearer ", "Bearer", token):
        d = stack.check(PATH, {"authorization": value})
        assert d.status == 401 and d.json()["reason"] == "missing token", (value, d)
        assert d.headers["www-authenticate"] == f'Bearer realm="{REALM}"'


# --------------------------------------------------------------------------- through Envoy


@pytest.mark.parametrize("case", ["alg-none", "expired", "other-team", "hs256-pem", "two-tokens"])
def test_attacks_through_envoy(stack: AuthzStack, case: str) -> None:
    a, b = stack.a, stack.b
    header, claims = _header_and_claims(a)
    requests = {
        "alg-none": ({"authorization": f"Bearer {forge({**header, 'alg': 'none'}, claims)}"}, 401),
        "expired": ({"authorization": f"Bearer {a.token(exp=1_000_000)}"}, 401),
        "other-team": ({"authorization": f"Bearer {b.token()}"}, 401),
        "hs256-pem": (
            {
                "authorization": f"Bearer {forge({**header, 'alg': 'HS256'}, claims, hs256_secret=_public_pem(a))}"
            },
            401,
        ),
        "two-tokens": ({"authorization": f"Bearer {a.token()}", "cookie": f"session={a.token()}"}, 400),
    }
    headers, status = requests[case]
    marker = uuid.uuid4().hex
    resp = stack.get(PATH, {**headers, "x-test-id": marker})
    assert resp.status == status, resp
    assert not stack.echo.saw(marker)
    body = json.loads(resp.body)
    assert set(body) == {"error", "reason"} and len(resp.body) < 160
    for marker_text in _leak_markers(a):
        assert marker_text not in resp.body
    assert resp.header("www-authenticate") is not None


def test_service_still_healthy(stack: AuthzStack) -> None:
    assert stack.service.health() == "SERVING"
    assert stack.service.process.running
    assert "Traceback" not in stack.service.process.stderr_text()


def test_claim_values_cannot_inject_headers(stack: AuthzStack) -> None:
    # Refused, not cleaned: `alice\0admin` must never reach the upstream as `aliceadmin`.
    d = stack.check(PATH, token=stack.a.token(sub="alice\r\nx-admin: true", org={"team": "a\nb\x00c"}))
    assert (d.status, d.json()["reason"]) == (401, "claim sub holds control characters"), d
    assert "x-admin" not in d.headers
    d = stack.check(PATH, token=stack.a.token(sub="alice", org={"team": "a\nb\x00c"}))
    assert (d.status, d.json()["reason"]) == (401, "claim org.team holds control characters"), d
    assert 'error="invalid_token"' in (d.headers.get("www-authenticate") or "")


def test_two_session_cookies_with_different_tokens_are_400(stack: AuthzStack) -> None:
    # Like two different tokens in two sources (or two access_token query values, which the
    # service refuses): the upstream could read the other cookie than the one that was verified.
    valid, other = stack.a.token(sub="alice"), stack.a.token(sub="mallory", exp=1_000_000)
    d = stack.check(PATH, {"cookie": f"session={valid}; session={other}"})
    assert d.status == 400, d
    assert d.json()["reason"] == "more than one token in the request"


def test_no_rule_matches_is_403_without_challenge(stack: AuthzStack) -> None:
    d = stack.check("/elsewhere", token=stack.a.token())
    assert (d.status, d.json()) == (403, {"error": "forbidden", "reason": "no rule matches"})
    assert "www-authenticate" not in d.headers
    assert_clean_denial(d, stack.a)
