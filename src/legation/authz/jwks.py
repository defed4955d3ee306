"""Key sources for JWT verification: static (inline or file) and remote (HTTPS) sources.

Parsing (which keys a JWKS yields, each bound to one algorithm) is `legation.api.jwks`, shared
with the controller, which refuses a policy whose static key set would not load here.

`KeySet.version` is stable while the keys stay the same and new when they change, so callers may
cache verified tokens per version. Remote fetch rules are in `RemoteJwks`'s docstring.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from prometheus_client import Counter

from legation.api.jwks import JwksError, Key, KeySet, parse_jwks

__all__ = [
    "FETCHES",
    "JwksError",
    "Key",
    "KeySet",
    "KeySource",
    "StaticKeySource",
    "parse_jwks",
]

log = logging.getLogger("legation.authz.jwks")

FETCHES = Counter(
    "legation_authz_jwks_fetches_total",
    "Remote JWKS fetches, by source and result (ok, error).",
    ["source", "result"],
)


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


# --- key set identity ------------------------------------------------------------------------


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
