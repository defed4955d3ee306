"""Follow a config file or directory and call back when its contents change.

The parent directory is watched rather than the file itself: editors and Kubernetes ConfigMap
mounts replace files by rename, which a watch on the old inode would never see.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles

__all__ = ["watch_path"]

log = logging.getLogger("legation.core.watch")


async def watch_path(
    path: str | Path, on_change: Callable[[], Awaitable[None]], *, debounce_ms: int = 200
) -> None:
    target = Path(path).resolve()  # noqa: ASYNC240 - once, at start
    root = target if target.is_dir() else target.parent

    def relevant(_: watchfiles.Change, changed: str) -> bool:
        p = Path(changed)
        return root == target or p == target or p.name.startswith("..") or p.resolve() == target

    async for _ in watchfiles.awatch(
        root, watch_filter=relevant, debounce=debounce_ms, step=50, recursive=root == target
    ):
        try:
            await on_change()
        except Exception:  # a failing reload must never stop the watch
            log.exception("config reload failed")
