"""A directory of YAML manifests as a resource source, followed with watchfiles.

Every `*.yaml` / `*.yml` under the root is read (recursively, in path order); a file may hold
several documents. Hidden files and directories are skipped, which also skips editors' swap
files and Kubernetes ConfigMap mounts' `..data` internals (their visible links are read).

Changes are debounced: watchfiles reports a batch once the tree has been quiet for `quiet_ms`,
then the whole tree is re-read, so an editor's write-to-temp-and-rename (or a `kubectl cp`)
yields one snapshot with the complete new file. A file that vanishes between listing and reading
is simply absent from that snapshot. A file that stops parsing (a mis-indented line) keeps
serving the documents of its last good version while its error is reported; one that was never
good contributes nothing. A file over the size limit, or with YAML anchors or aliases, is refused
the same way (`legation.core.yamlfile`). Only a running source has a last good version: `legation validate`
reads once and reports the error. Parsed files are cached by content, so a re-read costs a
read per file and a parse per changed file.

Age: a manifest's `metadata.creationTimestamp` is whatever its author wrote, so the source
stamps resources itself, as an API server does (`SourceSnapshot.ages`): everything present at
the first read ties at 0, and a resource that appears later is stamped with the monotonic clock
when first read (kept while it exists, also across edits and moves; deleted and re-added, it is
new). A running controller thus never gives a served route away to a newcomer that overlaps it,
while the same conflicts present at start (or in `legation validate`) tie and are rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from legation.api.v1alpha1 import ResourceId, raw_id
from legation.controller.sources import SourceSnapshot
from legation.core.digest import content_version
from legation.core.errors import ConfigError
from legation.core.yamlfile import Document, load_documents, read_yaml_text

__all__ = ["DirectorySource"]

log = logging.getLogger("legation.controller.source")

_SUFFIXES = (".yaml", ".yml")


class DirectorySource:
    """Manifests from `root` (a directory, or a single file), and their changes."""

    def __init__(
        self, root: str | Path, *, quiet_ms: int = 50, max_batch_ms: int = 1000, retry_seconds: float = 1.0
    ) -> None:
        self.root = Path(root)
        self.quiet_ms = quiet_ms
        """A change batch is reported once nothing has changed for this long."""
        self.max_batch_ms = max_batch_ms
        """A batch is reported after this long even if changes keep coming."""
        self.retry_seconds = retry_seconds
        """How often a missing root is looked for again."""
        self._parsed: dict[str, tuple[str, list[Document] | ConfigError]] = {}
        self._good: dict[str, list[Document]] = {}
        """Each file's last documents read without error (what it serves while broken)."""
        self._seen: dict[ResourceId, float] | None = None
        """When each resource was first read (see the module's docstring); None before a read."""

    def load(self) -> SourceSnapshot:
        """Read the tree once (blocking). Never raises for bad input: problems are in `errors`.

        A file that no longer parses (or cannot be read) keeps the documents it last parsed to,
        and is named in `kept`; a file that is gone is gone, with its documents."""
        if not self.root.exists():
            self._good = {}
            error = ConfigError(file=str(self.root), reason="no such file or directory")
            return SourceSnapshot(
                documents=(), errors=(error,), origins=(), version=content_version([("", str(error))])
            )
        parsed: dict[str, tuple[str, list[Document] | ConfigError]] = {}
        files = [f for path in _yaml_files(self.root) if (f := self._read(path, parsed)) is not None]
        self._parsed = parsed
        # Built from the previous `_good` (read by `_serving`), then replaces it: deleted files drop out.
        self._good = {f.name: docs for f in files if (docs := self._serving(f)) is not None}
        documents = tuple(d for f in files for d in self._good.get(f.name, ()))
        return SourceSnapshot(
            documents=documents,
            errors=tuple(f.error for f in files if f.error is not None),
            origins=tuple(f.name for f in files),
            version=content_version((f.name, f.text) for f in files),
            kept=tuple(f.name for f in files if f.error is not None and f.name in self._good),
            ages=self._stamp(documents),
        )

    def _stamp(self, documents: tuple[Document, ...]) -> dict[ResourceId, float]:
        """Each resource's first-seen age; forgets the resources that are gone."""
        now = 0.0 if self._seen is None else time.monotonic()
        previous = self._seen or {}
        seen: dict[ResourceId, float] = {}
        for doc in documents:
            rid = raw_id(doc.data)
            if rid is not None:
                seen[rid] = previous.get(rid, now)
        self._seen = seen
        return seen

    def _read(self, path: Path, parsed: dict[str, tuple[str, list[Document] | ConfigError]]) -> _File | None:
        """The file's content and documents (or error); None if it vanished while we read."""
        name = str(path)
        try:
            text = read_yaml_text(path)
        except FileNotFoundError:
            return None  # removed (or being renamed) while we read: the watch reports the rest
        except ConfigError as exc:  # too big: refused unread, as a file that stopped parsing
            return _File(name, f"\0{exc.reason}", exc)
        except (OSError, UnicodeDecodeError) as exc:
            return _File(name, f"\0{exc}", ConfigError(file=name, reason=f"cannot read: {exc}"))
        parsed[name] = self._parse(name, text)
        result = parsed[name][1]
        if isinstance(result, ConfigError):
            return _File(name, text, result)
        return _File(name, text, None, result)

    def _serving(self, file: _File) -> list[Document] | None:
        """What `file` contributes: its documents, or while it is broken its last good ones."""
        return self._good.get(file.name) if file.error is not None else file.documents

    def _parse(self, name: str, text: str) -> tuple[str, list[Document] | ConfigError]:
        cached = self._parsed.get(name)
        if cached is not None and cached[0] == text:
            return cached
        try:
            return text, load_documents(text, file=name)
        except ConfigError as exc:
            return text, exc

    async def snapshots(self) -> AsyncIterator[SourceSnapshot]:
        """The initial snapshot, then one per change of content (see `Source`)."""
        changed = asyncio.Event()
        watcher = asyncio.create_task(self._watch(changed), name=f"watch {self.root}")
        await asyncio.sleep(0)  # the watch is registered before the first read: no change is missed
        try:
            snapshot = await asyncio.to_thread(self.load)
            yield snapshot
            while True:
                await changed.wait()
                changed.clear()
                new = await asyncio.to_thread(self.load)
                if new.version != snapshot.version:
                    snapshot = new
                    yield snapshot
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self, changed: asyncio.Event) -> None:
        restarted = False
        while True:
            is_dir = self.root.is_dir()
            target = self.root if is_dir else self.root.parent
            if restarted:
                # Runs once awatch has registered (its first step ends in a thread wait), so a
                # change made while no watch was active is still read.
                asyncio.get_running_loop().call_soon(changed.set)
            restarted = True
            changes = watchfiles.awatch(
                target,
                watch_filter=_DirectoryFilter(target) if is_dir else _FileFilter(self.root),
                debounce=self.max_batch_ms,
                step=self.quiet_ms,
                recursive=is_dir,
            )
            try:
                async with contextlib.aclosing(changes):
                    async for _ in changes:
                        changed.set()
                        if self.root.is_dir() != is_dir:
                            break  # the root appeared or went away: watch it the other way
            except FileNotFoundError:
                pass  # the root (or its parent) does not exist (yet)
            except Exception:
                log.exception("watching %s failed; retrying", self.root)
            changed.set()  # the watch ended: the root was removed or replaced; re-read it
            await asyncio.sleep(self.retry_seconds)


@dataclass(frozen=True)
class _File:
    """One file as read now: its text (for the version), and its documents or its error."""

    name: str
    text: str
    error: ConfigError | None
    documents: list[Document] | None = None


class _DirectoryFilter:
    """Changes that can alter the tree's YAML: anything not hidden (a directory rename or removal
    affects the files in it), plus `..name` entries that ConfigMap mounts swap atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        try:
            parts = Path(path).resolve().relative_to(self.root).parts
        except ValueError:
            return True
        return not any(p.startswith(".") and not p.startswith("..") for p in parts)


class _FileFilter:
    """Changes of one file, watched through its directory (editors replace files by rename)."""

    def __init__(self, file: Path) -> None:
        self.file = file.resolve()

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        p = Path(path)
        return p.name.startswith("..") or p.resolve() == self.file


def _yaml_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return [root]
    found: list[Path] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        base = Path(directory)
        found.extend(base / f for f in files if f.endswith(_SUFFIXES) and not f.startswith("."))
    return sorted(found)
