"""Two service replicas on one Redis never over-admit, even with bursts at window edges.

Limit: 20 per second for one key.  Client threads (half on each replica) fire bursts just before
and just after whole-second boundaries (time.time() is the clock Redis' TIME reads on this
machine), every other second so that a fixed window has its whole budget left before each edge.

For every admitted request we know only that it was admitted somewhere between its send time and
its receive time.  So for an admitted request i, every admitted j with send_j >= send_i and
recv_j < send_i + 1 s was certainly admitted within one interval of length 1 s: there must never
be more than 20 of those.  The same traffic against ``algorithm: fixed_window`` does exceed 20,
which shows that the check can fail and that the sliding window is what fixes the edge.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from fixtures.processes import Launcher, RateLimitProcess
from fixtures.rls import OK, OVER_LIMIT, RlsClient, Timed, request

pytestmark = pytest.mark.e2e

LIMIT = 20
WINDOW = 1.0
THREADS_PER_REPLICA = 3
BURST_HALF_WIDTH = 0.15  # seconds on each side of an edge

CONFIG = {
    "edge.yaml": f"""\
domain: edge
descriptors:
  - key: k
    rate_limit: {{unit: second, requests_per_unit: {LIMIT}}}
""",
    "edge_fixed.yaml": f"""\
domain: edge_fixed
algorithm: fixed_window
descriptors:
  - key: k
    rate_limit: {{unit: second, requests_per_unit: {LIMIT}}}
