"""List+watch of one resource type in one namespace (or all): an always-current local cache.

The protocol is the API server's: list (in pages) to get every object and the collection's
resourceVersion, then watch from that version; every event moves the version on, and so do
BOOKMARK events (`allowWatchBookmarks`), which the server sends while nothing of ours changes so
that a reconnect can resume from a recent version instead of one the server has forgotten.

- A watch the server ends (its `timeoutSeconds`, a restart, a load balancer) is resumed from the
  last version, at once.
- 410 Gone (as the watch's HTTP status or as an ERROR event) means the server no longer has the
  history since our version: we list again and replace the cache with the list, so that objects
  deleted while we were not watching disappear too. Nothing is lost: the list is the truth.
- Any other failure (connection refused, 5xx, 403 while RBAC is being fixed) is retried with
  exponential backoff, capped, with jitter so that replicas do not retry in step.

`on_change` is called (synchronously, cheaply) after each change of the cache; the consumer
debounces. `keep` drops objects the consumer never needs (e.g. Secrets of other types) before
they take memory.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from legation.controller.kubernetes.client import ApiError, KubeClient, KubeError, ResourceType

__all__ = ["Backoff", "Gone", "Informer", "ObjectKey"]

log = logging.getLogger("legation.controller.kube")

ObjectKey = tuple[str, str]
"""(namespace, name)"""


class Gone(Exception):
    """410: the resourceVersion we hold is too old for the server; list again."""


class Backoff:
    """Exponential delays: `initial`, doubling, capped at `cap`, each with ±`jitter` spread."""

    def __init__(self, initial: float = 0.5, cap: float = 30.0, jitter: float = 0.2) -> None:
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self.failures = 0

    def next(self) -> float:
        base = min(self.cap, self.initial * 2.0**self.failures)
        self.failures += 1
        spread: float = random.uniform(1 - self.jitter, 1 + self.jitter)
        return base * spread

    def reset(self) -> None:
        self.failures = 0


class Informer:
    """The objects of `resource` in `namespace` (None: all namespaces), kept current by `run()`."""

    def __init__(
        self,
        client: KubeClient,
        resource: ResourceType,
        namespace: str | None,
        *,
        on_change: Callable[[], None] = lambda: None,
        keep: Callable[[dict[str, Any]], bool] = lambda obj: True,
        backoff: Backoff | None = None,
        watch_seconds: int = 300,
        page_size: int = 500,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.on_change = on_change
        self.keep = keep
        self.backoff = backoff or Backoff()
        self.watch_seconds = watch_seconds
        """The server ends each watch after about this long (randomised, as client-go does, so
        that replicas' watches do not all restart at once); we then resume it."""
        self.page_size = page_size
        self.objects: dict[ObjectKey, dict[str, Any]] = {}
        self.resource_version: str | None = None
        """The version the cache is at: where the next watch resumes; None: list first."""
        self.synced = asyncio.Event()
        """Set once the first list is in the cache."""
        self.lists = 0
        self.watches = 0
        self.last_error: str | None = None
        self._gone = 0
        """410s in a row without an event in between."""

    @property
    def description(self) -> str:
        where = f"namespace {self.namespace}" if self.namespace is not None else "all namespaces"
        return f"{self.resource.plural} in {where}"

    async def run(self) -> None:
        """Keep the cache current until cancelled. Never raises otherwise."""
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                await self._watch()
            except Gone:
                log.info("watch expired (410 Gone); listing again", extra={"resource": self.description})
                self.resource_version = None
                self._gone += 1
                if self._gone > 1:  # relisted, yet 410 again before any event: do not spin
                    await asyncio.sleep(self.backoff.next())
            except KubeError as exc:
                self.last_error = str(exc)
                delay = self.backoff.next()
                log.warning(
                    "list/watch failed; retrying",
                    extra={"resource": self.description, "error": str(exc), "retry_seconds": round(delay, 2)},
                )
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        items: list[dict[str, Any]] = []
        params = {"limit": str(self.page_size)}
        while True:
            try:
                page = await self.client.request("GET", self.resource.path(self.namespace), params=params)
            except ApiError as exc:
                if exc.code == 410 and "continue" in params:  # the paging snapshot expired: start over
                    items, params = [], {"limit": str(self.page_size)}
                    continue
                raise
            items.extend(i for i in page.get("items") or () if isinstance(i, dict))
            metadata = page.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                break
            params = {"limit": str(self.page_size), "continue": str(token)}
        self.lists += 1
        fresh = {key: obj for obj in items if (key := _key(obj)) is not None and self.keep(obj)}
        changed = fresh != self.objects
        self.objects = fresh
        self.resource_version = str(metadata.get("resourceVersion") or "") or None
        self.last_error = None
        self.backoff.reset()
        if not self.synced.is_set():
            self.synced.set()
            changed = True
        if changed:
            self.on_change()
        if self.resource_version is None:  # a server that gives no version cannot be watched from one
            raise KubeError(f"list of {self.description} returned no resourceVersion")

    async def _watch(self) -> None:
        assert self.resource_version is not None
        seconds = int(self.watch_seconds * random.uniform(0.9, 1.1))
        params = {
            "watch": "true",
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(seconds),
        }
        self.watches += 1
        started, events = asyncio.get_running_loop().time(), 0
        try:
            async for event in self.client.stream(
                self.resource.path(self.namespace), params=params, timeout=seconds + 30
            ):
                self._apply(event)
                events += 1
        except ApiError as exc:
            if exc.code == 410:
                raise Gone() from None
            raise
        if not events and asyncio.get_running_loop().time() - started < 1:
            # Resuming at once is right for a watch that timed out, not for one ended straight away.
            raise KubeError(f"watch of {self.description} ended at once")

    def _apply(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, dict):
            raise KubeError(f"watch of {self.description}: an event without an object: {event!r:.200}")
        if kind == "ERROR":
            error = ApiError.from_status(obj)
            if error.code == 410:
                raise Gone()
            raise error
        version = (obj.get("metadata") or {}).get("resourceVersion")
        self._gone = 0
        if kind == "BOOKMARK":
            if version:
                self.resource_version = str(version)
            return
        key = _key(obj)
        if key is None or kind not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("ignoring a watch event", extra={"resource": self.description, "type": kind})
            return
        if kind == "DELETED" or not self.keep(obj):
            changed = self.objects.pop(key, None) is not None
        else:
            changed = self.objects.get(key) != obj
            self.objects[key] = obj
        if version:
            self.resource_version = str(version)
        self.backoff.reset()  # the watch works: the next failure starts from a short delay
        if changed:
            self.on_change()


def _key(obj: dict[str, Any]) -> ObjectKey | None:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        return None
    namespace = metadata.get("namespace")
    return (namespace if isinstance(namespace, str) else "", metadata["name"])
