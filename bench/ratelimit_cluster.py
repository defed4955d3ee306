"""Rate limit decisions on a Redis Cluster of 1 and of 3 shards (loopback, this machine).

For each size: start the cluster (CLUSTER ADDSLOTSRANGE + MEET), then `legation ratelimit
--redis-url redis+cluster://…` on it, and drive it over gRPC for a fixed time with requests of two
descriptors (a per-user limit and a per-route one) for many distinct users. Reports decisions per
second, the counter keys on each shard (where decisions go), and each shard's Redis CPU seconds
(that the work is shared). The client is Python (grpc.aio), so absolute rates are bounded by it
and by the two cores; the point is the distribution.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.harness.processes import ROOT, Proc, find_binary, free_port, started, wait_for, wait_grpc_ready
from bench.harness.scenario import Scenario, exit_on_sigterm

CONFIG = """
domain: bench
descriptors:
  - key: route
    rate_limit: {unit: second, requests_per_unit: 1000000}
    descriptors:
      - key: user
        rate_limit: {unit: minute, requests_per_unit: 1000000}
"""
SLOTS = 16384


@dataclass
class Row:
    shards: int
    decisions: int
    seconds: float
    keys_per_shard: list[int]
    redis_cpu_per_shard: list[float]

    @property
    def rate(self) -> float:
        return self.decisions / self.seconds


def _client(port: int) -> Any:
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


def _bus_free_port() -> int:
    for _ in range(200):
        port = random.randint(20000, 22000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


@contextmanager
def cluster(shards: int, log_dir: Path) -> Iterator[list[int]]:
    binary = shutil.which("redis-server") or find_binary(
        "redis-server"
    )  # Debian's: CLUSTER ADDSLOTSRANGE needs 7
    ports = [_bus_free_port() for _ in range(shards)]
    with ExitStack() as stack:
        procs: list[Proc] = []
        for i, port in enumerate(ports):
            node = log_dir / f"node{shards}-{i}"
            node.mkdir()
            cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                   "--cluster-config-file", str(node / "nodes.conf"), "--dir", str(node), "--save", "",
                   "--appendonly", "no", "--protected-mode", "no"]  # fmt: skip
            procs.append(stack.enter_context(started(f"redis-{shards}-{i}", cmd, log_dir)))
        clients = [_client(p) for p in ports]
        for proc, client in zip(procs, clients, strict=True):
            wait_for(proc, functools.partial(_pings, client), timeout=10, what="redis PING")
        bounds = [SLOTS * i // shards for i in range(shards + 1)]
        for client, lo, hi in zip(clients, bounds, bounds[1:], strict=False):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi - 1)
        for port in ports[1:]:
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        wait_for(procs[0], lambda: all(_ok(c, shards) for c in clients), timeout=30, what="cluster ok")
        yield ports


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def _ok(client: Any, shards: int) -> bool:
    text = str(client.execute_command("CLUSTER", "INFO"))
    return "cluster_state:ok" in text and f"cluster_known_nodes:{shards}" in text


def _redis_cpu(port: int) -> float:
    info = _client(port).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def drive(port: int, seconds: float, users: int, concurrency: int) -> int:
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    def request(n: int) -> Any:
        entries = [("route", f"r{n % 7}"), ("user", f"u{n % users}")]
        desc = [ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
        return rls_pb2.RateLimitRequest(
            domain="bench", descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=desc)]
        )

    done = 0
    deadline = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)

        async def worker(start: int) -> None:
            nonlocal done
            n = start
            while time.monotonic() < deadline:
                await stub.ShouldRateLimit(request(n), timeout=5)
                done += 1
                n += concurrency

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return done


def measure(shards: int, args: argparse.Namespace, log_dir: Path) -> Row:
    config = log_dir / f"rl-{shards}.yaml"
    config.write_text(CONFIG)
    with cluster(shards, log_dir) as ports:
        grpc_port = free_port()
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
        cmd = [find_binary("legation"), "ratelimit", "--config", str(config), "--listen", f"127.0.0.1:{grpc_port}",
               "--redis-url", url, "--backend-timeout", "0.5"]  # fmt: skip
        with started(f"ratelimit-{shards}", cmd, log_dir) as proc:
            wait_grpc_ready(proc, grpc_port)
            asyncio.run(drive(grpc_port, 1.0, args.users, args.concurrency))  # warm-up
            cpu_before = [_redis_cpu(p) for p in ports]
            start = time.monotonic()
            decisions = asyncio.run(drive(grpc_port, args.seconds, args.users, args.concurrency))
            elapsed = time.monotonic() - start
            cpu = [_redis_cpu(p) - b for p, b in zip(ports, cpu_before, strict=True)]
            keys = [int(_client(p).dbsize()) for p in ports]
    return Row(shards, decisions, elapsed, keys, [round(c, 2) for c in cpu])


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="load per cluster size (default %(default)s)"
    )
    parser.add_argument("--users", type=int, default=5000, help="distinct users (default %(default)s)")
    parser.add_argument(
        "--concurrency", type=int, default=32, help="requests in flight (default %(default)s)"
    )
    parser.add_argument("--shards", default="1,3", help="cluster sizes (default %(default)s)")


def main(args: argparse.Namespace) -> int:
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="bench-rl-cluster-") as tmp:
        rows = [measure(int(n), args, Path(tmp)) for n in args.shards.split(",")]
    print("\n| shards | decisions/s | counter keys per shard | Redis CPU s per shard |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row.shards} | {row.rate:,.0f} | {row.keys_per_shard} | {row.redis_cpu_per_shard} |")
    out = ROOT / "bench" / "results" / "ratelimit_cluster.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps([asdict(r) | {"rate": r.rate} for r in rows], indent=2))
    print(f"\nresults: {out.relative_to(ROOT)}")
    return 0


SCENARIO = Scenario(name="ratelimit_cluster", description=__doc__ or "", configure=configure, main=main)
