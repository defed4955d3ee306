"""`status.conditions` written back to the Legation objects, in the background.

Every pipeline run hands its statuses over (`submit`, synchronous and cheap: compilation never
waits for the API). What is waiting to be written is one desired condition per object, the
latest only, so a burst of runs writes each object at most once. The writer wakes, lets a burst
settle for `batch_seconds`, then writes what differs from what the watch last saw on the object,
a few requests at a time, as JSON merge patches of the status subresource:

    status:
      gateways:
        default:                  # the gateway's name: each gateway writes only its own entry
          conditions:
          - type: Accepted
            status: "True" | "False"
            reason: Accepted | Rejected
            message: ...            # every problem, with its field path, when rejected
            observedGeneration: 3   # the metadata.generation the verdict is about
            lastTransitionTime: ... # kept while status stays the same
          - type: Programmed        # Mappings, Hosts, AuthServices: this gateway's Envoys run it
            status: "True" | "False"
            reason: Programmed | Pending | NoEnvoy | Nacked | Rejected
            message: ...            # how many Envoys ACKed, how long it took; or Envoy's error

`Programmed` changes between pipeline runs, as Envoys ACK (`submit_programmed`); it is queued
like a new verdict, for the objects whose condition changed only.

Conditions of other types (written by someone else) are kept. The patch carries the object's
uid as a precondition, so a verdict about a deleted object never lands on a new one of the same
name. Only the leader writes (`is_leader`); a replica that becomes leader re-checks every
object, since the previous leader may have died with writes pending. Failed writes are retried
with backoff unless a newer verdict replaced them.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from legation.api.v1alpha1 import ResourceId
from legation.controller.compiler.ir import Programmed, ResourceStatus
from legation.controller.kubernetes.client import KINDS, ApiError, KubeClient, KubeError
from legation.controller.kubernetes.informer import Backoff
from legation.controller.sources import SourceSnapshot
from legation.core.errors import format_path
from legation.core.names import DEFAULT_GATEWAY

__all__ = ["CONDITION", "PROGRAMMED", "Desired", "StatusWriter", "desired_statuses"]

log = logging.getLogger("legation.controller.status")

CONDITION = "Accepted"
PROGRAMMED = "Programmed"
MAX_MESSAGE = 4096
ORIGIN_PREFIX = "kubernetes:"

ObjectRef = tuple[str, str, str]
"""(kind, namespace, name)"""

Observe = Callable[[str, str, str], dict[str, Any] | None]


@dataclass(frozen=True)
class Desired:
    """The conditions one object should carry: Accepted, and Programmed where known."""

    uid: str | None
    generation: int | None
    accepted: bool
    message: str
    programmed: Programmed | None = None

    def conditions(self) -> dict[str, dict[str, Any]]:
        """Condition type → its fields (without lastTransitionTime)."""
        found = {
            CONDITION: _condition(
                CONDITION,
                self.accepted,
                "Accepted" if self.accepted else "Rejected",
                self.message,
                self.generation,
            )
        }
        if self.programmed is not None:
            p = self.programmed
            found[PROGRAMMED] = _condition(
                PROGRAMMED, p.programmed, p.reason, _cut(p.message), self.generation
            )
        return found

    def matches(self, current: Iterable[dict[str, Any]]) -> bool:
        by_type = {c.get("type"): c for c in current}
        return all(
            (have := by_type.get(kind)) is not None and all(have.get(k) == v for k, v in want.items())
            for kind, want in self.conditions().items()
        )


def _condition(kind: str, status: bool, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def _cut(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def _message(status: ResourceStatus) -> str:
    if status.accepted:
        # Warnings (a certificate about to expire) keep the resource Accepted, and say so here,
        # where `kubectl describe` shows them.
        # A used JWTPolicy says who enforces it: `enforcement: native`, or `service (why)`.
        enforcement = [f"enforcement: {status.enforcement}"] if status.enforcement else []
        warnings = [f"warning: {w}" for w in status.warnings]
        return _cut("; ".join(["Accepted by the controller", *enforcement, *warnings]))
    parts = [f"{format_path(p.path)}: {p.reason}" if p.path else p.reason for p in status.problems]
    return _cut("; ".join(parts) or "Rejected")


def desired_statuses(
    statuses: Iterable[ResourceStatus], snapshot: SourceSnapshot
) -> dict[ObjectRef, Desired]:
    """The condition each Legation object of the snapshot should carry, from the run's verdicts."""
    documents = {doc.file: doc for doc in snapshot.documents}
    result: dict[ObjectRef, Desired] = {}
    for status in statuses:
        origin = status.origin.file
        if not origin.startswith(ORIGIN_PREFIX):
            continue
        kind, _, rest = origin[len(ORIGIN_PREFIX) :].partition("/")
        namespace, _, name = rest.partition("/")
        doc = documents.get(origin)
        if kind not in KINDS or doc is None:
            continue  # Secrets carry no status
        metadata = doc.data.get("metadata") if isinstance(doc.data, dict) else None
        metadata = metadata if isinstance(metadata, dict) else {}
        generation = metadata.get("generation")
        uid = metadata.get("uid")
        result[(kind, namespace, name)] = Desired(
            uid=uid if isinstance(uid, str) else None,
            generation=generation if isinstance(generation, int) else None,
            accepted=status.accepted,
            message=_message(status),
        )
    return result


