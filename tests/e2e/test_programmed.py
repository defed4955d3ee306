"""Programmed and NACK attribution with real Envoys: the controller's pipeline, publisher and ADS
server run in this test's loop (so that the forced-NACK hook can break one Mapping's route the
way Envoy refuses: `Snapshot.replaced` with a regex RE2 rejects), on a directory of manifests;
Envoys are real processes bootstrapped by `legation envoy-bootstrap`'s configuration, and the
upstream is `legation echo`.

Also measures the time from a change (a file written) to `Programmed=True` with one and with
three Envoys (printed; run with `-s` to see it)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from envoy.config.route.v3 import route_pb2
from fixtures.managed import HOST, free_port, http_get, legation_binary, tcp_open, wait_for
from fixtures.processes import EnvoyProcess, Launcher, controller_bootstrap
from fixtures.xds_resources import serving

from legation.api.v1alpha1 import ResourceId
from legation.controller.compiler.upstreams import UpstreamRules
from legation.controller.serving.api import create_app
from legation.controller.serving.feed import Feed
from legation.controller.serving.pipeline import ControllerState
from legation.controller.serving.publisher import Publisher
from legation.controller.sources.directory import DirectorySource
from legation.controller.translate.envoy import EnvoyOptions
from legation.controller.xds.server import XdsServer
from legation.controller.xds.snapshot import ROUTE, Snapshot

pytestmark = pytest.mark.e2e

NS = "team"
MAPPING = """\
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {{name: {name}, namespace: team}}
spec: {{prefix: {prefix}, service: "127.0.0.1:{port}"}}
"""
BROKEN_PREFIX = "/g/"
"""A route with this prefix is broken by the hook: Envoy rejects the whole route configuration."""


def break_guilty(snapshot: Snapshot) -> Snapshot:
    """The forced-NACK hook: every route matching BROKEN_PREFIX gets a regex Envoy refuses."""
    configs = snapshot.resources.get(ROUTE, {})
    broken: dict[str, Any] = {}
    for name, config in configs.items():
        assert isinstance(config, route_pb2.RouteConfiguration)
        copied = copy.deepcopy(config)
        hit = False
        for vhost in copied.virtual_hosts:
            for route in vhost.routes:
                # Mapping prefixes are whole segments: `/g/` is served as path_separated_prefix `/g`.
                if route.match.path_separated_prefix == BROKEN_PREFIX.rstrip("/"):
                    route.match.safe_regex.regex = "/(unclosed"  # clears the prefix (oneof)
                    hit = True
        if hit:
            broken[name] = copied
    return snapshot.replaced(ROUTE, broken) if broken else snapshot


@dataclass
class Gateway:
    state: ControllerState
    xds: XdsServer
    publisher: Publisher
    xds_port: int
    http_port: int
    manifests: Path

    def write(self, name: str, prefix: str, port: int) -> None:
        (self.manifests / f"{name}.yaml").write_text(MAPPING.format(name=name, prefix=prefix, port=port))

    def programmed(self, name: str) -> Any:
        return self.state.programmed.get(ResourceId("Mapping", NS, name))

    async def resources(self) -> dict[str, Any]:
        app = create_app(self.state, self.xds, {"authz": Feed(), "ratelimit": Feed()})
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://controller") as client:
            response = await client.get("/api/resources", params={"kind": "Mapping"})
        assert response.status_code == 200, response.text
        return {r["name"]: r for r in response.json()["resources"]}


@contextlib.asynccontextmanager
async def gateway(tmp_path: Path, *, hook: Callable[[Snapshot], Snapshot] | None) -> AsyncIterator[Gateway]:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    http_port = free_port()
    options = EnvoyOptions(
        listen_address=HOST,
        http_port=http_port,
        https_port=free_port(),
        ratelimit_service=None,
        default_authz_service=None,
        access_log_path=None,
    )
    state, xds = ControllerState(), XdsServer()
    feeds = {"authz": Feed(), "ratelimit": Feed()}
    publisher = Publisher(
        options=options,
        state=state,
        xds=xds,
        feeds=feeds,
        envoy_hook=hook,
        upstreams=UpstreamRules(allow_loopback=True),  # the test's upstreams run on loopback
    )
    source = DirectorySource(manifests)

    async def follow() -> None:
        async for snapshot in source.snapshots():
            await publisher.run(snapshot)

    async with serving(xds) as xds_port:
        task = asyncio.get_running_loop().create_task(follow())
        try:
            yield Gateway(state, xds, publisher, xds_port, http_port, manifests)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def until(check: Callable[[], Any], *, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout}s: {what}")
        await asyncio.sleep(0.002)
    return value


def status_of(gw: Gateway, path: str) -> int:
    try:
        return http_get(f"http://{HOST}:{gw.http_port}{path}", timeout=1)[0]
    except OSError:
        return -1


async def served(gw: Gateway, path: str, code: int = 200, *, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await asyncio.to_thread(status_of, gw, path)) != code:
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: {got}, not {code}")
        await asyncio.sleep(0.05)


def echo(launch: Launcher) -> int:
    port = free_port()
    launch.spawn("echo", [legation_binary(), "echo", "--listen", f"{HOST}:{port}", "--name", "up"])
    wait_for(lambda: tcp_open(HOST, port), timeout=20, what="echo upstream")
    return port


def start_envoy(launch: Launcher, gw: Gateway, node_id: str) -> EnvoyProcess:
    return launch.envoy(controller_bootstrap(gw.xds_port, node_id), wait=False)


async def test_a_nacked_mapping_is_found_quarantined_alone_and_later_changes_are_served(
    launch: Launcher, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="legation.controller")
    up = echo(launch)
    async with gateway(tmp_path, hook=break_guilty) as gw:
        gw.write("a", "/a/", up)
        gw.write("b", "/b/", up)
        start_envoy(launch, gw, "node-1")
        await served(gw, "/a/1")
        await until(lambda: gw.programmed("a") and gw.programmed("a").programmed, what="a programmed")

        # Several new Mappings at once, one of which Envoy rejects: the suspects are the four new
        # ones (a and b are running already), so finding the culprit takes bisection rounds.
        for name in ("c", "d", "e"):
            gw.write(name, f"/{name}/", up)
        gw.write("guilty", BROKEN_PREFIX, up)
        guilty = ResourceId("Mapping", NS, "guilty")
        await until(lambda: guilty in gw.state.quarantine, what="guilty quarantined")
        assert set(gw.state.quarantine) == {guilty}
        assert gw.state.quarantine[guilty].node == "node-1"
        found = [r for r in caplog.records if r.getMessage() == "NACK attributed"]
        # 4 suspects (c, d, e, guilty): log2(4) = 2 halvings, then the set-aside ones back in.
        assert [getattr(r, "rounds", None) for r in found] == [3]
        print(f"\nNACK attributed in {getattr(found[0], 'seconds', '?')} s (3 probe rounds, 4 suspects)")
        for name in ("c", "d", "e"):
            await served(gw, f"/{name}/1")
        assert await asyncio.to_thread(status_of, gw, "/g/1") == 404  # left out of Envoy's config
        await served(gw, "/a/1")

        await until(lambda: all(gw.programmed(n).programmed for n in "abcde"), what="the others programmed")
        resources = await gw.resources()
        nacked = resources["guilty"]["programmed"]
        assert resources["guilty"]["state"] == "Accepted"  # the controller accepts it; Envoy does not
        assert (nacked["programmed"], nacked["reason"]) == (False, "Nacked")
        assert "node-1" in nacked["message"] and "unclosed" in nacked["message"]  # Envoy's own words
        for name in "abcde":
            assert resources[name]["programmed"]["programmed"] is True, resources[name]
            assert resources[name]["programmed"]["message"].startswith("ACKed by 1 Envoy")

        # A later good change is served while the guilty content stays quarantined.
        gw.write("f", "/f/", up)
        await served(gw, "/f/1")
        await until(lambda: gw.programmed("f") and gw.programmed("f").programmed, what="f programmed")
        assert set(gw.state.quarantine) == {guilty}

        # Fixed: a changed resource is tried again, and served.
        gw.write("guilty", "/g2/", up)
        await served(gw, "/g2/1")
        await until(lambda: not gw.state.quarantine, what="quarantine lifted")
        await until(lambda: gw.programmed("guilty").programmed, what="fixed guilty programmed")


async def test_no_envoy_then_programmed_after_ack(launch: Launcher, tmp_path: Path) -> None:
    up = echo(launch)
    async with gateway(tmp_path, hook=None) as gw:
        gw.write("a", "/a/", up)
        first = await until(lambda: gw.programmed("a"), what="a evaluated")
        assert (first.programmed, first.reason) == (False, "NoEnvoy")
        start_envoy(launch, gw, "node-1")
        done = await until(lambda: (p := gw.programmed("a")) and p.programmed and p, what="a programmed")
        assert done.envoys == 1 and done.seconds is not None


async def measure(gw: Gateway, up: int, *, repetitions: int) -> tuple[list[float], list[float]]:
    """Seconds from writing a new Mapping to Programmed=True (as the controller sees it), and the
    push time in its message (the pipeline run that first held it → the last ACK)."""
    walls, pushes = [], []
    for i in range(repetitions):
        name = f"m{i}"
        start = time.monotonic()
        gw.write(name, f"/{name}/", up)
        done = await until(lambda n=name: (p := gw.programmed(n)) and p.programmed and p, what=name)  # type: ignore[misc]
        walls.append(time.monotonic() - start)
        pushes.append(done.seconds)
        await asyncio.sleep(0.3)  # quiet between changes
    return walls, pushes


@pytest.mark.parametrize("envoys", [1, 3])
async def test_time_from_a_change_to_programmed(launch: Launcher, tmp_path: Path, envoys: int) -> None:
    up = echo(launch)
    async with gateway(tmp_path, hook=None) as gw:
        gw.write("base", "/base/", up)
        for n in range(envoys):
            start_envoy(launch, gw, f"node-{n}")
        await until(lambda: len(gw.xds.nodes()) == envoys, what="envoys connected")
        await until(lambda: (p := gw.programmed("base")) and p.programmed, what="base programmed")
        walls, pushes = await measure(gw, up, repetitions=9)
        wall, push = statistics.median(walls), statistics.median(pushes)
        print(
            f"\nProgrammed with {envoys} Envoy(s), 9 changes: change→Programmed median {wall * 1000:.0f} ms "
            f"(min {min(walls) * 1000:.0f}, max {max(walls) * 1000:.0f}); pipeline run→last ACK median "
            f"{push * 1000:.0f} ms (min {min(pushes) * 1000:.0f}, max {max(pushes) * 1000:.0f})"
        )
        assert gw.programmed("m0").envoys == envoys
        assert wall < 5.0
