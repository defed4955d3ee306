"""Equivalence with Envoy's native `jwt_authn` filter.

The same token set goes through two routes of one Envoy (tests/fixtures/envoy_authz.yaml):
`/native/` is guarded by `envoy.filters.http.jwt_authn` (provider "corp"), `/ext/` by ext_authz and
this service (policy team-a/equiv in tests/fixtures/authz_policies.yaml): same issuer, audience,
JWKS (team A's local server, over HTTP for both) and token location (Authorization: Bearer).

Allow/deny must agree for every token, except the deliberate differences in ALLOW_DIFFERENCES.
HTTP statuses are compared too: the expected differences are pinned in STATUS_DIFFERENCES, so a
change on either side shows up here (and in the README table).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from fixtures.authz_stack import AuthzStack, Team, b64url, forge, sign, start_stack
from fixtures.jwks_server import make_rsa_key, mint
from fixtures.processes import Launcher

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def stack(module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthzStack]:
    with start_stack(module_launcher, tmp_path_factory.mktemp("authz-equiv")) as gw:
        yield gw


def _hs256_pem(a: Team) -> str:
    pem = a.signer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return forge({"alg": "HS256", "typ": "JWT", "kid": a.signer.kid}, a.claims(), hs256_secret=pem)


def _tampered(a: Team) -> str:
    h, _, s = a.token().split(".")
    return f"{h}.{b64url(a.claims(sub='admin'))}.{s}"


def _stripped(a: Team) -> str:
    h, p, _ = a.token().split(".")
    return f"{h}.{p}."


def _jwe(a: Team) -> str:
    return ".".join([b64url({"alg": "RSA-OAEP", "enc": "A128GCM"}), "a", "b", "c", "d"])


def _header(a: Team, **extra: object) -> dict[str, object]:
    return {"alg": "RS256", "typ": "JWT", "kid": a.signer.kid, **extra}


now = int(time.time())

# name -> (team A, team B) -> Authorization header value (None: no header)
TOKENS: dict[str, Callable[[Team, Team], str | None]] = {
    "valid": lambda a, b: f"Bearer {a.token()}",
    "valid-no-kid": lambda a, b: f"Bearer {sign(a.signer, {'alg': 'RS256', 'typ': 'JWT'}, a.claims())}",
    "valid-aud-array": lambda a, b: f"Bearer {a.token(aud=['x', 'orders'])}",
    "valid-within-skew": lambda a, b: f"Bearer {a.token(exp=int(time.time()) - 20)}",
    "no-token": lambda a, b: None,
    "empty-bearer": lambda a, b: "Bearer ",
    "basic-scheme": lambda a, b: "Basic dXNlcjpwYXNz",
    "lowercase-bearer": lambda a, b: f"bearer {a.token()}",
    "expired": lambda a, b: f"Bearer {a.token(exp=int(time.time()) - 3600)}",
    "nbf-future": lambda a, b: f"Bearer {a.token(nbf=int(time.time()) + 3600)}",
    "iat-future": lambda a, b: f"Bearer {a.token(iat=int(time.time()) + 3600)}",
    "no-exp": lambda a, b: f"Bearer {a.raw_token(exp=None)}",
    "wrong-aud": lambda a, b: f"Bearer {a.token(aud='billing')}",
    "no-aud": lambda a, b: f"Bearer {a.raw_token(aud=None)}",
    "empty-aud-array": lambda a, b: f"Bearer {a.raw_token(aud=[])}",
    "wrong-iss": lambda a, b: f"Bearer {a.token(iss='https://evil.example/')}",
    "iss-prefix": lambda a, b: f"Bearer {a.token(iss='https://idp.team-a.example')}",
    "iss-case": lambda a, b: f"Bearer {a.token(iss='https://IDP.team-a.example/')}",
    "no-iss": lambda a, b: f"Bearer {a.raw_token(iss=None)}",
    "bad-signature": lambda a, b: f"Bearer {_tampered(a)}",
    "signature-stripped": lambda a, b: f"Bearer {_stripped(a)}",
    "unknown-kid": lambda a, b: f"Bearer {a.token(headers={'kid': 'nope'})}",
    "other-key-same-kid": lambda a, b: f"Bearer {mint(make_rsa_key(a.signer.kid), a.claims())}",
    "other-team-token": lambda a, b: f"Bearer {b.token()}",
    "other-team-key-our-claims": lambda a, b: f"Bearer {mint(b.signer, a.claims())}",
    "alg-none": lambda a, b: f"Bearer {forge(_header(a, alg='none'), a.claims())}",
    "hs256-with-public-key": lambda a, b: f"Bearer {_hs256_pem(a)}",
    "ps256-same-key": lambda a, b: f"Bearer {a.token(alg='PS256')}",
    "rs384-same-key": lambda a, b: f"Bearer {a.token(alg='RS384')}",
    "malformed": lambda a, b: "Bearer not.a.jwt",
    "jwe-shaped": lambda a, b: f"Bearer {_jwe(a)}",
    "unknown-crit": lambda a, b: f"Bearer {a.token(headers={'crit': ['x-unknown'], 'x-unknown': 1})}",
    "over-8k": lambda a, b: f"Bearer {a.token(padding='x' * 9000)}",
}


def _through(stack: AuthzStack, prefix: str, authorization: str | None) -> tuple[int, bool, dict[str, str]]:
    marker = uuid.uuid4().hex
    headers = {"x-test-id": marker}
    if authorization is not None:
        headers["authorization"] = authorization
    resp = stack.get(f"{prefix}items", headers)
    reached = stack.echo.saw(marker)
    seen = json.loads(resp.body)["headers"] if resp.status == 200 else {}
    return resp.status, reached, seen


@pytest.fixture(scope="module")
def outcomes(stack: AuthzStack) -> dict[str, tuple[int, int]]:
    """name -> (native status, ext status); each token is minted once and sent to both routes."""
    results: dict[str, tuple[int, int]] = {}
    for name, make in TOKENS.items():
        value = make(stack.a, stack.b)
        native, native_reached, native_seen = _through(stack, "/native/", value)
        ext, ext_reached, ext_seen = _through(stack, "/ext/", value)
        assert native_reached == (native == 200), name
        assert ext_reached == (ext == 200), name
        for seen in (native_seen, ext_seen):
            assert "authorization" not in seen, (name, seen)  # both strip the token (forward: false)
        results[name] = (native, ext)
    return results


# Deliberate differences, (jwt_authn allows, authz allows); each is listed in the README:
ALLOW_DIFFERENCES: dict[str, tuple[bool, bool]] = {
    # RFC 7235: the auth scheme is case-insensitive; jwt_authn's value_prefix match is not.
    "lowercase-bearer": (False, True),
    # jwt_authn never checks `iat`; authz refuses a token issued in the future (beyond the skew).
    "iat-future": (True, False),
    # jwt_authn accepts tokens without `exp`; authz requires it (provider `requireExpiry: false`
    # opts out).
    "no-exp": (True, False),
    # authz refuses tokens over the provider's maxTokenBytes (default 8 KiB) before decoding;
    # jwt_authn only has Envoy's header size limit.
    "over-8k": (True, False),
    # RFC 7515 4.1.11: a `crit` extension the verifier does not understand must be refused;
    # jwt_authn ignores `crit`.
    "unknown-crit": (True, False),
}
# (jwt_authn status, authz status): the same cases, nothing else (both use 403 for audience).
STATUS_DIFFERENCES: dict[str, tuple[int, int]] = {
    "lowercase-bearer": (401, 200),
    "iat-future": (200, 401),
    "no-exp": (200, 401),
    "over-8k": (200, 401),
    "unknown-crit": (200, 401),
}


def test_same_allow_or_deny(outcomes: dict[str, tuple[int, int]]) -> None:
    differ = {
        name: (native == 200, ext == 200)
        for name, (native, ext) in outcomes.items()
        if (native == 200) != (ext == 200)
    }
    assert differ == ALLOW_DIFFERENCES


def test_status_differences_are_the_documented_ones(outcomes: dict[str, tuple[int, int]]) -> None:
    differ = {name: s for name, s in outcomes.items() if s[0] != s[1]}
    assert differ == STATUS_DIFFERENCES


def test_challenge_and_body_presentation(stack: AuthzStack) -> None:
    """Same statuses, different presentation (pinned so the README stays true):
    jwt_authn: realm = the request URL, error="invalid_token" for every bad token (also audience),
    no error_description, text/plain body; authz: realm = the policy, RFC 6750 error codes
    (insufficient_scope for audience), error_description, JSON body."""
    a = stack.a
    cases = {
        "missing": (None, 401, "", "", "Jwt is missing"),
        "expired": (a.token(exp=1_000_000), 401, "invalid_token", "token expired", "Jwt is expired"),
        "wrong-aud": (a.token(aud="billing"), 403, "insufficient_scope", "audience not allowed", "Audiences"),
    }
    for name, (token, status, error, reason, native_text) in cases.items():
        headers = {} if token is None else {"authorization": f"Bearer {token}"}
        native, ext = stack.get("/native/items", headers), stack.get("/ext/items", headers)
        assert (native.status, ext.status) == (status, status), name
        native_challenge = native.header("www-authenticate") or ""
        assert native_challenge.startswith('Bearer realm="http://'), native_challenge
        assert ("invalid_token" in native_challenge) == (token is not None), native_challenge
        assert native.body.startswith(native_text) and native.header("content-type") == "text/plain"
        expected = 'Bearer realm="team-a/equiv"'
        if error:
            expected += f', error="{error}", error_description="{reason}"'
        assert ext.header("www-authenticate") == expected, name
        assert ext.header("content-type") == "application/json"
        assert json.loads(ext.body)["reason"] == (reason or "missing token")
