"""The config version a service runs, and the reload step every service shares: load, keep the
old config on any error (logged with file, line and reason, counted), apply only real changes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from legation.core.errors import ConfigErrors

__all__ = ["ConfigVersion", "Versioned"]

log = logging.getLogger("legation.core.reload")


class Versioned(Protocol):
    """A loaded config: anything with the version that identifies it."""

    @property
    def version(self) -> str: ...


C = TypeVar("C", bound=Versioned)


class ConfigVersion:
    """Tracks the version in force in `loads{result}` and `info{version}` metrics."""

    def __init__(self, *, what: str, version: str | None, loads: Any, info: Any, **details: Any) -> None:
        """`version` None: nothing is loaded yet (a service waiting for its config feed); the
        first `reload` then logs "loaded" rather than "reloaded"."""
        self.what = what
        self.current = version
        self._loads = loads
        self._info = info
        if version is None:
            log.info(f"waiting for {what}", extra=details)
            return
        loads.labels("ok").inc()
        info.labels(version).set(1)
        log.info(f"{what} loaded", extra={"version": version, **details})

    async def reload(
        self, load: Callable[[], C], apply: Callable[[C], Awaitable[None]], *, raise_errors: bool = False
    ) -> None:
        """Load and apply a new version. On ConfigErrors the old version stays (counted and
        logged); `raise_errors` then re-raises them for a caller that reports them too."""
        try:
            new = load()
        except ConfigErrors as exc:
            self._loads.labels("error").inc()
            keeping = self.current or "none (nothing loaded yet)"
            for err in exc.errors:
                log.error(
                    "%s rejected, keeping version %s: %s", self.what, keeping, err,
                    extra={"file": err.file, "line": err.line, "reason": err.reason},
                )  # fmt: skip
            if raise_errors:
                raise
            return
        if new.version == self.current:
            return
        await apply(new)
        self._loads.labels("ok").inc()
        if self.current is not None:
            self._info.remove(self.current)
        self._info.labels(new.version).set(1)
        if self.current is None:
            log.info(f"{self.what} loaded", extra={"version": new.version})
        else:
            log.info(f"{self.what} reloaded", extra={"version": new.version, "previous": self.current})
        self.current = new.version
