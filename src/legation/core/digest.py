"""Content versions: short digests that change exactly when content changes.

Every version in Legation (a source snapshot, a config file set, an Envoy snapshot, a feed) is one
of these, so replicas that read the same inputs agree on versions without talking to each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["content_version"]


def content_version(items: Iterable[tuple[str, str | bytes]], *, length: int = 16) -> str:
    """A digest of (key, content) pairs, independent of their order. Each part is length-prefixed,
    so no two different sets of pairs can run together into the same bytes."""
    digest = hashlib.sha256()
    for key, content in sorted(items):
        raw = content.encode() if isinstance(content, str) else content
        digest.update(f"{len(key)}:{key}{len(raw)}:".encode())
        digest.update(raw)
    return digest.hexdigest()[:length]
