"""Black box: plain HTTP requests through a real Envoy whose ratelimit filter calls our service.

Envoy bootstrap: tests/fixtures/envoy_ratelimit.yaml; service config:
tests/fixtures/ratelimit_e2e.yaml (every limit below is per minute, so nothing resets mid-test).
"""

from __future__ import annotations

import re

import pytest
from fixtures.probes import HttpResponse, metric_sum
from fixtures.processes import Launcher
from fixtures.stacks import Gateway, start_gateway

pytestmark = pytest.mark.e2e


@pytest.fixture
def gateway(launch: Launcher) -> Gateway:
    return start_gateway(launch)


def _limit_header(resp: HttpResponse) -> str:
    value = resp.header("x-ratelimit-limit")
    assert value is not None, f"no x-ratelimit-limit header: {resp.headers}"
    return value


def _remaining(resp: HttpResponse) -> int:
    value = resp.header("x-ratelimit-remaining")
    assert value is not None, f"no x-ratelimit-remaining header: {resp.headers}"
    return int(value)


def _reset(resp: HttpResponse) -> int:
    value = resp.header("x-ratelimit-reset")
    assert value is not None, f"no x-ratelimit-reset header: {resp.headers}"
    return int(value)


def _statuses(gw: Gateway, path: str, n: int, headers: dict[str, str] | None = None) -> list[int]:
    return [gw.get(path, headers).status for _ in range(n)]


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_generic_key_counts_down_then_429_with_headers(launch: Launcher, backend: str) -> None:
    gw = start_gateway(launch, redis=backend == "redis")
    # Limit 5/minute, named "countdown" (Envoy's DRAFT_VERSION_03 format: "<limit>, <policy>").
    for expected_remaining in [4, 3, 2, 1, 0]:
        resp = gw.get("/generic")
        assert resp.status == 200, resp
        assert resp.body == "ok"
        assert _limit_header(resp) == '5, 5;w=60;name="countdown"'
        assert _remaining(resp) == expected_remaining
        assert 50 <= _reset(resp) <= 63, resp.headers  # hits just made, 60 s window
        assert resp.header("x-envoy-ratelimited") is None

    for _ in range(3):
        denied = gw.get("/generic")
        assert denied.status == 429, denied
        assert denied.header("x-envoy-ratelimited") == "true"
        assert _limit_header(denied) == '5, 5;w=60;name="countdown"'
        assert _remaining(denied) == 0
        assert 1 <= _reset(denied) <= 63

    # Envoy's own view: 5 OK answers and 3 OVER_LIMIT answers from the service, no errors.
    stats = gw.envoy.stats()
    assert stats.get("cluster.backend.ratelimit.ok") == 5
    assert stats.get("cluster.backend.ratelimit.over_limit") == 3
    assert stats.get("cluster.backend.ratelimit.error", 0) == 0

    metrics = gw.service.metrics_text()
    name = "legation_ratelimit_decisions_total"
    assert metric_sum(metrics, name, domain="e2e", code="ok") == 5
    assert metric_sum(metrics, name, domain="e2e", code="over_limit") == 3


def test_route_without_rate_limits_is_never_limited(gateway: Gateway) -> None:
    assert _statuses(gateway, "/free", 8) == [200] * 8
    assert gateway.get("/free").header("x-ratelimit-limit") is None


def test_per_ip_limits_are_independent(gateway: Gateway) -> None:
    # /ip: 3 per minute per client address (the rightmost X-Forwarded-For entry).
    a = {"x-forwarded-for": "10.1.0.1"}
    b = {"x-forwarded-for": "10.1.0.2"}
    assert _statuses(gateway, "/ip", 3, a) == [200, 200, 200]
    assert _statuses(gateway, "/ip", 2, a) == [429, 429]
    first_b = gateway.get("/ip", b)
    assert first_b.status == 200
    assert _remaining(first_b) == 2
    assert _statuses(gateway, "/ip", 2, b) == [200, 200]
    assert gateway.get("/ip", b).status == 429
    # The real peer address (no XFF) is a third client with its own budget.
    assert _statuses(gateway, "/ip", 3) == [200, 200, 200]
    assert gateway.get("/ip").status == 429