""",
}


@dataclass(frozen=True)
class Admitted:
    sent: float
    received: float
    replica: int


@dataclass
class RunResult:
    admitted: list[Admitted]
    denied: int
    errors: list[Timed]


@pytest.fixture
def replicas(launch: Launcher, tmp_path: Path) -> list[RateLimitProcess]:
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    for name, text in CONFIG.items():
        (config_dir / name).write_text(text)
    redis = launch.redis()
    # A generous backend timeout: this test is about admission, not about Redis slowness.
    args = ["--backend-timeout", "1.0"]
    return [launch.ratelimit(config_dir, redis_url=redis.url, extra_args=args) for _ in range(2)]


def _in_any(t: float, intervals: Sequence[tuple[float, float]]) -> bool:
    return any(start <= t < end for start, end in intervals)


def _next_start(t: float, intervals: Sequence[tuple[float, float]]) -> float | None:
    later = [start for start, end in intervals if end > t]
    return min(later) if later else None


def _drive(
    replicas: Sequence[RateLimitProcess], domain: str, intervals: Sequence[tuple[float, float]]
) -> RunResult:
    """Send as fast as possible during ``intervals`` (epoch seconds) from several threads."""
    result = RunResult([], 0, [])
    lock = threading.Lock()
    req = request(domain, [[("k", "hot")]])

    def worker(replica: int) -> None:
        with RlsClient(replicas[replica].address) as client:
            client.wait_ready()
            while True:
                now = time.time()
                if not _in_any(now, intervals):
                    start = _next_start(now, intervals)
                    if start is None:
                        return
                    time.sleep(max(0.0, start - now))
                    continue
                outcome = client.call(req, timeout=5.0)
                with lock:
                    if outcome.overall == OK:
                        result.admitted.append(Admitted(outcome.sent, outcome.received, replica))
                    elif outcome.overall == OVER_LIMIT:
                        result.denied += 1
                    else:
                        result.errors.append(outcome)

    threads = [
        threading.Thread(target=worker, args=(i % len(replicas),), daemon=True)
        for i in range(THREADS_PER_REPLICA * len(replicas))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "client threads hung"
    result.admitted.sort(key=lambda a: a.sent)
    return result


def _max_certainly_within_window(admitted: Sequence[Admitted]) -> tuple[int, float]:
    """The largest number of admissions certainly inside one interval of length WINDOW."""
    best, at = 0, 0.0
    for first in admitted:
        count = sum(
            1 for other in admitted if other.sent >= first.sent and other.received < first.sent + WINDOW
        )
        if count > best:
            best, at = count, first.sent
    return best, at


def _edges_schedule(first_edge: float, edges: int) -> tuple[list[tuple[float, float]], list[float]]:
    """Bursts of +-BURST_HALF_WIDTH around every other whole second."""
    edge_times = [first_edge + 2 * k for k in range(edges)]
    bursts = [(e - BURST_HALF_WIDTH, e + BURST_HALF_WIDTH) for e in edge_times]
    return bursts, edge_times


def _describe(result: RunResult, edges: Sequence[float]) -> str:
    lines = [f"admitted={len(result.admitted)} denied={result.denied} errors={len(result.errors)}"]
    for edge in edges:
        near = [a for a in result.admitted if abs(a.received - edge) < 0.5]
        lines.append(
            f"edge {edge:.0f}: admitted {len(near)} (before: {sum(a.received < edge for a in near)})"
        )
    return "\n".join(lines)


def test_sliding_window_never_over_admits_across_replicas(
    replicas: list[RateLimitProcess],
) -> None:
    first_edge = math.ceil(time.time()) + 1.0
    bursts, edges = _edges_schedule(first_edge, edges=2)
    steady = (bursts[-1][1], bursts[-1][1] + 2.0)  # then hammer without pause for 2 s
    result = _drive(replicas, "edge", [*bursts, steady])
    info = _describe(result, edges)

    assert not result.errors, [(e.code, e.details) for e in result.errors[:5]]
    assert result.denied > 0, info  # demand really exceeded the limit
    worst, at = _max_certainly_within_window(result.admitted)
    print(f"sliding: max {worst} within 1 s\n{info}")
    assert worst <= LIMIT, f"{worst} admitted within 1 s starting at {at:.3f}\n{info}"
    assert {a.replica for a in result.admitted} == {0, 1}, "both replicas must admit"

    # Not starving: the edge bursts come after >= 1.7 s without admissions, so each pair of
    # half-bursts must get (most of) a full budget...
    for start, end in bursts:
        in_burst = [a for a in result.admitted if start <= a.sent < end]
        assert len(in_burst) >= 0.6 * LIMIT, f"burst {start:.2f}: {len(in_burst)}\n{info}"
    # ...and under continuous demand the rate converges to the limit.
    in_steady = [a for a in result.admitted if steady[0] <= a.sent < steady[1]]
    floor = 0.6 * LIMIT * ((steady[1] - steady[0]) - WINDOW)
    assert len(in_steady) >= floor, f"steady phase admitted {len(in_steady)} < {floor}\n{info}"


def test_fixed_window_does_over_admit_at_the_edge(replicas: list[RateLimitProcess]) -> None:
    """The same check fails for an epoch-aligned fixed window (the reference's algorithm)."""
    first_edge = math.ceil(time.time()) + 1.0
    bursts, edges = _edges_schedule(first_edge, edges=2)
    result = _drive(replicas, "edge_fixed", bursts)
    info = _describe(result, edges)

    assert not result.errors, [(e.code, e.details) for e in result.errors[:5]]
    worst, at = _max_certainly_within_window(result.admitted)
    print(f"fixed: max {worst} within 1 s\n{info}")
    assert worst > LIMIT, f"fixed window stayed within the limit (max {worst} at {at})\n{info}"
    # Each 1-second window admits its full budget, never more.
    for edge in edges:
        before = [a for a in result.admitted if edge - 1 <= a.sent and a.received < edge]
        after = [a for a in result.admitted if edge <= a.sent and a.received < edge + 1]
        assert len(before) <= LIMIT and len(after) <= LIMIT, info


def test_status_reports_limit_and_remaining_consistently(
    replicas: list[RateLimitProcess],
) -> None:
    """Replicas share counters: remaining counts down across both, then OVER_LIMIT."""
    clients = [RlsClient(r.address) for r in replicas]
    try:
        key = [("k", "countdown")]
        for client in clients:
            client.wait_ready()
        outcomes = []
        started = time.monotonic()
        for i in range(LIMIT + 2):
            resp = clients[i % 2].should("edge", [key])
            status = resp.statuses[0]
            assert status.current_limit.requests_per_unit == LIMIT
            assert status.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.SECOND
            outcomes.append((resp.overall_code, status.limit_remaining))
        elapsed = time.monotonic() - started
        # All within one window (else hits would age out and the countdown would restart).
        assert elapsed < 0.9, f"the countdown took {elapsed:.2f}s: machine too slow"
        assert outcomes[:LIMIT] == [(OK, LIMIT - 1 - i) for i in range(LIMIT)], outcomes
        assert outcomes[LIMIT:] == [(OVER_LIMIT, 0), (OVER_LIMIT, 0)], outcomes
    except grpc.RpcError as exc:
        pytest.fail(f"gRPC error {exc.code()}: {exc.details()}")
    finally:
        for client in clients:
            client.close()
