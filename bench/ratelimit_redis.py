"""Redis for the rate limit bench: a fresh redis-server, and memory and commands per decision.

The memory phase flushes Redis, sends N requests with N distinct values of a descriptor limited
per hour through the service, and compares ``used_memory`` and ``DBSIZE`` before and after. It
also counts Redis commands per decision: sent by the service (``redis-cli MONITOR``, commands
run by a script show as ``lua``) and executed inside Redis (``INFO commandstats``).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness.cpu import pinned
from bench.harness.processes import Proc, free_port, started, wait_for
from bench.ratelimit_requests import drive_distinct, make_mem_request, make_request

__all__ = ["RedisMemory", "count_monitor_commands", "memory_phase", "redis_server"]


def _client(port: int) -> Any:  # redis-py is untyped here (ignore_missing_imports)
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


@contextlib.contextmanager
def redis_server(log_dir: Path, cpu: int | None) -> Iterator[tuple[Proc, int]]:
    """A fresh ``redis-server --save "" --appendonly no`` on ``cpu``; (process, port)."""
    binary = shutil.which("redis-server") or str(Path(sys.executable).parent / "redis-server")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
           "--daemonize", "no"]  # fmt: skip
    with started("redis-server", pinned(cmd, cpu), log_dir) as proc:
        client = _client(port)

        def ping() -> bool:
            try:
                return bool(client.ping())
            except Exception:
                return False

        wait_for(proc, ping, timeout=10, what="redis PING")
        print(f"\n# redis-server {client.info('server')['redis_version']} on port {port}", flush=True)
        yield proc, port


@dataclass(frozen=True)
class SampleKey:
    key: str
    type: str
    ttl_s: int
    memory_usage_bytes: int | None


@dataclass(frozen=True)
class RedisMemory:
    """Redis memory per key and commands per decision."""

    distinct_values: int
    new_keys: int
    keys_with_ttl: int
    keys_total: int
    used_memory_before: int
    used_memory_after: int
    bytes_per_key: float | None
    bytes_per_descriptor_value: float
    client_commands_per_request_1desc: dict[str, float] | None
    """Sent by the service per decision (MONITOR): exactly one EVALSHA is the goal."""
    client_commands_per_request_4desc: dict[str, float] | None
    executed_commands_per_request_1desc: float
    """Executed by Redis per decision, commands inside the Lua script included."""
    executed_commands_per_request_4desc: float
    drive_req_per_s: float
    sample_key: SampleKey | None


def _command_calls(r: Any) -> int:
    """Commands executed by Redis, those run inside Lua scripts included (minus our INFOs)."""
    stats = r.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def count_monitor_commands(lines: Sequence[str]) -> dict[str, int]:
    """Commands in ``redis-cli MONITOR`` output, by name, those run by Lua scripts left out."""
    counts: dict[str, int] = {}
    for line in lines:
        if "]" not in line or " lua]" in line:
            continue
        cmd = line.split("]", 1)[1].strip().split(" ", 1)[0].strip('"').lower()
        if cmd:
            counts[cmd] = counts.get(cmd, 0) + 1
    return counts


def _sent_per_request(
    redis_port: int, service_port: int, messages: Sequence[bytes], n_desc: int
) -> dict[str, float] | None:
    """Commands the service sends to Redis per request for ``messages`` (None: no redis-cli)."""
    cli = shutil.which("redis-cli") or str(Path(sys.executable).parent / "redis-cli")
    if not Path(cli).exists():
        return None
    with tempfile.TemporaryFile("w+") as out:
        mon = subprocess.Popen([cli, "-p", str(redis_port), "monitor"], stdout=out, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            asyncio.run(drive_distinct(service_port, messages, n_desc))
            time.sleep(0.3)
        finally:
            mon.terminate()
            mon.wait(timeout=5)
        out.seek(0)
        counts = count_monitor_commands(out.readlines())
    return {k: round(v / len(messages), 3) for k, v in sorted(counts.items())}


def _sample_key(r: Any) -> SampleKey | None:
    sample = r.randomkey()
    if sample is None:
        return None
    return SampleKey(
        sample.decode(errors="replace"), r.type(sample).decode(), r.ttl(sample), r.memory_usage(sample)
    )


def _executed_per_request(r: Any, service_port: int, messages: Sequence[bytes], n_desc: int) -> float:
    calls0 = _command_calls(r)
    asyncio.run(drive_distinct(service_port, messages, n_desc))
    return round((_command_calls(r) - calls0) / len(messages), 3)


def memory_phase(service_port: int, redis_port: int, n_keys: int, proc: Proc) -> RedisMemory:
    """Memory per key for ``n_keys`` distinct values, and commands per decision (1 and 4 descriptors)."""
    r = _client(redis_port)
    r.flushall()
    # warm-up outside the measured range (loads the script, grows client buffers)
    asyncio.run(drive_distinct(service_port, [make_mem_request(-1 - i) for i in range(50)], 1))
    time.sleep(0.2)
    mem0, keys0 = int(r.info("memory")["used_memory"]), int(r.dbsize())
    calls0 = _command_calls(r)
    elapsed = asyncio.run(drive_distinct(service_port, [make_mem_request(i) for i in range(n_keys)], 1))
    executed1 = round((_command_calls(r) - calls0) / n_keys, 3)
    time.sleep(0.2)
    mem1, keys1 = int(r.info("memory")["used_memory"]), int(r.dbsize())
    keyspace = r.info("keyspace").get("db0", {})
    sample = _sample_key(r)
    executed4 = _executed_per_request(
        r, service_port, [make_request(10_000_000 + i, 4) for i in range(min(2000, n_keys))], 4
    )
    n_mon = 500
    sent1 = _sent_per_request(
        redis_port, service_port, [make_mem_request(20_000_000 + i) for i in range(n_mon)], 1
    )
    sent4 = _sent_per_request(
        redis_port, service_port, [make_request(20_000_000 + i, 4) for i in range(n_mon)], 4
    )
    proc.require_alive("during the memory phase")
    new_keys = keys1 - keys0
    return RedisMemory(
        distinct_values=n_keys, new_keys=new_keys, keys_with_ttl=int(keyspace.get("expires", 0)),
        keys_total=keys1, used_memory_before=mem0, used_memory_after=mem1,
        bytes_per_key=round((mem1 - mem0) / new_keys, 1) if new_keys else None,
        bytes_per_descriptor_value=round((mem1 - mem0) / n_keys, 1),
        client_commands_per_request_1desc=sent1, client_commands_per_request_4desc=sent4,
        executed_commands_per_request_1desc=executed1, executed_commands_per_request_4desc=executed4,
        drive_req_per_s=round(n_keys / elapsed, 1), sample_key=sample,
    )  # fmt: skip
