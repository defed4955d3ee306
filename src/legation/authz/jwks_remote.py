"""Remote JWKS: keys fetched over HTTPS, cached, refreshed, and guarded against abuse.

Split from jwks.py (parsing and static keys) because fetching has its own concerns: single-flight
fetches, the unknown-kid cooldown and negative cache, staleness when the endpoint is down, and
SSRF protection (https only, public addresses only, checked at connect time, no redirects).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from legation.authz.jwks import FETCHES, JwksError, KeySet, _same_version, log, parse_jwks

__all__ = ["RemoteJwks", "RemoteSettings"]


@dataclass(frozen=True, kw_only=True)
class RemoteSettings:
    uri: str
    """The JWKS URL (https unless allow_insecure)."""
    cache_duration: float = 600.0
    """Seconds the keys are fresh; the background refresher refetches at 80% of it."""
    refetch_cooldown: float = 30.0
    """At most one fetch triggered by unknown kids per this many seconds (other fetches do not count);
    also the retry interval after a failure."""
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
    - Unknown kid: a refetch at once, unless an unknown kid already triggered one less than
      refetch_cooldown ago (fetches at start-up, on expiry or by the refresher do not count: a key
      rotated just after one of them is picked up by its first request); kids still missing after a
      fetch are remembered for a cooldown (negative cache), so they neither fetch nor wait for a
      fetch in progress. After a failed fetch, kids wait for the retry interval too.
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
        self._kid_fetch_at: float | None = None  # when an unknown kid last started a fetch
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
        now = self._clock()
        if self._inflight is not None or (self._kid_cooled_down(now) and self._may_retry(now)):
            if self._inflight is None:
                self._kid_fetch_at = now
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

    def _kid_cooled_down(self, now: float) -> bool:
        """Whether an unknown kid may start a fetch: the storm bound is on kid-triggered fetches only."""
        last = self._kid_fetch_at
        return last is None or now - last >= max(_MIN_RETRY, self._settings.refetch_cooldown)

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
