"""The config feeds (legation.controller.translate.feeds): Feed semantics, the feed texts against the services' own
loaders, the HTTP router; and the follower (legation.core.feed_client) against a real feed server."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from fixtures.config_feed import FeedServer, compile_manifests, feed_token_file, manifests
from fixtures.jwks_server import jwks_json, make_ec_key, make_rsa_key

import legation.controller.serving.feed as feed_module
from legation.authz.app import KeySources, compile_all
from legation.authz.config import load_policy_texts
from legation.controller.compiler.ir import IR, CompileResult
from legation.controller.compiler.ratelimits import DOMAIN, MAPPING_KEY
from legation.controller.serving.access import HttpAccess
from legation.controller.serving.feed import Feed, feed_router
from legation.controller.translate.feeds import authz_feed_text, ratelimit_feed_text
from legation.core.bearer import TokenFile, read_token
from legation.core.errors import ConfigError, ConfigErrors
from legation.core.feed_auth import FeedAuth
from legation.core.feed_client import VERSION_HEADER, FeedFollower, check_feed_url, feed_version
from legation.ratelimit.config import load_config_texts

ORDERS_KEY = make_rsa_key("orders-1")
CATALOG_KEY = make_ec_key("catalog-1")


def texts(**kw: Any) -> str:
    return manifests(orders_jwks=jwks_json([ORDERS_KEY]), catalog_jwks=jwks_json([CATALOG_KEY]), **kw)


@pytest.fixture(scope="module")
def result() -> CompileResult:
    return compile_manifests(texts())


# --- Feed --------------------------------------------------------------------------------------


def test_publish_versions_by_content() -> None:
    feed = Feed()
    assert feed.current() is None and feed.version is None and feed.text is None
    v1 = feed.publish("a: 1\n")
    assert v1 == feed_version("a: 1\n") and len(v1) == 16
    assert feed.current() == (v1, "a: 1\n") and (feed.version, feed.text) == (v1, "a: 1\n")
    v2 = feed.publish("a: 2\n")
    assert v2 != v1 and feed.current() == (v2, "a: 2\n")
    # Another replica publishing the same content gets the same version.
    assert Feed().publish("a: 2\n") == v2


async def test_wait_returns_at_once_when_the_version_differs() -> None:
    feed = Feed()
    v1 = feed.publish("one")
    start = time.monotonic()
    assert await feed.wait(None, 5) == (v1, "one")
    assert await feed.wait("something-else", 5) == (v1, "one")
    assert time.monotonic() - start < 0.5


async def test_wait_times_out_without_a_change() -> None:
    feed = Feed()
    v1 = feed.publish("one")
    start = time.monotonic()
    assert await feed.wait(v1, 0.3) is None
    assert 0.25 <= time.monotonic() - start < 2
    assert await feed.wait(v1, 0) is None


async def test_wait_is_woken_by_a_change_and_not_by_equal_content() -> None:
    feed = Feed()
    v1 = feed.publish("one")
    waiter = asyncio.ensure_future(feed.wait(v1, 5))
    await asyncio.sleep(0.05)
    published_at = feed.published_at
    assert feed.publish("one") == v1  # a no-op: nobody is woken
    await asyncio.sleep(0.1)
    assert not waiter.done()
    assert feed.published_at == published_at
    v2 = feed.publish("two")
    assert await asyncio.wait_for(waiter, 1) == (v2, "two")


async def test_wait_before_the_first_publish() -> None:
    feed = Feed()
    assert await feed.wait(None, 0.05) is None
    waiter = asyncio.ensure_future(feed.wait(None, 5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    v1 = feed.publish("first")
    assert await asyncio.wait_for(waiter, 1) == (v1, "first")


async def test_a_change_and_back_before_the_poll_runs_is_no_change() -> None:
    feed = Feed()
    v1 = feed.publish("one")
    waiter = asyncio.ensure_future(feed.wait(v1, 0.3))
    await asyncio.sleep(0.05)
    feed.publish("two")
    feed.publish("one")  # back to what the poller has, before it got to run
    assert await waiter is None


async def test_publish_from_another_thread_wakes_the_loop() -> None:
    feed = Feed()
    v1 = feed.publish("one")
    waiters = [asyncio.ensure_future(feed.wait(v1, 5)) for _ in range(3)]
    await asyncio.sleep(0.05)
    thread = threading.Thread(target=feed.publish, args=("two",))
    thread.start()
    results = await asyncio.wait_for(asyncio.gather(*waiters), 2)
    thread.join()
    assert {r for r in results} == {(feed_version("two"), "two")}


async def test_close_ends_waiting_polls() -> None:
    feed = Feed()
    v1 = feed.publish("one")
    waiter = asyncio.ensure_future(feed.wait(v1, 30))
    await asyncio.sleep(0.05)
    feed.close()
    assert await asyncio.wait_for(waiter, 1) is None
    start = time.monotonic()
    assert await feed.wait(v1, 30) is None
    assert time.monotonic() - start < 0.5
    assert await feed.wait("other", 30) == (v1, "one")  # a different version is still answered


# --- contents ----------------------------------------------------------------------------------


def test_authz_text_round_trips_through_the_services_loader(result: CompileResult) -> None:
    text = authz_feed_text(result)
    loaded = load_policy_texts([("feed", text)])
    assert [p.key for p in loaded.policies] == ["team-catalog/catalog-jwt", "team-orders/orders-jwt"]
    assert [(p.key, p.spec) for p in loaded.policies] == [(p.key, p.spec) for p in result.policies]
    # Every document is in the CRD form a team would apply.
    for doc in yaml.safe_load_all(text):
        assert list(doc) == ["apiVersion", "kind", "metadata", "spec"]
        assert (doc["apiVersion"], doc["kind"]) == ("legation.dev/v1alpha1", "JWTPolicy")
        assert set(doc["metadata"]) == {"name", "namespace"}
    assert "namespaceDefault" in text and "claimsToHeaders" in text and "claims_to_headers" not in text
    # The Secret-backed keys are in the feed, inline; the rejected policy is not.
    orders = next(p for p in loaded.policies if p.key == "team-orders/orders-jwt")
    jwks = orders.spec.providers[0].jwks
    assert jwks.secret_ref is None and jwks.inline == jwks_json([ORDERS_KEY])
    assert "team-orders/broken" not in {p.key for p in loaded.policies} and "broken" not in text
    # And the authz service can compile all of it (keys included).
    compiled = compile_all(loaded, KeySources(allow_insecure=False))
    assert sorted(compiled.policies) == ["team-catalog/catalog-jwt", "team-orders/orders-jwt"]


def test_ratelimit_text_round_trips_through_the_services_loader(result: CompileResult) -> None:
    text = ratelimit_feed_text(result)
    loaded = load_config_texts([("feed", text)])
    assert loaded.domains == result.ratelimit
    rules = loaded.rules

    def limits(mapping: str, *entries: tuple[str, str]) -> list[tuple[int, int]]:
        found = rules.lookup(DOMAIN, [(MAPPING_KEY, mapping), *entries]) or ()
        return sorted((lim.requests, lim.window_ms // 1000) for lim in found)

    assert limits("team-orders/orders") == [(20, 1)]
    assert limits("team-orders/orders", ("remote_address", "10.0.0.1")) == [(3, 60)]
    assert limits("team-orders/orders", ("claim_sub", "alice")) == [(1000, 3600)]
    assert limits("team-catalog/catalog", ("header_x-api-key", "k")) == [(5, 1)]
    assert limits("team-catalog/catalog", ("remote_address", "10.0.0.1"), ("method", "GET")) == [(100, 900)]
    assert limits("team-catalog/status") == [(2, 1)]
    assert limits("team-catalog/search") == []
    # Counters are namespaced per Mapping: one team's key never matches another's tree.
    assert limits("team-catalog/orders", ("remote_address", "10.0.0.1")) == []


def test_texts_are_deterministic_and_ignore_metadata_noise() -> None:
    text = texts()
    docs = list(yaml.safe_load_all(text))
    random.Random(7).shuffle(docs)
    # Document order and file names do not matter (key order within a map is the input's: it
    # is kept, as the service would read it from a file).
    shuffled = compile_manifests(yaml.safe_dump_all(docs, sort_keys=False), file="other.yaml")
    base = compile_manifests(text)
    assert authz_feed_text(shuffled) == authz_feed_text(base)
    assert ratelimit_feed_text(shuffled) == ratelimit_feed_text(base)
    for doc in docs:  # what the API server changes on every write, and labels
        doc["metadata"]["resourceVersion"] = "12345"
        doc["metadata"].setdefault("labels", {})["touched"] = "yes"
    noisy = compile_manifests(yaml.safe_dump_all(docs, sort_keys=False))
    assert authz_feed_text(noisy) == authz_feed_text(base)
    # A real change moves exactly the feed it belongs to.
    changed = compile_manifests(texts(orders_limit=9))
    assert authz_feed_text(changed) == authz_feed_text(base)
    assert ratelimit_feed_text(changed) != ratelimit_feed_text(base)
    reissued = compile_manifests(texts(orders_issuer="https://other.example/"))
    assert authz_feed_text(reissued) != authz_feed_text(base)


def test_empty_compile_gives_loadable_texts() -> None:
    empty = compile_manifests("")
    assert authz_feed_text(empty) == ""
    assert load_policy_texts([("feed", authz_feed_text(empty))]).policies == ()
    loaded = load_config_texts([("feed", ratelimit_feed_text(empty))])
    assert [d.domain for d in loaded.domains] == [DOMAIN] and loaded.domains[0].descriptors == []
    assert ratelimit_feed_text(CompileResult(statuses=(), ir=IR(), policies=(), ratelimit=())) == ""


# --- HTTP router -------------------------------------------------------------------------------


def token_auth(feed: str) -> FeedAuth:
    return FeedAuth(token_file=str(feed_token_file(feed)))


@pytest.fixture
async def feeds() -> AsyncIterator[tuple[dict[str, Feed], httpx.AsyncClient]]:
    """The router, and a client holding the tokens of both feeds (each request sends the one of
    the feed it asks for)."""
    feeds = {"authz": Feed(), "ratelimit": Feed()}
    app = FastAPI()
    access = HttpAccess(feed_tokens={n: TokenFile(feed_token_file(n)) for n in feeds})
    app.include_router(feed_router(feeds, access))

    async def authorize(request: httpx.Request) -> None:
        name = request.url.path.rsplit("/", 1)[-1]
        if name in feeds and "authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {read_token(feed_token_file(name))}"

    transport = httpx.ASGITransport(app=app)
    hooks = {"request": [authorize]}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://controller", event_hooks=hooks
    ) as client:
        yield feeds, client


Client = tuple[dict[str, Feed], httpx.AsyncClient]


async def test_unknown_feed_is_404(feeds: Client) -> None:
    _, client = feeds
    resp = await client.get("/feed/nope")
    assert resp.status_code == 401, "no token: not even which feeds exist"
    token = read_token(feed_token_file("ratelimit"))
    resp = await client.get("/feed/nope", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 404
    assert resp.json()["error"] == "not_found" and "authz, ratelimit" in resp.json()["reason"]


async def test_nothing_published_is_503_with_a_reason(feeds: Client) -> None:
    _, client = feeds
    start = time.monotonic()
    resp = await client.get("/feed/authz")
    assert resp.status_code == 503
    assert resp.json() == {
        "error": "not_published",
        "reason": "the controller has not compiled a configuration yet",
    }
    resp = await client.get("/feed/authz", params={"wait": "0.2"})
    assert resp.status_code == 503
    assert 0.15 < time.monotonic() - start < 3


async def test_content_version_and_etag(feeds: Client) -> None:
    all_feeds, client = feeds
    version = all_feeds["ratelimit"].publish("domain: x\n")
    resp = await client.get("/feed/ratelimit")
    assert resp.status_code == 200
    assert resp.text == "domain: x\n"
    assert resp.headers["content-type"].startswith("application/yaml")
    assert resp.headers[VERSION_HEADER] == version
    assert resp.headers["etag"] == f'"{version}"'
    # Another version known: the content at once.
    resp = await client.get("/feed/ratelimit", params={"version": "old", "wait": "30"})
    assert resp.status_code == 200 and resp.headers[VERSION_HEADER] == version
    # The other feed is separate.
    assert (await client.get("/feed/authz")).status_code == 503


async def test_same_version_is_304_after_the_wait(feeds: Client) -> None:
    all_feeds, client = feeds
    version = all_feeds["authz"].publish("")
    start = time.monotonic()
    resp = await client.get("/feed/authz", params={"version": version})
    assert resp.status_code == 304 and time.monotonic() - start < 0.5
    assert resp.headers[VERSION_HEADER] == version and resp.content == b""
    start = time.monotonic()
    resp = await client.get("/feed/authz", params={"version": version, "wait": "0.3"})
    assert resp.status_code == 304
    assert 0.25 <= time.monotonic() - start < 3
    resp = await client.get("/feed/authz", headers={"If-None-Match": f'"{version}"'})
    assert resp.status_code == 304


async def test_long_poll_answers_a_change_at_once(feeds: Client) -> None:
    all_feeds, client = feeds
    v1 = all_feeds["authz"].publish("one")

    async def change() -> str:
        await asyncio.sleep(0.2)
        return all_feeds["authz"].publish("two")

    start = time.monotonic()
    resp, v2 = await asyncio.gather(client.get("/feed/authz", params={"version": v1, "wait": "20"}), change())
    assert resp.status_code == 200 and resp.text == "two" and resp.headers[VERSION_HEADER] == v2
    assert time.monotonic() - start < 2


async def test_wait_is_capped(feeds: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    all_feeds, client = feeds
    version = all_feeds["authz"].publish("one")
    monkeypatch.setattr(feed_module, "MAX_WAIT", 0.2)  # stands in for 60 s
    start = time.monotonic()
    resp = await client.get("/feed/authz", params={"version": version, "wait": "100000"})
    assert resp.status_code == 304 and time.monotonic() - start < 3


@pytest.mark.parametrize("wait", ["-1", "nan", "inf", "soon"])
async def test_bad_wait_is_422(feeds: Client, wait: str) -> None:
    all_feeds, client = feeds
    all_feeds["authz"].publish("one")
    assert (await client.get("/feed/authz", params={"wait": wait})).status_code == 422


# --- the follower, against a real feed server --------------------------------------------------


class Recorder:
    """An apply callback: records calls; rejects contents starting with `bad`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    async def __call__(self, version: str, content: str) -> None:
        self.calls.append((version, content))
        self.changed.set()
        if content.startswith("bad"):
            raise ConfigErrors([ConfigError(file="feed", line=1, reason=f"{content} is not valid")])
        if content.startswith("crash"):
            raise RuntimeError("boom")


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


