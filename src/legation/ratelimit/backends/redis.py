"""Counters in Redis: one Lua script, one round trip per decision, time from Redis itself.

URLs: `redis://`, `rediss://` (TLS), `unix:///path.sock`, `redis+sentinel://h1:26379,h2:26379/name`
(Sentinel; `rediss+sentinel://` for TLS to the master) and `redis+cluster://host:port` (Cluster;
every key of one request carries the domain's hash tag, so a script never spans slots).

Standalone and Sentinel use our pipelined connection (resp.py); Cluster uses redis-py, which
knows slot maps and redirections. Errors of either stop here: callers only see BackendError.
After a refused or reset connection the backend fails fast (no pile-up of calls waiting on a
dead server) while a background probe pings with backoff; the first answer restores service.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
from collections.abc import Sequence
from importlib import resources
from typing import Any, Protocol

from redis import exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from legation.ratelimit.backends import BackendError, Outcome
from legation.ratelimit.backends.redis_url import RedisUrl, parse_redis_url
from legation.ratelimit.backends.resp import ConnectionLost, Endpoint, PipelinedRedis, ReplyError
from legation.ratelimit.backends.slots import SlotGroups

__all__ = ["RedisBackend", "connect"]

log = logging.getLogger("legation.ratelimit.redis")

SCRIPT = resources.files("legation.ratelimit.backends").joinpath("window.lua").read_text()
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
REFUND = resources.files("legation.ratelimit.backends").joinpath("refund.lua").read_text()


class _Runner(Protocol):
    """Runs the window script once. Raises ConnectionError/OSError when Redis is unreachable,
    TimeoutError past the deadline, BackendError for anything else."""

    async def run(self, keys: Sequence[str], args: Sequence[int], timeout: float) -> list[int]: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class RedisBackend:
    def __init__(self, runner: _Runner, *, probe_interval: float = 0.1, probe_max: float = 1.0) -> None:
        self._runner = runner
        if isinstance(runner, _ClusterRunner):
            self._spread = SlotGroups(runner)
        self._down = False
        self._probe: asyncio.Task[None] | None = None
        self._probe_interval = probe_interval
        self._probe_max = probe_max

    @property
    def available(self) -> bool:
        return not self._down

    async def apply(
        self, keys: Sequence[str], params: Sequence[int], checks: Sequence[int], *, timeout: float
    ) -> Outcome:
        if self._down:
            raise BackendError("unavailable", "redis is unavailable")
        # ARGV: the params as they are, then the checks with Lua's 1-based counter indexes.
        args = list(params)
        for j in range(0, len(checks), 3):
            args += (checks[j] + 1, checks[j + 1], checks[j + 2])
        try:
            if isinstance(self._runner, _ClusterRunner):
                return await self._spread.apply(keys, params, checks, timeout=timeout)
            reply = await self._runner.run(keys, args, timeout)
        except TimeoutError as exc:
            raise BackendError("timeout", f"redis did not answer within {timeout * 1000:.0f} ms") from exc
        except (ConnectionError, OSError) as exc:
            self._mark_down(exc)
            raise BackendError("connection", f"redis connection failed: {exc}") from exc
        return Outcome(int(reply[0]), reply[1] == 1, reply[2::2], reply[3::2])

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
                    await self._runner.ping()
            except (TimeoutError, ConnectionError, OSError, BackendError):
                delay = min(delay * 2, self._probe_max)
                continue
            self._down = False
            log.info("redis is available again")
            return

    async def ping(self) -> None:
        try:
            await self._runner.ping()
        except (ConnectionError, OSError) as exc:
            raise BackendError("connection", f"redis ping failed: {exc}") from exc

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        await self._runner.close()


class _PipelinedRunner:
    def __init__(self, conn: PipelinedRedis) -> None:
        self._conn = conn

    async def run(self, keys: Sequence[str], args: Sequence[int], timeout: float) -> list[int]:
        async with asyncio.timeout(timeout):  # cancels only our wait: the reply is dropped in order
            reply = await self._conn.call("EVALSHA", SCRIPT_SHA, len(keys), *keys, *args)
            if isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT"):
                loaded = await self._conn.call("SCRIPT", "LOAD", SCRIPT)
                if isinstance(loaded, ReplyError):
                    raise BackendError("error", f"redis refused the script: {loaded}")
                reply = await self._conn.call("EVALSHA", SCRIPT_SHA, len(keys), *keys, *args)
        if isinstance(reply, ReplyError):
            raise BackendError("error", f"redis error: {reply}")
        return reply  # type: ignore[no-any-return]

    async def ping(self) -> None:
        reply = await self._conn.call("PING")
        if isinstance(reply, ReplyError):
            raise BackendError("error", f"redis error: {reply}")

    async def close(self) -> None:
        await self._conn.close()


class _ClusterRunner:
    """redis-py's RedisCluster: slot map, MOVED/ASK. Each call is a task abandoned at the
    deadline, since redis-py does not always give up promptly when cancelled mid-read."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._script = client.register_script(SCRIPT)
        self._refund = client.register_script(REFUND)

    async def run(self, keys: Sequence[str], args: Sequence[int], timeout: float) -> list[int]:
        call = asyncio.ensure_future(self._script(keys=list(keys), args=list(args)))
        return await _within(call, timeout)  # type: ignore[no-any-return]

    async def refund(self, keys: Sequence[str], args: Sequence[int], timeout: float) -> None:
        await _within(asyncio.ensure_future(self._refund(keys=list(keys), args=list(args))), timeout)

    async def ping(self) -> None:
        try:
            await self._client.ping()
        except rexc.RedisError as exc:
            raise ConnectionLost(str(exc)) from exc

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aclose()


