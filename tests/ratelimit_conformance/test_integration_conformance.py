"""Conformance with envoyproxy/ratelimit's integration scenarios (test/integration/
integration_test.go), on its own runtime configs (testdata/integration, see NOTICE), against the
real `legation ratelimit` over gRPC, with the in-memory backend and with a real Redis. Test ids
are the reference's test names.

Where Legation deliberately differs, the test says so and checks Legation's documented behaviour:
- denied requests consume nothing (the reference's STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT
  variant of testBasicConfig expects exactly this);
- windows slide by default, so `duration_until_reset` is when quota next comes back, not the
  end of a calendar unit.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.managed import wait_for
from fixtures.processes import Launcher, RateLimitProcess
from fixtures.rls import OK, OVER_LIMIT, RlsClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

DATA = Path(__file__).parent / "testdata" / "integration"
SECOND, MINUTE, HOUR, DAY = 1, 2, 3, 4


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest, launch: Launcher) -> str | None:
    return launch.redis().url if request.param == "redis" else None


def serve(launch: Launcher, tmp_path: Path, redis_url: str | None, *files: str) -> RateLimitProcess:
    config = tmp_path / "config"
    config.mkdir()
    for name in files:
        shutil.copy(DATA / name, config / name)
    return launch.ratelimit(config, redis_url=redis_url)


@pytest.fixture
def client_of() -> Iterator[list[RlsClient]]:
    clients: list[RlsClient] = []
    yield clients
    for c in clients:
        c.close()


def connect(service: RateLimitProcess, clients: list[RlsClient]) -> RlsClient:
    client = RlsClient(service.address)
    client.wait_ready()
    clients.append(client)
    return client


def status(response: object, i: int = 0) -> tuple[int, int, int, int]:
    s = response.statuses[i]  # type: ignore[attr-defined]
    return s.code, s.current_limit.requests_per_unit, s.current_limit.unit, s.limit_remaining


def test_TestBasicConfig(
    launch: Launcher, tmp_path: Path, backend: str | None, client_of: list[RlsClient]
) -> None:
    c = connect(serve(launch, tmp_path, backend, "basic.yaml", "another.yaml"), client_of)
    unknown = c.should("foo", [[("hello", "world")]])
    assert unknown.overall_code == OK and not unknown.statuses[0].HasField("current_limit")
    assert status(c.should("basic", [[("key1", "foo")]])) == (OK, 50, SECOND, 49)
    value = str(random.getrandbits(62))
    for i in range(25):
        response = c.should("another", [[("key2", value)]])
        over = i >= 20
        assert response.overall_code == (OVER_LIMIT if over else OK)
        assert status(response) == ((OVER_LIMIT, 20, MINUTE, 0) if over else (OK, 20, MINUTE, 20 - (i + 1)))
    value = str(random.getrandbits(62))
    for i in range(15):
        response = c.should("another", [[("key2", value)], [("key3", value)]])
        over = i >= 10
        assert response.overall_code == (OVER_LIMIT if over else OK)
        # Deliberate difference: a denied request consumes nothing, so key2 stays at 10 once the
        # request is denied (the reference's StopCacheKeyIncrementWhenOverlimit expectation).
        assert status(response, 0) == (OK, 20, MINUTE, 10 if over else 20 - (i + 1))
        assert status(response, 1) == ((OVER_LIMIT, 10, HOUR, 0) if over else (OK, 10, HOUR, 10 - (i + 1)))
    first = c.should("another", [[("key4", "durTest")]])
    time.sleep(2)
    second = c.should("another", [[("key4", "durTest")]])
    assert second.statuses[0].duration_until_reset.seconds < first.statuses[0].duration_until_reset.seconds


def test_TestShareThreshold(
    launch: Launcher, tmp_path: Path, backend: str | None, client_of: list[RlsClient]
) -> None:
    c = connect(serve(launch, tmp_path, backend, "share_threshold.yaml"), client_of)
    domain = "share-threshold-test"
    for _ in range(10):
        assert c.should(domain, [[("files", "files/a.pdf")]]).overall_code in (OK, OVER_LIMIT)
    shared = c.should(domain, [[("files", "files/b.csv")]])
    assert shared.overall_code == OVER_LIMIT
    assert status(shared) == (OVER_LIMIT, 10, HOUR, 0)
    base = time.time_ns()
    for _ in range(10):
        unique = f"files_no_share/{base}-{random.getrandbits(62)}"
        response = c.should(domain, [[("files_no_share", unique)]])
        assert response.overall_code == OK and status(response) == (OK, 10, HOUR, 9)


def test_TestBasicReloadConfig(launch: Launcher, tmp_path: Path, client_of: list[RlsClient]) -> None:
    """testConfigReload: a file added to the watched directory loads; removing it reloads too."""
    service = serve(launch, tmp_path, None, "basic.yaml")
    c = connect(service, client_of)
    before = c.should("reload", [[("block", "foo")]])
    assert before.overall_code == OK and not before.statuses[0].HasField("current_limit")
    added = tmp_path / "config" / "reload.yaml"
    shutil.copy(DATA / "reload.yaml.in", added)
    wait_for(
        lambda: c.should("reload", [[("key1", "foo")]]).statuses[0].current_limit.requests_per_unit == 50,
        timeout=10,
        what="reload.yaml loaded",
    )
    assert status(c.should("reload", [[("key1", "bar")]])) == (OK, 50, SECOND, 49)
    added.unlink()
    wait_for(
        lambda: not c.should("reload", [[("key1", "baz")]]).statuses[0].HasField("current_limit"),
        timeout=10,
        what="reload after removal",
    )
