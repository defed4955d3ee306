"""The Kubernetes API as a resource source: `legation controller --kubernetes`.

Mappings, JWTPolicies, AuthServices and Hosts (`legation.dev/v1alpha1`) are listed and watched
(`informer`) in the namespaces given (`--namespace`, repeatable), or in all namespaces. Secrets
are never listed or watched: only those the resources name are read, one GET each, and polled
(`secrets`). Each object becomes one `Document` whose origin is `kubernetes:Kind/ns/name`,
so that snapshots, the pipeline and every message look exactly as with the directory source.

What a document holds, and why:

- `apiVersion` and `kind` of the resource type (list items of built-in types carry none);
- `metadata`: name, namespace, labels, annotations (less kubectl's last-applied copy of the
  object), `creationTimestamp` (older wins conflicts), `generation` and `uid` (the status
  writer's `observedGeneration` and precondition), nothing else: resourceVersion and
  managedFields change on every write, including our own status writes, and must not make a new
  snapshot;
- the rest of the object except `status` (written by us, never read);
- Secrets: only those that a Host (`spec.tlsSecret`) or JWTPolicy (`jwks.secretRef`) in the
  same namespace refers to are read at all, and only `kubernetes.io/tls` and `Opaque` ones are
  kept (a reference to another type reads as a missing Secret), so unrelated Secrets never
  enter the controller's memory, show up as resources or cause recompiles.

Each document is the object's data as YAML text read back by `load_documents`, so a problem's
line is a line of that text (what `kubectl get -o yaml` would show, keys sorted). Snapshots are
deterministic: every replica watching the same objects builds equal snapshots (same documents,
same version), hence identical xDS and feeds.

Events are debounced: a snapshot is built once nothing changed for `quiet_seconds` (at most
`max_batch_seconds` after the first change), and only yielded when its version changed. The
first snapshot waits until every list+watch has done its first list, so that a controller never
serves a partial view of the cluster.

While iterating, the source also runs leader election (`legation.controller.kubernetes.leader`) and the
status writer (`legation.controller.kubernetes.status`); `report(stages)` hands it each pipeline run.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from legation import __version__
from legation.api.v1alpha1 import ResourceId
from legation.controller.compiler.ir import Programmed, ResourceStatus
from legation.controller.kubernetes.client import KINDS, SECRETS, KubeClient, KubeError, ResourceType
from legation.controller.kubernetes.informer import Backoff, Informer
from legation.controller.kubernetes.leader import LeaderElector
from legation.controller.kubernetes.secrets import SecretReader
from legation.controller.kubernetes.status import ORIGIN_PREFIX, StatusWriter
from legation.controller.sources import SourceSnapshot
from legation.core.digest import content_version
from legation.core.names import DEFAULT_GATEWAY
from legation.core.yamlfile import Document, SafeDumper, load_documents

__all__ = ["KubernetesOptions", "KubernetesSource", "default_lease_namespace", "document_data", "origin_of"]

log = logging.getLogger("legation.controller.source")

SECRET_TYPES = frozenset({"kubernetes.io/tls", "Opaque"})
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def default_lease_namespace(service_account: str = SERVICE_ACCOUNT) -> str:
    """The pod's own namespace: `POD_NAMESPACE` (the Helm chart sets it from the downward API),
    else the service account's namespace file, else `legation-system`."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open(os.path.join(service_account, "namespace"), encoding="utf-8") as f:
            return f.read().strip() or "legation-system"
    except OSError:
        return "legation-system"


def default_identity() -> str:
    """Unique per process: the pod name (`POD_NAME`, else the hostname, which is the pod name in
    a pod) and the pid (two processes of one pod, or a restarted one, are different holders)."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}"


@dataclass(frozen=True)
class KubernetesOptions:
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty: all."""
    kubeconfig: str | None = None
    """A kubeconfig file; None: KUBECONFIG, ~/.kube/config, then the pod's service account."""
    write_status: bool = True
    leader_elect: bool = True
    """False: this replica writes status without a Lease (only if it is the only one)."""
    lease_name: str = "legation-controller"
    lease_namespace: str | None = None
    """None: `default_lease_namespace()`."""
    lease_seconds: float = 15.0
    renew_seconds: float = 5.0
    identity: str | None = None
    quiet_seconds: float = 0.1
    max_batch_seconds: float = 1.0
    watch_seconds: int = 300
    gateway: str = DEFAULT_GATEWAY
    """The gateway whose entry under status.gateways this controller writes."""
    secret_poll_seconds: float = 10.0
    """How often each referenced Secret is read again (Secrets are read by name, never watched)."""


def origin_of(kind: str, namespace: str, name: str) -> str:
    return f"{ORIGIN_PREFIX}{kind}/{namespace}/{name}"


