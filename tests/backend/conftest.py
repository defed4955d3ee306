"""Backend tier: the limiter against a real redis-server (and the memory backend, side by side)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fixtures.processes import Launcher, RedisProcess

from legation.ratelimit.backends import CounterBackend
from legation.ratelimit.backends.memory import MemoryBackend
from legation.ratelimit.backends.redis import connect


@pytest.fixture(scope="module")
def redis_proc(module_launcher: Launcher) -> RedisProcess:
    return module_launcher.redis()


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, redis_proc: RedisProcess) -> AsyncIterator[CounterBackend]:
    if request.param == "memory":
        made: CounterBackend = MemoryBackend()
    else:
        redis_proc.command("FLUSHALL")
        made = connect(redis_proc.url)
    yield made
    await made.close()
