"""Each upstream's health as the Envoys see it: their admin `/clusters?format=json`, polled.

`--envoy-admin URL` (repeatable, one per Envoy) names admin interfaces the controller may read;
`legation up` passes its Envoy's. Only `GET /clusters?format=json` is ever sent. Per cluster
host, Envoy reports its health flags (active health check, outlier ejection, EDS status) and
counters; a host Envoy could never connect to is `unreachable`, and one whose connection
failures grew since the previous poll without a successful request is `failing` (Legation's
clusters have no active health checks, so for a dead upstream these counters are the signal).

`parse_clusters` is pure (tested on Envoy's real output); `EnvoyAdminPoller` does the I/O.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

__all__ = ["AdminView", "EnvoyAdminPoller", "HostHealth", "parse_clusters"]

log = logging.getLogger("legation.controller.upstreams")

MAX_BODY = 16 << 20
"""Bytes read of one /clusters answer at most (about 1.5 KiB per host)."""

State = Literal["healthy", "ejected", "unhealthy", "unreachable", "failing"]
_FAILED_FLAGS = ("failed_active_health_check", "failed_eds_health", "active_hc_timeout")
_BAD_EDS = frozenset({"UNHEALTHY", "DRAINING", "TIMEOUT"})


@dataclass(frozen=True)
class HostHealth:
    """One endpoint of one cluster, in one Envoy."""

    address: str
    state: State
    detail: str
    """Why, in a few words (the flags or counters that decided the state)."""
    counters: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AdminView:
    """One poll of one Envoy's admin interface."""

    admin: str
    at: float
    clusters: Mapping[str, tuple[HostHealth, ...]] = field(default_factory=dict)
    error: str | None = None
    """Why the poll failed (then `clusters` holds the previous poll's view)."""


def parse_clusters(
    data: Any, previous: Mapping[str, tuple[HostHealth, ...]]
) -> dict[str, tuple[HostHealth, ...]]:
    """Envoy's `/clusters?format=json` → hosts by cluster name, judged against `previous`."""
    found: dict[str, tuple[HostHealth, ...]] = {}
    for cluster in data.get("cluster_statuses", ()) if isinstance(data, dict) else ():
        name = cluster.get("name")
        if not isinstance(name, str):
            continue
        before = {h.address: h for h in previous.get(name, ())}
        hosts = [_host(h, before) for h in cluster.get("host_statuses", ()) if isinstance(h, dict)]
        found[name] = tuple(h for h in hosts if h is not None)
    return found


def _host(data: dict[str, Any], before: Mapping[str, HostHealth]) -> HostHealth | None:
    socket = (data.get("address") or {}).get("socket_address") or {}
    if "address" not in socket:
        return None
    host = str(socket["address"])
    address = (
        f"[{host}]:{socket.get('port_value', 0)}" if ":" in host else f"{host}:{socket.get('port_value', 0)}"
    )
    if data.get("hostname"):
        address = f"{data['hostname']} ({address})"
    counters = {
        s["name"]: int(s.get("value", 0))
        for s in data.get("stats", ())
        if isinstance(s, dict) and "name" in s
    }
    state, detail = _judge(data.get("health_status") or {}, counters, before.get(address))
    return HostHealth(address=address, state=state, detail=detail, counters=counters)


def _judge(
    health: dict[str, Any], counters: Mapping[str, int], before: HostHealth | None
) -> tuple[State, str]:
    if health.get("failed_outlier_check"):
        return "ejected", "ejected by outlier detection"
    failed = [flag for flag in _FAILED_FLAGS if health.get(flag)]
    eds = health.get("eds_health_status")
    if failed or eds in _BAD_EDS:
        return "unhealthy", ", ".join(failed) or f"EDS status {eds}"
    fails, total = counters.get("cx_connect_fail", 0), counters.get("cx_total", 0)
    if fails and fails == total:
        return "unreachable", f"every connection failed ({fails})"
    if before is not None:
        new_fails = fails - before.counters.get("cx_connect_fail", 0)
        new_ok = counters.get("rq_success", 0) - before.counters.get("rq_success", 0)
        if new_fails > 0 and new_ok <= 0:
            return "failing", f"{new_fails} connection failures since the last look, no success"
    if not total:
        return "healthy", "no connections yet"
    return "healthy", f"{counters.get('rq_success', 0)} requests succeeded, {fails} connection failures"


class EnvoyAdminPoller:
    """Polls each admin URL every `interval` seconds; `views()` is the latest of each."""

    def __init__(self, admins: Sequence[str], *, interval: float = 5.0, timeout: float = 2.0) -> None:
        self.admins = tuple(a.rstrip("/") for a in admins)
        self._interval = interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._views: dict[str, AdminView] = {}

    def views(self) -> list[AdminView]:
        return [self._views[a] for a in self.admins if a in self._views]

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            while True:
                await asyncio.gather(*(self._poll(session, admin) for admin in self.admins))
                await asyncio.sleep(self._interval)

    async def _poll(self, session: aiohttp.ClientSession, admin: str) -> None:
        previous = self._views.get(admin)
        before = previous.clusters if previous is not None else {}
        try:
            async with session.get(f"{admin}/clusters", params={"format": "json"}) as response:
                response.raise_for_status()
                body = await response.content.read(MAX_BODY + 1)
            if len(body) > MAX_BODY:
                raise ValueError(f"answer over {MAX_BODY} bytes")
            clusters = parse_clusters(json.loads(body), before)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            error = str(exc) or type(exc).__name__
            if previous is None or previous.error != error:
                log.warning("Envoy admin not read", extra={"admin": admin, "error": error})
            self._views[admin] = AdminView(admin, time.time(), before, error=error)
            return
        self._views[admin] = AdminView(admin, time.time(), clusters)
