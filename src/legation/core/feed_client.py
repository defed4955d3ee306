"""Follow a versioned config feed (the controller's `GET /feed/{name}`) by long polling.

The protocol, shared with the controller's feeds: `GET URL?version=V&wait=S` answers 200 with the
content and its version in `X-Legation-Version` at once when the feed's version is not V, else
304 once S seconds passed without a change; 503 while the controller has no config yet; 401
without the feed's bearer token.

Credentials (`FeedAuth`): the token of `--feed-token-file`, read again for every request (a
rotated Secret applies without a restart), sent as `Authorization: Bearer`; for https, the
controller's certificate is checked against `--feed-ca` (else the system's CAs). The token is
never sent over plain http to an address other than loopback: there, anyone on the path could
read it.

A service must keep serving whatever happens to the controller. Every failure (refused
connection, timeout, an error status, content the service rejects) leaves the last good config
in force, is reported (`describe()`, shown on the service's /readyz) and is retried with a capped
backoff. The follower remembers the last version it *fetched*, good or bad, and asks with that
one: a rejected version is therefore fetched, logged and counted once, not in a loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

import aiohttp
from yarl import URL

from legation import __version__
from legation.core.bearer import TokenFileError
from legation.core.errors import ConfigErrors
from legation.core.feed_auth import FeedAuth
from legation.core.feed_version import VERSION_HEADER, feed_version

__all__ = [
    "DEFAULT_WAIT",
    "MAX_CONTENT_BYTES",
    "VERSION_HEADER",
    "FeedError",
    "FeedFollower",
    "check_feed_url",
    "feed_version",
]

log = logging.getLogger("legation.feed")

DEFAULT_WAIT = 30.0
"""Seconds the controller may hold a poll open without a change."""
MAX_CONTENT_BYTES = 64 * 1024 * 1024
"""A feed larger than this is refused rather than read into memory."""

Apply = Callable[[str, str], Awaitable[None]]


def check_feed_url(value: str) -> str:
    """`value` if it is an absolute http(s) URL; ValueError otherwise (argparse reports it)."""
    try:
        url = URL(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid URL {value!r}: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


class FeedError(Exception):
    """The feed could not be read this time (the message says why; retried with backoff)."""


class FeedFollower:
    """Long-polls one feed and hands every new version to `apply(version, content)`.

    `apply` raises ConfigErrors when the content is not a valid config: the previous config
    stays, and that version is reported as rejected until a newer one applies. Any other
    exception from `apply` is treated the same way (and logged with its type), so that nothing
    the feed serves can stop the follower.
    """

    def __init__(
        self,
        url: str,
        apply: Apply,
        *,
        wait: float = DEFAULT_WAIT,
        min_backoff: float = 0.2,
        max_backoff: float = 5.0,
        connect_timeout: float = 5.0,
        auth: FeedAuth | None = None,
    ) -> None:
        self.url = URL(check_feed_url(url))
        self._auth = auth or FeedAuth()
        self._auth.check(self.url)
        self._apply = apply
        self._wait = wait
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        # The read timeout must outlast the server's hold of a poll, or every quiet period
        # would look like an outage.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_connect=connect_timeout, sock_read=wait + 10.0
        )
        self.version: str | None = None
        """The version applied last (the one the service runs); None before the first."""
        self.fetched: str | None = None
        """The version fetched last, applied or rejected."""
        self.rejected: str | None = None
        """A version newer than `version` that was rejected, with `rejected_reason`."""
        self.rejected_reason: str | None = None
        self.last_error: str | None = None
        """Why the last request failed; None while the feed answers."""
        self.failing_since: float | None = None
        # After a connection failure the next poll does not wait: a server that came back with
        # the version we run would otherwise hold the poll, and we would report it unreachable
        # for up to `wait` seconds more.
        self._reachable = True

    @property
    def loaded(self) -> bool:
        """Whether a config from the feed was ever applied."""
        return self.version is not None

    @property
    def connected(self) -> bool:
        return self.last_error is None

    def describe(self) -> str:
        """One line for humans: what runs, where it came from, and what is wrong, if anything."""
        if self.version is None:
            text = f"waiting for the first config from {self.url}"
        else:
            text = f"version {self.version} from {self.url}"
        if self.rejected is not None:
            text += f"; version {self.rejected} rejected: {self.rejected_reason}"
        if self.last_error is not None:
            text += f"; feed unavailable: {self.last_error}"
        return text

    async def run(self) -> None:
        """Follow the feed until cancelled; never returns otherwise, never raises."""
        delay = self._min_backoff
        headers = {"User-Agent": f"legation/{__version__} feed-follower"}
        connector = aiohttp.TCPConnector(ssl=self._auth.ssl_context() or True)
        session = aiohttp.ClientSession(timeout=self._timeout, headers=headers, connector=connector)
        async with session:
            while True:
                started = time.monotonic()
                try:
                    changed = await self._poll(session)
                except (FeedError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                    self._failed(_reason(exc))
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, self._max_backoff)
                    continue
                self._recovered()
                delay = self._min_backoff
                # A server that answers "no change" without holding the poll (a plain file
                # server, or a controller closing polls as it stops) must not make us spin.
                elapsed = time.monotonic() - started
                if not changed and elapsed < self._min_backoff:
                    await asyncio.sleep(self._min_backoff - elapsed)

    async def _poll(self, session: aiohttp.ClientSession) -> bool:
        """One request; True when it brought a new version (applied or rejected)."""
        query = {"wait": f"{self._wait:g}" if self._reachable else "0"}
        if self.fetched is not None:
            query["version"] = self.fetched
        self._reachable = False  # until the server answers
        try:
            auth_headers = self._auth.headers()
        except TokenFileError as exc:
            raise FeedError(str(exc)) from None
        # No redirects: the token goes to the URL given, nowhere else.
        async with session.get(
            self.url.update_query(query), headers=auth_headers, allow_redirects=False
        ) as resp:
            self._reachable = True
            if resp.status == 304:
                return False
            if resp.status != 200:
                body = (await resp.content.read(2048)).decode("utf-8", "replace")
                raise FeedError(f"HTTP {resp.status} {_short(body)}".rstrip())
            raw = await _read_capped(resp, MAX_CONTENT_BYTES)
            version = resp.headers.get(VERSION_HEADER) or feed_version(raw)
        if version == self.fetched:
            return False
        self.fetched = version
        try:
            content = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._reject(version, "content is not UTF-8 text", errors=[])
            return True
        await self._apply_version(version, content)
        return True

    async def _apply_version(self, version: str, content: str) -> None:
        try:
            await self._apply(version, content)
        except ConfigErrors as exc:
            first = str(exc.errors[0]) if exc.errors else "invalid config"
            more = f" (and {len(exc.errors) - 1} more)" if len(exc.errors) > 1 else ""
            self._reject(version, first + more, errors=[str(e) for e in exc.errors])
            return
        except Exception as exc:  # whatever the content does, the service stays up
            log.exception("applying config feed version %s failed", version)
            self._reject(version, f"{type(exc).__name__}: {exc}", errors=[])
            return
        self.version = version
        self.rejected = self.rejected_reason = None

    def _reject(self, version: str, reason: str, *, errors: list[str]) -> None:
        self.rejected, self.rejected_reason = version, reason
        log.warning(
            "config feed version %s rejected, keeping %s",
            version,
            self.version or "no config",
            extra={"url": str(self.url), "version": version, "running": self.version, "errors": errors},
        )

    def _failed(self, reason: str) -> None:
        if self.last_error is None:  # log the start of an outage, not every retry
            self.failing_since = time.monotonic()
            log.warning(
                "config feed unavailable, retrying; keeping %s",
                self.version or "no config",
                extra={"url": str(self.url), "error": reason, "running": self.version},
            )
        elif reason != self.last_error:
            log.debug("config feed still unavailable", extra={"url": str(self.url), "error": reason})
        self.last_error = reason

    def _recovered(self) -> None:
        if self.last_error is not None:
            down = time.monotonic() - (self.failing_since or time.monotonic())
            log.info(
                "config feed reachable again",
                extra={"url": str(self.url), "after_seconds": round(down, 3), "running": self.version},
            )
        self.last_error = None
        self.failing_since = None


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    if resp.content_length is not None and resp.content_length > cap:
        raise FeedError(f"feed too large ({resp.content_length} bytes, at most {cap})")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > cap:
            raise FeedError(f"feed too large (more than {cap} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FeedError):
        return str(exc)
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "timed out"
    detail = str(exc)
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