def _conditions(observed: dict[str, Any], gateway: str) -> list[dict[str, Any]]:
    """The conditions `gateway` wrote on the object, as the watch last saw them."""
    status = observed.get("status")
    gateways = status.get("gateways") if isinstance(status, dict) else None
    entry = gateways.get(gateway) if isinstance(gateways, dict) else None
    conditions = entry.get("conditions") if isinstance(entry, dict) else None
    return [c for c in conditions or () if isinstance(c, dict)]


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StatusWriter:
    """Writes the latest verdicts as conditions (see the module)."""

    def __init__(
        self,
        client: KubeClient,
        observe: Observe,
        *,
        is_leader: Callable[[], bool] = lambda: True,
        batch_seconds: float = 0.2,
        concurrency: int = 4,
        gateway: str = DEFAULT_GATEWAY,
    ) -> None:
        self.client = client
        self.gateway = gateway
        """Whose entry under status.gateways this writer owns."""
        self.observe = observe
        """The object as the watch last saw it (status included), or None when gone."""
        self.is_leader = is_leader
        self.batch_seconds = batch_seconds
        self.concurrency = concurrency
        self.pending: dict[ObjectRef, Desired] = {}
        self.desired: dict[ObjectRef, Desired] = {}
        """The latest verdict for every object: re-checked on becoming leader."""
        self.skipped = 0
        self._programmed: dict[ObjectRef, Programmed] = {}
        self._written: dict[ObjectRef, tuple[Desired, str | None]] = {}
        """What we wrote last, and the object's resourceVersion when we wrote it: until the watch
        shows a newer version, the cached object predates our write and must not trigger it again."""
        self._wake = asyncio.Event()
        self._backoff = Backoff(initial=1.0, cap=30.0)

    def submit(self, statuses: Iterable[ResourceStatus], snapshot: SourceSnapshot) -> None:
        """Queue the verdicts of one run (replacing older ones). Never blocks."""
        self.desired = {
            ref: replace(d, programmed=self._programmed.get(ref))
            for ref, d in desired_statuses(statuses, snapshot).items()
        }
        self.pending = dict(self.desired)
        for ref in [r for r in self._written if r not in self.desired]:
            del self._written[ref]
        self._wake.set()

    def submit_programmed(self, programmed: Mapping[ResourceId, Programmed]) -> None:
        """Queue the `Programmed` conditions that changed. Never blocks; cost: one comparison per
        resource."""
        self._programmed = {(rid.kind, rid.namespace, rid.name): p for rid, p in programmed.items()}
        changed = False
        for ref, desired in self.desired.items():
            now = self._programmed.get(ref)
            if desired.programmed != now:
                self.desired[ref] = self.pending[ref] = replace(desired, programmed=now)
                changed = True
        if changed:
            self._wake.set()

    def leadership_changed(self, leader: bool) -> None:
        if leader:
            self.pending = dict(self.desired)
            self._written.clear()
            self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.batch_seconds)
            self._wake.clear()
            if not self.is_leader():
                continue  # kept pending: written if this replica becomes leader
            batch, self.pending = self.pending, {}
            failed = await self._write_all(batch)
            if failed:
                for ref, desired in failed.items():
                    self.pending.setdefault(ref, desired)  # unless a newer verdict came meanwhile
                delay = self._backoff.next()
                log.warning(
                    "status writes failed; retrying", extra={"failed": len(failed), "retry_seconds": delay}
                )
                await asyncio.sleep(delay)
                self._wake.set()
            else:
                self._backoff.reset()

    async def _write_all(self, batch: dict[ObjectRef, Desired]) -> dict[ObjectRef, Desired]:
        failed: dict[ObjectRef, Desired] = {}
        limit = asyncio.Semaphore(self.concurrency)

        async def one(ref: ObjectRef, desired: Desired) -> None:
            async with limit:
                try:
                    await self._write(ref, desired)
                except ApiError as exc:
                    if exc.code in (404, 409):  # gone, or replaced by a new object: a new run follows
                        log.info("status not written", extra={"resource": "/".join(ref), "error": str(exc)})
                        return
                    failed[ref] = desired
                except KubeError:
                    failed[ref] = desired

        await asyncio.gather(*(one(ref, desired) for ref, desired in batch.items()))
        return failed

    async def _write(self, ref: ObjectRef, desired: Desired) -> None:
        kind, namespace, name = ref
        observed = self.observe(kind, namespace, name)
        if observed is None:
            return
        metadata = observed.get("metadata") or {}
        if desired.uid is not None and metadata.get("uid") != desired.uid:
            return  # the verdict is about an object that no longer exists
        version = metadata.get("resourceVersion")
        conditions = _conditions(observed, self.gateway)
        written = self._written.get(ref)
        if desired.matches(conditions) or (written is not None and written == (desired, version)):
            self.skipped += 1
            return
        wanted = desired.conditions()
        by_type = {c.get("type"): c for c in conditions}
        ours = []
        for kind_of_condition, condition in wanted.items():
            current = by_type.get(kind_of_condition)
            keep_time = current is not None and current.get("status") == condition["status"]
            stamp = current.get("lastTransitionTime") if keep_time and current else _now()
            ours.append({**condition, "lastTransitionTime": stamp})
        others = [c for c in conditions if c.get("type") not in wanted]
        # A merge patch of our entry only: other gateways' entries under status.gateways stay.
        patch: dict[str, Any] = {"status": {"gateways": {self.gateway: {"conditions": [*others, *ours]}}}}
        if desired.uid is not None:
            patch["metadata"] = {"uid": desired.uid}
        await self.client.request(
            "PATCH",
            KINDS[kind].path(namespace, name, "status"),
            body=patch,
            content_type="application/merge-patch+json",
        )
        self._written[ref] = (desired, version)
