"""The limiter's semantics on both backends, in real time, and what only Redis must do:
one script per decision, Redis time, expiring and bounded keys, NOSCRIPT recovery, failures."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis as redis_sync
from fixtures.processes import RedisProcess

from legation.ratelimit.backends import CounterBackend
from legation.ratelimit.backends.redis import connect
from legation.ratelimit.config import load_config_texts
from legation.ratelimit.limiter import Decision, DescriptorRequest, Limiter, LimiterUnavailable

CONFIG = """
domain: d
descriptors:
  - key: ip
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 3}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: quota_a
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: quota_b
    quota_mode: true
    rate_limits: [{unit: minute, requests_per_unit: 2}, {unit: hour, requests_per_unit: 5}]
"""
RULES = load_config_texts([("c.yaml", CONFIG)]).rules


def desc(key: str, value: str, addend: int | None = None) -> DescriptorRequest:
    return DescriptorRequest(entries=((key, value),), addend=addend)


async def hit(lim: Limiter, *descriptors: DescriptorRequest, addend: int = 0) -> Decision:
    return await lim.should_rate_limit("d", descriptors, addend)


async def sleep_until_fraction(fraction: float) -> None:
    """Sleep until the wall clock is `fraction` into a whole second."""
    now = time.time()
    target = int(now) + fraction
    if target <= now + 0.01:
        target += 1
    await asyncio.sleep(target - now)


async def test_admit_deny_remaining_and_reset(backend: CounterBackend) -> None:
    lim = Limiter(rules=RULES, backend=backend, timeout=1.0)
    remaining = [(await hit(lim, desc("user", "u"))).statuses[0].remaining for _ in range(3)]
    assert remaining == [2, 1, 0]
    denied = await hit(lim, desc("user", "u"))
    assert denied.over and denied.statuses[0].over
    assert 55_000 <= denied.statuses[0].reset_ms <= 63_000  # the first hit stops counting after 60-63 s


async def test_strict_across_the_epoch_second(backend: CounterBackend) -> None:
    lim = Limiter(rules=RULES, backend=backend, timeout=1.0)
    await sleep_until_fraction(0.85)
    first = [not (await hit(lim, desc("ip", "edge"))).over for _ in range(10)]
    assert all(first)
    await sleep_until_fraction(0.05)  # a fixed window would have reset
    second = [not (await hit(lim, desc("ip", "edge"))).over for _ in range(10)]
    assert not any(second)


async def test_all_or_nothing_and_shadow(backend: CounterBackend) -> None:
    lim = Limiter(rules=RULES, backend=backend, timeout=1.0)
    await hit(lim, desc("user", "full"), addend=3)
    for _ in range(4):
        decision = await hit(lim, desc("user", "full"), desc("user", "spare"), desc("shadow", "s"))
        assert decision.over and [s.over for s in decision.statuses] == [True, False, False]
    assert (await hit(lim, desc("user", "spare"))).statuses[0].remaining == 2
    shadowed = [await hit(lim, desc("shadow", "s2")) for _ in range(3)]
    assert not any(d.over for d in shadowed)


async def test_quota_mode_denies_only_when_every_quota_descriptor_is_over(backend: CounterBackend) -> None:
    lim = Limiter(rules=RULES, backend=backend, timeout=1.0)
    request = (desc("quota_a", "t"), desc("quota_b", "t"), desc("user", "q"))
    answers = [await hit(lim, *request) for _ in range(4)]
    assert [a.over for a in answers] == [False, False, True, True]
    assert [a.statuses[0].over for a in answers] == [False, True, True, True]
    # quota_a counted only the hit it granted; user counted the two admitted requests only
    assert (await hit(lim, desc("user", "q"))).statuses[0].remaining == 0
    assert answers[3].statuses[0].remaining == 0 and answers[3].statuses[1].remaining == 0


async def test_redis_keys_expire_share_a_hash_tag_and_stay_short(redis_proc: RedisProcess) -> None:
    redis_proc.command("FLUSHALL")
    backend = connect(redis_proc.url)
    lim = Limiter(rules=RULES, backend=backend, timeout=1.0)
    await hit(lim, desc("ip", "1.2.3.4"), desc("user", "x" * 50_000), desc("ip", "ü/é|=\x00"))
    client = redis_sync.Redis(port=redis_proc.port)
    keys = client.keys("*")
    assert len(keys) == 3
    for key in keys:
        assert key.startswith(b"lg:{d:") and len(key) < 250
        ttl = client.pttl(key)
        assert 0 < ttl <= 60_000 + 3_000 + 1
    tags = {k[k.index(b"{") + 1 : k.index(b"}")] for k in keys}
    assert len(tags) == 3  # a hash tag per descriptor: a Cluster spreads them (see slots.py)
    await backend.close()


async def test_one_script_call_per_decision_whatever_the_descriptors(redis_proc: RedisProcess) -> None:
    redis_proc.command("FLUSHALL")
    client = redis_sync.Redis(port=redis_proc.port)
    backend = connect(redis_proc.url)
    lim = Limiter(rules=RULES, backend=backend, timeout=1.0)
    await hit(lim, desc("ip", "warm"))  # loads the script
    client.config_resetstat()
    for _ in range(5):
        await hit(lim, desc("ip", "a"), desc("ip", "b"), desc("user", "c"), desc("user", "d"))
    stats = client.info("commandstats")
    calls = {name: v["calls"] for name, v in stats.items()}
    assert calls.get("cmdstat_evalsha") == 5
    inside_script = {
        "cmdstat_time",
        "cmdstat_hgetall",
        "cmdstat_hdel",
        "cmdstat_hincrby",
        "cmdstat_pexpireat",
    }
    assert set(calls) - inside_script <= {"cmdstat_evalsha", "cmdstat_config|resetstat", "cmdstat_info"}
    await backend.close()


async def test_script_reloaded_after_noscript(redis_proc: RedisProcess) -> None:
    backend = connect(redis_proc.url)
    lim = Limiter(rules=RULES, backend=backend, timeout=1.0)
    assert not (await hit(lim, desc("ip", "n1"))).over
    redis_proc.command("SCRIPT", "FLUSH")
    assert not (await hit(lim, desc("ip", "n2"))).over
    await backend.close()


async def test_time_comes_from_redis_not_the_client(
    redis_proc: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_proc.command("FLUSHALL")
    backend = connect(redis_proc.url)
    lim = Limiter(rules=RULES, backend=backend, timeout=1.0)
    monkeypatch.setattr(time, "time", lambda: 0.0)  # a client clock at 1970 changes nothing
    decision = await hit(lim, desc("user", "clock"))
    assert decision.statuses[0].remaining == 2 and 57_000 <= decision.statuses[0].reset_ms <= 63_000
    await backend.close()


async def test_slow_redis_times_out_without_pile_up(redis_proc: RedisProcess) -> None:
    backend = connect(redis_proc.url)
    lim = Limiter(rules=RULES, backend=backend, timeout=0.05)
    await hit(lim, desc("ip", "warm"))
    redis_proc.pause()
    try:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(hit(lim, desc("ip", str(i))) for i in range(200)), return_exceptions=True
        )
        elapsed = time.perf_counter() - start
    finally:
        redis_proc.resume()
    assert all(isinstance(r, LimiterUnavailable) for r in results)
    assert {r.reason for r in results if isinstance(r, LimiterUnavailable)} <= {"timeout", "overloaded"}
    assert elapsed < 1.0  # 200 calls bounded by one timeout, not 200 of them
    for _ in range(50):
        try:
            if not (await hit(lim, desc("ip", "after"))).over:
                break
        except LimiterUnavailable:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("no decision after Redis resumed")
    await backend.close()


async def test_redis_down_fails_fast_and_recovers(redis_proc: RedisProcess) -> None:
    backend = connect(redis_proc.url)
    lim = Limiter(rules=RULES, backend=backend, timeout=0.05)
    assert not (await hit(lim, desc("ip", "up"))).over
    redis_proc.stop()
    try:
        with pytest.raises(LimiterUnavailable):
            await hit(lim, desc("ip", "down"))
        start = time.perf_counter()
        for _ in range(100):
            with pytest.raises(LimiterUnavailable) as info:
                await hit(lim, desc("ip", "down"))
        assert info.value.reason == "unavailable"
        assert time.perf_counter() - start < 0.5  # fail fast while down: no connection attempt each
    finally:
        redis_proc.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            assert not (await hit(lim, desc("ip", "back"))).over
            break
        except LimiterUnavailable:
            await asyncio.sleep(0.05)
    else:
        pytest.fail("backend did not recover within 5 s of Redis restarting")
    await backend.close()
