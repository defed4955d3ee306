"""Redis going away (killed) or hanging (SIGSTOP): bounded answers per failure mode, recovery.

Default backend timeout is 50 ms; calls are allowed PER_CALL_SLACK of wall time on this loaded
2-core machine (gRPC, Python and scheduling on top of the timeout).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from fixtures.probes import metric_sum
from fixtures.processes import Launcher, RateLimitProcess, RedisProcess, wait_for
from fixtures.rls import OK, OVER_LIMIT, RlsClient, Timed, request
from fixtures.stacks import start_gateway

pytestmark = pytest.mark.e2e

PER_CALL_SLACK = 0.3
CONCURRENT = 200

CONFIG = """\
domain: fail
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 100000}
  - key: tight
    rate_limit: {unit: minute, requests_per_unit: 1}
"""

Fault = Callable[[RedisProcess], None]


def _kill(redis: RedisProcess) -> None:
    redis.kill()


def _pause(redis: RedisProcess) -> None:
    redis.pause()  # connections stay open, nothing answers: only the timeout helps


def _recover(redis: RedisProcess, fault: str) -> None:
    if fault == "kill":
        redis.start()  # same port, empty
    else:
        redis.resume()


FAULTS: dict[str, Fault] = {"kill": _kill, "pause": _pause}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "fail.yaml"
    path.write_text(CONFIG)
    return path


def _call(client: RlsClient, key: str = "k", value: str = "v") -> Timed:
    return client.timed("fail", [[(key, value)]], timeout=5.0)


def _sequential(client: RlsClient, n: int) -> list[Timed]:
    return [_call(client, value=f"v{i}") for i in range(n)]


def _concurrent(client: RlsClient, n: int) -> tuple[list[Timed], float]:
    """Fire ``n`` calls at once on one channel; return outcomes and total wall time."""
    outcomes: list[Timed] = []
    lock = threading.Lock()
    done = threading.Event()
    start = time.time()

    def finished(sent: float, future: grpc.Future) -> None:
        received = time.time()
        exc = future.exception()
        if exc is None:
            outcome = Timed(sent, received, future.result())
        else:
            assert isinstance(exc, grpc.RpcError)
            outcome = Timed(sent, received, None, exc.code(), exc.details() or "")
        with lock:
            outcomes.append(outcome)
            if len(outcomes) == n:
                done.set()

    for i in range(n):
        sent = time.time()
        future = client.stub.ShouldRateLimit.future(request("fail", [[("k", f"c{i}")]]), timeout=10.0)
        future.add_done_callback(lambda f, sent=sent: finished(sent, f))
    assert done.wait(15), f"only {len(outcomes)}/{n} calls answered"
    return outcomes, time.time() - start


def _summary(outcomes: list[Timed]) -> str:
    codes: dict[str, int] = {}
    for o in outcomes:
        name = o.code.name if o.response is None else f"resp:{o.overall}"
        codes[name] = codes.get(name, 0) + 1
    slowest = max(o.elapsed for o in outcomes)
    return f"codes={codes} slowest={slowest * 1000:.0f}ms"


def _wait_ok(client: RlsClient, timeout: float = 8.0) -> None:
    wait_for(
        lambda: _call(client, value=f"probe{time.time_ns()}").overall == OK,
        timeout=timeout,
        interval=0.1,
        what="OK decisions after Redis came back",
    )


def _assert_normal_decisions(client: RlsClient) -> None:
    tight = f"t{time.time_ns()}"
    first, second = _call(client, "tight", tight), _call(client, "tight", tight)
    assert first.overall == OK, (first.code, first.details)
    assert second.overall == OVER_LIMIT, (second.code, second.details)


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_default_failure_mode_is_unavailable_fast_and_recovers(
    launch: Launcher, config: Path, fault: str
) -> None:
    redis = launch.redis()
    service = launch.ratelimit(config, redis_url=redis.url)
    with RlsClient(service.address) as client:
        assert _call(client).overall == OK
        _assert_normal_decisions(client)

        FAULTS[fault](redis)
        outcomes = _sequential(client, 20)
        assert all(o.code == grpc.StatusCode.UNAVAILABLE for o in outcomes), _summary(outcomes)
        assert all(o.elapsed < PER_CALL_SLACK for o in outcomes), _summary(outcomes)
        assert all(o.details for o in outcomes), "UNAVAILABLE without a message"

        # No pile-up: many calls at once are all answered, quickly.
        burst, wall = _concurrent(client, CONCURRENT)
        assert all(o.code == grpc.StatusCode.UNAVAILABLE for o in burst), _summary(burst)
        assert wall < 3.0, f"{CONCURRENT} calls took {wall:.2f}s; {_summary(burst)}"
        after = _sequential(client, 5)
        assert all(o.elapsed < PER_CALL_SLACK for o in after), _summary(after)

        errors = metric_sum(service.metrics_text(), "legation_ratelimit_backend_errors_total")
        assert errors >= 20

        _recover(redis, fault)
        _wait_ok(client)
        _assert_normal_decisions(client)
    assert service.process.running


@pytest.mark.parametrize("fault", ["kill", "pause"])
@pytest.mark.parametrize(("mode", "expected"), [("allow", OK), ("deny", OVER_LIMIT)])
def test_in_service_failure_modes(
    launch: Launcher, config: Path, fault: str, mode: str, expected: int
) -> None:
    redis = launch.redis()
    service = launch.ratelimit(config, redis_url=redis.url, extra_args=["--failure-mode", mode])
    with RlsClient(service.address) as client:
        _assert_normal_decisions(client)
        FAULTS[fault](redis)
        outcomes = _sequential(client, 10)
        assert all(o.overall == expected for o in outcomes), _summary(outcomes)
        assert all(o.elapsed < PER_CALL_SLACK for o in outcomes), _summary(outcomes)
        burst, wall = _concurrent(client, CONCURRENT)
        assert all(o.overall == expected for o in burst), _summary(burst)
        assert wall < 3.0, f"{CONCURRENT} calls took {wall:.2f}s; {_summary(burst)}"

        _recover(redis, fault)
        # Back to real decisions (not the failure-mode answer) within a few seconds.
        wait_for(
            lambda: _real_decisions(client),
            timeout=8.0,
            interval=0.2,
            what="real decisions after Redis came back",
        )


def _real_decisions(client: RlsClient) -> bool:
    tight = f"t{time.time_ns()}"
    first, second = _call(client, "tight", tight), _call(client, "tight", tight)
    return bool(first.overall == OK and second.overall == OVER_LIMIT)


def test_starts_while_redis_is_down_and_works_once_it_is_up(launch: Launcher, config: Path) -> None:
    redis = launch.redis()
    redis.stop()  # keep the port, nothing listening
    service: RateLimitProcess = launch.ratelimit(config, redis_url=redis.url)
    assert service.health("") == "SERVING"
    assert service.health("envoy.service.ratelimit.v3.RateLimitService") == "SERVING"
    with RlsClient(service.address) as client:
        outcomes = _sequential(client, 5)
        assert all(o.code == grpc.StatusCode.UNAVAILABLE for o in outcomes), _summary(outcomes)
        assert all(o.elapsed < PER_CALL_SLACK for o in outcomes), _summary(outcomes)
        time.sleep(1.0)  # no crash loop while Redis stays away
        assert service.process.running

        redis.start()
        _wait_ok(client)
        _assert_normal_decisions(client)


@pytest.mark.parametrize(("deny", "status"), [(True, 500), (False, 200)])
def test_envoy_failure_mode_deny_decides_when_redis_is_down(
    launch: Launcher, deny: bool, status: int
) -> None:
    gw = start_gateway(launch, redis=True, failure_mode_deny=deny)
    assert gw.redis is not None
    assert gw.get("/generic").status == 200
    gw.redis.kill()
    statuses = [gw.get("/generic").status for _ in range(5)]
    assert statuses == [status] * 5
    assert gw.envoy.stat("cluster.backend.ratelimit.error") >= 5
    if not deny:
        assert gw.envoy.stat("cluster.backend.ratelimit.failure_mode_allowed") >= 5
    gw.redis.start()
    wait_for(
        lambda: gw.get("/generic").header("x-ratelimit-limit") is not None,
        timeout=8.0,
        interval=0.2,
        what="rate limit decisions through Envoy after Redis came back",
    )
