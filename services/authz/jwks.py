"""Key sources for JWT verification: JWKS parsing, static (inline or file) and remote (HTTPS) sources.

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

`KeySet.version` is stable while the keys stay the same and new when they change, so callers may
cache verified tokens per version. Remote fetch rules are in `RemoteJwks`'s docstring.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hashlib
import ipaddress
import itertools
import json
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from prometheus_client import Counter
from yarl import URL

__all__ = [
    "FETCHES",
    "JwksError",
    "Key",
    "KeySet",
    "KeySource",
    "RemoteJwks",
    "RemoteSettings",
    "StaticKeySource",
    "parse_jwks",
]

log = logging.getLogger("legation.authz.jwks")

FETCHES = Counter(
    "legation_authz_jwks_fetches_total",
    "Remote JWKS fetches, by source and result (ok, error).",
    ["source", "result"],
)

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


class KeySource(Protocol):
    """Where a provider's keys come from; chosen once per provider when policies are compiled."""

    async def current(self) -> KeySet:
        """The keys now (a remote source fetches on first use); JwksError when none can be served."""
        ...

    async def refresh_for_kid(self, kid: str) -> KeySet:
        """An unknown kid was seen: refetch if the source's rules allow, and return the keys."""
        ...

    async def start(self) -> None:
        """Begin background refresh (remote); a no-op for static sources."""
        ...

    async def close(self) -> None: ...


# --- parsing ---------------------------------------------------------------------------------


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


def _digest(keys: Sequence[Key]) -> bytes:
    """Identity of a key set: equal digests mean the same kids, algorithms and keys."""
    h = hashlib.sha256()
    for k in keys:
        raw = k.key if isinstance(k.key, bytes) else k.key.public_bytes(_DER, _SPKI)
        h.update(json.dumps([k.kid, k.alg, hashlib.sha256(raw).hexdigest()]).encode())
    return h.digest()


_DER = serialization.Encoding.DER
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


def _same_version(new: KeySet, previous: KeySet | None, clock: Callable[[], float]) -> KeySet:
    """`new` stamped with `clock`, keeping the previous version when the keys did not change."""
    if previous is not None and _digest(new.keys) == _digest(previous.keys):
        return replace(new, version=previous.version, fetched_at=clock())
    return replace(new, fetched_at=clock())


# --- static sources ---------------------------------------------------------------------------


