"""The background DNS check's cache: which names are due, what is remembered, what is forgotten,
and the real resolver with its timeout (localhost resolves; a .invalid name never does, RFC 6761)."""

from __future__ import annotations

import asyncio

from legation.controller.serving.dns_check import DnsCache, DnsChecker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Resolver:
    """Answers from a table, and counts look-ups (a name missing from the table fails)."""

    def __init__(self, known: set[str]) -> None:
        self.known = known
        self.asked: list[str] = []

    async def __call__(self, host: str) -> None:
        self.asked.append(host)
        if host not in self.known:
            raise OSError(-2, "Name or service not known")


async def test_names_are_looked_up_once_per_recheck_interval() -> None:
    clock, resolver = Clock(), Resolver({"orders.team-orders"})
    cache = DnsCache(recheck=30, clock=clock)
    await cache.check(["orders.team-orders", "gone.team-x"], resolver)
    assert sorted(resolver.asked) == ["gone.team-x", "orders.team-orders"]
    assert [(r.host, r.error) for r in cache.unresolved()] == [("gone.team-x", "Name or service not known")]

    clock.now += 29
    await cache.check(["orders.team-orders", "gone.team-x"], resolver)
    assert len(resolver.asked) == 2  # cached: nobody asked again
    clock.now += 1
    resolver.known.add("gone.team-x")  # the Service was created
    await cache.check(["orders.team-orders", "gone.team-x"], resolver)
    assert len(resolver.asked) == 4
    assert cache.unresolved() == []


async def test_ip_literals_are_never_looked_up_and_unused_names_are_forgotten() -> None:
    resolver = Resolver(set())
    cache = DnsCache(clock=Clock())
    await cache.check(["127.0.0.1", "::1", "old.example"], resolver)
    assert resolver.asked == ["old.example"]
    assert [r.host for r in cache.unresolved()] == ["old.example"]
    await cache.check(["127.0.0.1"], resolver)  # the Mapping naming it was deleted
    assert cache.unresolved() == []


async def test_a_resolver_that_times_out_is_a_warning_too() -> None:
    async def slow(host: str) -> None:
        raise TimeoutError

    cache = DnsCache(clock=Clock())
    await cache.check(["slow.example"], slow)
    assert [(r.host, r.error) for r in cache.unresolved()] == [("slow.example", "no answer in time")]


async def test_the_real_resolver_with_its_timeout() -> None:
    checker = DnsChecker(lambda: ["localhost", "nothing-here.invalid"], timeout=3.0)
    task = asyncio.create_task(checker.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if checker.cache.unresolved():
                break
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert [r.host for r in checker.cache.unresolved()] == ["nothing-here.invalid"]
