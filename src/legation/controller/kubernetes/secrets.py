"""The Secrets that resources name, read one by one: `GET` of each referenced Secret, never a list
or a watch of Secrets.

Why not an informer as for the other kinds: a list or watch of Secrets returns every Secret of
a namespace (service account tokens, Helm releases, other applications' credentials), and RBAC
cannot narrow `list`/`watch` to names it does not know in advance. A GET by name needs only the
`get` verb, which lets the controller read a Secret it was told about but not discover any
other; and only referenced Secrets ever enter the controller's memory.

The price is polling: a referenced Secret is read at once when a Host (`spec.tlsSecret`) or a
JWTPolicy (`jwks.secretRef`) first names it, then every `poll_seconds` (default 10) to follow
changes (a renewed certificate, a rotated key). A Secret that no longer exists (404) is dropped;
any other failure (403 while RBAC is being fixed, the API away) keeps what was last read and is
retried at the next poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from legation.controller.kubernetes.client import SECRETS, ApiError, KubeClient, KubeError

__all__ = ["SecretReader"]

log = logging.getLogger("legation.controller.kube")

ObjectKey = tuple[str, str]
"""(namespace, name)"""


class SecretReader:
    """The referenced Secrets, by (namespace, name), kept current by polling (see the module)."""

    def __init__(
        self,
        client: KubeClient,
        *,
        on_change: Callable[[], None] = lambda: None,
        keep: Callable[[dict[str, Any]], bool] = lambda obj: True,
        poll_seconds: float = 10.0,
        concurrency: int = 8,
    ) -> None:
        self.client = client
        self.on_change = on_change
        self.keep = keep
        self.poll_seconds = poll_seconds
        self.objects: dict[ObjectKey, dict[str, Any]] = {}
        """The referenced Secrets that exist and are kept (their type is one the compiler reads)."""
        self.wanted: frozenset[ObjectKey] = frozenset()
        self.gets = 0
        """GETs made, for tests and logs."""
        self._limit = asyncio.Semaphore(concurrency)
        self._failing: set[ObjectKey] = set()

    async def want(self, keys: Iterable[ObjectKey]) -> None:
        """Make `keys` the referenced Secrets: read the new ones now, forget the others."""
        wanted = frozenset(keys)
        new = wanted - self.wanted
        self.wanted = wanted
        dropped = [key for key in self.objects if key not in wanted]
        for key in dropped:
            del self.objects[key]
        await asyncio.gather(*(self._read(key) for key in sorted(new)))

    async def run(self) -> None:
        """Re-read every referenced Secret every `poll_seconds`, until cancelled; calls
        `on_change` when one changed, appeared or disappeared."""
        while True:
            await asyncio.sleep(self.poll_seconds)
            changed = await asyncio.gather(*(self._read(key) for key in sorted(self.wanted)))
            if any(changed):
                self.on_change()

    async def _read(self, key: ObjectKey) -> bool:
        """GET one Secret into `objects`; True when what is held changed."""
        namespace, name = key
        async with self._limit:
            self.gets += 1
            try:
                obj: dict[str, Any] | None = await self.client.request("GET", SECRETS.path(namespace, name))
            except ApiError as exc:
                if exc.code != 404:
                    return self._failed(key, exc)
                obj = None
            except KubeError as exc:
                return self._failed(key, exc)
        self._failing.discard(key)
        if key not in self.wanted:  # no longer referenced while we were reading
            return False
        if obj is None or not self.keep(obj):
            return self.objects.pop(key, None) is not None
        changed = self.objects.get(key) != obj
        self.objects[key] = obj
        return changed

    def _failed(self, key: ObjectKey, exc: KubeError) -> bool:
        if key not in self._failing:  # log the start of a failure, not every poll
            self._failing.add(key)
            log.warning(
                "cannot read a referenced Secret; keeping what was read before",
                extra={"secret": f"{key[0]}/{key[1]}", "error": str(exc)},
            )
        return False