async def _within(call: asyncio.Future[Any], timeout: float) -> Any:
    done, _ = await asyncio.wait((call,), timeout=timeout)
    if not done:
        call.cancel()
        call.add_done_callback(_discard)
        raise TimeoutError
    try:
        return call.result()
    except rexc.TimeoutError as exc:
        raise TimeoutError from exc
    except rexc.ConnectionError as exc:
        raise ConnectionLost(str(exc)) from exc
    except rexc.RedisError as exc:
        raise BackendError("error", f"redis error: {exc}") from exc


def _discard(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "exception never retrieved"


def connect(url: str, *, connect_timeout: float = 0.5) -> RedisBackend:
    """Build a backend for `url` without connecting: the service starts even while Redis is down.
    Raises ValueError (one line) for a URL it cannot use."""
    target = parse_redis_url(url)
    if target.kind == "cluster":
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            username=target.username,
            password=target.password,
            ssl=target.tls,
            ssl_ca_certs=target.query.get("ssl_ca_certs"),
            ssl_cert_reqs=target.query.get("ssl_cert_reqs", "required"),
            ssl_certfile=target.query.get("ssl_certfile"),
            ssl_keyfile=target.query.get("ssl_keyfile"),
            socket_connect_timeout=connect_timeout,
            socket_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        )
        return RedisBackend(_ClusterRunner(client))
    if target.kind == "sentinel":
        resolve = _sentinel_resolver(target, timeout=connect_timeout)
    else:
        endpoint = _endpoint(target)

        async def resolve() -> Endpoint:
            return endpoint

    return RedisBackend(_PipelinedRunner(PipelinedRedis(resolve, connect_timeout=connect_timeout)))


def _endpoint(target: RedisUrl) -> Endpoint:
    if target.kind == "unix":
        return Endpoint(path=target.path, username=target.username, password=target.password, db=target.db)
    host, port = target.hosts[0]
    return Endpoint(
        host=host,
        port=port,
        tls=_tls_context(target.query) if target.tls else None,
        username=target.username,
        password=target.password,
        db=target.db,
    )


def _tls_context(query: dict[str, str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
    if query.get("ssl_cert_reqs", "required").lower() in ("none", "optional"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if "ssl_certfile" in query:
        context.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile"))
    return context


def _sentinel_resolver(target: RedisUrl, *, timeout: float) -> Any:
    sentinel = Sentinel(
        list(target.hosts), sentinel_kwargs={"socket_connect_timeout": timeout, "socket_timeout": timeout}
    )

    async def resolve() -> Endpoint:
        try:
            host, port = await sentinel.discover_master(target.master)
        except rexc.RedisError as exc:
            raise ConnectionLost(f"sentinel: {exc}") from exc
        return Endpoint(
            host=host,
            port=int(port),
            tls=_tls_context(target.query) if target.tls else None,
            password=target.password,
            db=target.db,
        )

    return resolve
