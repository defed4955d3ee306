"""Which JWTPolicies Envoy enforces itself (jwt_authn + RBAC + header mutation), and why not.

`spec.enforcement: auto` (the default) compiles a policy into Envoy's own filters when every
decision they make is the authz service's decision too (the service, src/legation/authz/, is the
reference); otherwise the policy stays on ext_authz, with the first reason in its status:
`enforcement: service (provider corp: remote JWKS …)`. `enforcement: service` forces the service.

What keeps a policy on the service, and why:
- remote JWKS (`jwks.uri`): Envoy's remote_jwks has no refetch on an unknown kid, so a key an IdP
  rotates in would be refused until the next scheduled fetch (the service picks it up at once);
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from legation.api.v1alpha1.jwtpolicy import JWTPolicy, Provider

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
_MIN_HMAC_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


@dataclass(frozen=True)
class NativePolicy:
    """A policy Envoy enforces: the resolved resource and each provider's bound JWKS (JSON)."""

    key: str
    policy: JWTPolicy
    jwks: tuple[tuple[str, str], ...]
    """(provider name, JWKS JSON with one `alg` per key), in provider order."""


def native_policy(policy: JWTPolicy) -> NativePolicy | str:
    """The native form of a resolved policy (Secret-backed JWKS already inline), or the reason
    it stays on the authz service."""
    spec = policy.spec
    if spec.enforcement == "service":
        return "enforcement: service"
    jwks: list[tuple[str, str]] = []
    for provider in spec.providers:
        bound = _provider_reason(provider, forward=spec.forward_token)
        if isinstance(bound, str) and not bound.startswith("{"):
            return f"provider {provider.name}: {bound}"
        jwks.append((provider.name, bound))
    return NativePolicy(key=policy.key, policy=policy, jwks=tuple(jwks))


def _provider_reason(provider: Provider, *, forward: bool) -> str:
    """The bound JWKS JSON (starts with `{`), or why the provider cannot be native."""
    if provider.jwks.uri is not None:
        return "remote JWKS (Envoy cannot refetch keys on an unknown kid)"
    if provider.jwks.inline is None:
        return "jwks.file is read by the standalone service only; jwks.inline or secretRef is native"
    if len(provider.token_sources) > 1:
        return (
            "several token sources (two different tokens must be a 400, which Envoy cannot tell); "
            "use one source for native enforcement"
        )
    source = provider.token_sources[0]
    if not forward and source.cookie:
        return "a cookie token cannot be removed by Envoy (set forwardToken or use a header)"
    bound = bind_jwks(provider.jwks.inline, provider.algorithms)
    return bound if bound is not None else "no key usable with its algorithms (kty and alg must fit one)"


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
