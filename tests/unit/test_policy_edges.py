"""Policy edges: `pathPrefix` matches whole segments (Gateway API's PathPrefix), and
`claimsToHeaders` names only plain headers (a claim must never reroute or reframe a request)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from pydantic import ValidationError

from legation.api.v1alpha1.jwtpolicy import JWTPolicy
from legation.authz.jwks import KeySource
from legation.authz.policy import compile_policy


def policy(*rules: dict[str, Any], headers: dict[str, str] | None = None) -> JWTPolicy:
    return JWTPolicy.model_validate(
        {
            "apiVersion": "legation.dev/v1alpha1",
            "kind": "JWTPolicy",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {
                "providers": [{"name": "corp", "issuer": "i", "jwks": {"uri": "https://idp/j"}}],
                "rules": list(rules),
                "claimsToHeaders": headers or {},
            },
        }
    )


def NO_KEYS(provider_id: str, provider: Any) -> KeySource:
    return cast("KeySource", None)  # matching never touches keys


def rule_index(prefix: str, path: str) -> int | None:
    compiled = compile_policy(
        policy({"match": {"pathPrefix": prefix}, "public": True}),
        NO_KEYS,
    )
    rule = compiled.rule_for("GET", "api", path)
    return None if rule is None else rule.index


@pytest.mark.parametrize(
    ("prefix", "path", "covered"),
    [
        ("/orders/public", "/orders/public", True),
        ("/orders/public", "/orders/public/", True),
        ("/orders/public", "/orders/public/menu", True),
        ("/orders/public", "/orders/publicity", False),  # the hole: a character prefix opened it
        ("/orders/public", "/orders/public-admin/x", False),
        ("/orders/public", "/orders", False),
        ("/orders/public/", "/orders/public", True),  # a trailing slash changes nothing
        ("/orders/public/", "/orders/publicity", False),
        ("/", "/anything/at/all", True),
        ("/", "/", True),
    ],
)
def test_path_prefix_matches_whole_segments(prefix: str, path: str, covered: bool) -> None:
    assert (rule_index(prefix, path) == 0) is covered


def test_compiled_prefix_is_used_for_every_rule() -> None:
    compiled = compile_policy(
        policy(
            {"match": {"pathPrefix": "/a/public"}, "public": True},
            {"match": {"pathPrefix": "/a"}, "requires": {"anyOf": ["corp"]}},
        ),
        NO_KEYS,
    )
    assert [compiled.rule_for("GET", "h", p).index for p in ("/a/public/x", "/a/publicity", "/a")] == [
        0,
        1,
        1,
    ]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (":path", "invalid header name"),
        (":authority", "invalid header name"),
        ("x-user\r\nx-admin", "invalid header name"),
        ("x user", "invalid header name"),
        ("", "invalid header name"),
        ("Host", "host routes or frames the request"),
        ("content-length", "content-length routes or frames the request"),
        ("Transfer-Encoding", "transfer-encoding is a hop-by-hop header"),
        ("connection", "hop-by-hop"),
        ("keep-alive", "hop-by-hop"),
        ("proxy-authorization", "hop-by-hop"),
        ("te", "hop-by-hop"),
        ("trailer", "hop-by-hop"),
        ("upgrade", "hop-by-hop"),
        ("x-envoy-original-path", "x-envoy-* headers control Envoy"),
    ],
)
def test_claims_to_headers_refuses_what_is_not_a_plain_header(name: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        policy({"public": True}, headers={"sub": name})
    [error] = caught.value.errors()
    assert error["loc"] == ("spec", "claimsToHeaders", "sub")
    assert reason in error["msg"], error["msg"]


def test_claims_to_headers_takes_plain_names_lowercased() -> None:
    spec = policy({"public": True}, headers={"sub": "X-User-Id", "org.team": "x-team"}).spec
    assert spec.claims_to_headers == {"sub": "x-user-id", "org.team": "x-team"}
