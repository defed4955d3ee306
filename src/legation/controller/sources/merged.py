"""Several sources seen as one: `legation controller --source A --source B`.

`legation up` uses it to add the manifests it generates at start (the demo TLS certificate and
the demo issuer's keys, which are never committed) to the user's directory. Each member keeps
its own origins (file paths), so a problem still names the file it is in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from legation.api.v1alpha1 import ResourceId
from legation.controller.sources import Source, SourceSnapshot
from legation.core.digest import content_version

__all__ = ["MergedSource"]


class MergedSource:
    """The union of its members' snapshots; the first once every member has delivered one."""

    def __init__(self, sources: Sequence[Source]) -> None:
        if not sources:
            raise ValueError("a merged source needs at least one source")
        self.sources = tuple(sources)

    async def snapshots(self) -> AsyncIterator[SourceSnapshot]:
        latest: list[SourceSnapshot | None] = [None] * len(self.sources)
        changed = asyncio.Event()

        async def follow(index: int, source: Source) -> None:
            try:
                async for snapshot in source.snapshots():
                    latest[index] = snapshot
                    changed.set()
            finally:
                changed.set()  # wake the merger so that it sees a failure

        tasks = [asyncio.create_task(follow(i, s)) for i, s in enumerate(self.sources)]
        last_version: str | None = None
        try:
            while True:
                await changed.wait()
                changed.clear()
                for task in tasks:  # a member that failed fails the whole source, loudly
                    error = task.exception() if task.done() and not task.cancelled() else None
                    if error is not None:
                        raise error
                parts = [s for s in latest if s is not None]
                if len(parts) < len(latest):
                    continue
                merged = merge(parts)
                if merged.version != last_version:
                    last_version = merged.version
                    yield merged
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _ages(snapshots: Sequence[SourceSnapshot]) -> dict[ResourceId, float] | None:
    """Every member's first-seen ages (comparable: 0 at each member's first read, else the
    process's monotonic clock); the earliest when two members hold the same resource."""
    if all(s.ages is None for s in snapshots):
        return None
    merged: dict[ResourceId, float] = {}
    for snapshot in snapshots:
        for rid, seen in (snapshot.ages or {}).items():
            merged[rid] = min(seen, merged.get(rid, seen))
    return merged


def merge(snapshots: Sequence[SourceSnapshot]) -> SourceSnapshot:
    """One snapshot holding every member's documents, errors and origins."""
    return SourceSnapshot(
        documents=tuple(d for s in snapshots for d in s.documents),
        errors=tuple(e for s in snapshots for e in s.errors),
        origins=tuple(o for s in snapshots for o in s.origins),
        kept=tuple(o for s in snapshots for o in s.kept),
        trusted_timestamps=all(s.trusted_timestamps for s in snapshots),
        ages=_ages(snapshots),
        version=content_version((str(i), s.version) for i, s in enumerate(snapshots)),
    )
