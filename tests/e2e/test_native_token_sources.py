"""Native enforcement with cookie and query tokens: the checks jwt_authn lacks (size, JWE), made in
CEL on the raw Cookie header and query string, must find the token where the service finds it.

Two policies (a cookie source and a query source, both forwarding the token, which is what keeps
such policies native) on two Mappings, through a real Envoy (`legation up`), once with
`enforcement: auto` and once with `enforcement: service`: same status, WWW-Authenticate and body.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.authz_stack import b64url
from fixtures.gateway import Gateway, Response, gateway_serving
from fixtures.jwks_server import jwks_json, make_rsa_key, mint
from fixtures.processes import Launcher

from e2e.test_native_differential import ext_authz_calls, ext_authz_probe

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

ISSUER = "https://idp.sources.example/"
KEY = make_rsa_key("s-1")
SOURCES = {"cookie": {"cookie": "session"}, "query": {"query": "access_token"}, "hidden": {"query": "t"}}
FORWARDED = {"cookie", "query"}  # the hidden token goes no further than the gateway


def manifests(enforcement: str, upstream: int) -> str:
    docs: list[dict[str, Any]] = []
    for kind, source in SOURCES.items():
        provider = {"name": "corp", "issuer": ISSUER, "jwks": {"inline": jwks_json([KEY])}}
        provider["tokenSources"] = [source]
        docs.append(
            {
                "apiVersion": "legation.dev/v1alpha1",
                "kind": "JWTPolicy",
                "metadata": {"name": f"{kind}-jwt", "namespace": "team-web"},
                "spec": {
                    "enforcement": enforcement,
                    "providers": [provider],
                    "rules": [{"requires": {"anyOf": ["corp"]}}],
                    "forwardToken": kind in FORWARDED,
                },
            }
        )
        docs.append(
            {
                "apiVersion": "legation.dev/v1alpha1",
                "kind": "Mapping",
                "metadata": {"name": kind, "namespace": "team-web"},
                "spec": {
                    "prefix": f"/{kind}",
                    "service": f"127.0.0.1:{upstream}",
                    "auth": {"policy": f"{kind}-jwt"},
                },
            }
        )
    return yaml.safe_dump_all(docs, sort_keys=False)


def tokens() -> dict[str, str]:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "exp": now + 600}
    return {
        "valid": mint(KEY, claims),
        "over-8-kib-signed": mint(KEY, {**claims, "pad": "x" * 9000}),
        "over-8-kib-garbage": "A" * 9000,
        "jwe-shaped": f"{b64url({'alg': 'RSA-OAEP', 'enc': 'A256GCM'})}.a.b.c.d",
        "garbage": "not-a-token",
        "empty": "",
    }


def requests() -> dict[str, tuple[str, dict[str, str]]]:
    """Name → (path, headers): each token in each place the service looks, and near misses."""
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for name, token in tokens().items():
        out[f"cookie {name}"] = ("/cookie/x", {"Cookie": f"theme=dark; session={token}; lang=en"})
        out[f"cookie-first {name}"] = ("/cookie/x", {"Cookie": f"session={token}"})
        out[f"cookie-lookalike {name}"] = ("/cookie/x", {"Cookie": f"xsession={token}"})
        out[f"query {name}"] = (f"/query/x?a=1&access_token={token}&b=2", {})
        out[f"query-first {name}"] = (f"/query/x?access_token={token}", {})
        out[f"query-lookalike {name}"] = (f"/query/x?my_access_token={token}", {})
    valid, garbage = tokens()["valid"], tokens()["garbage"]
    for first, second, what in ((valid, valid, "same"), (valid, garbage, "different")):
        out[f"cookie-twice {what}"] = ("/cookie/x", {"Cookie": f"session={first}; a=1; session={second}"})
        out[f"query-twice {what}"] = (f"/query/x?access_token={first}&access_token={second}", {})
        out[f"query-thrice {what}"] = (
            f"/query/x?access_token={first}&access_token={first}&access_token={second}",
            {},
        )
    for name in ("valid", "over-8-kib-garbage", "empty"):
        token = tokens()[name]
        out[f"hidden {name}"] = (f"/hidden/x?a=1&t={token}&b=2", {})
        out[f"hidden-twice {name}"] = (f"/hidden/x?t={token}&t={token}", {})
    return out


def observe(gateway: Gateway) -> dict[str, tuple[Any, ...]]:
    return {name: _summary(gateway.request("GET", path, headers=h)) for name, (path, h) in requests().items()}


def _summary(response: Response) -> tuple[Any, ...]:
    if response.status == 200:  # what the upstream saw: the query's names, without a hidden token
        return (200, tuple(sorted(response.json()["query"])))
    return (response.status, response.headers.get("www-authenticate"), response.body.decode()[:200])


@pytest.fixture(scope="module")
def gateway(
    module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Path, int]]:
    ready = (f"/query/x?access_token={tokens()['valid']}", {})
    with gateway_serving(
        module_launcher, tmp_path_factory.mktemp("sources"), lambda port: manifests("auto", port), ready=ready
    ) as served:
        yield served


def test_cookie_and_query_tokens_are_checked_where_the_service_finds_them(
    gateway: tuple[Gateway, Path, int],
) -> None:
    gw, source, upstream = gateway
    calls = ext_authz_calls(gw)
    native = observe(gw)
    assert ext_authz_calls(gw) == calls, "native policies must not call ext_authz"
    for place in ("cookie", "cookie-first", "query", "query-first"):
        realm = f"team-web/{place.partition('-')[0]}-jwt"
        assert native[f"{place} valid"][0] == 200
        assert native[f"{place} over-8-kib-signed"][:2] == (
            401, f'Bearer realm="{realm}", error="invalid_token", error_description="token too large"'
        )  # fmt: skip
        assert "JWE" in native[f"{place} jwe-shaped"][2]
    assert native["hidden valid"] == (200, ("a", "b")), native["hidden valid"]
    assert native["query valid"] == (200, ("a", "access_token", "b")), native["query valid"]
    for twice in ("cookie-twice", "query-twice", "query-thrice"):
        assert native[f"{twice} same"][0] == 200
        assert native[f"{twice} different"][0] == 400

    source.write_text(manifests("service", upstream))
    gw.wait_until(lambda: ext_authz_probe(gw, "/query/x"), timeout=30, what="the service enforcing")
    service = observe(gw)
    differences = {k: (native[k], service[k]) for k in native if native[k] != service[k]}
    assert not differences, differences
