"""Which JWTPolicies Envoy enforces itself (jwt_authn + RBAC + header mutation), and why not.

`spec.enforcement: auto` (the default) compiles a policy into Envoy's own filters when every
decision they make is the authz service's decision too (the service, src/legation/authz/, is the
reference); otherwise the policy stays on ext_authz, with the first reason in its status:
`enforcement: service (provider corp: several token sources …)`. `enforcement: service` forces the service.

Remote JWKS (`jwks.uri`) are native when the platform allows it (`--native-remote-jwks`;
`legation up` does): jwt_authn `remote_jwks`, fetched by Envoy through a cluster per origin
(`compiler.jwks_uris` says which URIs a team may name). Off by default on a shared gateway: Envoy
buffers up to 32 MiB per fetch, as often as the team's `cacheDuration` says, where the service
caps a JWKS at 1 MiB. Envoy has no refetch on an unknown kid either: a key an IdP signs with
before publishing it is accepted at the next scheduled fetch (README, "Native enforcement").

What keeps a policy on the service, and why:
- remote JWKS, unless the platform allows Envoy to fetch them (above);
- `jwks.file`: read by the standalone service only;
- a provider with several token sources: two different tokens must be a 400, which jwt_authn
  cannot tell (it verifies the first it finds);
- a cookie token not forwarded: Envoy cannot take one cookie out of the Cookie header (a query
  token is removed by a header mutation after jwt_authn);
- keys the controller cannot bind to one algorithm (see `bind_jwks`).

`bind_jwks` gives every JWK the one algorithm the service binds it to (its `alg`, else the first
allowed algorithm its key type fits) and drops the keys the service skips, so that jwt_authn
accepts exactly the (kid, alg) pairs the service accepts.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from legation.api.v1alpha1.jwtpolicy import JWTPolicy, Provider
from legation.controller.compiler.remote_jwks import RemoteKeys, jwks_origin, remote_keys

__all__ = ["NativePolicy", "bind_jwks", "native_policy"]

_RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_FITS: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("RSA", None): _RSA,
    ("EC", "P-256"): ("ES256",),
    ("EC", "P-384"): ("ES384",),
    ("OKP", "Ed25519"): ("EdDSA",),
    ("oct", None): ("HS256", "HS384", "HS512"),
}
_MIN_RSA_BITS = 2048
_PLAIN_CLAIM = re.compile(r"[A-Za-z0-9_.:/+#-]{1,256}")
"""Claim names Envoy's answers may carry: a native denial names the claim inside a CEL string
(the local reply's filter) and an Envoy format string (its body and WWW-Authenticate), where a
quote or `%ENVIRONMENT(…)%` in a team's claim name would be read as code; the service writes
any name as plain text."""
_MIN_HMAC_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


@dataclass(frozen=True)
class NativePolicy:
    """A policy Envoy enforces: the resolved resource and each provider's bound JWKS (JSON)."""

    key: str
    policy: JWTPolicy
    jwks: tuple[tuple[str, str], ...]
    """(provider name, JWKS JSON with one `alg` per key), in provider order: local keys."""
    remote: tuple[tuple[str, RemoteKeys], ...] = ()
    """(provider name, where Envoy fetches its keys), in provider order: remote keys."""

    def keys_of(self, provider: str) -> str | RemoteKeys:
        """The provider's bound JWKS JSON, or its remote JWKS."""
        return dict(self.jwks).get(provider) or dict(self.remote)[provider]


def native_policy(policy: JWTPolicy, *, remote_jwks: bool = False) -> NativePolicy | str:
    """The native form of a resolved policy (Secret-backed JWKS already inline), or the reason
    it stays on the authz service. `remote_jwks`: the platform lets Envoy fetch remote JWKS
    (`--native-remote-jwks`)."""
    spec = policy.spec
    if spec.enforcement == "service":
        return "enforcement: service"
    claims = [
        *(c for rule in spec.rules for c in rule.claims),
        *spec.claims_to_headers,
        *spec.metadata_claims,
    ]
    odd = next((c for c in claims if not _PLAIN_CLAIM.fullmatch(c)), None)
    if odd is not None:
        return f"claim name {odd!r}: only letters, digits and _ - . : / + # make native answers"
    jwks: list[tuple[str, str]] = []
    remote: list[tuple[str, RemoteKeys]] = []
    for provider in spec.providers:
        bound = _provider_reason(provider, forward=spec.forward_token, remote_jwks=remote_jwks)
        if isinstance(bound, RemoteKeys):
            remote.append((provider.name, bound))
        elif not bound.startswith("{"):
            return f"provider {provider.name}: {bound}"
        else:
            jwks.append((provider.name, bound))
    return NativePolicy(key=policy.key, policy=policy, jwks=tuple(jwks), remote=tuple(remote))


def _provider_reason(provider: Provider, *, forward: bool, remote_jwks: bool) -> str | RemoteKeys:
    """The bound JWKS JSON (starts with `{`), the remote JWKS, or why the provider cannot be native."""
    if provider.jwks.inline is None and provider.jwks.uri is None:
        return "jwks.file is read by the standalone service only; jwks.inline, uri or secretRef is native"
    if len(provider.token_sources) > 1:
        return (
            "several token sources (two different tokens must be a 400, which Envoy cannot tell); "
            "use one source for native enforcement"
        )
    source = provider.token_sources[0]
    if not forward and source.cookie:
        return "a cookie token cannot be removed by Envoy (set forwardToken or use a header)"
    if provider.jwks.uri is not None:
        if not remote_jwks:
            return (
                "remote JWKS are fetched by the authz service (1 MiB cap) unless the platform runs "
                "the controller with --native-remote-jwks; jwks.inline or secretRef is native"
            )
        return _remote(provider)
    assert provider.jwks.inline is not None
    bound = bind_jwks(provider.jwks.inline, provider.algorithms)
    return bound if bound is not None else "no key usable with its algorithms (kty and alg must fit one)"


def _remote(provider: Provider) -> RemoteKeys | str:
    uri = provider.jwks.uri
    assert uri is not None
    try:
        jwks_origin(uri)
    except ValueError as exc:  # refused by the compiler already; `native_policy` alone stays safe
        return str(exc)
    return remote_keys(
        uri,
        cache_duration=provider.jwks.cache_duration,
        refetch_cooldown=provider.jwks.refetch_cooldown,
        algorithms=provider.algorithms,
    )


def bind_jwks(text: str, algorithms: Sequence[str]) -> str | None:
    """The JWKS with each usable key bound to one algorithm; None if none is usable."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    entries = data.get("keys") if isinstance(data, dict) and "keys" in data else [data]
    if not isinstance(entries, list):
        return None
    keys = [k for k in (_bind(e, algorithms) for e in entries) if k is not None]
    return json.dumps({"keys": keys}, separators=(",", ":"), sort_keys=True) if keys else None


def _bind(jwk: Any, algorithms: Sequence[str]) -> dict[str, Any] | None:
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
        return None
    if "key_ops" in jwk and "verify" not in (jwk["key_ops"] or []):
        return None
    kty = str(jwk.get("kty"))
    fits = _FITS.get((kty, str(jwk.get("crv")) if kty in ("EC", "OKP") else None), ())
    declared = jwk.get("alg")
    if declared is not None:
        alg = declared if declared in fits and declared in algorithms else None
    else:
        alg = next((a for a in algorithms if a in fits), None)
    if alg is None or not _strong_enough(jwk, alg):
        return None
    public = {k: v for k, v in jwk.items() if k in ("kty", "kid", "crv", "n", "e", "x", "y", "k")}
    return {**public, "alg": alg, "use": "sig"}


def _strong_enough(jwk: dict[str, Any], alg: str) -> bool:
    field = "n" if alg in _RSA else "k" if alg in _MIN_HMAC_BYTES else None
    if field is None:
        return True
    try:
        raw = base64.urlsafe_b64decode(str(jwk.get(field, "")) + "==")
    except (binascii.Error, ValueError):
        return False
    if alg in _RSA:
        return int.from_bytes(raw, "big").bit_length() >= _MIN_RSA_BITS
    return len(raw) >= _MIN_HMAC_BYTES[alg]