class StaticKeySource:
    """Keys from inline JWKS text, or from a file that is re-read when it changes.

    The file is checked (stat) at most once a second, off the event loop; a change is noticed by
    inode, mtime or size, so Kubernetes' symlink-swapped Secret volumes work. A broken or missing
    file keeps the previous keys (logged once per change). A file broken at construction raises.
    """

    def __init__(
        self,
        *,
        data: str | None = None,
        path: str | None = None,
        algorithms: Sequence[str],
        source: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (data is None) == (path is None):
            raise ValueError("StaticKeySource needs exactly one of data or path")
        self._path = path
        self._algorithms = tuple(algorithms)
        self._source = source
        self._clock = clock
        self._checked_at = clock()
        self._stamp = _file_stamp(path) if path is not None else None
        if path is not None and self._stamp is None:
            raise JwksError(f"{source}: cannot read JWKS file {path}")
        text = data if data is not None else _read_file(path or "", source)
        self._keys = _same_version(self._parse(text), None, clock)

    def _parse(self, text: str | bytes) -> KeySet:
        return parse_jwks(text, algorithms=self._algorithms, source=self._source)

    async def current(self) -> KeySet:
        if self._path is not None and self._clock() - self._checked_at >= 1.0:
            self._checked_at = self._clock()
            await self._reload(self._path)
        return self._keys

    async def refresh_for_kid(self, kid: str) -> KeySet:
        return await self.current()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def _reload(self, path: str) -> None:
        stamp = await asyncio.to_thread(_file_stamp, path)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            if stamp is None:
                raise JwksError(f"{self._source}: JWKS file {path} is gone")
            keys = self._parse(await asyncio.to_thread(_read_file, path, self._source))
        except JwksError as exc:
            log.error("JWKS file reload failed; keeping the previous keys", extra={"error": str(exc)})
            return
        self._keys = _same_version(keys, self._keys, self._clock)
        log.info("JWKS file reloaded", extra={"source": self._source, "version": self._keys.version})


def _file_stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _read_file(path: str, source: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(16 * 1_048_576)
    except OSError as exc:
        raise JwksError(f"{source}: cannot read JWKS file {path}: {exc.strerror}") from None


# --- remote sources ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RemoteSettings:
    uri: str
    """The JWKS URL (https unless allow_insecure)."""
    cache_duration: float = 600.0
    """Seconds the keys are fresh; the background refresher refetches at 80% of it."""
    refetch_cooldown: float = 30.0
    """At most one unknown-kid refetch per this many seconds; also the retry interval after a failure."""
    max_stale: float = 86400.0
    """While the endpoint fails, the last good keys serve this long after their fetch (never less than
    cache_duration)."""
    timeout: float = 2.0
    """Seconds for a whole fetch: connect, headers and body."""
    max_bytes: int = 1_048_576
    """Response size cap (decompressed); bigger is an error."""
    allow_insecure: bool = False
    """Permit http:// and private, loopback or link-local addresses (local use and tests)."""

    def __post_init__(self) -> None:
        if not (self.cache_duration > 0 and self.timeout > 0 and self.max_bytes > 0):
            raise ValueError("cache_duration, timeout and max_bytes must be positive")
        if not (self.refetch_cooldown >= 0 and self.max_stale >= 0):
            raise ValueError("refetch_cooldown and max_stale must not be negative")


_REFRESH_AT = 0.8  # of cache_duration
_NO_KEYS_RETRY = 1.0  # seconds between attempts while no fetch ever succeeded
_MIN_RETRY = 0.1  # never hammer a failing endpoint, even with a zero cooldown
_MAX_MISSING = 10_000  # negative cache bound (random kids must not grow memory)
_HEADERS = {"Accept": "application/jwk-set+json, application/json"}


class RemoteJwks:
    """A JWKS fetched over HTTP(S) with aiohttp, cached, refreshed in the background.

    - Single-flight: every caller waiting for keys shares the one fetch in progress.
    - Fresh for cache_duration; `start()` refreshes at 80% of it. Without the refresher, the first
      call after expiry refetches (at most once per refetch_cooldown while fetches fail).
    - Unknown kid: a refetch only when the last fetch of any kind started more than
      refetch_cooldown ago; kids still missing after a fetch are remembered for a cooldown
      (negative cache), so they neither fetch nor wait for a fetch in progress.
    - Failures (non-200, redirect, non-JSON, over max_bytes, timeout, blocked address, no usable
      key) keep the last good keys until fetched_at + max_stale; with no good keys, JwksError.
    - Unless allow_insecure: https only, and every address the host resolves to must be public,
      checked by the connector's resolver at each connection (so DNS rebinding cannot reach an
      internal address); IP-literal hosts are checked here, as aiohttp does not resolve them.
    """

    def __init__(
        self,
        settings: RemoteSettings,
        *,
        algorithms: Sequence[str],
        source: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = _check_uri(settings.uri, allow_insecure=settings.allow_insecure, source=source)
        self._settings = settings
        self._algorithms = tuple(algorithms)
        self._source = source
        self._clock = clock
        self._keys: KeySet | None = None
        self._error: str | None = None  # why the last fetch failed; None after a success
        self._attempted_at: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._missing: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ok = FETCHES.labels(source, "ok")
        self._failed = FETCHES.labels(source, "error")
        self.fetch_count = 0
        """HTTP fetches attempted."""

    async def current(self) -> KeySet:
        keys = self._keys
        now = self._clock()
        if keys is not None and now - keys.fetched_at < self._settings.cache_duration:
            return keys
        if self._inflight is not None or self._may_retry(now):
            await self._fetch_shared()
        return self._servable()

    async def refresh_for_kid(self, kid: str) -> KeySet:
        keys = await self.current()
        if keys.has_kid(kid) or self._known_missing(kid):
            return keys
        if self._inflight is not None or self._cooled_down(self._clock()):
            await self._fetch_shared()
            keys = self._servable()
        if not keys.has_kid(kid):
            self._remember_missing(kid)
        return keys

    async def start(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh_loop(), name=f"jwks-refresh {self._source}")

    async def close(self) -> None:
        tasks = [t for t in (self._refresher, self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._refresher = self._inflight = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- state -----------------------------------------------------------------------------

    def _servable(self) -> KeySet:
        keys = self._keys
        if keys is None:
            raise JwksError(self._error or f"{self._source}: no JWKS fetched yet")
        age = self._clock() - keys.fetched_at
        if age > max(self._settings.max_stale, self._settings.cache_duration):
            raise JwksError(
                f"{self._source}: JWKS is {age:.0f}s old, past max_stale; last error: {self._error}"
            )
        return keys

    def _known_missing(self, kid: str) -> bool:
        since = self._missing.get(kid)
        return since is not None and self._clock() - since < self._settings.refetch_cooldown

    def _remember_missing(self, kid: str) -> None:
        """`kid` is absent from the keys of the last fetch: no fetch for it until a cooldown has passed."""
        if self._error is not None or self._attempted_at is None:
            return  # the last fetch failed: it proves nothing
        if len(self._missing) >= _MAX_MISSING:
            self._missing.clear()
        self._missing[kid] = self._attempted_at

    def _cooled_down(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._settings.refetch_cooldown

    def _retry_interval(self) -> float:
        cooldown = self._settings.refetch_cooldown
        return max(_MIN_RETRY, cooldown if self._keys is not None else min(cooldown, _NO_KEYS_RETRY))

    def _may_retry(self, now: float) -> bool:
        """Keys missing or expired: fetch now, unless the last attempt failed under a retry interval ago."""
        if self._attempted_at is None or self._error is None:
            return True
        return now - self._attempted_at >= self._retry_interval()

    def _refresh_delay(self) -> float:
        """Seconds until the background refresher should fetch."""
        if self._attempted_at is None:
            return 0.0
        if self._keys is None or self._error is not None:
            return self._attempted_at + self._retry_interval() - self._clock()
        return self._keys.fetched_at + _REFRESH_AT * self._settings.cache_duration - self._clock()

    async def _refresh_loop(self) -> None:
        while True:
            delay = self._refresh_delay()
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            await self._fetch_shared()

    # -- fetching --------------------------------------------------------------------------

    async def _fetch_shared(self) -> None:
        """Start a fetch unless one is in progress, and wait for it; the outcome is in the state."""
        task = self._inflight
        if task is None:
            self._attempted_at = self._clock()
            self.fetch_count += 1
            task = asyncio.create_task(self._fetch_and_store(), name=f"jwks-fetch {self._source}")
            self._inflight = task
            task.add_done_callback(self._fetch_done)
        await asyncio.shield(task)  # a cancelled waiter must not cancel everyone's fetch

    def _fetch_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _fetch_and_store(self) -> None:
        try:
            body = await self._download()
            fetched = parse_jwks(body, algorithms=self._algorithms, source=self._source, remote=True)
        except JwksError as exc:
            self._fail(str(exc))
            return
        except Exception:  # a bug must neither kill the refresher nor reach a request
            log.exception("JWKS fetch failed unexpectedly", extra={"source": self._source})
            self._fail(f"{self._source}: JWKS fetch failed unexpectedly")
            return
        previous = self._keys
        self._keys = _same_version(fetched, previous, self._clock)
        self._error = None
        self._ok.inc()
        if previous is None or previous.version != self._keys.version:
            self._missing.clear()  # a kid missing from the old keys may be in the new ones
            log.info(
                "JWKS keys loaded",
                extra={"source": self._source, "version": self._keys.version, "keys": len(fetched.keys)},
            )

    def _fail(self, message: str) -> None:
        self._error = message
        self._failed.inc()
        log.warning(
            "JWKS fetch failed; previous keys (if any) stay: %s", message, extra={"source": self._source}
        )

    async def _download(self) -> bytes:
        s = self._settings
        where = f"{self._source}: JWKS fetch from {self._url.host}"
        try:
            async with asyncio.timeout(s.timeout):
                session = self._client()
                async with session.get(self._url, allow_redirects=False, headers=_HEADERS) as response:
                    if response.status != 200:
                        raise JwksError(f"{where} answered HTTP {response.status}")
                    return await _read_capped(response, s.max_bytes, where)
        except TimeoutError:
            raise JwksError(f"{where} timed out after {s.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise JwksError(f"{where} failed: {type(exc).__name__}: {exc}") from exc

    def _client(self) -> aiohttp.ClientSession:
        """The one session of this source, made lazily inside the running loop."""
        if self._session is None or self._session.closed:
            insecure = self._settings.allow_insecure
            resolver = None if insecure else _PublicOnlyResolver(aiohttp.DefaultResolver())
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=4),
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # no proxies from the environment
            )
        return self._session


async def _read_capped(response: aiohttp.ClientResponse, limit: int, where: str) -> bytes:
    if response.content_length is not None and response.content_length > limit:
        raise JwksError(f"{where}: response of {response.content_length} bytes is over {limit}")
    body = bytearray()
    async for chunk in response.content.iter_chunked(65536):
        body += chunk
        if len(body) > limit:
            raise JwksError(f"{where}: response is over {limit} bytes")
    return bytes(body)


def _check_uri(uri: str, *, allow_insecure: bool, source: str) -> URL:
    try:
        url = URL(uri)
    except (ValueError, TypeError):
        raise JwksError(f"{source}: JWKS uri is not a valid URL") from None
    if url.scheme not in ("https", "http") or not url.host:
        raise JwksError(f"{source}: JWKS uri must be an absolute https URL")
    if allow_insecure:
        return url
    if url.scheme != "https":
        raise JwksError(f"{source}: JWKS uri must use https (http needs allow_insecure)")
    if _is_ip(url.host) and not _is_public(url.host):
        raise JwksError(f"{source}: JWKS uri host {url.host} is not a public address (needs allow_insecure)")
    return url


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _is_public(host: str) -> bool:
    """Whether `host` is a globally routable unicast address (IPv4, IPv6, and v4 inside v6)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and ip in _NAT64:
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None and not _is_public(str(inner)):
            return False
    blocked = ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
    return ip.is_global and not (blocked or ip.is_reserved or ip.is_unspecified)


class _BlockedAddress(OSError):
    """Raised by the resolver; aiohttp turns a resolver's OSError into a connection error."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)  # aiohttp shows strerror


class _PublicOnlyResolver(AbstractResolver):
    """Resolves through `inner`, then refuses the whole answer if any address is not public.

    Checked at every connection rather than once at startup: a DNS answer that changes later (DNS
    rebinding) still cannot point the fetch at a private, loopback or link-local address.
    """

    def __init__(self, inner: AbstractResolver) -> None:
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            if not _is_public(result["host"]):
                raise _BlockedAddress(f"{host} resolves to non-public address {result['host']}")
        return results

    async def close(self) -> None:
        await self._inner.close()
