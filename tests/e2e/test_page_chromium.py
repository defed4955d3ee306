"""The diagnostics page in a real headless Chromium (Debian's `chromium`), served by uvicorn.

The app serves a real pipeline run (a good Mapping, a bad one) and a real XdsServer that an
Envoy-like client fed a NACK. Chromium loads the page and dumps its DOM; the test reads what a
user would see: the rejected resource's reason, the route, the NACK. A second test checks that
the page's own script follows the controller: a run recorded after the first page was served
appears in the DOM without a reload. A third runs `legation controller --envoy-admin` beside a
real Envoy with a live and a dead upstream, a Host with a certificate that expires tomorrow and a
service name that does not resolve: the page shows the certificate's names and expiry, each
upstream's health, and the warnings."""

from __future__ import annotations

import asyncio
import html
import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from cryptography import x509
from fixtures.managed import HOST, free_port, http_get, legation_binary, tcp_open, wait_for
from fixtures.manifests import self_signed, tls_secret
from fixtures.processes import Launcher, controller_bootstrap
from fixtures.xds_resources import FakeEnvoyStream, wait_until
from google.rpc import status_pb2

from legation.controller.serving.api import create_app
from legation.controller.serving.pipeline import ControllerState, Stages, build
from legation.controller.sources.directory import DirectorySource
from legation.controller.translate.envoy import EnvoyOptions
from legation.controller.xds.server import XdsServer
from legation.controller.xds.snapshot import LISTENER

pytestmark = pytest.mark.e2e

MANIFESTS = """\
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: orders, namespace: team-orders}
spec: {prefix: /orders/, methods: [GET], service: orders.team-orders:8080}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: lookbehind, namespace: team-orders}
spec: {regex: '/(?<=a)b', service: a:80}
"""
REASON = "invalid RE2 regex"
NACK_ERROR = "Proto constraint validation failed (listener <http>: port out of range)"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "the page tests need Debian's chromium (apt-get install chromium)"
    return found


def dump_dom(url: str, profile: Path, *, budget_ms: int | None = None) -> str:
    args = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    args += [f"--user-data-dir={profile}", "--disable-extensions", "--disable-background-networking"]
    if budget_ms is not None:
        args.append(f"--virtual-time-budget={budget_ms}")
    done = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def stages_of(root: Path, text: str) -> Stages:
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifests.yaml").write_text(text)
    return build(DirectorySource(root).load(), EnvoyOptions())


async def nack_once(xds: XdsServer) -> None:
    """An Envoy asks for listeners and rejects them, then goes away (the NACK stays on record)."""
    envoy = FakeEnvoyStream(xds, "edge-chromium")
    await envoy.send(type_url=LISTENER)
    sent = await envoy.receive()
    error = status_pb2.Status(code=3, message=NACK_ERROR)
    await envoy.send(type_url=LISTENER, response_nonce=sent.nonce, error_detail=error)
    await wait_until(lambda: bool(xds.nacks))
    await envoy.close()


