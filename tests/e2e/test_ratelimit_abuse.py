"""Hostile clients against the real `legation ratelimit` over gRPC: a value built to make
wildcard matching backtrack, and a flood of distinct keys against the in-memory backend."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fixtures.probes import metric_sum
from fixtures.processes import Launcher
from fixtures.rls import OK, RlsClient, Timed, descriptor

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CONFIG = """
domain: edge
descriptors:
  - key: path
    value: /api/*/v*/*/search
    rate_limit: {unit: second, requests_per_unit: 1000}
  - key: ip
    rate_limit: {unit: hour, requests_per_unit: 1000000}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "rl.yaml"
    path.write_text(CONFIG)
    return path


def evil_path(size: int) -> str:
    """Many `/v` segments and no `/search` at the end: a backtracking matcher tries every split."""
    return "/api/" + "/v" * (size // 2) + "x"


def test_wildcard_value_built_to_backtrack_is_answered_promptly_and_blocks_no_one(
    launch: Launcher, config: Path
) -> None:
    service = launch.ratelimit(config)
    with RlsClient(service.address) as client:
        client.wait_ready()
        baseline = [client.timed("edge", [[("ip", "10.0.0.1")]]).elapsed for _ in range(20)]
        evil: list[Timed] = []

        def attack() -> None:
            with RlsClient(service.address) as attacker:
                evil.extend(attacker.timed("edge", [[("path", evil_path(3000))]]) for _ in range(20))

        thread = threading.Thread(target=attack)
        thread.start()
        during = []
        while thread.is_alive():
            during.append(client.timed("edge", [[("ip", "10.0.0.2")]]))
        thread.join()
    assert len(evil) == 20 and all(t.overall == OK for t in evil)  # no rule matched: OK
    assert max(t.elapsed for t in evil) < 0.5, [round(t.elapsed, 3) for t in evil]
    assert during and all(t.overall == OK for t in during)
    # ordinary calls made meanwhile were not held up behind the hostile ones
    assert max(t.elapsed for t in during) < max(0.5, 20 * max(baseline))


def test_memory_backend_holds_at_most_its_key_cap_under_a_flood_of_distinct_keys(
    launch: Launcher, config: Path
) -> None:
    cap = 2000
    service = launch.ratelimit(config, extra_args=["--memory-max-keys", str(cap)])
    with RlsClient(service.address) as client:
        client.wait_ready()
        first = client.should("edge", [descriptor([("ip", "victim")])])
        assert first.statuses[0].limit_remaining == 999_999
        for batch in range(20):  # 20 x 500 = 10,000 distinct live keys (an hour window each)
            descriptors = [descriptor([("ip", f"flood-{batch}-{i}")]) for i in range(500)]
            assert client.should("edge", descriptors).overall_code == OK
        text = service.metrics_text()
        ordinary = client.timed("edge", [[("ip", "after-the-flood")]])
    assert metric_sum(text, "legation_ratelimit_memory_keys") <= cap
    assert metric_sum(text, "legation_ratelimit_memory_evictions_total", reason="capacity") >= 10_000 - cap
    assert ordinary.overall == OK and ordinary.response is not None
    assert ordinary.response.statuses[0].limit_remaining == 999_999
