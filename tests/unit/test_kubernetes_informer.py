"""List+watch (legation.controller.kubernetes.informer) against the kmock emulator (fixtures/kube.py) over HTTP:
resourceVersion tracking, bookmarks, relist on 410 Gone (from history compaction and from a
kmock reaction), reconnect with capped backoff."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from fixtures.kube import (
    MAPPINGS,
    KubeEmulator,
    connected_emulator,
    eventually,
    mapping,
    merge_patch,
    write_kubeconfig,
)
from fixtures.managed import free_port

from legation.controller.kubernetes import client as kc
from legation.controller.kubernetes.client import KubeClient
from legation.controller.kubernetes.informer import Backoff, Informer

NS = "demo"


@contextlib.asynccontextmanager
async def informing(
    client: KubeClient,
    resource: kc.ResourceType = kc.KINDS["Mapping"],
    namespace: str | None = NS,
    **options: Any,
) -> AsyncIterator[Informer]:
    informer = Informer(client, resource, namespace, **options)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 5)
        yield informer
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, KubeClient]]:
    async with connected_emulator(tmp_path, bookmark_seconds=0.1) as (emulator, client, _):
        yield emulator, client


async def create(client: KubeClient, obj: dict[str, Any]) -> dict[str, Any]:
    return await client.request("POST", kc.KINDS["Mapping"].path(obj["metadata"]["namespace"]), body=obj)


def lists(emulator: KubeEmulator) -> int:
    return sum(1 for r in emulator if r.method == "GET" and r.params.get("watch") != "true" and r.resource)


async def test_list_then_watch_follows_every_change_and_its_version(
    cluster: tuple[KubeEmulator, KubeClient],
) -> None:
    emulator, client = cluster
    await create(client, mapping("a"))
    await create(client, mapping("elsewhere", namespace="other"))
    changes: list[int] = []
    async with informing(client, on_change=lambda: changes.append(1)) as informer:
        assert set(informer.objects) == {(NS, "a")}
        assert informer.resource_version == str(emulator.revision)
        assert changes == [1]

        b = await create(client, mapping("b"))
        await eventually(lambda: (NS, "b") in informer.objects)
        assert informer.resource_version == b["metadata"]["resourceVersion"]

        changed = await merge_patch(
            client, kc.KINDS["Mapping"].path(NS, "a"), {"spec": {"prefix": "/changed/"}}
        )
        await eventually(lambda: informer.objects[(NS, "a")]["spec"]["prefix"] == "/changed/")
        assert informer.objects[(NS, "a")]["metadata"]["generation"] == 2
        assert informer.resource_version == changed["metadata"]["resourceVersion"]

        await client.request("DELETE", kc.KINDS["Mapping"].path(NS, "b"))
        await eventually(lambda: (NS, "b") not in informer.objects)
        assert len(changes) == 4
        assert informer.lists == 1


async def test_bookmarks_move_the_version_on_so_a_reconnect_needs_no_relist(
    cluster: tuple[KubeEmulator, KubeClient],
) -> None:
    emulator, client = cluster
    await create(client, mapping("a"))
    async with informing(client) as informer:
        seen = informer.resource_version
        # Other resources move the cluster's version; ours see none of it but bookmarks.
        for i in range(3):
            secret = {"metadata": {"name": f"s{i}", "namespace": NS}, "type": "Opaque"}
            await client.request("POST", kc.SECRETS.path(NS), body=secret)
        await eventually(lambda: informer.resource_version == str(emulator.revision), timeout=3)
        assert informer.resource_version != seen

        emulator.compact()  # only versions from now on can be resumed
        emulator.drop_watches()
        await eventually(lambda: informer.watches >= 2 and emulator.open_watches == 1)
        await create(client, mapping("after"))
        await eventually(lambda: (NS, "after") in informer.objects)
        assert informer.lists == 1, "resumed from the bookmark's version, without a relist"
        assert lists(emulator) == 1


async def test_without_bookmarks_the_same_reconnect_is_answered_410_and_relists(tmp_path: Path) -> None:
    # The counterpart of the test above: it shows that the bookmark is what avoided the relist.
    async with connected_emulator(tmp_path, bookmark_seconds=None) as (emulator, client, _):
        await create(client, mapping("a"))
        async with informing(client) as informer:
            await client.request(
                "POST", kc.SECRETS.path(NS), body={"metadata": {"name": "s", "namespace": NS}}
            )
            emulator.compact()
            emulator.drop_watches()
            await eventually(lambda: informer.lists == 2)
            assert set(informer.objects) == {(NS, "a")}
        await client.close()


async def test_a_410_relists_and_loses_no_change_made_meanwhile(
    cluster: tuple[KubeEmulator, KubeClient],
) -> None:
    emulator, client = cluster
    for name in ("kept", "changed", "deleted"):
        await create(client, mapping(name))
    async with informing(client) as informer:
        await eventually(lambda: emulator.open_watches == 1)
        emulator.hold_watches()
        emulator.drop_watches()
        await eventually(lambda: emulator.open_watches == 0 and informer.watches == 2)
        await merge_patch(client, kc.KINDS["Mapping"].path(NS, "changed"), {"spec": {"prefix": "/new/"}})
        await client.request("DELETE", kc.KINDS["Mapping"].path(NS, "deleted"))
        await create(client, mapping("created"))
        emulator.compact()
        emulator.release_watches()  # the held watch resumes from a compacted version: 410

        await eventually(lambda: informer.lists == 2)
        assert set(informer.objects) == {(NS, "kept"), (NS, "changed"), (NS, "created")}
        assert informer.objects[(NS, "changed")]["spec"]["prefix"] == "/new/"
        assert informer.resource_version == str(emulator.revision)
        # ... and it watches on from the list's version.
        await create(client, mapping("later"))
        await eventually(lambda: (NS, "later") in informer.objects)


async def test_a_410_answered_by_a_kmock_reaction_relists(cluster: tuple[KubeEmulator, KubeClient]) -> None:
    emulator, client = cluster
    await create(client, mapping("a"))
    async with informing(client) as informer:
        gone = {"kind": "Status", "apiVersion": "v1", "code": 410, "reason": "Expired", "message": "too old"}
        emulator[kmock.action.WATCH, MAPPINGS][:1] << 410 << gone
        await create(client, mapping("b"))
        await eventually(lambda: (NS, "b") in informer.objects)
        emulator.drop_watches()
        await eventually(lambda: informer.lists == 2)
        await create(client, mapping("c"))
        await eventually(lambda: (NS, "c") in informer.objects)
        assert set(informer.objects) == {(NS, "a"), (NS, "b"), (NS, "c")}


class RecordingBackoff(Backoff):
    def __init__(self) -> None:
        super().__init__(initial=0.05, cap=0.2, jitter=0)
        self.delays: list[float] = []

    def next(self) -> float:
        delay = super().next()
        self.delays.append(delay)
        return delay


async def test_failures_are_retried_with_growing_capped_delays(
    cluster: tuple[KubeEmulator, KubeClient],
) -> None:
    emulator, client = cluster
    backoff = RecordingBackoff()
    async with informing(client, backoff=backoff) as informer:
        await create(client, mapping("a"))
        await eventually(lambda: (NS, "a") in informer.objects)  # the watch is up and delivering
        # kmock's slice counts the watch requests already served: the next five are refused.
        (
            emulator[kmock.action.WATCH, MAPPINGS][:6]
            << 500
            << {"kind": "Status", "code": 500, "message": "boom"}
        )
        emulator.drop_watches()
        await create(client, mapping("b"))
        await eventually(lambda: (NS, "b") in informer.objects)
        assert backoff.delays == [0.05, 0.1, 0.2, 0.2, 0.2]
        assert informer.lists == 1, "resumed from its version"
        assert informer.backoff.failures == 0, "reset once the watch worked again"
        assert informer.last_error is not None and "500" in informer.last_error


async def test_reconnects_when_the_api_server_goes_away_and_comes_back(tmp_path: Path) -> None:
    port = free_port()
    emulator = KubeEmulator(bookmark_seconds=0.1)
    url = f"http://127.0.0.1:{port}"
    backoff = RecordingBackoff()
    async with emulator:
        async with kmock.Server(emulator, host="127.0.0.1", port=port):
            client = await KubeClient.connect(str(write_kubeconfig(tmp_path / "kubeconfig", url)))
            await create(client, mapping("a"))
            informer = Informer(client, kc.KINDS["Mapping"], NS, backoff=backoff)
            task = asyncio.create_task(informer.run())
            await asyncio.wait_for(informer.synced.wait(), 5)
            await eventually(lambda: emulator.open_watches == 1)
            emulator.close_watches()
        # The server is down (connections refused): the informer keeps trying, delays capped.
        await eventually(lambda: backoff.delays.count(0.2) >= 2, timeout=5)
        assert informer.last_error is not None
        emulator.reopen()
        async with kmock.Server(emulator, host="127.0.0.1", port=port):
            await create(client, mapping("b"))
            await eventually(lambda: (NS, "b") in informer.objects, timeout=5)
            assert informer.lists == 1, "resumed from its version"
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            emulator.close_watches()
            await client.close()


def test_backoff_doubles_up_to_its_cap_with_bounded_jitter() -> None:
    backoff = Backoff(initial=0.5, cap=4.0, jitter=0.2)
    delays = [backoff.next() for _ in range(7)]
    for delay, base in zip(delays, [0.5, 1, 2, 4, 4, 4, 4], strict=True):
        assert base * 0.8 <= delay <= base * 1.2
    backoff.reset()
    assert backoff.next() <= 0.6


async def test_kept_filter_drops_objects_as_they_arrive(cluster: tuple[KubeEmulator, KubeClient]) -> None:
    _emulator, client = cluster
    for name, kind in (("tls", "kubernetes.io/tls"), ("token", "kubernetes.io/service-account-token")):
        await client.request("POST", kc.SECRETS.path(NS), body={"metadata": {"name": name}, "type": kind})
    keep = lambda obj: obj.get("type") == "kubernetes.io/tls"  # noqa: E731
    async with informing(client, kc.SECRETS, keep=keep) as informer:
        assert set(informer.objects) == {(NS, "tls")}
        await merge_patch(client, kc.SECRETS.path(NS, "tls"), {"type": "Opaque"})
        await eventually(lambda: not informer.objects)
