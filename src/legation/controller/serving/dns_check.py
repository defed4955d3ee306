"""Which upstream service names do not resolve: checked in the background, cached, for the page.

A Mapping whose `service` names a host that does not resolve is valid (the name may appear
later, and Envoy keeps trying), so it is a warning, never a rejection, and never part of the pure
pipeline: `DnsChecker.run` looks up the names of the current IR's clusters, each at most once per
`recheck` seconds, with a short timeout, on its own small thread pool (a resolver that hangs
must not starve the pool the pipeline runs on). `DnsCache` is the bookkeeping alone, with the
resolver and the clock passed in, so it is tested without a network.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from legation.api.v1alpha1.fields import is_ip_literal

__all__ = ["DnsCache", "DnsChecker", "DnsResult", "Resolver"]

log = logging.getLogger("legation.controller.dns")

Resolver = Callable[[str], Awaitable[None]]
"""Resolves one name; raises OSError (or TimeoutError) with the reason when it does not."""


@dataclass(frozen=True)
class DnsResult:
    host: str
    resolves: bool
    error: str
    """Why not, when it does not resolve."""
    checked_at: float


class DnsCache:
    """The last result per name, and which names are due for a new look-up."""

    def __init__(self, *, recheck: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.recheck = recheck
        self._clock = clock
        self._results: dict[str, DnsResult] = {}

    def due(self, hosts: Iterable[str]) -> list[str]:
        """The names among `hosts` never checked or checked over `recheck` seconds ago (IP
        literals need no look-up), sorted; names no longer in `hosts` are forgotten."""
        wanted = {h for h in hosts if not is_ip_literal(h)}
        for gone in set(self._results) - wanted:
            del self._results[gone]
        now = self._clock()
        return sorted(
            h for h in wanted if (r := self._results.get(h)) is None or now - r.checked_at >= self.recheck
        )

    async def check(self, hosts: Iterable[str], resolve: Resolver) -> None:
        """Look up every name that is due, concurrently, and record the outcomes."""
        due = self.due(hosts)
        outcomes = await asyncio.gather(*(_outcome(resolve, h) for h in due))
        now = self._clock()
        for host, error in zip(due, outcomes, strict=True):
            self._results[host] = DnsResult(host, resolves=error is None, error=error or "", checked_at=now)

    def unresolved(self) -> list[DnsResult]:
        """The names whose last look-up failed, sorted."""
        return sorted((r for r in self._results.values() if not r.resolves), key=lambda r: r.host)


async def _outcome(resolve: Resolver, host: str) -> str | None:
    try:
        await resolve(host)
    except TimeoutError:
        return "no answer in time"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


class DnsChecker:
    """The background loop: every `interval` seconds, the names `hosts()` returns."""

    def __init__(
        self,
        hosts: Callable[[], Iterable[str]],
        *,
        interval: float = 5.0,
        timeout: float = 2.0,
        recheck: float = 30.0,
        workers: int = 4,
    ) -> None:
        self.cache = DnsCache(recheck=recheck)
        self._hosts = hosts
        self._interval = interval
        self._timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dns")
        self._limit = asyncio.Semaphore(workers)

    async def resolve(self, host: str) -> None:
        """getaddrinfo with a timeout; a look-up that times out keeps its thread until the
        resolver gives up, so at most `workers` are ever waiting."""
        async with self._limit:
            loop = asyncio.get_running_loop()
            lookup = loop.run_in_executor(self._pool, socket.getaddrinfo, host, None)
            async with asyncio.timeout(self._timeout):  # not wait_for, which can lose a cancel (3.11)
                await lookup

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.cache.check(self._hosts(), self.resolve)
                except Exception:  # a bug here must not stop the controller
                    log.exception("DNS check failed")
                await asyncio.sleep(self._interval)
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
