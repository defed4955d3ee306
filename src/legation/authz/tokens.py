"""Finding a bearer token in a request and verifying it for one provider (RFC 8725 / RFC 6750).

Verification refuses before decoding what can be refused cheaply (size, JWE shape, algorithm
not allowed, critical headers), binds every key to one algorithm (jwks.py), never follows
`jku`/`x5u`/`jwk` headers, and caches verified tokens until they expire so a repeated token
skips the signature check. Error descriptions are fixed strings: safe to send to clients.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

import jwt

from legation.api.v1alpha1.jwtpolicy import TokenSource
from legation.authz.jwks import JwksError, KeySource

__all__ = ["CompiledProvider", "TokenCache", "TokenError", "find_token", "verify"]

ErrorKind = Literal["invalid_token", "invalid_request", "insufficient_scope", "unavailable"]


class TokenError(Exception):
    """Why a token was refused. `description` is a fixed, client-safe string."""

    def __init__(self, kind: ErrorKind, description: str) -> None:
        super().__init__(description)
        self.kind = kind
        self.description = description


@dataclass(frozen=True, slots=True)
class CompiledProvider:
    id: str  # "namespace/policy/provider": unique across policies, keys the token cache
    name: str
    issuer: str
    audiences: tuple[str, ...]
    algorithms: frozenset[str]
    sources: tuple[TokenSource, ...]
    skew: float
    require_expiry: bool
    max_token_bytes: int
    keys: KeySource


def find_token(
    sources: Sequence[TokenSource], headers: Mapping[str, str], query: str, cookies: Mapping[str, str | None]
) -> str | None:
    """The token of the first source that has one; two sources with different tokens are refused."""
    found: str | None = None
    for source in sources:
        token = _from_source(source, headers, query, cookies)
        if token is None:
            continue
        if found is not None and token != found:
            raise TokenError("invalid_request", "more than one token in the request")
        found = token
    return found


def _from_source(
    source: TokenSource, headers: Mapping[str, str], query: str, cookies: Mapping[str, str | None]
) -> str | None:
    if source.header:
        value = headers.get(source.header.lower())
        if value is None:
            return None
        if source.prefix:
            if not value.lower().startswith(source.prefix.lower()):
                return None
            value = value[len(source.prefix) :]
        return value.strip() or None
    if source.cookie:
        if source.cookie in cookies and cookies[source.cookie] is None:
            raise TokenError("invalid_request", "more than one token in the request")
        return cookies.get(source.cookie) or None
    if source.query and query:
        values = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == source.query]
        if len(set(values)) > 1:
            raise TokenError("invalid_request", "more than one token in the request")
        return values[0] or None if values else None
    return None


def parse_cookies(header: str | None) -> dict[str, str | None]:
    """Cookies by name; None for a name sent twice with different values (ambiguous)."""
    cookies: dict[str, str | None] = {}
    for part in (header or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if not (sep and name):
            continue
        value = value.strip().strip('"')
        if name in cookies and cookies[name] != value:
            cookies[name] = None
        else:
            cookies.setdefault(name, value)
    return cookies


def without_cookies(header: str, names: frozenset[str]) -> str:
    """The Cookie header minus the named cookies (token cookies are not forwarded)."""
    kept = [p.strip() for p in header.split(";") if p.strip() and p.strip().partition("=")[0] not in names]
    return "; ".join(kept)


class TokenCache:
    """Verified tokens by (provider id, token), until their `exp`. Bounded, least recently used out."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[dict[str, Any], float, int]] = OrderedDict()
        self._max = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, provider: str, token: str, key_version: int, now: float) -> dict[str, Any] | None:
        entry = self._entries.get((provider, token))
        if entry is None or entry[1] <= now or entry[2] != key_version:
            self.misses += 1
            return None
        self._entries.move_to_end((provider, token))
        self.hits += 1
        return entry[0]

    def put(self, provider: str, token: str, claims: dict[str, Any], key_version: int, until: float) -> None:
        self._entries[(provider, token)] = (claims, until, key_version)
        self._entries.move_to_end((provider, token))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


