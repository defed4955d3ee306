"""`parse_resource` with a memory, so that a change to one file re-validates only that file.

Validating every document costs ~25 µs each (pydantic), a quarter of a second for 10,000
Mappings, on every change of any file. A `ParseCache` remembers each document's result under its
position (origin file, index in the file) together with what it was parsed from: the whole text
of its file (documents read by `legation.core.yamlfile.load_documents`), or the `Document` object
itself for sources that build documents from data. The result is reused only when that is
unchanged, so it is always what `parse_resource` would return now: `parse_resource` is a pure
function of the document's data and, for errors, of its file and lines, all of which are fixed by
the file's text.

    cache = ParseCache()
    stages = pipeline.build(snapshot, options, parse=cache.parse)  # where parse_resource goes
    cache.retain(snapshot.documents)  # then forget the documents of removed files

Not thread-safe: use one cache per pipeline (the controller runs one build at a time).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from legation.api.v1alpha1 import Resource, ResourceError, parse_resource
from legation.core.yamlfile import Document

__all__ = ["ParseCache"]


@dataclass(frozen=True, eq=False)
class _Entry:
    source: object
    """The file's text, or the Document itself when it has no text."""
    line: int
    result: Resource | list[ResourceError]


class ParseCache:
    """A drop-in for `legation.api.v1alpha1.parse_resource` (`parse`, or the cache itself) that
    remembers results (see the module docstring). `hits` and `misses` count lookups since
    creation."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, int], _Entry] = {}
        self.hits = 0
        self.misses = 0

    def parse(self, doc: Document) -> Resource | list[ResourceError]:
        """What `parse_resource(doc)` returns, validated again only if its file changed."""
        key = (doc.file, doc.index)
        source = _source(doc)
        entry = self._entries.get(key)
        if entry is not None and entry.line == doc.line and _same(entry.source, source):
            self.hits += 1
            result = entry.result
        else:
            self.misses += 1
            result = parse_resource(doc)
            self._entries[key] = _Entry(source, doc.line, result)
        # Resources are immutable and shared; a list of errors is the caller's to keep.
        return list(result) if isinstance(result, list) else result

    __call__ = parse

    def retain(self, documents: Iterable[Document]) -> None:
        """Forget every position that is not one of `documents` (files removed or shortened)."""
        keep = {(doc.file, doc.index) for doc in documents}
        for key in [k for k in self._entries if k not in keep]:
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


def _source(doc: Document) -> object:
    text = doc.source_text
    return text if text is not None else doc


def _same(cached: object, current: object) -> bool:
    if cached is current:
        return True
    # Texts compare by content (a file read again is a new string); Documents by identity only.
    return isinstance(cached, str) and isinstance(current, str) and cached == current
