"""Operations surface of the service process: health, reflection, probes, SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
from fixtures.processes import Launcher, http_get
from fixtures.rls import OK, RlsClient, request
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

pytestmark = pytest.mark.e2e

CONFIG = "domain: life\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5}\n"


def test_health_reflection_probes_and_sigterm(launch: Launcher, tmp_path: Path) -> None:
    config = tmp_path / "life.yaml"
    config.write_text(CONFIG)
    service = launch.ratelimit(config)
    assert service.health("") == "SERVING"
    assert service.health("envoy.service.ratelimit.v3.RateLimitService") == "SERVING"

    with grpc.insecure_channel(service.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert "envoy.service.ratelimit.v3.RateLimitService" in names
    assert "grpc.health.v1.Health" in names

    base = f"http://127.0.0.1:{service.metrics_port}"
    assert http_get(f"{base}/healthz")[0] == 200
    assert http_get(f"{base}/readyz")[0] == 200
    assert "legation_ratelimit_config_info" in service.metrics_text()

    with RlsClient(service.address) as client:
        assert client.should("life", [[("k", "v")]]).overall_code == OK

    # SIGTERM (what stop() sends first) -> graceful exit 0, well before the SIGKILL fallback.
    started = time.monotonic()
    code = service.stop()
    assert code == 0, service.process.log_tail()
    assert time.monotonic() - started < 3.5


def test_sigterm_drains_in_flight_calls(launch: Launcher, tmp_path: Path) -> None:
    # Calls are held for ~1 s by a paused Redis (then answered OK: --failure-mode allow);
    # a SIGTERM in the meantime must let them finish instead of cutting them off.
    config = tmp_path / "life.yaml"
    config.write_text(CONFIG)
    redis = launch.redis()
    service = launch.ratelimit(
        config,
        redis_url=redis.url,
        extra_args=["--failure-mode", "allow", "--backend-timeout", "1.0"],
    )
    with RlsClient(service.address) as client:
        assert client.should("life", [[("k", "warm")]]).overall_code == OK
        redis.pause()
        futures = [
            client.stub.ShouldRateLimit.future(request("life", [[("k", f"v{i}")]]), timeout=10)
            for i in range(20)
        ]
        time.sleep(0.3)
        service.process.signal(signal.SIGTERM)
        codes = []
        for future in futures:
            try:
                codes.append(future.result().overall_code)
            except grpc.RpcError as exc:
                codes.append(f"{exc.code().name}: {exc.details()}")
        assert codes == [OK] * 20, codes
    assert service.proc.wait(timeout=8) == 0, service.process.log_tail()
    service.stop()
