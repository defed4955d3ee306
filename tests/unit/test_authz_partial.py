"""One team's broken policy stays with that team: a reload or feed version with a policy the
authz service cannot load rejects that policy (requests naming it get a precise 503) and applies
the rest; what names no policy still refuses the whole version."""

from __future__ import annotations

import pytest
from fixtures.jwks_server import jwks_json, make_rsa_key

from legation.authz.app import KeySources, compile_all
from legation.authz.authorizer import Authorizer, HttpRequest
from legation.authz.config import load_policy_texts
from legation.authz.tokens import TokenCache
from legation.core.errors import ConfigErrors

GOOD_KEYS = jwks_json([make_rsa_key("k")])


def policy(ns: str, *, jwks: str, extra: str = "") -> str:
    return (
        "apiVersion: legation.dev/v1alpha1\nkind: JWTPolicy\n"
        f"metadata: {{name: p, namespace: {ns}}}\n"
        "spec:\n"
        "  providers:\n"
        f"    - {{name: corp, issuer: https://idp/, jwks: {jwks}}}\n"
        "  rules: [{match: {pathPrefix: /open}, public: true}]\n" + extra
    )


FEED = "---\n".join(
    [
        policy("team-a", jwks="{inline: 'not a jwks'}"),
        policy("team-b", jwks=f"{{inline: '{GOOD_KEYS}'}}"),
        policy("team-c", jwks=f"{{inline: '{GOOD_KEYS}'}}", extra="  surprise: 1\n"),
        policy("team-d", jwks="{file: relative/keys.json}"),
    ]
)


def test_schema_errors_reject_only_the_policy_they_are_in() -> None:
    loaded = load_policy_texts([("feed@v2", FEED)], partial=True)
    assert sorted(p.key for p in loaded.policies) == ["team-a/p", "team-b/p", "team-d/p"]
    [error] = loaded.rejected["team-c/p"]
    assert str(error) == "feed@v2:24: JWTPolicy team-c/p: spec.surprise: unknown key"


def test_strict_loading_still_refuses_everything() -> None:
    with pytest.raises(ConfigErrors, match=r"spec\.surprise: unknown key"):
        load_policy_texts([("feed@v2", FEED)])


@pytest.mark.parametrize(
    "text",
    [
        "apiVersion: legation.dev/v1alpha1\nkind: JWTPolicy\nspec: [\n",  # YAML syntax: no policy named
        policy("team-b", jwks="{uri: https://idp/j}")
        + "---\n"
        + policy("team-b", jwks="{uri: https://idp/k}"),
    ],
    ids=["yaml-syntax", "duplicate"],
)
def test_what_names_no_single_policy_refuses_the_version(text: str) -> None:
    with pytest.raises(ConfigErrors):
        load_policy_texts([("feed@v3", text)], partial=True)


async def test_unusable_keys_reject_that_policy_and_requests_naming_it_get_503() -> None:
    loaded = load_policy_texts([("feed@v2", FEED)], partial=True)
    compiled = compile_all(loaded, KeySources(allow_insecure=False), partial=True)
    # team-d's key file does not exist here: that policy fails alone too.
    assert sorted(compiled.policies) == ["team-b/p"]
    assert sorted(compiled.rejected) == ["team-a/p", "team-c/p", "team-d/p"]
    [bad_keys] = compiled.rejected["team-a/p"]
    assert bad_keys.path == ("spec", "providers", 0, "jwks") and "unusable keys" in bad_keys.reason

    authorizer = Authorizer(compiled.policies, default_policy=None, cache=TokenCache())
    authorizer.rejected = {k: str(v[0]) for k, v in compiled.rejected.items()}

    def request(policy: str) -> HttpRequest:
        return HttpRequest(method="GET", host="api", path="/open/x", headers={}, policy=policy)

    rejected = await authorizer.check(request("team-a/p"))
    assert (rejected.allow, rejected.status, rejected.reason) == (False, 503, "policy rejected")
    assert "not a jwks" not in str(rejected)  # the reason is a fixed string
    assert (await authorizer.check(request("team-b/p"))).allow
    unknown = await authorizer.check(request("team-z/p"))
    assert (unknown.status, unknown.reason) == (403, "unknown policy")


def test_strict_compile_refuses_unusable_keys() -> None:
    loaded = load_policy_texts([("p.yaml", policy("team-a", jwks="{inline: 'not a jwks'}"))])
    with pytest.raises(ConfigErrors, match="unusable keys"):
        compile_all(loaded, KeySources(allow_insecure=False))