def document_data(resource: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """What of an API object goes into its document (see the module docstring)."""
    metadata = obj.get("metadata") or {}
    meta: dict[str, Any] = {"name": metadata.get("name"), "namespace": metadata.get("namespace")}
    for key in ("labels", "annotations"):
        value = metadata.get(key)
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != LAST_APPLIED}
        if value:
            meta[key] = value
    for key in ("creationTimestamp", "generation", "uid"):
        if metadata.get(key) is not None:
            meta[key] = metadata[key]
    data: dict[str, Any] = {"apiVersion": resource.api_version, "kind": resource.kind, "metadata": meta}
    if resource == SECRETS:
        data.update({k: obj[k] for k in ("type", "data", "stringData", "immutable") if k in obj})
    else:
        data.update({k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")})
    return data


def _secret_kept(obj: dict[str, Any]) -> bool:
    return obj.get("type", "Opaque") in SECRET_TYPES


def _referenced_secrets(kind: str, obj: dict[str, Any]) -> list[str]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return []
    names: list[Any] = []
    if kind == "Host":
        tls = spec.get("tlsSecret")
        names.append(tls.get("name") if isinstance(tls, dict) else None)
    elif kind == "JWTPolicy":
        for provider in spec.get("providers") or ():
            jwks = provider.get("jwks") if isinstance(provider, dict) else None
            ref = jwks.get("secretRef") if isinstance(jwks, dict) else None
            names.append(ref.get("name") if isinstance(ref, dict) else None)
    return [n for n in names if isinstance(n, str)]


class KubernetesSource:
    """Resources from the Kubernetes API, with status written back (see the module)."""

    def __init__(self, options: KubernetesOptions, *, client: KubeClient | None = None) -> None:
        self.options = options
        self.client = client
        self.informers: dict[tuple[str, str | None], Informer] = {}
        """(kind, namespace or None for all) → its list+watch."""
        self.leader: LeaderElector | None = None
        self.status: StatusWriter | None = None
        self.secrets: SecretReader | None = None
        """The referenced Secrets (read by name; see `secrets`)."""
        self.identity = options.identity or default_identity()
        """This replica's name: the Lease holder identity and the client's User-Agent."""
        self._changed = asyncio.Event()
        self._documents: dict[str, tuple[str | None, str, Document]] = {}
        """origin → (resourceVersion, text, document): an object is dumped again only when its
        version changed, and parsed again only when its text did."""

    def observed(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as last seen by the watch (status included), or None."""
        for scope in (namespace, None):
            informer = self.informers.get((kind, scope))
            if informer is not None:
                return informer.objects.get((namespace, name))
        return None

    def report(self, statuses: tuple[ResourceStatus, ...], source: SourceSnapshot) -> None:
        """The pipeline's verdicts for the latest snapshot: queued for the status writer."""
        if self.status is not None:
            self.status.submit(statuses, source)

    def report_programmed(self, programmed: Mapping[ResourceId, Programmed]) -> None:
        """`Programmed` as of the latest ACKs: queued for the status writer (changed ones only)."""
        if self.status is not None:
            self.status.submit_programmed(programmed)

    async def snapshots(self) -> AsyncIterator[SourceSnapshot]:
        if self.client is None:
            self.client = await _connect(self.options.kubeconfig, self.identity)
        tasks = self._start(self.client)
        try:
            await self._synced()
            last: SourceSnapshot | None = None
            while True:
                if self.secrets is not None:  # newly named Secrets are read before the snapshot
                    await self.secrets.want(self.referenced_secrets())
                snapshot = self.snapshot()
                if last is None or snapshot.version != last.version:
                    last = snapshot
                    yield snapshot
                await self._debounced()
        finally:
            await self._stop(tasks)

    # --- building snapshots -------------------------------------------------------------------

    def referenced_secrets(self) -> set[tuple[str, str]]:
        """(namespace, name) of every Secret a Host or JWTPolicy held now names."""
        wanted: set[tuple[str, str]] = set()
        for (kind, _), informer in self.informers.items():
            for (namespace, _), obj in informer.objects.items():
                wanted.update((namespace, name) for name in _referenced_secrets(kind, obj))
        return wanted

    def snapshot(self) -> SourceSnapshot:
        """Every object held now, as a snapshot (see the module for what is kept)."""
        objects: list[tuple[ResourceType, dict[str, Any]]] = [
            (informer.resource, obj)
            for informer in self.informers.values()
            for obj in informer.objects.values()
        ]
        if self.secrets is not None:
            wanted = self.referenced_secrets()
            objects.extend((SECRETS, obj) for key, obj in self.secrets.objects.items() if key in wanted)
        documents: dict[str, Document] = {}
        inputs: list[tuple[str, str]] = []
        cache: dict[str, tuple[str | None, str, Document]] = {}
        for resource, obj in objects:
            metadata = obj.get("metadata") or {}
            origin = origin_of(resource.kind, str(metadata.get("namespace")), str(metadata.get("name")))
            version = metadata.get("resourceVersion")
            known = self._documents.get(origin)
            if known is not None and version is not None and known[0] == version:
                text, document = known[1], known[2]  # the same object: no YAML work
            else:
                data = document_data(resource, obj)
                text = yaml.dump(data, Dumper=SafeDumper, sort_keys=True, allow_unicode=True)
                if known is not None and known[1] == text:
                    document = known[2]  # changed only in what documents leave out (status)
                else:
                    document = load_documents(text, file=origin)[0]
            cache[origin] = (version, text, document)
            documents[origin] = document
            inputs.append((origin, text))
        self._documents = cache
        origins = sorted(documents)
        return SourceSnapshot(
            documents=tuple(documents[o] for o in origins),
            errors=(),
            origins=tuple(origins),
            version=content_version(inputs),
            trusted_timestamps=True,  # creationTimestamp is the API server's, not the client's
        )

    async def _debounced(self) -> None:
        """Until a change, and then until `quiet_seconds` without one (`max_batch_seconds` at most)."""
        await self._changed.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.max_batch_seconds
        while True:
            self._changed.clear()
            left = deadline - loop.time()
            if left <= 0:
                return
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
            # arrives as its wait ends, and the stop then hangs on the next wait (seen under load).
            try:
                async with asyncio.timeout(min(self.options.quiet_seconds, left)):
                    await self._changed.wait()
            except TimeoutError:
                return

    # --- the tasks behind it ------------------------------------------------------------------

    def _start(self, client: KubeClient) -> list[asyncio.Task[None]]:
        scopes: Sequence[str | None] = self.options.namespaces or (None,)
        for resource in KINDS.values():
            for namespace in scopes:
                self.informers[(resource.kind, namespace)] = Informer(
                    client,
                    resource,
                    namespace,
                    on_change=self._changed.set,
                    watch_seconds=self.options.watch_seconds,
                )
        self.secrets = SecretReader(
            client,
            on_change=self._changed.set,
            keep=_secret_kept,
            poll_seconds=self.options.secret_poll_seconds,
        )
        tasks = [
            asyncio.create_task(informer.run(), name=f"watch {informer.description}")
            for informer in self.informers.values()
        ]
        tasks.append(asyncio.create_task(self.secrets.run(), name="referenced secrets"))
        if self.options.write_status:
            opts = self.options
            if opts.leader_elect:
                self.leader = LeaderElector(
                    client,
                    namespace=opts.lease_namespace or default_lease_namespace(),
                    name=opts.lease_name,
                    identity=self.identity,
                    lease_seconds=opts.lease_seconds,
                    renew_seconds=opts.renew_seconds,
                )
            leader = self.leader
            self.status = StatusWriter(
                client,
                self.observed,
                is_leader=(lambda: leader.is_leader) if leader is not None else lambda: True,
                gateway=opts.gateway,
            )
            if leader is not None:
                leader.on_change = self.status.leadership_changed
                tasks.append(asyncio.create_task(leader.run(), name="leader election"))
            tasks.append(asyncio.create_task(self.status.run(), name="status writer"))
        return tasks

    async def _synced(self) -> None:
        everything = asyncio.gather(*(informer.synced.wait() for informer in self.informers.values()))
        try:
            while True:
                done, _ = await asyncio.wait({everything}, timeout=10)
                if done:
                    return
                pending = [i.description for i in self.informers.values() if not i.synced.is_set()]
                errors = sorted({i.last_error for i in self.informers.values() if i.last_error})
                log.warning("waiting for the first list of %s", ", ".join(pending), extra={"errors": errors})
        finally:
            everything.cancel()

    async def _stop(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:  # bounded: a task stuck in a library's I/O must not hold the controller's stop
            await asyncio.wait(tasks, timeout=5)
        # Bounded by asyncio.wait, not wait_for: wait_for waits for a cancelled call to finish,
        # and closing an HTTP client whose streams are stuck can ignore the cancellation (a test
        # run saw a stop hang past 20 s that way).
        if self.leader is not None:
            await _at_most(self.leader.release(), 2)
        if self.client is not None:
            await _at_most(self.client.close(), 2)


async def _at_most(call: Coroutine[Any, Any, None], seconds: float) -> None:
    """Run `call` for at most `seconds`; past that it is cancelled and left to end on its own.
    Its errors are logged: stopping must never fail or hang on the API."""
    task = asyncio.create_task(call)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
    elif task.exception() is not None:
        log.warning("stopping: %s", task.exception())


async def _connect(kubeconfig: str | None, identity: str) -> KubeClient:
    """Connected at last: the API server may come up after us (or its credentials be mounted)."""
    backoff = Backoff(initial=0.5, cap=10)
    while True:
        try:
            return await KubeClient.connect(
                kubeconfig, user_agent=f"legation-controller/{__version__} ({identity})"
            )
        except KubeError as exc:
            delay = backoff.next()
            log.warning(
                "cannot reach the Kubernetes API; retrying", extra={"error": str(exc), "retry_seconds": delay}
            )
            await asyncio.sleep(delay)
