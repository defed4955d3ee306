"""Counters in Redis: one Lua script, one round trip per decision, time from Redis itself.

URLs: `redis://`, `rediss://` (TLS), `unix:///path.sock`, `redis+sentinel://h1:26379,h2:26379/name`
(Sentinel; `rediss+sentinel://` for TLS to the master) and `redis+cluster://host:port` (Cluster;
every key of one request carries the domain's hash tag, so a script never spans slots).

redis-py errors stop here: callers only ever see BackendError. After a connection error the
backend fails fast (no pile-up of calls waiting on a dead server) while a background probe
pings with backoff; the first successful ping restores normal service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from services.ratelimit.backends import BackendError, Check, CounterOp, Outcome

__all__ = ["RedisBackend", "connect"]

log = logging.getLogger("legation.ratelimit.redis")

SCRIPT = resources.files("services.ratelimit.backends").joinpath("window.lua").read_text()

# Refused or reset: Redis is down, fail fast until it answers. A redis-py timeout only means slow.
_CONNECTION_ERRORS = (rexc.ConnectionError, OSError)


class RedisBackend:
    def __init__(self, client: Any, *, probe_interval: float = 0.1, probe_max: float = 1.0) -> None:
        self._client = client
        self._script = client.register_script(SCRIPT)
        self._down = False
        self._probe: asyncio.Task[None] | None = None
        self._probe_interval = probe_interval
        self._probe_max = probe_max

    @property
    def available(self) -> bool:
        return not self._down

    async def apply(
        self, counters: Sequence[CounterOp], checks: Sequence[Check], *, timeout: float
    ) -> Outcome:
        if self._down:
            raise BackendError("unavailable", "redis is unavailable")
        args: list[int] = []
        for op in counters:
            args += (op.bucket_ms, op.span, op.addend)
        for check in checks:
            args += (check.counter + 1, check.limit, 1 if check.enforce else 0)
        # The call runs as its own task and is abandoned (cancelled, not awaited) at the deadline:
        # redis-py does not always give up promptly when cancelled mid-read, and the answer to
        # Envoy must not wait for it.
        call = asyncio.ensure_future(self._script(keys=[op.key for op in counters], args=args))
        done, _ = await asyncio.wait((call,), timeout=timeout)
        if not done:
            call.cancel()
            call.add_done_callback(_discard)
            raise BackendError("timeout", f"redis did not answer within {timeout * 1000:.0f} ms")
        try:
            reply = call.result()
        except rexc.TimeoutError as exc:
            raise BackendError("timeout", f"redis timed out: {exc}") from exc
        except _CONNECTION_ERRORS as exc:
            self._mark_down(exc)
            raise BackendError("connection", f"redis connection failed: {exc}") from exc
        except rexc.RedisError as exc:
            raise BackendError("error", f"redis error: {exc}") from exc
        return Outcome(
            now_ms=int(reply[0]),
            admitted=reply[1] == 1,
            used=reply[2::2],
            oldest=reply[3::2],
        )

    def _mark_down(self, exc: BaseException) -> None:
        if self._down:
            return
        self._down = True
        log.warning("redis unavailable, failing fast until it answers again", extra={"error": str(exc)})
        self._probe = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        delay = self._probe_interval
        while True:
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(max(delay, 0.25)):
                    await self._client.ping()
            except (TimeoutError, rexc.RedisError, OSError):
                delay = min(delay * 2, self._probe_max)
                continue
            self._down = False
            log.info("redis is available again")
            return

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except (rexc.RedisError, OSError) as exc:
            raise BackendError("connection", f"redis ping failed: {exc}") from exc

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        with contextlib.suppress(Exception):
            await self._client.aclose()


def _discard(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "exception never retrieved"


def connect(
    url: str, *, connect_timeout: float = 0.5, socket_timeout: float = 1.0, max_connections: int = 64
) -> RedisBackend:
    """Build a backend for `url` without connecting: the service starts even while Redis is down.

    The decision timeout (the limiter's) is much shorter than these; they only make sure that a
    connection to a hung server is eventually dropped."""
    common: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
    }
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis+cluster", "rediss+cluster"):
        base = scheme.split("+")[0]
        client: Any = RedisCluster.from_url(
            f"{base}://{parts.netloc}{parts.path}", max_connections=max_connections, **common
        )
    elif scheme in ("redis+sentinel", "rediss+sentinel"):
        client = _sentinel_master(parts, common, ssl=scheme.startswith("rediss"))
    elif scheme in ("redis", "rediss", "unix"):
        # Blocking pool: at the connection cap a call waits (within the decision timeout)
        # instead of failing as if Redis were down.
        if scheme == "unix":  # no TCP keepalive on a unix socket
            common.pop("socket_keepalive")
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=None, **common
        )
        client = aioredis.Redis(connection_pool=pool)
    else:
        raise ValueError(f"unsupported Redis URL scheme '{parts.scheme}' in {url!r}")
    return RedisBackend(client)


def _sentinel_master(parts: Any, common: dict[str, Any], *, ssl: bool) -> Any:
    hosts = []
    for item in (parts.hostname and parts.netloc.rsplit("@", 1)[-1].split(",")) or []:
        host, _, port = item.rpartition(":")
        hosts.append((host.strip("[]") or item, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not hosts or not path:
        raise ValueError(
            "sentinel URL needs hosts and a master name: redis+sentinel://h1:26379,h2:26379/mymaster"
        )
    db = int(path[1]) if len(path) > 1 else 0
    password = unquote(parts.password) if parts.password else None
    sentinel_kwargs = {"socket_connect_timeout": common["socket_connect_timeout"]}
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    return sentinel.master_for(path[0], db=db, password=password, ssl=ssl, **common)
