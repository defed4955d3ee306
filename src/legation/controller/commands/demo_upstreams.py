"""The demo upstreams of `legation up`: one `legation echo` per loopback service the Mappings
name, following the manifests while `up` runs.

At start the services come from the directory itself (so the upstreams are ready before Envoy
gets its first routes); afterwards from the controller's `/api/resources` (the Mappings it
accepted), polled by `up`. A port that is the gateway's own (Envoy, controller, authz, rate
limit, Redis) never gets one, whatever a Mapping says; a port something else already listens on
is left to it. An upstream whose port no Mapping names any more is stopped.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from legation.api.v1alpha1 import Mapping as MappingResource
from legation.api.v1alpha1.fields import parse_service
from legation.controller.commands.up_preflight import bindable
from legation.controller.commands.up_processes import Child, Stack
from legation.controller.commands.validate import validate_snapshot
from legation.controller.sources.directory import DirectorySource
from legation.core.names import DEFAULT_GATEWAY

__all__ = ["DemoUpstreams", "Endpoint", "from_api", "from_directory", "loopback_services"]

Endpoint = tuple[str, int]
"""(host, port) of a demo upstream."""
MappingRef = tuple[str, str, str]
"""(namespace, name, service) of one Mapping."""

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def loopback_services(mappings: Iterable[MappingRef]) -> dict[Endpoint, str]:
    """Every plain-HTTP loopback service → a name for its upstream (the first Mapping naming it)."""
    found: dict[Endpoint, str] = {}
    for namespace, name, service in sorted(mappings):
        try:
            upstream = parse_service(service)
        except ValueError:
            continue  # the controller reports it; nothing to start
        if upstream.host in _LOOPBACK and not upstream.tls:
            host = "127.0.0.1" if upstream.host == "localhost" else upstream.host
            found.setdefault((host, upstream.port), f"{namespace}/{name}")
    return found


def from_directory(directory: str, *, gateway: str = DEFAULT_GATEWAY) -> dict[Endpoint, str]:
    """The loopback services of `gateway`'s valid Mappings in `directory`."""
    report = validate_snapshot(DirectorySource(directory).load(), gateway=gateway)
    return loopback_services(
        (r.metadata.namespace, r.metadata.name, r.spec.service)
        for r in report.resources
        if isinstance(r, MappingResource)
    )


def from_api(api: str) -> dict[Endpoint, str] | None:
    """The loopback services of the Mappings the controller at `api` accepted; None if it cannot
    say now (not ready, restarting): the caller keeps what runs."""
    try:
        with urllib.request.urlopen(f"{api}/api/resources?kind=Mapping&state=Accepted", timeout=2) as r:
            body: dict[str, Any] = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return loopback_services(_mapping_refs(body.get("resources", [])))


def _mapping_refs(resources: list[dict[str, Any]]) -> Iterable[MappingRef]:
    for item in resources:
        service = ((item.get("resource") or {}).get("spec") or {}).get("service")
        if isinstance(service, str):
            yield str(item["namespace"]), str(item["name"]), service


class DemoUpstreams:
    """The running demo upstreams, brought in line with the wanted ones by `sync`."""

    def __init__(
        self, *, stack: Stack, legation: str, reserved: Mapping[int, str], say: Callable[[str], None]
    ) -> None:
        self._stack = stack
        self._legation = legation
        self._reserved = dict(reserved)
        """Port → what of the gateway listens there: never a demo upstream."""
        self._say = say
        self._running: dict[Endpoint, Child] = {}
        self._skipped: set[Endpoint] = set()
        """Named but not ours to serve; said once while the Mappings keep naming it."""

    def sync(self, wanted: Mapping[Endpoint, str]) -> list[tuple[Endpoint, str, Child]]:
        """Stop upstreams no longer named, start the new ones; the started ones (not yet ready)."""
        for endpoint in [e for e in self._running if e not in wanted]:
            self._stack.stop_one(self._running.pop(endpoint))
            self._say(f"  upstream {_show(endpoint)} stopped: no Mapping names it any more")
        self._skipped &= set(wanted)
        started = []
        for endpoint, name in sorted(wanted.items()):
            if endpoint in self._running or endpoint in self._skipped:
                continue
            child = self._start(endpoint, name)
            if child is not None:
                started.append((endpoint, name, child))
        return started

    def reap(self) -> None:
        """Forget upstreams that exited (e.g. lost a race for their port): a demo upstream is not
        worth stopping the gateway for, and it is not restarted while its Mappings stay."""
        for endpoint, child in list(self._running.items()):
            if child.process.poll() is not None:
                self._stack.stop_one(self._running.pop(endpoint))
                self._skipped.add(endpoint)
                code = child.process.returncode
                self._say(f"  upstream {_show(endpoint)} exited with code {code}; see {child.log}")

    def _start(self, endpoint: Endpoint, name: str) -> Child | None:
        reason = self._refusal(endpoint)
        if reason is not None:
            self._skipped.add(endpoint)
            self._say(f"  upstream {_show(endpoint)} ({name}) not started: {reason}")
            return None
        argv = [self._legation, "echo", "--listen", _show(endpoint), "--name", name]
        child = self._stack.start(f"upstream-{endpoint[1]}", argv)
        self._running[endpoint] = child
        return child

    def _refusal(self, endpoint: Endpoint) -> str | None:
        host, port = endpoint
        if port in self._reserved:
            return f"port {port} is the gateway's own ({self._reserved[port]})"
        if not bindable(host, port):
            return f"port {port} is in use by something else: left to it"
        return None


def _show(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
