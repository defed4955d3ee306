"""The live controller bench's manifests and client: Mappings in files, changes, polling Envoy."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import yaml

__all__ = ["NAMESPACES", "PER_FILE", "Tree", "mapping", "time_changes"]

PER_FILE = 10
NAMESPACES = 8


def mapping(i: int, host: str, port: int, revision: int) -> dict[str, object]:
    """Mapping ``m{i}``: prefix ``/m{i}/`` to the upstream, ``x-rev`` = its revision."""
    return {
        "apiVersion": "legation.dev/v1alpha1",
        "kind": "Mapping",
        "metadata": {"name": f"m{i}", "namespace": f"team-{i % NAMESPACES}"},
        "spec": {
            "prefix": f"/m{i}/",
            "service": f"{host}:{port}",
            "addResponseHeaders": {"x-rev": str(revision)},
        },
    }


def write_file(path: Path, docs: list[dict[str, object]]) -> None:
    """Written as editors do: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    tmp.replace(path)


class Tree:
    """N Mappings in files of PER_FILE, with a revision per Mapping."""

    def __init__(self, root: Path, n: int, port: int, host: str = "127.0.0.1") -> None:
        self.root, self.n, self.port, self.host = root, n, port, host
        self.revisions = [0] * n
        for f in range((n + PER_FILE - 1) // PER_FILE):
            self.write(f)

    def write(self, file_index: int) -> None:
        first = file_index * PER_FILE
        docs = [
            mapping(i, self.host, self.port, self.revisions[i])
            for i in range(first, min(first + PER_FILE, self.n))
        ]
        write_file(self.root / f"mappings-{file_index:04d}.yaml", docs)

    def change(self, i: int) -> int:
        """Mapping i's next revision, written; the new revision."""
        self.revisions[i] += 1
        self.write(i // PER_FILE)
        return self.revisions[i]


def _header(connection: http.client.HTTPConnection, path: str) -> str | None:
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.getheader("x-rev")


def _time_one(
    tree: Tree, connection: http.client.HTTPConnection, host: str, port: int, i: int
) -> tuple[float, http.client.HTTPConnection]:
    """Change Mapping i, poll its route every 2 ms until the new revision is served."""
    path = f"/m{i}/x"
    start = time.perf_counter()
    revision = str(tree.change(i))
    while True:
        try:
            if _header(connection, path) == revision:
                return time.perf_counter() - start, connection
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPConnection(host, port, timeout=5)
        if time.perf_counter() - start > 30:
            raise RuntimeError(f"change of m{i} not served after 30 s")
        time.sleep(0.002)


def time_changes(tree: Tree, host: str, port: int, changes: int) -> list[float]:
    """Seconds from each change's rename to Envoy serving it, on one kept-alive connection."""
    seconds: list[float] = []
    connection = http.client.HTTPConnection(host, port, timeout=5)
    for k in range(changes):
        elapsed, connection = _time_one(
            tree, connection, host, port, (k * 97 + 13) % tree.n
        )  # spread over files
        seconds.append(elapsed)
    connection.close()
    return seconds
