"""Native enforcement against the authz service: the same tokens, times rules, through a real
Envoy (`legation up`), once with the policy `enforcement: auto` (jwt_authn + RBAC) and once with
`enforcement: service` (ext_authz → `legation authz`). Status, WWW-Authenticate, body and the
identity headers the upstream (`legation echo`) sees must be the same; Envoy's own stats show
that ext_authz is called only for the service run.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from fixtures.authz_stack import b64url, forge, sign
from fixtures.gateway import Gateway, Response, gateway_serving
from fixtures.jwks_server import jwks_json, make_rsa_key, mint
from fixtures.processes import Launcher

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ISSUER = "https://idp.native.example/"
KEY, OTHER = make_rsa_key("n-1"), make_rsa_key("other-1")
IDENTITY = ("x-user-id", "x-team", "authorization")


def manifests(enforcement: str, upstream: int, *, keys: tuple[Any, ...] = (KEY,)) -> str:
    policy = {
        "apiVersion": "legation.dev/v1alpha1",
        "kind": "JWTPolicy",
        "metadata": {"name": "orders-jwt", "namespace": "team-orders"},
        "spec": {
            "enforcement": enforcement,
            "providers": [
                {
                    "name": "corp",
                    "issuer": ISSUER,
                    "audiences": ["orders"],
                    "jwks": {"inline": jwks_json(list(keys))},
                }
            ],
            "rules": [
                {"match": {"pathPrefix": "/orders/public"}, "public": True},
                {
                    "match": {"path": "/orders/admin"},
                    "requires": {"anyOf": ["corp"]},
                    "claims": {"org.role": ["admin"]},
                },
                {"match": {"regex": "/orders/[0-9]+/items"}, "requires": {"anyOf": ["corp"]}},
                {
                    "match": {"pathPrefix": "/orders", "methods": ["GET"]},
                    "requires": {"anyOf": ["corp"]},
                    "claims": {"scope": ["orders:read"]},
                },
                {
                    "match": {"pathPrefix": "/orders", "methods": ["POST"]},
                    "requires": {"anyOf": ["corp"]},
                    "claims": {"scope": ["orders:write"], "org.team": ["orders"]},
                },
            ],
            "claimsToHeaders": {"sub": "x-user-id", "org.team": "x-team"},
        },
    }
    mapping = {
        "apiVersion": "legation.dev/v1alpha1",
        "kind": "Mapping",
        "metadata": {"name": "orders", "namespace": "team-orders"},
        "spec": {"prefix": "/orders", "service": f"127.0.0.1:{upstream}", "auth": {"policy": "orders-jwt"}},
    }
    return yaml.safe_dump_all([policy, mapping], sort_keys=False)


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": "orders",
        "sub": "alice",
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def good(**extra: Any) -> str:
    return mint(KEY, claims(**extra))


def tokens() -> dict[str, str | None]:
    """Name → Authorization header value (None: no header)."""
    header = {"alg": "RS256", "typ": "JWT", "kid": KEY.kid}
    now = int(time.time())
    valid = good(scope="orders:read orders:write", org={"team": "orders", "role": "admin"})
    head, body, sig = valid.split(".")
    pem = KEY.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    hs = f"{b64url({'alg': 'HS256', 'typ': 'JWT'})}.{b64url(claims())}"
    hs += "." + b64url(hmac.new(pem, hs.encode(), hashlib.sha256).digest())
    bearer = {
        "valid-all": valid,
        "read-only": good(scope="orders:read"),
        "write-no-team": good(scope="orders:write"),
        "write-wrong-team": good(scope="orders:write", org={"team": "billing"}),
        "scope-array": good(scope=["orders:read"], org={"team": "orders"}),
        "no-scope": good(),
        "admin-role": good(org={"role": "admin"}),
        "other-sub": good(sub="bob", scope="orders:read", org={"team": "orders"}),
        "expired": good(exp=int(time.time()) - 3600, scope="orders:read"),
        "nbf-future": good(nbf=int(time.time()) + 3600, scope="orders:read"),
        "wrong-iss-prefix": good(iss=ISSUER + "evil", scope="orders:read"),
        "wrong-iss-suffix": good(iss="https://evil.idp.native.example/", scope="orders:read"),
        "wrong-iss-case": good(iss=ISSUER.upper(), scope="orders:read"),
        "wrong-aud": good(aud="billing", scope="orders:read"),
        "no-aud": good(aud=None, scope="orders:read"),
        "empty-aud": good(aud=[], scope="orders:read"),
        "alg-none": forge({"alg": "none", "typ": "JWT"}, claims(scope="orders:read")),
        "hs256-with-rsa-public-key": hs,
        "unknown-kid": mint(OTHER, claims(scope="orders:read")),
        "another-team-key-same-kid": sign(OTHER, header, claims(scope="orders:read")),
        "stripped-signature": f"{head}.{body}.",
        "tampered-signature": f"{head}.{body}.{sig[:-4]}AAAA",
        "tampered-payload": f"{head}.{b64url(claims(sub='mallory', scope='orders:read orders:write'))}.{sig}",
        "malformed-base64": f"{head}.%%%.{sig}",
        "two-parts": f"{head}.{body}",
        "jwe": "a.b.c.d.e",
        "garbage": "not-a-token",
        # the checks jwt_authn does not make (translate/jwt_checks.py) and the edges of time
        "missing-exp": good(exp=None, scope="orders:read"),
        "over-8-kib-signed": good(scope="orders:read", pad="x" * 9000),
        "over-8-kib-garbage": "A" * 9000,
        "just-under-8-kib": good(scope="orders:read", pad="x" * 5500),
        "crit-unknown": sign(KEY, {**header, "crit": ["x-ext"], "x-ext": 1}, claims(scope="orders:read")),
        "iat-future": good(iat=now + 3600, scope="orders:read"),
        "iat-within-skew": good(iat=now + 30, scope="orders:read"),
        "exp-within-skew": good(exp=now - 30, scope="orders:read"),
        "nbf-within-skew": good(nbf=now + 30, scope="orders:read"),
        "exp-string": good(exp=str(now + 600), scope="orders:read"),
        "aud-list": good(aud=["billing", "orders"], scope="orders:read"),
        "no-kid": sign(KEY, {"alg": "RS256", "typ": "JWT"}, claims(scope="orders:read")),
        "scope-extra-spaces": good(scope="  orders:read   orders:write ", org={"team": "orders"}),
        "role-list": good(org={"role": ["viewer", "admin"]}),
        "jwe-shaped": f"{b64url({'alg': 'RSA-OAEP', 'enc': 'A256GCM'})}.a.b.c.d",
        "payload-array": f"{head}.{b64url('[1, 2]')}.{sig}",
        "kid-wrong-type": sign(KEY, {**header, "kid": 7}, claims(scope="orders:read")),
    }
    out: dict[str, str | None] = {"no-token": None, "empty-bearer": "Bearer ", "basic": "Basic dXNlcjpwYXNz"}
    out |= {name: f"Bearer {t}" for name, t in bearer.items()}
    out["lowercase-scheme"] = f"bearer {valid}"
    return out


REQUESTS = [
    ("GET", "/orders/public/menu"),
    ("GET", "/orders/42"),
    ("POST", "/orders/42"),
    ("DELETE", "/orders/42"),
    ("GET", "/orders/admin"),
    ("PUT", "/orders/7/items"),
]
# Denied alike (401 invalid_token), described differently: jwt_authn reports an algorithm no key
# has as an unknown key (README, "Native enforcement").
WORDING_ONLY = {"hs256-with-rsa-public-key"}
SPOOF = {"x-user-id": "root", "x-team": "admins"}


def observe(gateway: Gateway) -> dict[tuple[str, str, str], tuple[Any, ...]]:
    seen = {}
    for name, value in tokens().items():
        for method, path in REQUESTS:
            headers = dict(SPOOF)
            if value is not None:
                headers["Authorization"] = value
            seen[(name, method, path)] = _summary(gateway.request(method, path, headers=headers))
    return seen


def _summary(response: Response) -> tuple[Any, ...]:
    if response.status != 200:
        return (response.status, response.headers.get("www-authenticate"), response.body.decode())
    echoed = {k.lower(): v for k, v in response.json()["headers"].items()}
    return (200, tuple((h, echoed.get(h, "")[:20]) for h in IDENTITY))


def envoy_counter(gateway: Gateway, suffix: str) -> int:
    url = f"http://127.0.0.1:{gateway.admin_port}/stats?filter={suffix}&format=json"
    with urllib.request.urlopen(url, timeout=10) as response:
        stats = json.loads(response.read())["stats"]
    return sum(s.get("value", 0) for s in stats if s.get("name", "").endswith(suffix))


def ext_authz_calls(gateway: Gateway) -> int:
    url = f"http://127.0.0.1:{gateway.admin_port}/stats?filter=ext_authz&format=json"
    with urllib.request.urlopen(url, timeout=10) as response:
        stats = json.loads(response.read())["stats"]
    return sum(
        s.get("value", 0) for s in stats if s.get("name", "").endswith(("ext_authz.ok", "ext_authz.denied"))
    )


@pytest.fixture(scope="module")
def gateway(
    module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Path, int]]:
    root = tmp_path_factory.mktemp("native")
    with gateway_serving(
        module_launcher, root, lambda port: manifests("auto", port), ready=("/orders/public/x", {})
    ) as served:
        yield served


def test_native_and_service_answer_the_same(gateway: tuple[Gateway, Path, int]) -> None:
    gw, source, upstream = gateway
    calls = ext_authz_calls(gw)
    native = observe(gw)
    assert ext_authz_calls(gw) == calls, "native policies must not call ext_authz"
    assert len(tokens()) >= 40 and len(native) == len(tokens()) * len(REQUESTS)
    assert native[("valid-all", "GET", "/orders/42")] == (
        200, (("x-user-id", "alice"), ("x-team", "orders"), ("authorization", "")),
    )  # fmt: skip

    source.write_text(manifests("service", upstream))
    gw.wait_until(lambda: ext_authz_probe(gw), timeout=30, what="the service enforcing the policy")
    service = observe(gw)
    assert ext_authz_calls(gw) > calls, "service policies go through ext_authz"
    differences = {k: (native[k], service[k]) for k in native if native[k] != service[k]}
    for key in [k for k in differences if k[0] in WORDING_ONLY]:  # same status and error code
        n, s = differences.pop(key)
        assert (
            (n[0], json.loads(n[2])["error"]) == (s[0], json.loads(s[2])["error"]) == (401, "invalid_token")
        )
    assert not differences, json.dumps({" ".join(k): v for k, v in differences.items()}, default=str)


def ext_authz_probe(gw: Gateway, path: str = "/orders/42") -> bool:
    before = ext_authz_calls(gw)
    gw.request("GET", path)
    return ext_authz_calls(gw) > before


def test_a_key_removed_from_the_policy_stops_its_cached_tokens(gateway: tuple[Gateway, Path, int]) -> None:
    # jwt_authn caches verified tokens; a key rotation is a config push that must empty it.
    gw, source, upstream = gateway
    source.write_text(manifests("auto", upstream))
    token = {"Authorization": f"Bearer {good(scope='orders:read')}"}
    gw.wait_until(lambda: not ext_authz_probe(gw), timeout=30, what="native enforcement")
    calls = ext_authz_calls(gw)
    assert [gw.request("GET", "/orders/42", headers=token).status for _ in range(3)] == [200] * 3
    assert envoy_counter(gw, "jwt_cache_hit") >= 2, "repeated tokens come from jwt_authn's cache"
    source.write_text(manifests("auto", upstream, keys=(OTHER,)))
    gw.wait_until(
        lambda: gw.request("GET", "/orders/42", headers=token).status == 401, timeout=30, what="rotation"
    )
    refused = gw.request("GET", "/orders/42", headers=token)
    assert 'error_description="unknown signing key"' in refused.headers["www-authenticate"]
    assert ext_authz_calls(gw) == calls  # native throughout