@pytest.fixture
def server() -> Any:
    with FeedServer() as running:
        yield running


async def test_follower_applies_each_version_and_keeps_the_last_good(server: FeedServer) -> None:
    apply = Recorder()
    follower = FeedFollower(server.url("ratelimit"), apply, auth=token_auth("ratelimit"), wait=5)
    task = asyncio.ensure_future(follower.run())
    try:
        await asyncio.sleep(0.3)
        assert not follower.loaded and follower.version is None
        assert "waiting for the first config" in follower.describe()
        assert apply.calls == []

        v1 = server.publish("ratelimit", "one")
        await until(lambda: follower.version == v1)
        assert apply.calls == [(v1, "one")] and follower.loaded
        # Long polling: while nothing changes, one request stays open, asking with the version.
        await asyncio.sleep(0.2)
        before = len(server.requests)
        await asyncio.sleep(1.0)
        assert len(server.requests) == before
        assert server.requests[-1] == f"/feed/ratelimit?wait=5&version={v1}"

        v2 = server.publish("ratelimit", "bad two")
        await until(lambda: follower.rejected == v2)
        assert follower.version == v1
        assert "feed:1: bad two is not valid" in (follower.rejected_reason or "")
        assert f"version {v1} from" in follower.describe() and f"version {v2} rejected" in follower.describe()
        await asyncio.sleep(0.5)  # polls go on, asking with the rejected version: not applied again
        assert [v for v, _ in apply.calls] == [v1, v2]

        v3 = server.publish("ratelimit", "crash three")
        await until(lambda: follower.rejected == v3)
        assert follower.version == v1 and "RuntimeError: boom" in (follower.rejected_reason or "")

        v4 = server.publish("ratelimit", "four")
        await until(lambda: follower.version == v4)
        assert follower.rejected is None and follower.connected
        assert [v for v, _ in apply.calls] == [v1, v2, v3, v4]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_follower_survives_the_server_going_away() -> None:
    apply = Recorder()
    first = FeedServer().start()
    port = first.port
    follower = FeedFollower(first.url("authz"), apply, auth=token_auth("authz"), wait=5, max_backoff=0.5)
    task = asyncio.ensure_future(follower.run())
    try:
        v1 = first.publish("authz", "one")
        await until(lambda: follower.version == v1)
        await asyncio.to_thread(first.stop)
        await until(lambda: not follower.connected)
        assert follower.version == v1 and "feed unavailable" in follower.describe()
        assert follower.last_error is not None

        # A restarted controller with the same content: the same version, nothing re-applied.
        second = FeedServer(port)
        second.publish("authz", "one")
        await asyncio.to_thread(second.start)
        try:
            await until(lambda: follower.connected, timeout=5)
            await asyncio.sleep(0.3)
            assert apply.calls == [(v1, "one")]
            v2 = second.publish("authz", "two")
            await until(lambda: follower.version == v2)
        finally:
            await asyncio.to_thread(second.stop)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_follower_starts_before_the_server() -> None:
    apply = Recorder()
    server = FeedServer()
    follower = FeedFollower(server.url("authz"), apply, auth=token_auth("authz"), wait=5, max_backoff=0.3)
    task = asyncio.ensure_future(follower.run())
    try:
        await until(lambda: follower.last_error is not None)
        assert "waiting for the first config" in follower.describe()
        assert "feed unavailable" in follower.describe()
        v1 = server.publish("authz", "one")
        await asyncio.to_thread(server.start)
        await until(lambda: follower.version == v1)
        assert follower.connected
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.to_thread(server.stop)


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8877/feed/authz", "ftp://127.0.0.1/feed", "http:///feed", "not a url"]
)
def test_feed_urls_are_checked(url: str) -> None:
    with pytest.raises(ValueError):
        check_feed_url(url)
    assert check_feed_url("http://127.0.0.1:8877/feed/authz") == "http://127.0.0.1:8877/feed/authz"


def test_a_feed_cannot_name_a_key_file() -> None:
    """A team's policy must not make the authz service read its own files (its feed token, a
    mounted key) as keys: on a feed, jwks.file is refused for that policy, absolute or relative."""
    from legation.authz.app import _feed_problems

    def policy(file: str) -> str:
        return (
            "apiVersion: legation.dev/v1alpha1\nkind: JWTPolicy\nmetadata: {name: p, namespace: n}\n"
            f"spec:\n  providers: [{{name: c, issuer: i, jwks: {{file: {file}}}}}]\n"
            "  rules: [{requires: {anyOf: [c]}}]\n"
        )

    for version, file in (("v1", "/var/run/secrets/legation/feed-token"), ("v2", "keys.json")):
        problems = _feed_problems(load_policy_texts([(f"feed@{version}", policy(file))]))
        (error,) = problems["n/p"]
        assert str(error) == (
            f"feed@{version}: spec.providers[0].jwks.file: jwks.file is refused in a policy from the "
            "config feed; use uri, inline or secretRef"
        )
