"""Leader election with a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

One Lease (`legation-controller` in the controller's namespace by default) names the leader in
`spec.holderIdentity`. The leader renews `spec.renewTime` every `renew_seconds`; the others look
every `renew_seconds` and take the Lease over once it has not changed for `lease_seconds`.

Expiry is judged by when *we* saw the Lease last change (a local monotonic clock), never by
comparing its timestamps with our clock: replicas' clocks may disagree. So a replica that starts
next to a live leader waits at least one lease duration, and takes over no sooner than that
after the leader's last renewal.

Every write is a replace (PUT) carrying the resourceVersion that was read: of two replicas that
try at once, the API server lets one win and answers the other 409 Conflict. A leader that has
not managed to renew for `lease_seconds - renew_seconds` steps down on its own, before anyone
can take over, so two replicas never both believe they lead. On a clean stop the leader
releases the Lease (holder emptied), so that another replica takes over at its next look.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import random
from collections.abc import Callable
from typing import Any

from legation.controller.kubernetes.client import LEASES, ApiError, KubeClient, KubeError

__all__ = ["LeaderElector"]

log = logging.getLogger("legation.controller.leader")


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for, holds and renews one Lease (see the module)."""

    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: float = 15.0,
        renew_seconds: float = 5.0,
        on_change: Callable[[bool], None] = lambda leader: None,
    ) -> None:
        if renew_seconds >= lease_seconds:
            raise ValueError("the renew period must be shorter than the lease duration")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.on_change = on_change
        self.is_leader = False
        self._observed: tuple[str | None, float] = (None, 0.0)
        """(resourceVersion of the Lease as last seen, local time it was first seen so)."""
        self._renewed_at = 0.0
        self._taken = False
        """The Lease was last seen held by another replica."""

    @property
    def path(self) -> str:
        return LEASES.path(self.namespace, self.name)

    async def run(self) -> None:
        """Campaign and renew until cancelled."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    held = await self._try_acquire_or_renew()
                except KubeError as exc:
                    held = False
                    log.warning("lease not renewed", extra={"lease": self.path, "error": str(exc)})
                now = loop.time()
                if held:
                    self._renewed_at = now
                    self._set_leader(True)
                elif self._taken or now - self._renewed_at >= self.lease_seconds - self.renew_seconds:
                    self._set_leader(False)  # another replica leads, or soon may
                await asyncio.sleep(self.renew_seconds * (1 if self.is_leader else random.uniform(1.0, 1.2)))
        finally:
            if self.is_leader:
                self._set_leader(False)

    async def release(self) -> None:
        """Give the Lease up (a clean stop), so that another replica need not wait for it to lapse."""
        lease = await self._get()
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        lease["spec"] = {
            **lease["spec"],
            "holderIdentity": None,
            "leaseDurationSeconds": 1,
            "renewTime": _micro_time(),
        }
        await self.client.request("PUT", self.path, body=lease)
        log.info("lease released", extra={"lease": self.path, "identity": self.identity})

    def _set_leader(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        log.info(
            "leadership acquired" if leader else "leadership lost",
            extra={"lease": self.path, "identity": self.identity},
        )
        self.on_change(leader)

    async def _get(self) -> dict[str, Any] | None:
        try:
            return await self.client.request("GET", self.path)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    async def _try_acquire_or_renew(self) -> bool:
        loop = asyncio.get_running_loop()
        now = _micro_time()
        duration = max(1, math.ceil(self.lease_seconds))
        lease = await self._get()
        if lease is None:
            body = {
                "apiVersion": LEASES.api_version,
                "kind": LEASES.kind,
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": duration,
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            }
            try:
                await self.client.request("POST", LEASES.path(self.namespace), body=body)
            except ApiError as exc:
                if exc.code == 409:  # another replica created it first
                    return False
                raise
            return True
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or None
        version = (lease.get("metadata") or {}).get("resourceVersion")
        if version != self._observed[0]:
            self._observed = (version, loop.time())
        self._taken = holder is not None and holder != self.identity
        if self._taken:
            held_for = spec.get("leaseDurationSeconds") or duration
            if loop.time() - self._observed[1] < float(held_for):
                return False  # someone else leads, and renewed within its lease duration
        mine = holder == self.identity
        lease["spec"] = {
            **spec,
            "holderIdentity": self.identity,
            "leaseDurationSeconds": duration,
            "renewTime": now,
            "acquireTime": spec.get("acquireTime") if mine else now,
            "leaseTransitions": int(spec.get("leaseTransitions") or 0) + (0 if mine else 1),
        }
        try:
            updated = await self.client.request("PUT", self.path, body=lease)
        except ApiError as exc:
            if exc.code == 409:  # changed since we read it: another replica renewed or took it
                return False
            raise
        self._observed = ((updated.get("metadata") or {}).get("resourceVersion"), loop.time())
        if not mine:
            log.info("lease taken", extra={"lease": self.path, "identity": self.identity, "previous": holder})
        return True
