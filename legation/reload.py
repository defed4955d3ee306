"""The config version a service runs, and the reload step every service shares: load, keep the
old config on any error (logged with file, line and reason, counted), apply only real changes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from legation.errors import ConfigErrors

__all__ = ["ConfigVersion"]

log = logging.getLogger("legation.reload")


class _Versioned(Protocol):
    @property
    def version(self) -> str: ...


C = TypeVar("C", bound=_Versioned)


class ConfigVersion:
    """Tracks the version in force in `loads{result}` and `info{version}` metrics."""

    def __init__(self, *, what: str, version: str, loads: Any, info: Any, **details: Any) -> None:
        self.what = what
        self.current = version
        self._loads = loads
        self._info = info
        loads.labels("ok").inc()
        info.labels(version).set(1)
        log.info(f"{what} loaded", extra={"version": version, **details})

    async def reload(self, load: Callable[[], C], apply: Callable[[C], Awaitable[None]]) -> None:
        try:
            new = load()
        except ConfigErrors as exc:
            self._loads.labels("error").inc()
            for err in exc.errors:
                log.error(
                    "%s rejected, keeping version %s: %s", self.what, self.current, err,
                    extra={"file": err.file, "line": err.line, "reason": err.reason},
                )  # fmt: skip
            return
        if new.version == self.current:
            return
        await apply(new)
        self._loads.labels("ok").inc()
        self._info.remove(self.current)
        self._info.labels(new.version).set(1)
        log.info(f"{self.what} reloaded", extra={"version": new.version, "previous": self.current})
        self.current = new.version