class Served:
    """uvicorn serving `app` on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[tuple[Served, ControllerState]]:
    state = ControllerState(source_description=f"directory {tmp_path / 'm'}")
    stages = stages_of(tmp_path / "m", MANIFESTS)
    state.record(stages)
    xds = XdsServer()
    xds.set_snapshot(stages.envoy)
    asyncio.run(nack_once(xds))
    with Served(create_app(state, xds)) as served:
        yield served, state


def test_page_in_chromium_shows_the_rejection_reason_the_route_and_the_nack(
    controller: tuple[Served, ControllerState], tmp_path: Path
) -> None:
    served, state = controller
    dom = dump_dom(served.url, tmp_path / "profile")
    assert "<title>Legation controller</title>" in dom
    rejected = dom[dom.index('id="rejected"') :]
    assert "team-orders/lookbehind" in rejected
    assert REASON in rejected
    assert "spec.regex" in rejected
    routes = dom[dom.index('id="routes"') :]
    assert "/orders" in routes  # prefixes are whole segments: /orders/ is shown as /orders
    assert "methods GET" in routes
    assert "orders.team-orders" in routes
    nacks = dom[dom.index('id="nacks"') :]
    assert "edge-chromium" in nacks
    assert html.escape(NACK_ERROR, quote=False) in nacks
    assert state.stages is not None and state.stages.envoy.version in dom


def test_page_follows_new_runs_without_a_reload(tmp_path: Path) -> None:
    state = ControllerState()
    state.record(stages_of(tmp_path / "m", MANIFESTS))
    fixed = stages_of(tmp_path / "fixed", MANIFESTS.replace("'/(?<=a)b'", "'/b+'"))
    app = AfterFirstPage(create_app(state, XdsServer()), lambda: state.record(fixed))
    with Served(app) as served:
        dom = dump_dom(served.url, tmp_path / "profile", budget_ms=12_000)
    # The first page had the rejection; only the page's own refresh can have brought this run.
    assert app.pages >= 2
    assert REASON not in dom
    assert "regex <code>/b+</code>" in dom
    assert fixed.envoy.version in dom


class AfterFirstPage:
    """ASGI wrapper: runs `then` once the first page has been served, and counts pages."""

    def __init__(self, app: Any, then: Any) -> None:
        self.app, self.then, self.pages = app, then, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)
        if scope["type"] == "http" and scope["path"] == "/":
            self.pages += 1
            if self.pages == 1:
                self.then()


# --- Hosts, upstream health and warnings, from a real controller and a real Envoy --------------

HEALTH_MANIFESTS = """\
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {{name: live, namespace: demo}}
spec: {{prefix: /live/, service: "127.0.0.1:{live}"}}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {{name: dead, namespace: demo}}
spec: {{prefix: /dead/, service: "127.0.0.1:{dead}"}}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {{name: nowhere, namespace: demo}}
spec: {{prefix: /nowhere/, service: "nothing-here.invalid:80"}}
---
apiVersion: legation.dev/v1alpha1
kind: Host
metadata: {{name: api, namespace: demo}}
spec: {{hostname: api.example.com, tlsSecret: {{name: api-tls}}}}
"""


def upstream_states(api: str) -> dict[str, str]:
    """cluster host address → state, from /api/upstreams (the same data the page shows)."""
    envoys = json.loads(http_get(f"{api}/api/upstreams")[1])["envoys"] or []
    return {h["address"]: h["state"] for e in envoys for hosts in e["clusters"].values() for h in hosts}


def test_page_in_chromium_shows_hosts_certificates_upstream_health_and_warnings(
    launch: Launcher, tmp_path: Path
) -> None:
    live, dead = free_port(), free_port()  # nothing ever listens on `dead`
    launch.spawn("echo", [legation_binary(), "echo", "--listen", f"{HOST}:{live}", "--name", "live"])
    wait_for(lambda: tcp_open(HOST, live), timeout=20, what="echo upstream")
    source = tmp_path / "manifests"
    source.mkdir()
    crt, key = self_signed("api.example.com", "www.example.com")  # one day: under 14
    (source / "m.yaml").write_text(
        HEALTH_MANIFESTS.format(live=live, dead=dead) + tls_secret("api-tls", crt, key)
    )
    xds, api_port, http = free_port(), free_port(), free_port()
    envoy = launch.envoy(controller_bootstrap(xds, "envoy-page"), wait=False)
    launch.spawn(
        "controller",
        [
            legation_binary(), "controller", "--source", str(source),
            "--xds-listen", f"{HOST}:{xds}", "--http-listen", f"{HOST}:{api_port}",
            "--envoy-http-port", str(http), "--envoy-https-port", str(free_port()),
            "--ratelimit-service", "none", "--envoy-admin", envoy.admin_url, "--allow-loopback-upstreams",
        ],
    )  # fmt: skip
    api = f"http://{HOST}:{api_port}"
    wait_for(lambda: http_get(f"http://{HOST}:{http}/live/x", timeout=2)[0] == 200, timeout=40, what="route")
    for _ in range(3):
        assert http_get(f"http://{HOST}:{http}/dead/x", timeout=5)[0] == 503
    wanted = {f"127.0.0.1:{live}": "healthy", f"127.0.0.1:{dead}": "unreachable"}
    wait_for(lambda: wanted.items() <= upstream_states(api).items(), timeout=30, what="upstream health")

    dom = dump_dom(f"{api}/", tmp_path / "profile")
    hosts = dom[dom.index('id="hosts"') :]
    assert "api.example.com" in hosts and "www.example.com" in hosts
    not_after = x509.load_pem_x509_certificate(crt.encode()).not_valid_after_utc.strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    assert not_after in hosts
    upstreams = dom[dom.index('id="upstreams"') :]
    assert re.search(rf'data-state="healthy"><code>127\.0\.0\.1:{live}</code> healthy', upstreams)
    assert re.search(rf'data-state="unreachable"><code>127\.0\.0\.1:{dead}</code> unreachable', upstreams)
    assert "demo/dead" in upstreams and "demo/live" in upstreams
    warnings = dom[dom.index('id="warnings"') : dom.index('id="sync"')]
    assert "demo/api" in warnings and "under 14 days" in warnings
    assert "nothing-here.invalid" in warnings and "demo/nowhere" in warnings
    assert key.split("-----")[2].strip().splitlines()[0] not in dom  # never key material
