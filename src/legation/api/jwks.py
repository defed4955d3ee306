"""JWKS documents: parsing a key set the way Legation verifies tokens with it.

The one parser of JWKS text, shared by the authz service (which verifies tokens with the keys)
and the controller (which refuses a JWTPolicy whose inline or Secret key set the authz service
could not load, so that one team's bad keys never reach the feed every team shares).

Why this shape: a token's signature is only as good as the choice of key and algorithm. Every key
is bound to ONE algorithm when it is loaded (its JWK `alg`, else the first allowed algorithm its
type fits) and callers look keys up by (kid, header alg), so a token can never make a key verify
under an algorithm it was not meant for (an RSA public key used as an HMAC secret, say).

Parsing rules (a skipped key is logged with its index, kid and reason, never its material):
- `use` other than "sig", `key_ops` without "verify", unknown `kty`/`crv`, an `alg` not allowed or
  not fitting the key type, RSA under 2048 bits, HMAC secrets shorter than the hash: skipped.
- Private members (`d`, `p`, ...): a static key keeps only its public half (the private members are
  never read). A remote JWKS that publishes private material is skipped: that key is compromised.
- Symmetric (`oct`) keys only come from static sources: a public JWKS URL must never be able to
  supply a shared secret, so `parse_jwks(..., remote=True)` skips them.
- Duplicate kids, a document that is not a JWKS/JWK, or no usable key at all: JwksError.

`KeySet.version` is new for every parse; key sources keep it stable while the keys stay the same.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

__all__ = ["JwksError", "Key", "KeySet", "parse_jwks"]

log = logging.getLogger("legation.jwks")

_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVES: dict[str, tuple[ec.EllipticCurve, int, str]] = {
    "P-256": (ec.SECP256R1(), 32, "ES256"),
    "P-384": (ec.SECP384R1(), 48, "ES384"),
}
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 3.2: at least the hash size
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")
_MIN_RSA_BITS = 2048
_MAX_RSA_BYTES = 2048  # 16384-bit modulus: OpenSSL's own ceiling
_MAX_KEYS = 256  # parsing stays a few ms on the event loop
_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_VERSIONS = itertools.count(1)  # process-wide, so versions of different sources never collide


class JwksError(Exception):
    """Bad key material or a failed fetch. The message is safe to log: it never holds key material."""

    provider_name: str | None = None  # set by whoever knows which provider the keys were for


class _Skip(Exception):
    """One key is unusable; it is logged and the other keys still load."""


@dataclass(frozen=True, slots=True)
class Key:
    kid: str | None
    alg: str
    """The one algorithm this key verifies."""
    key: Any
    """What `jwt.decode()` accepts: a cryptography public key, or bytes for HS*."""


@dataclass(frozen=True)
class KeySet:
    keys: tuple[Key, ...]
    version: int
    """Changes whenever the set of keys changes (callers key caches on it)."""
    fetched_at: float
    """`time.monotonic()` (or the source's clock) of the fetch or load."""
    _by_kid: dict[str, Key] = field(init=False, repr=False, compare=False)
    _by_alg: dict[str, tuple[Key, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_alg: dict[str, list[Key]] = {}
        for key in self.keys:
            by_alg.setdefault(key.alg, []).append(key)
        object.__setattr__(self, "_by_kid", {k.kid: k for k in self.keys if k.kid is not None})
        object.__setattr__(self, "_by_alg", {alg: tuple(keys) for alg, keys in by_alg.items()})

    def find(self, kid: str | None, alg: str) -> list[Key]:
        """kid given: the key with that kid if its alg == alg, then the keys of that alg that have
        no kid (as Envoy's jwt_authn does). kid None: every key of that alg."""
        if kid is None:
            return list(self._by_alg.get(alg, ()))
        key = self._by_kid.get(kid) if isinstance(kid, str) else None
        found = [key] if key is not None and key.alg == alg else []
        return found + [k for k in self._by_alg.get(alg, ()) if k.kid is None]

    def has_kid(self, kid: str) -> bool:
        """Whether any key (of any algorithm) has this kid: decides if an unknown kid may refetch."""
        return kid in self._by_kid


def parse_jwks(data: str | bytes, *, algorithms: Sequence[str], source: str, remote: bool = False) -> KeySet:
    """Parse a JWKS document (`{"keys": [...]}`) or a single JWK into keys bound to one algorithm each.

    `remote=True` applies the rules for documents fetched from a URL: no `oct` keys, and keys that
    carry private material are skipped instead of reduced to their public half.
    """
    keys: list[Key] = []
    kids: set[str] = set()
    for index, jwk in enumerate(_key_entries(data, source)):
        try:
            key = _build_key(jwk, algorithms=algorithms, remote=remote)
        except _Skip as skip:
            kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
            log.warning(
                "JWKS key skipped: %s",
                skip,
                extra={"source": source, "index": index, "kid": _short(kid), "reason": str(skip)},
            )
            continue
        if key.kid is not None:
            if key.kid in kids:
                raise JwksError(f"{source}: duplicate kid {_short(key.kid)}")
            kids.add(key.kid)
        keys.append(key)
    if not keys:
        raise JwksError(f"{source}: no usable keys in the JWKS (each skipped key was logged)")
    return KeySet(keys=tuple(keys), version=next(_VERSIONS), fetched_at=time.monotonic())


def _key_entries(data: str | bytes, source: str) -> list[Any]:
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise JwksError(f"{source}: JWKS is not valid JSON (line {exc.lineno} column {exc.colno})") from None
    except (ValueError, RecursionError):  # undecodable bytes, absurd numbers or nesting
        raise JwksError(f"{source}: JWKS is not valid JSON") from None
    if isinstance(doc, dict) and isinstance(doc.get("keys"), list):
        entries: list[Any] = doc["keys"]
    elif isinstance(doc, dict) and "keys" not in doc and "kty" in doc:
        entries = [doc]
    else:
        raise JwksError(f'{source}: not a JWKS (an object with a "keys" list) nor a single JWK')
    if len(entries) > _MAX_KEYS:
        raise JwksError(f"{source}: JWKS has {len(entries)} keys (at most {_MAX_KEYS})")
    return entries


def _build_key(jwk: Any, *, algorithms: Sequence[str], remote: bool) -> Key:
    if not isinstance(jwk, dict):
        raise _Skip("not a JSON object")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _Skip("kid is not a string")
    if jwk.get("use", "sig") != "sig":
        raise _Skip(f"use is {_short(jwk.get('use'))}, not 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise _Skip("key_ops does not allow 'verify'")
    kty = jwk.get("kty")
    builder = _BUILDERS.get(kty) if isinstance(kty, str) else None
    if builder is None:
        raise _Skip(f"unsupported kty {_short(kty)}")
    if remote and kty == "oct":
        raise _Skip("symmetric (oct) keys are never taken from a remote JWKS")
    private = any(name in jwk for name in _PRIVATE_MEMBERS)
    if private and remote:
        raise _Skip("it publishes private key material (treat that key as compromised)")
    key, fits = builder(jwk)
    alg = _bind_alg(jwk.get("alg"), fits, algorithms)
    if private:
        log.warning("JWKS key has private members; only its public key is kept", extra={"kid": _short(kid)})
    return Key(kid=kid, alg=alg, key=key)


def _bind_alg(declared: Any, fits: Callable[[str], bool], algorithms: Sequence[str]) -> str:
    if declared is not None:
        if not isinstance(declared, str) or declared not in algorithms:
            raise _Skip(f"its alg {_short(declared)} is not among the allowed algorithms")
        if not fits(declared):
            raise _Skip(f"its alg {declared} does not fit the key (type, curve or size)")
        return declared
    for alg in algorithms:
        if fits(alg):
            return alg
    raise _Skip("no allowed algorithm fits the key (type, curve or size)")


def _b64(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not _B64URL.fullmatch(value.rstrip("=")):
        raise _Skip(f"member {name!r} is missing or not base64url")
    text = value.rstrip("=")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise _Skip(f"member {name!r} is not base64url") from None


_Built = tuple[Any, Callable[[str], bool]]


def _rsa_key(jwk: Mapping[str, Any]) -> _Built:
    n, e = _b64(jwk, "n"), _b64(jwk, "e")
    if len(n) > _MAX_RSA_BYTES or len(e) > 8:
        raise _Skip("RSA key is too large")
    try:
        key = rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
    except ValueError:
        raise _Skip("invalid RSA public key") from None
    if key.key_size < _MIN_RSA_BITS:
        raise _Skip(f"RSA key of {key.key_size} bits (at least {_MIN_RSA_BITS} required)")
    return key, _RSA_ALGS.__contains__


def _ec_key(jwk: Mapping[str, Any]) -> _Built:
    crv = jwk.get("crv")
    spec = _EC_CURVES.get(crv) if isinstance(crv, str) else None
    if spec is None:
        raise _Skip(f"unsupported EC curve {_short(crv)}")
    curve, size, curve_alg = spec
    x, y = _b64(jwk, "x"), _b64(jwk, "y")
    if len(x) != size or len(y) != size:
        raise _Skip("EC coordinates have the wrong length")
    try:
        key = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve)
        return key.public_key(), lambda alg: alg == curve_alg
    except ValueError:
        raise _Skip("EC point is not on the curve") from None


def _okp_key(jwk: Mapping[str, Any]) -> _Built:
    if jwk.get("crv") != "Ed25519":
        raise _Skip(f"unsupported OKP curve {_short(jwk.get('crv'))}")
    x = _b64(jwk, "x")
    if len(x) != 32:
        raise _Skip("Ed25519 key has the wrong length")
    return ed25519.Ed25519PublicKey.from_public_bytes(x), lambda alg: alg == "EdDSA"


def _oct_key(jwk: Mapping[str, Any]) -> _Built:
    secret = _b64(jwk, "k")
    return secret, lambda alg: alg in _HMAC_MIN_BYTES and len(secret) >= _HMAC_MIN_BYTES[alg]


_BUILDERS: dict[str, Callable[[Mapping[str, Any]], _Built]] = {
    "RSA": _rsa_key,
    "EC": _ec_key,
    "OKP": _okp_key,
    "oct": _oct_key,
}


def _short(value: Any) -> str:
    """A bounded repr of a JWK member that is not key material (kid, use, alg, kty, crv)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