def test_per_header_limits_are_independent(gateway: Gateway) -> None:
    # /user: 2 per minute per x-user value; without the header no descriptor, no limit.
    alice, bob = {"x-user": "alice"}, {"x-user": "bob"}
    assert _statuses(gateway, "/user", 3, alice) == [200, 200, 429]
    assert _statuses(gateway, "/user", 3, bob) == [200, 200, 429]
    assert _statuses(gateway, "/user", 2, {"x-user": "Alice"}) == [200, 200]  # case matters
    assert _statuses(gateway, "/user", 5) == [200] * 5
    assert gateway.get("/user", {"x-user": "alice"}).status == 429


def test_nested_descriptor(gateway: Gateway) -> None:
    # /nested sends one descriptor [generic_key=nested, plan=<x-plan>]:
    # plan=free -> 2/min; any other plan -> 4/min, counted per value.
    free = gateway.get("/nested", {"x-plan": "free"})
    assert free.status == 200
    assert _limit_header(free).startswith("2, 2;w=60")
    assert _statuses(gateway, "/nested", 2, {"x-plan": "free"}) == [200, 429]

    gold = gateway.get("/nested", {"x-plan": "gold"})
    assert gold.status == 200
    assert _limit_header(gold).startswith("4, 4;w=60")
    assert _remaining(gold) == 3
    assert _statuses(gateway, "/nested", 4, {"x-plan": "gold"}) == [200, 200, 200, 429]
    assert _statuses(gateway, "/nested", 4, {"x-plan": "silver"}) == [200] * 4
    assert gateway.get("/nested", {"x-plan": "silver"}).status == 429
    # Without x-plan Envoy drops the whole descriptor: nothing to limit.
    assert _statuses(gateway, "/nested", 6) == [200] * 6


def test_two_descriptors_strictest_wins_and_denied_request_consumes_nothing(
    gateway: Gateway,
) -> None:
    # /both sends [user=<x-user>] (2/min per user) and [generic_key=shared] (4/min in total).
    first = gateway.get("/both", {"x-user": "alice"})
    assert first.status == 200
    assert _remaining(first) == 1  # min(user: 1, shared: 3)
    limit = _limit_header(first)
    assert re.fullmatch(r"2, (2;w=60, 4;w=60|4;w=60, 2;w=60)", limit), limit
    assert gateway.get("/both", {"x-user": "alice"}).status == 200
    # alice is over her own limit; this denial must not use the shared budget.
    assert gateway.get("/both", {"x-user": "alice"}).status == 429
    bob = gateway.get("/both", {"x-user": "bob"})
    assert bob.status == 200
    assert _remaining(bob) == 1  # min(user: 1, shared: 1)
    last = gateway.get("/both", {"x-user": "bob"})
    assert last.status == 200, "a denied request consumed the shared budget"
    assert _remaining(last) == 0
    # The shared budget is now spent: carol is denied although her own budget is untouched.
    carol = gateway.get("/both", {"x-user": "carol"})
    assert carol.status == 429
    assert _remaining(carol) == 0
    # ...and her denied request consumed nothing of her own per-user budget.
    assert gateway.get("/user", {"x-user": "carol"}).status == 200
    assert _remaining(gateway.get("/user", {"x-user": "carol"})) == 0


def test_shadow_mode_lets_traffic_through_and_counts_it(gateway: Gateway) -> None:
    # /shadow: 2/min in shadow mode -> never enforced, but reported as shadow decisions.
    assert _statuses(gateway, "/shadow", 6) == [200] * 6
    stats = gateway.envoy.stats()
    assert stats.get("cluster.backend.ratelimit.over_limit", 0) == 0
    metrics = gateway.service.metrics_text()
    shadow = metric_sum(metrics, "legation_ratelimit_decisions_total", domain="e2e", code="shadow_over_limit")
    assert shadow >= 4, metrics
    assert metric_sum(metrics, "legation_ratelimit_decisions_total", domain="e2e", code="over_limit") == 0


def test_service_response_headers_flag(launch: Launcher) -> None:
    # --response-headers: the service adds RateLimit-* headers, which Envoy passes to the client.
    gw = start_gateway(launch, extra_args=["--response-headers"])
    remaining = []
    for _ in range(6):
        resp = gw.get("/generic")
        limit = resp.header("ratelimit-limit")
        assert limit is not None and limit.split(",")[0].strip().startswith("5"), resp.headers
        reset = resp.header("ratelimit-reset")
        assert reset is not None and 0 < int(reset) <= 63, resp.headers
        remaining.append((resp.status, int(resp.header("ratelimit-remaining") or -1)))
    assert remaining == [(200, 4), (200, 3), (200, 2), (200, 1), (200, 0), (429, 0)]
