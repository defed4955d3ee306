"""Controller, live: how fast a manifest change reaches Envoy, and whether traffic notices.

Real processes on 127.0.0.1: a ``legation echo`` upstream, ``legation controller --source DIR``
on N Mappings (10 per file, 8 namespaces), and Envoy bootstrapped by ``legation.controller.commands.bootstrap``.
1. change -> served: ``--changes`` times, one Mapping's ``addResponseHeaders`` value is changed
   (a new file renamed over the old one, as editors do); a client polls that route on a
   kept-alive connection every 2 ms until Envoy answers with the new value.
2. steady traffic: ``wrk -t1 -c8`` on a route that never changes while ``--wrk-changes`` changes
   to other Mappings are applied, one every 150 ms. Any non-2xx or socket error is a failure.
Targets (issue 4): p50 <= 250 ms, p99 <= 1 s, 0 failed requests. Exit status 2 if one is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.controller_live_client import Tree, time_changes
from bench.harness.options import add_common
from bench.harness.processes import envoy_command, find_binary, free_port, http_status, started, wait_for
from bench.harness.report import write_results
from bench.harness.scenario import Scenario, exit_on_sigterm
from bench.harness.stats import percentile
from bench.harness.wrk import WrkResult, parse_wrk_output, start_wrk
from legation.controller.commands.bootstrap import bootstrap

__all__ = ["SCENARIO", "LiveResult", "Settings", "run"]

HOST = "127.0.0.1"
TARGET_P50_MS = 250.0
TARGET_P99_MS = 1000.0


@dataclass(frozen=True)
class Settings:
    """One run of the live controller bench."""

    mappings: int
    changes: int
    """Changes timed from file rename to served."""
    wrk_changes: int
    """Changes applied while wrk drives a steady route."""
    legation: str
    envoy: str


@dataclass(frozen=True)
class LiveResult:
    p50_ms: float
    p99_ms: float
    max_ms: float
    steady: WrkResult
    changes_applied_during_wrk: int
    nacks: int

    @property
    def passed(self) -> bool:
        return self.p50_ms <= TARGET_P50_MS and self.p99_ms <= TARGET_P99_MS and self.steady.failed == 0


@dataclass(frozen=True)
class _Ports:
    upstream: int
    xds: int
    api: int
    envoy_http: int
    admin: int


def _get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        data: dict[str, object] = json.loads(resp.read())
    return data


def _controller_cmd(s: Settings, source: Path, p: _Ports) -> list[str]:
    return [s.legation, "controller", "--source", str(source), "--xds-listen", f"{HOST}:{p.xds}",
            "--http-listen", f"{HOST}:{p.api}", "--envoy-http-port", str(p.envoy_http),
            "--envoy-https-port", str(free_port()), "--ratelimit-service", "none", "--allow-loopback-upstreams",
            "--log-level", "warning"]  # fmt: skip


@contextlib.contextmanager
def gateway(s: Settings, root: Path, tree: Tree, p: _Ports) -> Iterator[None]:
    """echo upstream, controller on the tree, Envoy from its bootstrap: serving when entered."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            started("echo", [s.legation, "echo", "--listen", f"{HOST}:{p.upstream}", "--name", "bench"], root)
        )
        ctl = stack.enter_context(started("controller", _controller_cmd(s, tree.root, p), root))
        wait_for(
            ctl,
            lambda: http_status(f"http://{HOST}:{p.api}/readyz") == 200,
            timeout=120,
            what="controller ready",
        )
        config = root / "envoy.yaml"
        config.write_text(
            yaml.safe_dump(bootstrap(xds=f"{HOST}:{p.xds}", node_id="bench", admin=f"{HOST}:{p.admin}"))
        )
        envoy = stack.enter_context(
            started("envoy", envoy_command(s.envoy, config, base_id=os.getpid() % 50000 + 7000), root)
        )
        wait_for(
            envoy,
            lambda: http_status(f"http://{HOST}:{p.envoy_http}/m0/x") == 200,
            timeout=120,
            what="Envoy serving",
        )
        yield


