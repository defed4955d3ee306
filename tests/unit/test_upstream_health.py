"""Envoy's `/clusters?format=json` (as Envoy 1.40 answers it, trimmed) → each upstream host's state."""

from __future__ import annotations

from typing import Any

from legation.controller.serving.upstream_health import parse_clusters


def host(
    address: str, stats: dict[str, int], health: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    port = 8080
    return {
        "address": {"socket_address": {"address": address, "port_value": port}},
        # Envoy leaves "value" out when it is 0
        "stats": [{"name": k, **({"value": str(v)} if v else {})} for k, v in stats.items()],
        "health_status": health or {"eds_health_status": "HEALTHY"},
        "weight": 1,
        **extra,
    }


def clusters(**by_name: list[dict[str, Any]]) -> dict[str, Any]:
    return {"cluster_statuses": [{"name": n, "host_statuses": h} for n, h in by_name.items()]}


DEAD = host(
    "::1", {"cx_connect_fail": 3, "cx_total": 3, "rq_error": 3, "rq_success": 0}, hostname="localhost"
)
LIVE = host("127.0.0.1", {"cx_connect_fail": 0, "cx_total": 1, "rq_success": 1})


def test_a_dead_host_is_unreachable_and_a_live_one_healthy() -> None:
    found = parse_clusters(clusters(dead=[DEAD], live=[LIVE]), {})
    (dead,) = found["dead"]
    (live,) = found["live"]
    assert (dead.address, dead.state) == ("localhost ([::1]:8080)", "unreachable")
    assert "every connection failed (3)" in dead.detail
    assert (live.address, live.state) == ("127.0.0.1:8080", "healthy")


def test_new_connection_failures_without_a_success_since_the_last_look_are_failing() -> None:
    before = parse_clusters(clusters(c=[host("10.0.0.1", {"cx_total": 10, "rq_success": 10})]), {})
    after = parse_clusters(
        clusters(c=[host("10.0.0.1", {"cx_total": 14, "cx_connect_fail": 4, "rq_success": 10})]), before
    )
    assert after["c"][0].state == "failing"
    recovered = parse_clusters(
        clusters(c=[host("10.0.0.1", {"cx_total": 15, "cx_connect_fail": 4, "rq_success": 11})]), after
    )
    assert recovered["c"][0].state == "healthy"


def test_health_flags_win_over_counters() -> None:
    found = parse_clusters(
        clusters(
            c=[
                host("10.0.0.1", {"cx_total": 1, "rq_success": 1}, {"failed_outlier_check": True}),
                host("10.0.0.2", {}, {"failed_active_health_check": True}),
                host("10.0.0.3", {}, {"eds_health_status": "DRAINING"}),
            ]
        ),
        {},
    )
    assert [(h.state, h.detail) for h in found["c"]] == [
        ("ejected", "ejected by outlier detection"),
        ("unhealthy", "failed_active_health_check"),
        ("unhealthy", "EDS status DRAINING"),
    ]


def test_a_cluster_without_endpoints_and_junk_are_kept_apart() -> None:
    found = parse_clusters(
        {"cluster_statuses": [{"name": "empty"}, {"no": "name"}, {"name": "x", "host_statuses": [{}]}]}, {}
    )
    assert found == {"empty": (), "x": ()}
    assert parse_clusters("not json we know", {}) == {}
