"""Counters spread over a real 3-shard Redis Cluster: different descriptors on different slots,
one script call per slot group (in parallel), all-or-nothing across slots by refunding, and never
over-admitting (see src/legation/ratelimit/backends/slots.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis as redis_sync
from fixtures.processes import HOST, Launcher, free_port
from fixtures.redis_cluster import start_cluster

from legation.ratelimit.backends.redis import connect
from legation.ratelimit.config import load_config_texts
from legation.ratelimit.limiter import DescriptorRequest, Limiter

pytestmark = pytest.mark.timeout(120)

RULES = load_config_texts(
    [
        (
            "c.yaml",
            """
domain: spread
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: team
    rate_limit: {unit: minute, requests_per_unit: 10}
""",
        )
    ]
).rules


def user(name: str) -> DescriptorRequest:
    return DescriptorRequest((("user", name),))


def keys_per_node(clients: list[redis_sync.Redis]) -> list[int]:
    return [len(c.keys("lg:*")) for c in clients]


@pytest.fixture
def cluster(launch: Launcher, tmp_path: Path) -> list[redis_sync.Redis]:
    return start_cluster(launch, tmp_path, 3)


def url(clients: list[redis_sync.Redis], *, dead_first: bool = False) -> str:
    seeds = [f"{HOST}:{c.connection_pool.connection_kwargs['port']}" for c in clients]
    if dead_first:
        seeds.insert(0, f"{HOST}:{free_port()}")
    return "redis+cluster://" + ",".join(seeds)


async def test_descriptors_spread_over_shards_and_seeds_may_be_down(cluster: list[redis_sync.Redis]) -> None:
    backend = connect(url(cluster, dead_first=True))  # the first seed answers nothing
    lim = Limiter(rules=RULES, backend=backend, timeout=2.0)
    try:
        for i in range(30):
            assert not (await lim.should_rate_limit("spread", [user(f"u{i}")])).over
        one_request = await lim.should_rate_limit("spread", [user(f"v{i}") for i in range(12)])
        assert not one_request.over
    finally:
        await backend.close()
    per_node = keys_per_node(cluster)
    assert sum(per_node) == 42 and all(n >= 5 for n in per_node), per_node


async def test_all_or_nothing_across_slots_refunds_the_admitting_slots(
    cluster: list[redis_sync.Redis],
) -> None:
    backend = connect(url(cluster))
    lim = Limiter(rules=RULES, backend=backend, timeout=2.0)
    try:
        for _ in range(3):
            assert not (await lim.should_rate_limit("spread", [user("full")])).over
        denied = await lim.should_rate_limit("spread", [user("full"), user("spare")])
        assert denied.over and denied.statuses[0].over and not denied.statuses[1].over

        async def spare_untouched() -> bool:
            check = DescriptorRequest((("user", "spare"),), addend=0)  # check without counting
            return (await lim.should_rate_limit("spread", [check])).statuses[0].remaining == 3

        for _ in range(50):  # the refund lands right after the answer
            if await spare_untouched():
                break
            await asyncio.sleep(0.02)
        assert await spare_untouched()
    finally:
        await backend.close()


async def test_never_over_admits_with_concurrent_cross_slot_requests(cluster: list[redis_sync.Redis]) -> None:
    backend = connect(url(cluster))
    lim = Limiter(rules=RULES, backend=backend, timeout=2.0)
    team = DescriptorRequest((("team", "t"),))
    try:
        answers = await asyncio.gather(
            *(lim.should_rate_limit("spread", [team, user(f"c{i // 2}")]) for i in range(40))
        )
        admitted = sum(not a.over for a in answers)
        assert 0 < admitted <= 10
        check = DescriptorRequest((("team", "t"),), addend=0)

        async def settled() -> bool:
            remaining = (await lim.should_rate_limit("spread", [check])).statuses[0].remaining
            return remaining == 10 - admitted  # refunds done: the team counter holds exactly the admitted

        for _ in range(50):
            if await settled():
                break
            await asyncio.sleep(0.02)
        assert await settled()
    finally:
        await backend.close()
