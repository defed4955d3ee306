"""RemoteJwks against a real local HTTP server (fixtures/jwks_server.py) on 127.0.0.1.

The server is on loopback, so every test but the address checks uses allow_insecure=True. Time
is a fake clock unless a test needs real background timing.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import jwt
import pytest
from fixtures.jwks_server import JwksServer, make_ec_key, make_hmac_key, make_rsa_key, mint
from prometheus_client import REGISTRY

from legation.authz.jwks import JwksError
from legation.authz.jwks_remote import RemoteJwks, RemoteSettings

pytestmark = pytest.mark.timeout(30)

K1 = make_rsa_key("k1")
K2 = make_ec_key("k2")
ALGS = ["RS256", "ES256", "HS256"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Factory = Callable[..., RemoteJwks]


@pytest.fixture
def server() -> Iterator[JwksServer]:
    with JwksServer(keys=[K1]) as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def remote(server: JwksServer, clock: FakeClock) -> AsyncIterator[Factory]:
    """remote(uri=server.url, clock=clock, **settings): closed at teardown."""
    made: list[RemoteJwks] = []

    def factory(
        uri: str | None = None, clock: Callable[[], float] | None = clock, source: str = "t", **kw: Any
    ) -> RemoteJwks:
        settings = RemoteSettings(uri=uri or server.url, **{"allow_insecure": True, **kw})
        src = RemoteJwks(settings, algorithms=ALGS, source=source, clock=clock or time.monotonic)
        made.append(src)
        return src

    yield factory
    for src in made:
        await src.close()


async def test_fetch_then_cache(server: JwksServer, remote: Factory, clock: FakeClock) -> None:
    src = remote(cache_duration=600)
    first = await src.current()
    assert [(k.kid, k.alg) for k in first.keys] == [("k1", "RS256")]
    assert first.fetched_at == clock.now
    clock.now += 599
    assert await src.current() is first
    assert (src.fetch_count, server.requests) == (1, 1)
    clock.now += 2  # expired: the next call refetches; same keys keep their version
    again = await src.current()
    assert (src.fetch_count, server.requests) == (2, 2)
    assert again.version == first.version and again.fetched_at == clock.now


async def test_concurrent_first_use_shares_one_fetch(server: JwksServer, remote: Factory) -> None:
    server.delay = 0.2
    src = remote()
    results = await asyncio.gather(*(src.current() for _ in range(50)))
    assert len({id(r) for r in results}) == 1
    assert (src.fetch_count, server.requests) == (1, 1)


async def test_cancelled_waiter_does_not_cancel_the_shared_fetch(server: JwksServer, remote: Factory) -> None:
    server.delay = 0.2
    src = remote()
    tasks = [asyncio.create_task(src.current()) for _ in range(3)]
    await asyncio.sleep(0.05)
    tasks[0].cancel()
    keys = await asyncio.gather(tasks[1], tasks[2])
    assert keys[0].has_kid("k1") and src.fetch_count == 1


async def test_background_refresh(server: JwksServer, remote: Factory) -> None:
    src = remote(clock=None, cache_duration=0.25)
    await src.start()
    await asyncio.sleep(0.6)  # refreshes at 80% of 0.25 s, without any caller
    assert server.requests >= 2
    server.set_keys([K1, K2])
    await asyncio.sleep(0.3)
    keys = await src.current()
    assert keys.has_kid("k2")
    await src.close()
    settled = server.requests
    await asyncio.sleep(0.3)
    assert server.requests == settled


async def test_key_rotation_right_after_start_is_picked_up_by_the_first_unknown_kid(
    server: JwksServer, remote: Factory, clock: FakeClock
) -> None:
    src = remote(refetch_cooldown=30)
    old = await src.current()
    server.set_keys([K2])
    clock.now += 1  # the start-up fetch does not count against the unknown-kid cooldown
    keys = await src.refresh_for_kid("k2")
    assert src.fetch_count == 2
    assert keys.has_kid("k2") and not keys.has_kid("k1") and keys.version != old.version
    [key] = keys.find("k2", "ES256")
    assert jwt.decode(mint(K2, {"sub": "s"}), key.key, algorithms=[key.alg])["sub"] == "s"


async def test_rotation_after_a_background_refresh_is_picked_up_at_once(
    server: JwksServer, remote: Factory, clock: FakeClock
) -> None:
    src = remote(refetch_cooldown=30, cache_duration=60)
    await src.current()
    clock.now += 61  # expired: this call refetches (not an unknown-kid fetch)
    await src.current()
    server.set_keys([K1, K2])
    clock.now += 1
    assert (await src.refresh_for_kid("k2")).has_kid("k2")
    assert src.fetch_count == 3


async def test_refetch_storm_is_one_fetch_per_cooldown(
    server: JwksServer, remote: Factory, clock: FakeClock
) -> None:
    src = remote(refetch_cooldown=30)
    await src.current()
    server.delay = 0.05

    def storm() -> Any:
        return asyncio.gather(*(src.refresh_for_kid(f"kid-{random.getrandbits(64):x}") for _ in range(1000)))

    results = await storm()  # right after start: the first unknown kid fetches, once
    assert all(r.has_kid("k1") for r in results)
    assert (src.fetch_count, server.requests) == (2, 2)
    clock.now += 29
    await storm()
    assert (src.fetch_count, server.requests) == (2, 2)
    clock.now += 2
    await storm()
    assert (src.fetch_count, server.requests) == (3, 3)
    clock.now += 60  # a storm against a failing endpoint is bounded the same way
    server.status = 500
    await storm()
    clock.now += 10
    await storm()
    assert (src.fetch_count, server.requests) == (4, 4)


async def test_negative_cache_skips_even_a_fetch_in_progress(
    server: JwksServer, remote: Factory, clock: FakeClock
) -> None:
    src = remote(refetch_cooldown=30, cache_duration=30)
    await src.current()
    clock.now += 1
    await src.refresh_for_kid("ghost")  # refetch 2 proves "ghost" missing
    assert src.fetch_count == 2
    clock.now += 24  # past 80% of cache_duration: the refresher fetches, slowly
    server.delay = 0.5
    await src.start()
    await asyncio.sleep(0.05)
    assert src.fetch_count == 3
    waiting = asyncio.create_task(src.refresh_for_kid("other"))  # unknown: waits for that fetch
    await asyncio.wait_for(src.refresh_for_kid("ghost"), 0.2)  # known missing: answers at once
    assert not waiting.done()
    await waiting
    clock.now += 7  # the next window: "ghost" may refetch once more
    server.delay = 0
    await src.refresh_for_kid("ghost")
    assert src.fetch_count == 4


async def test_endpoint_down_serves_last_good_keys_until_max_stale(
    server: JwksServer, remote: Factory, clock: FakeClock
) -> None:
    src = remote(source="down", cache_duration=600, refetch_cooldown=30, max_stale=3600)
    good = await src.current()
    server.status = 500
    clock.now += 601
    assert await src.current() is good  # fetch failed: last good keys
    assert await src.refresh_for_kid("new") is good
    assert src.fetch_count == 2
    clock.now += 10
    assert await src.current() is good  # retried at most once per cooldown
    assert src.fetch_count == 2
    clock.now = good.fetched_at + 3601
    with pytest.raises(JwksError, match=r"past max_stale.*HTTP 500"):
        await src.current()
    assert src.fetch_count == 3
    assert (
        REGISTRY.get_sample_value("legation_authz_jwks_fetches_total", {"source": "down", "result": "error"})
        == 2
    )
    server.status = 200
    clock.now += 31
    assert (await src.current()).version == good.version
    assert (
        REGISTRY.get_sample_value("legation_authz_jwks_fetches_total", {"source": "down", "result": "ok"})
        == 2
    )


async def test_first_fetch_failure_raises_then_recovers(
    server: JwksServer, remote: Factory, clock: FakeClock
) -> None:
    server.status = 503
    src = remote()
    with pytest.raises(JwksError, match="HTTP 503"):
        await src.current()
    with pytest.raises(JwksError, match="HTTP 503"):
        await src.refresh_for_kid("k1")
    assert src.fetch_count == 1  # no retry within a second
    server.status = 200
    clock.now += 1.1
    assert (await src.current()).has_kid("k1")


async def test_timeout(server: JwksServer, remote: Factory) -> None:
    server.delay = 3
    src = remote(timeout=0.2)
    started = time.monotonic()
    with pytest.raises(JwksError, match=r"timed out after 0\.2s"):
        await src.current()
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("send_length", [True, False], ids=["content-length", "until-close"])
async def test_size_cap(server: JwksServer, remote: Factory, send_length: bool) -> None:
    server.send_length = send_length
    document = json.loads(server._body)
    server.set_document(json.dumps(document | {"padding": "x" * 200_000}))
    with pytest.raises(JwksError, match="over 100000"):
        await remote(max_bytes=100_000).current()
    assert (await remote(max_bytes=300_000).current()).has_kid("k1")


async def test_redirect_is_refused(server: JwksServer, remote: Factory) -> None:
    with JwksServer(keys=[K2]) as target:
        server.redirect_to = target.url
        with pytest.raises(JwksError, match="HTTP 302"):
            await remote().current()
        assert target.requests == 0


@pytest.mark.parametrize(
    ("status", "document", "message"),
    [(404, None, "HTTP 404"), (200, "<html>nope</html>", "not valid JSON"), (200, "[]", "not a JWKS")],
)
async def test_bad_answers(
    server: JwksServer, remote: Factory, status: int, document: str | None, message: str
) -> None:
    server.status = status
    if document is not None:
        server.set_document(document)
    with pytest.raises(JwksError, match=message):
        await remote().current()


async def test_http_refused_without_allow_insecure(server: JwksServer) -> None:
    with pytest.raises(JwksError, match="must use https"):
        RemoteJwks(RemoteSettings(uri=server.url), algorithms=ALGS, source="t")
    assert server.requests == 0


async def test_loopback_refused_without_allow_insecure(server: JwksServer, remote: Factory) -> None:
    with pytest.raises(JwksError, match="not a public address"):
        remote(uri=f"https://127.0.0.1:{server.port}/jwks.json", allow_insecure=False)
    # A name is checked where it is resolved, at connect time (DNS rebinding cannot slip through).
    src = remote(uri=f"https://localhost:{server.port}/jwks.json", allow_insecure=False)
    with pytest.raises(JwksError, match="localhost resolves to non-public address"):
        await src.current()
    assert server.requests == 0


async def test_hmac_keys_from_a_remote_jwks_are_skipped(server: JwksServer, remote: Factory) -> None:
    hs = make_hmac_key("hs")
    server.set_keys([hs, K1])
    keys = await remote().current()
    assert [k.kid for k in keys.keys] == ["k1"] and keys.find("hs", "HS256") == []
    server.set_keys([hs])
    with pytest.raises(JwksError, match="no usable keys"):
        await remote().current()


async def test_close_then_reuse(server: JwksServer, remote: Factory, clock: FakeClock) -> None:
    src = remote()
    await src.start()
    await src.current()
    await src.close()
    await src.close()
    clock.now += 1000
    assert (await src.current()).has_kid("k1")  # a new session is made on demand
