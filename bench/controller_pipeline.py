"""The measured child of the controller bench: the pipeline's stages on one manifest tree, timed.

    python -m bench.controller_pipeline DIR --expect N [--runs R] [--once]

Prints one JSON object (:class:`ChildResult`). Run in a fresh process per size, so sizes do not
share heaps and ``ru_maxrss`` is this run's alone. ``--once``: the stages once, nothing else (for
the peak RSS of one pipeline run).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from bench.controller_results import STAGES, ChildResult, Description
from legation.api.v1alpha1 import Resource, ResourceError, parse_resource
from legation.controller.compiler.compile import Tenancy, compile_resources
from legation.controller.compiler.ir import CompileResult, Origin
from legation.controller.compiler.parse_cache import ParseCache
from legation.controller.serving.pipeline import build
from legation.controller.sources import SourceSnapshot
from legation.controller.sources.directory import DirectorySource
from legation.controller.translate.envoy import EnvoyOptions, translate
from legation.controller.translate.feeds import authz_feed_text, ratelimit_feed_text
from legation.controller.xds.snapshot import Snapshot

__all__ = ["run_child"]

T = TypeVar("T")


@dataclass
class _Times:
    samples: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})

    def timed(self, stage: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        value = fn()
        self.samples[stage].append(time.perf_counter() - start)
        return value


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _parse_all(snapshot: SourceSnapshot) -> list[tuple[Origin, Resource]]:
    """As legation.controller.serving.pipeline.build does it; every document must be valid."""
    parsed: list[tuple[Origin, Resource | list[ResourceError]]] = [
        (Origin.of(d), parse_resource(d)) for d in snapshot.documents
    ]
    bad = [r for _, r in parsed if isinstance(r, list)]
    assert not bad, bad[:3]
    return [(o, r) for o, r in parsed if not isinstance(r, list)]


def _stages(source: DirectorySource, times: _Times) -> tuple[SourceSnapshot, Description]:
    """One run of every stage, timed; the source snapshot and what came out."""
    snapshot = times.timed("load", source.load)
    assert not snapshot.errors, snapshot.errors[:3]
    parsed = times.timed("parse", lambda: _parse_all(snapshot))
    result = times.timed("compile", lambda: compile_resources(parsed, tenancy=Tenancy()))
    assert not result.rejected, result.rejected[:3]
    envoy = times.timed("translate", lambda: translate(result.ir, EnvoyOptions()))
    built = times.timed("snapshot", lambda: Snapshot.build(envoy))
    times.timed("feeds", lambda: (authz_feed_text(result), ratelimit_feed_text(result)))
    return snapshot, _describe(snapshot, result, built)


def _describe(snapshot: SourceSnapshot, result: CompileResult, built: Snapshot) -> Description:
    return Description(
        documents=len(snapshot.documents),
        mappings=sum(1 for d in snapshot.documents if d.data.get("kind") == "Mapping"),
        routes=len(result.ir.routes),
        clusters=len(result.ir.clusters),
        envoy_resources={t.rsplit(".", 1)[-1]: len(v) for t, v in built.resources.items()},
        snapshot_bytes=sum(len(b) for v in built.encoded.values() for b in v.values()),
    )


def _one_change(root: Path, source: DirectorySource, snapshot: SourceSnapshot, run: int) -> float:
    """Seconds from "one Mapping file was rewritten" to the new Envoy snapshot, with the caches a
    running controller has: the directory source's (files by content) and a ParseCache."""
    cache = ParseCache()
    for doc in snapshot.documents:  # the state before the change: everything parsed once
        cache.parse(doc)
    target = sorted(root.glob("*/mappings-*.yaml"))[0]
    original = target.read_text()
    # A real edit: one route's timeout changes (a different value every run, so nothing is stale).
    edited = original.replace("timeout: 3s", f"timeout: {4 + run}s", 1)
    assert edited != original
    target.write_text(edited)
    try:
        start = time.perf_counter()
        new = source.load()
        rejected = build(new, EnvoyOptions(), parse=cache.parse).rejected
        seconds = time.perf_counter() - start
        assert not rejected and not new.errors
        changed = sum(1 for d in new.documents if d.file == str(target))
        assert cache.misses == len(snapshot.documents) + changed  # only that file validated again
    finally:
        target.write_text(original)
    return seconds


def run_child(root: Path, runs: int, expected_mappings: int, *, once: bool = False) -> ChildResult:
    """The pipeline ``runs`` times on ``root``; medians per stage. ``once``: the stages alone."""
    rss_imports = _maxrss_mb()
    times = _Times()
    description: Description | None = None
    for run in range(runs):
        source = DirectorySource(root)
        snapshot, description = _stages(source, times)
        assert description.mappings == expected_mappings, description
        gc.collect()
        if once:
            continue
        times.timed("build", partial(build, snapshot, EnvoyOptions()))  # cold: every document validated
        gc.collect()
        times.samples["change"].append(_one_change(root, source, snapshot, run))
        gc.collect()
    assert description is not None
    medians = {s: statistics.median(v) if v else None for s, v in times.samples.items()}
    return ChildResult(medians, times.samples, rss_imports, _maxrss_mb(), description)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--expect", type=int, required=True, help="Mappings the tree must hold")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)
    result = run_child(args.root, args.runs, args.expect, once=args.once)
    print(json.dumps(dataclasses.asdict(result)))


if __name__ == "__main__":
    main()
