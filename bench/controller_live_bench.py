"""Benchmark: how fast a manifest change reaches Envoy, and whether traffic notices.

    .venv/bin/python bench/controller_live_bench.py [--mappings 1000] [--changes 50] [--wrk-changes 100]

Setup (all real processes on 127.0.0.1): a `legation echo` upstream, `legation controller
--source DIR` on a directory of N Mappings (10 per file, several namespaces), and Envoy
bootstrapped from `legation envoy-bootstrap`'s function. Then:

1. change → served: `--changes` times, one Mapping's `addResponseHeaders` value is changed in its
   file (written as editors do: a new file renamed over the old one), and a client polls that
   route over a kept-alive connection until Envoy answers with the new value. Reported: p50, p99
   and max of the time from the rename to the first response with the new value (it includes the
   file watcher's debounce, the pipeline run, the xDS push and Envoy's route update).
2. steady traffic during changes: wrk drives a route that never changes while `--wrk-changes`
   changes to other Mappings are applied (one every 150 ms). Reported: requests, non-2xx
   responses and socket errors (target: 0 failed).

Targets (issue 4): p50 ≤ 250 ms, p99 ≤ 1 s, 0 failed requests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from legation.controller.commands.bootstrap import bootstrap

HOST = "127.0.0.1"
PER_FILE = 10
NAMESPACES = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def binary(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise SystemExit(f"no {name} binary")
    return found


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return int(r.status)
    except OSError:
        return -1


def mapping(i: int, port: int, revision: int) -> dict[str, object]:
    return {
        "apiVersion": "legation.dev/v1alpha1",
        "kind": "Mapping",
        "metadata": {"name": f"m{i}", "namespace": f"team-{i % NAMESPACES}"},
        "spec": {
            "prefix": f"/m{i}/",
            "service": f"{HOST}:{port}",
            "addResponseHeaders": {"x-rev": str(revision)},
        },
    }


def write_file(path: Path, docs: list[dict[str, object]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    tmp.replace(path)


class Tree:
    """N Mappings in files of PER_FILE, with a revision per Mapping."""

    def __init__(self, root: Path, n: int, port: int) -> None:
        self.root, self.n, self.port = root, n, port
        self.revisions = [0] * n
        for f in range((n + PER_FILE - 1) // PER_FILE):
            self.write(f)

    def write(self, file_index: int) -> None:
        first = file_index * PER_FILE
        docs = [mapping(i, self.port, self.revisions[i]) for i in range(first, min(first + PER_FILE, self.n))]
        write_file(self.root / f"mappings-{file_index:04d}.yaml", docs)

    def change(self, i: int) -> int:
        self.revisions[i] += 1
        self.write(i // PER_FILE)
        return self.revisions[i]


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for p in reversed(started):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(started):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def header_value(connection: http.client.HTTPConnection, path: str) -> str | None:
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.getheader("x-rev")


def measure_changes(tree: Tree, envoy_port: int, changes: int) -> list[float]:
    seconds: list[float] = []
    connection = http.client.HTTPConnection(HOST, envoy_port, timeout=5)
    for k in range(changes):
        i = (k * 97 + 13) % tree.n  # spread over files and namespaces
        path = f"/m{i}/x"
        start = time.perf_counter()
        revision = str(tree.change(i))
        while True:
            try:
                if header_value(connection, path) == revision:
                    break
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(HOST, envoy_port, timeout=5)
            if time.perf_counter() - start > 30:
                raise SystemExit(f"change {k} not served after 30 s")
            time.sleep(0.002)
        seconds.append(time.perf_counter() - start)
    connection.close()
    return seconds


def wrk_during_changes(tree: Tree, envoy_port: int, changes: int, steady: int) -> dict[str, int | float]:
    duration = max(10, int(changes * 0.15) + 5)
    wrk = subprocess.Popen(
        ["wrk", "-t1", "-c8", f"-d{duration}s", "--latency", f"http://{HOST}:{envoy_port}/m{steady}/steady"],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1)
    applied = 0
    stop = threading.Event()

    def apply() -> None:
        nonlocal applied
        for k in range(changes):
            if stop.is_set():
                return
            i = (k * 31 + 7) % tree.n
            if i == steady:
                i = (i + 1) % tree.n
            tree.change(i)
            applied += 1
            time.sleep(0.15)

    thread = threading.Thread(target=apply)
    thread.start()
    out, _ = wrk.communicate(timeout=duration + 30)
    stop.set()
    thread.join()
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = sum(int(g) for g in socket_errors.groups()) if socket_errors else 0
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99_ms = 0.0
    if p99:
        value, unit = float(p99.group(1)), p99.group(2)
        p99_ms = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return {
        "changes_applied": applied,
        "requests": requests,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors,
        "p99_ms": p99_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mappings", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--wrk-changes", type=int, default=100)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    legation = binary("legation")
    with tempfile.TemporaryDirectory(prefix="legation-live-") as tmp, processes() as started:
        root = Path(tmp)
        source = root / "manifests"
        source.mkdir()
        upstream, xds, api, envoy_http, admin = (free_port() for _ in range(5))
        tree = Tree(source, args.mappings, upstream)
        logs = root / "logs"
        logs.mkdir()

        def start(name: str, argv: list[str]) -> None:
            with open(logs / f"{name}.log", "wb") as out:
                started.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT))

        start("echo", [legation, "echo", "--listen", f"{HOST}:{upstream}", "--name", "bench"])
        start(
            "controller",
            [
                legation, "controller", "--source", str(source),
                "--xds-listen", f"{HOST}:{xds}", "--http-listen", f"{HOST}:{api}",
                "--envoy-http-port", str(envoy_http), "--envoy-https-port", str(free_port()),
                "--ratelimit-service", "none", "--log-level", "warning",
            ],
        )  # fmt: skip
        wait(lambda: http_status(f"http://{HOST}:{api}/readyz") == 200, 120, "controller ready")
        config = bootstrap(xds=f"{HOST}:{xds}", node_id="bench", admin=f"{HOST}:{admin}")
        (root / "envoy.yaml").write_text(yaml.safe_dump(config))
        start(
            "envoy",
            [binary("envoy"), "-c", str(root / "envoy.yaml"), "--concurrency", "1",
             "--disable-hot-restart", "--base-id", str(os.getpid() % 50000 + 7000), "-l", "warning"],
        )  # fmt: skip
        wait(lambda: http_status(f"http://{HOST}:{envoy_http}/m0/x") == 200, 120, "Envoy serving")
        status = json.loads(urllib.request.urlopen(f"http://{HOST}:{api}/api/status", timeout=10).read())
        print(f"{args.mappings} Mappings loaded; last compile {status.get('last_run', {})}")

        seconds = measure_changes(tree, envoy_http, args.changes)
        ms = sorted(s * 1000 for s in seconds)
        p50 = statistics.median(ms)
        p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
        print(f"change → served ({args.changes} changes, {args.mappings} Mappings loaded)")
        print(f"  p50 {p50:7.1f} ms   (target ≤ 250 ms)")
        print(f"  p99 {p99:7.1f} ms   (target ≤ 1000 ms)")
        print(f"  max {ms[-1]:7.1f} ms")

        steady = wrk_during_changes(tree, envoy_http, args.wrk_changes, steady=args.mappings // 2)
        failed = int(steady["non_2xx"]) + int(steady["socket_errors"])
        print(f"wrk on a steady route during {steady['changes_applied']} changes to other Mappings")
        print(
            f"  requests {steady['requests']}, non-2xx {steady['non_2xx']}, socket errors {steady['socket_errors']}"
        )
        print(f"  failed {failed}   (target 0); p99 {steady['p99_ms']:.1f} ms")
        envoys = json.loads(urllib.request.urlopen(f"http://{HOST}:{api}/api/envoys", timeout=10).read())
        print(f"  NACKs recorded: {len(envoys['nacks'])}")
        if args.json:
            Path(args.json).write_text(
                json.dumps({"p50_ms": p50, "p99_ms": p99, "max_ms": ms[-1], "steady": steady}, indent=2)
            )


if __name__ == "__main__":
    main()
