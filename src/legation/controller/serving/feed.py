"""The config feeds served: the compiled JWTPolicies and rate-limit config, versioned, for the
services (their contents come from `translate.feeds`).

`legation authz --config-url` and `legation ratelimit --config-url` follow a feed with
src/legation/core/feed_client.py. The protocol is plain HTTP long polling, so curl can read a feed too:

    GET /feed/{name}[?version=V][&wait=S]
    Authorization: Bearer TOKEN

- 401 (a Bearer challenge) without a token of that feed's token file (`serving.access`), whatever
  the client's address: the authz feed carries the policies' keys;

- 200, the content (application/yaml), `X-Legation-Version` and an ETag: at once when the
  feed's version is not V (or V is absent);
- 304 once S seconds (at most 60; 0 when absent) passed without a change away from V;
- 404 for an unknown feed, 503 (JSON reason) while nothing was published yet (after waiting up
  to S seconds for a first publish, so that a service starting with the controller gets its
  first config as soon as it exists rather than after a backoff).

A feed's version is a digest of its content: replicas that compiled the same resources publish
the same version, so a service can move between them without reloading anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Mapping
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from legation.controller.serving.access import HttpAccess, unauthorized
from legation.core.feed_version import VERSION_HEADER, feed_version

__all__ = ["MAX_WAIT", "MEDIA_TYPE", "Feed", "feed_router"]

MAX_WAIT = 60.0
"""Longest hold of one poll, in seconds; a client asking for more gets this."""
MEDIA_TYPE = "application/yaml"


class Feed:
    """The current (version, content) of one feed, and the polls waiting for it to change.

    Publishing may happen on any thread (e.g. a compile in a worker thread); waiters are woken
    on their own event loops."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: tuple[str, str] | None = None
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self._closed = False
        self.published_at: float | None = None
        """time.time() of the last publish that changed the version."""

    def publish(self, content: str) -> str:
        """Make `content` current and return its version. Equal content is a no-op: same
        version, and no waiting poll is woken."""
        version = feed_version(content)
        with self._lock:
            if self._current is not None and self._current[0] == version:
                return version
            self._current = (version, content)
            self.published_at = time.time()
            waiters, self._waiters = self._waiters, set()
        _wake(waiters)
        return version

    def current(self) -> tuple[str, str] | None:
        """(version, content), or None before the first publish."""
        return self._current

    @property
    def version(self) -> str | None:
        current = self._current
        return current[0] if current is not None else None

    @property
    def text(self) -> str | None:
        current = self._current
        return current[1] if current is not None else None

    def close(self) -> None:
        """End every waiting poll now (with no change), and make later waits return at once:
        for a server that is stopping, so that it does not hold its shutdown for a poll."""
        with self._lock:
            self._closed = True
            waiters, self._waiters = self._waiters, set()
        _wake(waiters)

    async def wait(self, known_version: str | None, timeout: float) -> tuple[str, str] | None:
        """(version, content) as soon as the current version is not `known_version` (at once
        if it already is not); None if that did not happen within `timeout` seconds, or before
        a first publish, or once closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        while True:
            future: asyncio.Future[None] = loop.create_future()
            waiter = (loop, future)
            with self._lock:
                current = self._current
                if current is not None and current[0] != known_version:
                    return current
                remaining = deadline - loop.time()
                if self._closed or remaining <= 0:
                    return None
                self._waiters.add(waiter)
            try:
                async with asyncio.timeout(remaining):
                    await future
            except TimeoutError:
                return None
            finally:
                with self._lock:
                    self._waiters.discard(waiter)
            # Woken: loop to re-read (the version may have gone A -> B -> A in the meantime).


def _wake(waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    for loop, future in waiters:
        with contextlib.suppress(RuntimeError):  # a closed loop: its poll is gone anyway
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def feed_router(feeds: Mapping[str, Feed], access: HttpAccess) -> APIRouter:
    """`GET /feed/{name}` for each of `feeds`, for the holders of its tokens in `access` (see the
    module docstring)."""
    router = APIRouter()

    @router.get("/feed/{name}", response_model=None)
    async def get_feed(
        name: str,
        request: Request,
        version: Annotated[str | None, Query(max_length=128)] = None,
        wait: Annotated[float, Query(ge=0, allow_inf_nan=False)] = 0.0,
    ) -> Response:
        authorization = request.headers.get("authorization")
        feed = feeds.get(name)
        if feed is None and access.holds_a_feed_token(authorization):
            return JSONResponse(
                {"error": "not_found", "reason": f"no such feed; feeds: {', '.join(sorted(feeds))}"},
                status_code=404,
            )
        if feed is None or not access.may_read_feed(name, authorization):
            status, headers, body = unauthorized(f"feed {name!r} needs a token of its --feed-token-file")
            return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})
        if version is None:
            version = _etag_version(request.headers.get("if-none-match"))
        current = await feed.wait(version, min(wait, MAX_WAIT))
        if current is not None:
            new_version, content = current
            return Response(content, media_type=MEDIA_TYPE, headers=_version_headers(new_version))
        now = feed.version
        if now is None:
            return JSONResponse(
                {"error": "not_published", "reason": "the controller has not compiled a configuration yet"},
                status_code=503,
                headers={"Retry-After": "1", "Cache-Control": "no-store"},
            )
        return Response(status_code=304, headers=_version_headers(now))

    return router


def _version_headers(version: str) -> dict[str, str]:
    return {VERSION_HEADER: version, "ETag": f'"{version}"', "Cache-Control": "no-cache"}


def _etag_version(if_none_match: str | None) -> str | None:
    """The version named by an `If-None-Match: "V"` header (one strong ETag), if any."""
    if not if_none_match:
        return None
    value = if_none_match.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"' and "," not in value:
        return value[1:-1]
    return None