def wrk_during_changes(tree: Tree, envoy_port: int, changes: int, steady: int) -> tuple[WrkResult, int]:
    """wrk on ``/m{steady}/`` while ``changes`` other Mappings change, one every 150 ms."""
    duration = max(10, int(changes * 0.15) + 5)
    wrk = start_wrk(f"http://{HOST}:{envoy_port}/m{steady}/steady", duration_s=duration)
    time.sleep(1)
    applied, stop = [0], threading.Event()

    def apply() -> None:
        for k in range(changes):
            if stop.is_set():
                return
            i = (k * 31 + 7) % tree.n
            tree.change(i if i != steady else (i + 1) % tree.n)
            applied[0] += 1
            time.sleep(0.15)

    thread = threading.Thread(target=apply)
    thread.start()
    out, _ = wrk.communicate(timeout=duration + 30)
    stop.set()
    thread.join()
    return parse_wrk_output(out), applied[0]


def run(s: Settings) -> LiveResult:
    """Start the gateway on N Mappings, time the changes, then wrk during changes."""
    with tempfile.TemporaryDirectory(prefix="legation-live-") as tmp:
        root = Path(tmp)
        (root / "manifests").mkdir()
        p = _Ports(*(free_port() for _ in range(5)))
        tree = Tree(root / "manifests", s.mappings, p.upstream)
        with gateway(s, root, tree, p):
            status = _get_json(f"http://{HOST}:{p.api}/api/status")
            print(f"{s.mappings} Mappings loaded; last compile {status.get('last_run', {})}", flush=True)
            ms = sorted(x * 1000 for x in time_changes(tree, HOST, p.envoy_http, s.changes))
            steady, applied = wrk_during_changes(tree, p.envoy_http, s.wrk_changes, steady=s.mappings // 2)
            nacks = _get_json(f"http://{HOST}:{p.api}/api/envoys")["nacks"]
            assert isinstance(nacks, list)
    return LiveResult(statistics.median(ms), percentile(ms, 0.99), ms[-1], steady, applied, len(nacks))


def report(r: LiveResult, s: Settings) -> None:
    print(f"change → served ({s.changes} changes, {s.mappings} Mappings loaded)")
    print(f"  p50 {r.p50_ms:7.1f} ms   (target ≤ {TARGET_P50_MS:g} ms)")
    print(f"  p99 {r.p99_ms:7.1f} ms   (target ≤ {TARGET_P99_MS:g} ms)")
    print(f"  max {r.max_ms:7.1f} ms")
    w = r.steady
    print(f"wrk on a steady route during {r.changes_applied_during_wrk} changes to other Mappings")
    print(f"  requests {w.requests}, non-2xx {w.non_2xx}, socket errors {w.socket_errors}")
    print(f"  failed {w.failed}   (target 0); p99 {w.p99_ms:.1f} ms")
    print(f"  NACKs recorded: {r.nacks}")


def configure(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--mappings", type=int, default=1000, help="Mappings loaded (default 1000)")
    parser.add_argument("--changes", type=int, default=50, help="changes timed to served (default 50)")
    parser.add_argument("--wrk-changes", type=int, default=100, help="changes during wrk (default 100)")
    parser.add_argument("--legation", help="path of the legation CLI (default: next to python)")
    parser.add_argument("--envoy", help="path of the envoy binary (default: next to python)")
    parser.add_argument("--quick", action="store_true", help="200 Mappings, 10 changes, 20 during wrk")


def main(args: argparse.Namespace) -> int:
    quick: bool = args.quick
    settings = Settings(
        mappings=200 if quick else args.mappings, changes=10 if quick else args.changes,
        wrk_changes=20 if quick else args.wrk_changes,
        legation=find_binary("legation", args.legation), envoy=find_binary("envoy", args.envoy),
    )  # fmt: skip
    exit_on_sigterm()
    result = run(settings)
    report(result, settings)
    write_results("controller_live", {"settings": settings, "result": result}, args.json)
    return 0 if result.passed else 2


SCENARIO = Scenario(
    "controller_live",
    __doc__ or "",
    configure,
    main,
)
