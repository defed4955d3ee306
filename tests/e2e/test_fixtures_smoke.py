"""The process fixtures themselves: Redis and Envoy start, answer, stop and restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures.processes import (
    EnvoyProcess,
    RedisProcess,
    free_port,
    http_get,
    tcp_open,
    wait_for,
)

pytestmark = pytest.mark.e2e


def test_free_port_is_bindable_and_never_repeats() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    assert not tcp_open("127.0.0.1", port)
    # Regression: two placeholders of one Envoy bootstrap once got the same port.
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50 and port not in ports
    # Below the ephemeral range: outgoing connections cannot grab them.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(p < low for p in ports)


def test_redis_start_kill_restart_same_port(redis_server: Callable[..., RedisProcess]) -> None:
    redis = redis_server()
    assert redis.url == f"redis://127.0.0.1:{redis.port}/0"
    assert redis.ping()
    assert redis.command("SET", "k", "v") == b"+OK\r\n"
    assert redis.command("CONFIG", "GET", "save").endswith(b"$0\r\n\r\n")

    redis.kill()
    assert not redis.process.running
    assert not tcp_open("127.0.0.1", redis.port)

    redis.start()  # same port, empty (no persistence)
    assert redis.ping()
    assert redis.command("GET", "k") == b"$-1\r\n"

    redis.stop()
    assert redis.process.returncode is not None
    assert not redis.process.died_unexpectedly()


def test_redis_pause_resume(redis_server: Callable[..., RedisProcess]) -> None:
    redis = redis_server()
    redis.pause()
    with pytest.raises(OSError):
        redis.ping(timeout=0.2)
    redis.resume()
    wait_for(redis.ping, timeout=5, what="PONG after SIGCONT")


def test_envoy_direct_response_and_stats(envoy: Callable[..., EnvoyProcess], fixtures_dir: Path) -> None:
    proxy = envoy(fixtures_dir / "envoy_smoke.yaml", values={"BODY": "hello"})
    status, body = http_get(f"{proxy.base_url}/anything")
    assert (status, body) == (200, "hello")
    stats = proxy.stats()
    assert stats["http.smoke.downstream_rq_2xx"] == 1
    assert proxy.stat("server.live") == 1


def test_envoy_bootstrap_dict_and_missing_placeholder(
    envoy: Callable[..., EnvoyProcess], fixtures_dir: Path
) -> None:
    import yaml

    raw = (fixtures_dir / "envoy_smoke.yaml").read_text()
    with pytest.raises(ValueError, match="BODY"):
        envoy(raw)
    as_dict = yaml.safe_load(
        raw.replace("${ADMIN_PORT}", '"${ADMIN_PORT}"').replace("${LISTENER_PORT}", '"${LISTENER_PORT}"')
    )
    assert as_dict["admin"]["address"]["socket_address"]["port_value"] == "${ADMIN_PORT}"
    proxy = envoy(as_dict, values={"BODY": "from-dict"})
    assert http_get(proxy.base_url) == (200, "from-dict")
