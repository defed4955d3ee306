"""Limiter semantics on the in-memory backend with a controlled clock (no processes).

The same semantics run against real Redis in tests/backend/test_limiter_backends.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legation.ratelimit.backends import BackendError, Outcome
from legation.ratelimit.backends.memory import MemoryBackend
from legation.ratelimit.config import load_config_texts
from legation.ratelimit.limiter import (
    MAX_KEY_BODY,
    Decision,
    DescriptorRequest,
    Limiter,
    LimiterUnavailable,
    counter_key,
)
from legation.ratelimit.rules import Limit, RuleSet

CONFIG = """
domain: d
descriptors:
  - key: ip
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: fixed
    rate_limit: {unit: second, requests_per_unit: 10, algorithm: fixed_window}
  - key: user
    rate_limits:
      - {unit: second, requests_per_unit: 5}
      - {unit: minute, requests_per_unit: 8}
  - key: shadow
    shadow_mode: true
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: free
    rate_limit: {unlimited: true}
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 100, name: tenant-wide}
    descriptors:
      - key: vip
        value: "yes"
        rate_limit: {unit: minute, requests_per_unit: 1000, name: vip, replaces: [{name: tenant-wide}]}
"""


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rules() -> RuleSet:
    return load_config_texts([("c.yaml", CONFIG)]).rules


def limiter(clock: Clock, **kwargs: object) -> Limiter:
    return Limiter(rules=rules(), backend=MemoryBackend(clock=clock), **kwargs)  # type: ignore[arg-type]


def desc(
    *entries: tuple[str, str], addend: int | None = None, override: tuple[int, int] | None = None
) -> DescriptorRequest:
    return DescriptorRequest(entries=tuple(entries), addend=addend, override=override)


async def hit(lim: Limiter, *descriptors: DescriptorRequest, addend: int = 0) -> Decision:
    return await lim.should_rate_limit("d", descriptors, addend)


async def admitted(lim: Limiter, n: int, *descriptors: DescriptorRequest) -> int:
    return sum([not (await hit(lim, *descriptors)).over for _ in range(n)])


async def test_admits_up_to_the_limit_then_denies_with_counts() -> None:
    lim = limiter(Clock())
    remaining = [(await hit(lim, desc(("ip", "a")))).statuses[0].remaining for _ in range(10)]
    assert remaining == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    denied = await hit(lim, desc(("ip", "a")))
    assert denied.over and denied.statuses[0].over and denied.statuses[0].remaining == 0
    assert 950 <= denied.statuses[0].reset_ms <= 1050
    assert not (await hit(lim, desc(("ip", "b")))).over  # another key has its own budget


async def test_sliding_window_is_strict_at_the_fixed_edge() -> None:
    clock = Clock(1_000_000.95)  # late in second 1_000_000
    lim = limiter(clock)
    assert await admitted(lim, 10, desc(("ip", "a"))) == 10
    clock.now = 1_000_001.0  # a fixed window would start afresh here
    assert await admitted(lim, 10, desc(("ip", "a"))) == 0
    clock.now = 1_000_001.949  # still within 1 s + one bucket of the hits
    assert await admitted(lim, 1, desc(("ip", "a"))) == 0
    clock.now = 1_000_002.0  # the hits' bucket has left the window
    assert await admitted(lim, 10, desc(("ip", "a"))) == 10


async def test_fixed_window_admits_twice_the_limit_at_the_edge() -> None:
    clock = Clock(1_000_000.95)
    lim = limiter(clock)
    assert await admitted(lim, 10, desc(("fixed", "a"))) == 10
    clock.now = 1_000_001.0
    assert await admitted(lim, 10, desc(("fixed", "a"))) == 10  # 20 within 50 ms: why sliding is default
    status = (await hit(lim, desc(("fixed", "a")))).statuses[0]
    assert status.over and status.reset_ms == 1000  # epoch-aligned: resets at the next whole second


async def test_reset_reports_when_quota_comes_back() -> None:
    clock = Clock(1_000_000.0)
    lim = limiter(clock)
    await hit(lim, desc(("ip", "a")), addend=10)
    clock.now = 1_000_000.5
    status = (await hit(lim, desc(("ip", "a")))).statuses[0]
    assert status.over
    assert status.reset_ms == 550  # the first hits stop counting at 1_000_001.05


async def test_denied_request_consumes_nothing_from_any_counter() -> None:
    lim = limiter(Clock())
    assert not (await hit(lim, desc(("ip", "a")), addend=10)).over
    for _ in range(5):
        decision = await hit(lim, desc(("ip", "a")), desc(("ip", "b")))
        assert decision.over
        assert [s.over for s in decision.statuses] == [True, False]
    # "b" was never charged for the five denied requests
    assert (await hit(lim, desc(("ip", "b")))).statuses[0].remaining == 9


async def test_hits_addend_request_and_descriptor_level() -> None:
    lim = limiter(Clock())
    assert (await hit(lim, desc(("ip", "a")), addend=4)).statuses[0].remaining == 6
    assert (await hit(lim, desc(("ip", "a"), addend=3), addend=4)).statuses[0].remaining == 3
    big = await hit(lim, desc(("ip", "a"), addend=4))
    assert big.over and big.statuses[0].remaining == 3  # 3 + 4 > 10 is not admitted, and not counted
    assert not (await hit(lim, desc(("ip", "a"), addend=3))).over


async def test_zero_addend_checks_without_counting() -> None:
    lim = limiter(Clock())
    for _ in range(20):
        assert not (await hit(lim, desc(("ip", "a"), addend=0))).over
    await hit(lim, desc(("ip", "a")), addend=10)
    probe = await hit(lim, desc(("ip", "a"), addend=0))
    assert probe.over and probe.statuses[0].remaining == 0  # no quota left for one more


async def test_huge_addend_is_denied_not_overflowed() -> None:
    lim = limiter(Clock())
    assert (await hit(lim, desc(("ip", "a"), addend=2**64 - 1))).over
    assert (await hit(lim, desc(("ip", "a")), addend=2**32 - 1)).over
    assert (await hit(lim, desc(("ip", "a")))).statuses[0].remaining == 9


async def test_several_limits_on_one_descriptor_strictest_decides() -> None:
    clock = Clock(1_000_000.0)
    lim = limiter(clock)
    first = await hit(lim, desc(("user", "u")))
    assert first.statuses[0].limit is not None and first.statuses[0].limit.requests == 5
    assert await admitted(lim, 4, desc(("user", "u"))) == 4
    assert (await hit(lim, desc(("user", "u")))).over  # 5 per second
    clock.now += 1.1
    assert await admitted(lim, 3, desc(("user", "u"))) == 3
    status = (await hit(lim, desc(("user", "u")))).statuses[0]
    assert status.over and status.limit is not None and status.limit.requests == 8  # 8 per minute


async def test_shadow_mode_reports_but_never_denies() -> None:
    lim = limiter(Clock())
    seen: list[str] = []

    class Recorder:
        def decided(self, domain: str, limit: Limit, code: str, stat_key: str | None) -> None:
            seen.append(code)

        def backend(self, seconds: float, error: str | None) -> None:
            pass

    lim = Limiter(rules=rules(), backend=MemoryBackend(clock=Clock()), observer=Recorder())
    decisions = [await hit(lim, desc(("shadow", "x"))) for _ in range(4)]
    assert not any(d.over for d in decisions)
    assert seen == ["ok", "ok", "shadow_over_limit", "shadow_over_limit"]


async def test_unlimited_unknown_domain_and_no_match_are_ok_without_limits() -> None:
    lim = limiter(Clock())
    for _ in range(50):
        decision = await hit(lim, desc(("free", "x")), desc(("nothing", "here")))
        assert not decision.over and all(s.limit is None for s in decision.statuses)
    unknown = await lim.should_rate_limit("other", [desc(("ip", "a"))])
    assert not unknown.over and unknown.statuses[0].limit is None


async def test_replaces_removes_the_named_limit() -> None:
    lim = limiter(Clock())
    decision = await hit(lim, desc(("tenant", "t")), desc(("tenant", "t"), ("vip", "yes")))
    assert decision.statuses[0].limit is None  # tenant-wide was replaced by vip
    assert decision.statuses[1].limit is not None and decision.statuses[1].limit.name == "vip"
    plain = await hit(lim, desc(("tenant", "t")))
    assert plain.statuses[0].limit is not None and plain.statuses[0].limit.name == "tenant-wide"


async def test_same_counter_twice_in_one_request_adds_up() -> None:
    lim = limiter(Clock())
    await hit(lim, desc(("ip", "a")), addend=8)
    decision = await hit(lim, desc(("ip", "a")), desc(("ip", "a")))  # 8 + 2 = 10: fits exactly
    assert not decision.over
    assert (await hit(lim, desc(("ip", "a")))).over


async def test_descriptor_limit_override_from_envoy() -> None:
    lim = limiter(Clock())
    override = (2, 2)  # 2 per minute
    assert await admitted(lim, 5, desc(("anything", "x"), override=override)) == 2
    status = (await hit(lim, desc(("anything", "x"), override=override))).statuses[0]
    assert status.limit is not None and status.limit.requests == 2 and status.limit.unit == 2
    unknown_domain = await lim.should_rate_limit("other", [desc(("a", "b"), override=override)])
    assert unknown_domain.statuses[0].limit is None  # as in the reference: only for known domains


def test_counter_keys_are_bounded_unambiguous_and_tagged() -> None:
    (limit,) = rules().lookup("d", [("ip", "x")]) or ()
    short = counter_key("d", limit, [("ip", "10.0.0.1")])
    assert short == "lg:{d:2.ip8.10.0.0.1}:s1000"  # the descriptor is the Cluster hash tag
    assert counter_key("d", limit, [("ip", "10.0.0.1")], colocate=True) == "lg:{d}:s1000:2.ip8.10.0.0.1"
    long_key = counter_key("d", limit, [("ip", "v" * 100_000)])
    assert len(long_key) < 80 + MAX_KEY_BODY and long_key.startswith("lg:{d:#")
    assert counter_key("d", limit, [("a", "b|c")]) != counter_key("d", limit, [("a", "b"), ("c", "")])
    for weird in (counter_key("x{y}" * 40, limit, [("ip", "1")]), counter_key("d", limit, [("ip", "a}b{")])):
        assert weird.count("{") == 1 and weird.count("}") == 1
    shared = counter_key("d", limit, [("ip", "1*")], ["1*"])
    assert shared != counter_key("d", limit, [("ip", "1*")])  # a shared counter never meets a literal value


class FailingBackend:
    def __init__(self, reason: str = "connection") -> None:
        self.reason = reason

    async def apply(
        self, keys: Sequence[str], params: Sequence[int], checks: Sequence[int], *, timeout: float
    ) -> Outcome:
        raise BackendError(self.reason, "redis connection failed: refused")

    async def ping(self) -> None:
        raise BackendError(self.reason, "down")

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(("mode", "over"), [("allow", False), ("deny", True)])
async def test_failure_modes_allow_and_deny(mode: str, over: bool) -> None:
    lim = Limiter(rules=rules(), backend=FailingBackend(), failure_mode=mode)  # type: ignore[arg-type]
    decision = await hit(lim, desc(("ip", "a")), desc(("nothing", "x")))
    assert decision.over is over
    assert [s.over for s in decision.statuses] == [over, False]


async def test_failure_mode_unavailable_raises() -> None:
    lim = Limiter(rules=rules(), backend=FailingBackend())
    with pytest.raises(LimiterUnavailable) as info:
        await hit(lim, desc(("ip", "a")))
    assert info.value.reason == "connection"
    # no limit matched: no backend call, so no failure either
    assert not (await hit(lim, desc(("nothing", "x")))).over


async def test_memory_sweep_drops_idle_counters() -> None:
    clock = Clock(1_000_000.0)
    backend = MemoryBackend(clock=clock)
    lim = Limiter(rules=rules(), backend=backend)
    for i in range(100):
        await hit(lim, desc(("ip", str(i))))
    assert len(backend) == 100
    clock.now += 0.5
    backend.sweep()
    assert len(backend) == 100
    clock.now += 1.0
    backend.sweep()
    assert len(backend) == 0
    await backend.close()


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=120),
    addends=st.lists(st.integers(min_value=0, max_value=4), min_size=120, max_size=120),
)
async def test_sliding_window_guarantee_and_bounded_under_admission(
    gaps: list[int], addends: list[int]
) -> None:
    """For any arrival pattern: (1) no interval of length W admits more than the limit;
    (2) a request is only denied if the hits admitted in the last W + W/20 leave no room."""
    limit, window, bucket = 10, 1000, 50
    clock = Clock(1_000_000.0)
    lim = limiter(clock)
    t = 1_000_000_000  # ms
    history: list[tuple[int, int]] = []  # (time ms, hits) of admitted requests
    for gap, addend in zip(gaps, addends, strict=False):
        t += gap
        clock.now = t / 1000
        decision = await hit(lim, desc(("ip", "p"), addend=addend))
        recent = sum(h for (ts, h) in history if ts > t - window - bucket)
        if decision.over:
            assert recent + max(addend, 1) > limit
        else:
            in_window = sum(h for (ts, h) in history if ts > t - window)
            assert in_window + addend <= limit
            history.append((t, addend))
    for start, _ in history:
        assert sum(h for (ts, h) in history if start <= ts < start + window) <= limit