def _segment(data: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise TokenError("invalid_token", "malformed token") from exc


def peek(token: str, provider_max: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, unverified, after the checks that need no key."""
    if len(token) > provider_max:
        raise TokenError("invalid_token", "token too large")
    parts = token.split(".")
    if len(parts) == 5:
        raise TokenError("invalid_token", "encrypted tokens (JWE) are not accepted")
    if len(parts) != 3 or not parts[2]:
        raise TokenError("invalid_token", "malformed token")
    header, claims = _segment(parts[0]), _segment(parts[1])
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenError("invalid_token", "malformed token")
    if "crit" in header:
        raise TokenError("invalid_token", "unsupported critical header")
    if any(not _numeric_date(claims[c]) for c in _NUMERIC_DATES if c in claims):
        raise TokenError("invalid_token", "malformed token")
    return header, claims


_NUMERIC_DATES = ("exp", "nbf", "iat")


def _numeric_date(value: Any) -> bool:
    """A JSON number (RFC 7519 §2 NumericDate). PyJWT would take "1700000000" as well; Envoy's
    jwt_authn, which enforces native policies, does not, and neither do we."""
    return isinstance(value, int | float) and not isinstance(value, bool)


async def verify(token: str, provider: CompiledProvider, cache: TokenCache) -> dict[str, Any]:
    """Verified claims of `token` for `provider`, or TokenError."""
    try:
        keyset = await provider.keys.current()
    except JwksError as exc:
        raise TokenError("unavailable", "signing keys unavailable") from exc
    now = time.time()
    cached = cache.get(provider.id, token, keyset.version, now)
    if cached is not None:  # verified before with these very keys, and not expired
        return cached
    header, unverified = peek(token, provider.max_token_bytes)
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in provider.algorithms:
        raise TokenError("invalid_token", "signing algorithm not allowed")
    if unverified.get("iss") != provider.issuer:
        raise TokenError("invalid_token", "untrusted issuer")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise TokenError("invalid_token", "malformed token")
    candidates = keyset.find(kid, alg)
    if not candidates and kid is not None:
        try:
            keyset = await provider.keys.refresh_for_kid(kid)
        except JwksError as exc:
            raise TokenError("unavailable", "signing keys unavailable") from exc
        candidates = keyset.find(kid, alg)
    if not candidates:
        raise TokenError("invalid_token", "unknown signing key")
    claims = _decode(token, provider, candidates)
    exp = claims.get("exp")
    until = float(exp) + provider.skew if isinstance(exp, int | float) else now + 60.0
    cache.put(provider.id, token, claims, keyset.version, until)
    return claims


def _decode(token: str, provider: CompiledProvider, candidates: Sequence[Any]) -> dict[str, Any]:
    options: Any = {
        "require": ["exp"] if provider.require_expiry else [],
        "verify_aud": bool(provider.audiences),
    }
    last: TokenError = TokenError("invalid_token", "invalid signature")
    for key in candidates[:8]:  # without a kid, try each key of the right algorithm (as Envoy does)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.alg],
                issuer=provider.issuer,
                audience=list(provider.audiences) or None,
                leeway=provider.skew,
                options=options,
            )
            return claims
        except jwt.InvalidSignatureError:
            continue
        except (jwt.InvalidAudienceError, jwt.MissingRequiredClaimError) as exc:
            if isinstance(exc, jwt.MissingRequiredClaimError) and exc.claim != "aud":
                last = TokenError("invalid_token", f"missing {exc.claim} claim")
                break
            raise TokenError("insufficient_scope", "audience not allowed") from exc
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("invalid_token", "token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenError("invalid_token", "token not yet valid") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError("invalid_token", "untrusted issuer") from exc
        except jwt.PyJWTError as exc:
            last = TokenError("invalid_token", "malformed token")
            if isinstance(exc, jwt.InvalidKeyError):
                last = TokenError("invalid_token", "invalid signature")
            break
    raise last
