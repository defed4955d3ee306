"""Publishing runs of the pipeline, and what follows from Envoy's answers: `Programmed`, and NACK
attribution with quarantines.

`Publisher.run(snapshot)` builds the stages (in a worker thread) without the quarantined resources,
records the snapshot in the `Ledger`, and serves it (ADS, feeds, state, status sink). The xDS
server tells it of every NACK and every settling node:

- A settling node re-evaluates `Programmed` for every resource, at most once per
  `settle_delay` (one pass is integer comparisons per node and type), and hands what changed to
  the status sink, so statuses follow ACKs between pipeline runs.
- A NACK of the gateway's newest snapshot starts a bisection (`serving.bisect`) on that node:
  it alone is served probes without some of the suspects until the culprits are known; the
  others keep being served the gateway's snapshot. The culprits are quarantined: left out of every
  later snapshot of this gateway while their content stays the same (`Programmed=False`, reason
  `Nacked`, with Envoy's message); a changed resource is tried again. One search at a time; a new
  source snapshot ends it (the new snapshot is served; should it be rejected, a new search starts
  from it), so changes are never held back by a search.

Quarantines are per gateway, not per node: the Envoys of one gateway run the same configuration,
and one culprit found once spares every other Envoy the same NACK. (A node can only make the
gateway leave out resources its own probes were rejected for; it never rolls anything back.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from legation.api.v1alpha1 import ResourceId
from legation.controller.compiler.ir import Programmed
from legation.controller.compiler.parse_cache import ParseCache
from legation.controller.compiler.tenancy import DEFAULT_PLATFORM_NAMESPACES
from legation.controller.compiler.upstreams import UpstreamRules
from legation.controller.serving.bisect import Bisection
from legation.controller.serving.feed import Feed
from legation.controller.serving.ledger import CARRIED_BY, Ledger, Publication, Quarantine, evaluate
from legation.controller.serving.pipeline import ContentDigests, ControllerState, Stages, build
from legation.controller.sources import SourceSnapshot, StatusSink
from legation.controller.translate.envoy import EnvoyOptions
from legation.controller.xds.protocol import KEPT_SUFFIX, Nack, NodeStatus
from legation.controller.xds.server import XdsServer
from legation.controller.xds.snapshot import Snapshot
from legation.core.names import DEFAULT_GATEWAY

__all__ = ["Publisher"]

log = logging.getLogger("legation.controller")

EnvoyHook = Callable[[Snapshot], Snapshot]
"""Applied to every snapshot built (tests: force a NACK with `Snapshot.replaced`)."""


@dataclass
class _Search:
    bisection: Bisection
    type_url: str
    probe_version: str = ""
    answered: bool = True
    started_at: float = 0.0


class Publisher:
    """See the module. Owns the ledger, the quarantines and the search; runs on the event loop."""

    def __init__(
        self,
        *,
        options: EnvoyOptions,
        state: ControllerState,
        xds: XdsServer,
        feeds: dict[str, Feed],
        sink: StatusSink | None = None,
        gateway: str = DEFAULT_GATEWAY,
        platform: frozenset[str] = DEFAULT_PLATFORM_NAMESPACES,
        upstreams: UpstreamRules | None = None,
        envoy_hook: EnvoyHook | None = None,
        settle_delay: float = 0.05,
        probe_timeout: float = 10.0,
    ) -> None:
        self.options, self.state, self.xds, self.feeds = options, state, xds, feeds
        self.sink, self.gateway, self.envoy_hook = sink, gateway, envoy_hook
        self.platform, self.upstreams = platform, upstreams
        """What `pipeline.build` is told besides the snapshot (see there)."""
        self.settle_delay, self.probe_timeout = settle_delay, probe_timeout
        self.ledger = Ledger()
        self.quarantine: dict[ResourceId, Quarantine] = {}
        self.search: _Search | None = None
        self._source: SourceSnapshot | None = None
        self._cache, self._digests = ParseCache(), ContentDigests()
        self._memo: dict[ResourceId, tuple[str, Programmed]] = {}
        self._lock = asyncio.Lock()
        self._evaluation: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        xds.on_nack, xds.on_change = self._on_nack, self._on_change

    # --- pipeline runs -----------------------------------------------------------------------

    async def run(self, snapshot: SourceSnapshot) -> Stages | None:
        """Build and serve `snapshot`; None when the run failed (the previous stages stay)."""
        async with self._lock:
            self._end_search("the configuration changed")
            self._source = snapshot
            return await self._publish()

    async def _publish(self) -> Stages | None:
        assert self._source is not None
        try:
            stages = await self._build(frozenset())
        except Exception as exc:
            log.exception("pipeline run failed; the previous configuration stays in force")
            self.state.last_error = f"{type(exc).__name__}: {exc}"
            return None
        self._cache.retain(stages.source.documents)  # forget deleted files' resources
        self._digests.retain(stages.source.documents)
        for rid in [r for r in self.quarantine if r not in stages.quarantined]:
            log.info("quarantine lifted: the resource changed", extra={"resource": str(rid)})
            del self.quarantine[rid]
        self.ledger.publish(
            stages.envoy.version, contents=stages.contents, withheld=stages.withheld, at=time.time()
        )
        self.xds.set_snapshot(stages.envoy)
        self.feeds["authz"].publish(stages.authz_feed)
        self.feeds["ratelimit"].publish(stages.ratelimit_feed)
        self.state.record(stages)
        self.state.quarantine = dict(self.quarantine)
        if self.sink is not None:
            self.sink.report(stages.statuses, stages.source)
        self._evaluate()
        return stages

    async def _build(self, probe: frozenset[ResourceId]) -> Stages:
        assert self._source is not None
        quarantine = {rid: q.digest for rid, q in self.quarantine.items()}
        stages = await asyncio.to_thread(
            build,
            self._source,
            self.options,
            parse=self._cache.parse,
            gateway=self.gateway,
            platform_namespaces=self.platform,
            upstreams=self.upstreams,
            quarantine=quarantine,
            probe=probe,
            digests=self._digests,
        )
        if self.envoy_hook is not None:
            stages = dataclasses.replace(stages, envoy=self.envoy_hook(stages.envoy))
        return stages

    # --- Programmed --------------------------------------------------------------------------

    def _on_change(self, status: NodeStatus | None) -> None:
        search = self.search
        if search is not None and not search.answered:
            self._probe_answered(search, status)
        if self._evaluation is None:
            loop = asyncio.get_running_loop()
            self._evaluation = loop.call_later(self.settle_delay, self._evaluate)

    def _probe_answered(self, search: _Search, status: NodeStatus | None) -> None:
        """Whether the searched node settled on the probe (or went away)."""
        node = search.bisection.node
        if status is None and node not in {n.node_id for n in self.xds.nodes()}:
            self._answer(None)
        # Settled means acked, or nacked (also when the probe left the rejected part unchanged).
        elif (
            status is not None
            and status.state != "pending"
            and (status.node_id, status.snapshot_version) == (node, search.probe_version)
        ):
            self._answer(status.state == "acked")

    def _evaluate(self) -> None:
        """`Programmed` of every resource now; the status sink gets the ones that changed."""
        self._evaluation = None
        stages = self.state.stages
        if stages is None:
            return
        nodes = self.xds.nodes()
        found = evaluate(
            self.ledger,
            stages.contents,
            nodes,
            quarantined={r: q for r, q in self.quarantine.items() if r in stages.quarantined},
            withheld=stages.withheld,
            memo=self._memo,
        )
        for status in stages.statuses:
            if not status.accepted and status.id.kind in CARRIED_BY:
                found[status.id] = Programmed(False, "Rejected", "not accepted (see Accepted)", len(nodes))
        if found != self.state.programmed:
            self.state.programmed = found
            self.state.programmed_generation += 1
            if self.sink is not None:
                self.sink.report_programmed(found)

    # --- NACK attribution --------------------------------------------------------------------

    def _on_nack(self, nack: Nack) -> None:
        search = self.search
        version = nack.version.removesuffix(KEPT_SUFFIX)
        if search is not None and not search.answered and nack.node_id == search.bisection.node:
            if version == search.probe_version:
                self._answer(False)
            return
        self._spawn(self._nacked(nack, version))

    async def _nacked(self, nack: Nack, version: str) -> None:
        async with self._lock:
            stages = self.state.stages
            pub = self.ledger.lookup(version)
            if self.search is not None or stages is None or pub is None or pub.node is not None:
                return  # a search is on, or an old or unknown version: nothing to attribute
            if version != stages.envoy.version:
                return
            suspects = self._suspects(nack, pub, stages)
            if not suspects:
                log.warning(
                    "NACK not attributed: no suspect", extra={"node": nack.node_id, "error": nack.error}
                )
                return
            bisection = Bisection.start(
                nack.node_id, nack.error, suspects, mentioned=_mentioned(nack.error, suspects, stages)
            )
            self.search = _Search(bisection, nack.type_url, started_at=time.time())
            log.info(
                "attributing a NACK",
                extra={"node": nack.node_id, "suspects": len(suspects), "error": nack.error},
            )
            await self._step()

    def _suspects(self, nack: Nack, pub: Publication, stages: Stages) -> list[ResourceId]:
        """What the rejected snapshot holds of the kinds the rejected type carries, that the node
        does not run yet."""
        kinds = {kind for kind, types in CARRIED_BY.items() if nack.type_url in types}
        node = next((n for n in self.xds.nodes() if n.node_id == nack.node_id), None)
        held = node.types.get(nack.type_url) if node is not None else None
        running = self.ledger.lookup(held.applied_version) if held is not None else None
        return [
            rid
            for rid in stages.contents
            if rid.kind in kinds
            and self.ledger.contains(pub, rid)
            and (running is None or not self.ledger.contains(running, rid))
        ]

    def _answer(self, accepted: bool | None) -> None:
        """The searched node answered the probe (None: it went away). Once per probe."""
        search = self.search
        if search is None or search.answered:
            return
        search.answered = True
        self._spawn(self._advance(search, accepted))

    async def _advance(self, search: _Search, accepted: bool | None) -> None:
        async with self._lock:
            if self.search is not search:
                return
            if accepted is None:
                self._end_search("the Envoy went away")
                return
            search.bisection.result(accepted)
            await self._step()

    async def _step(self) -> None:
        """Serve the next probe, or act on the outcome."""
        search = self.search
        assert search is not None
        bisection = search.bisection
        if bisection.outcome == "found":
            await self._quarantine(search)
        elif bisection.outcome == "failed":
            self._end_search("no culprit found")
        else:
            await self._probe(search)

    async def _probe(self, search: _Search) -> None:
        node = search.bisection.node
        stages = await self._build(search.bisection.probe)
        self.ledger.publish(
            stages.envoy.version,
            contents=stages.contents,
            withheld=stages.withheld,
            at=time.time(),
            node=node,
        )
        if stages.envoy.version in self.xds.snapshots.rejected_versions().get(node, ()):
            search.bisection.result(False)  # the node rejected this very content already
            await self._step()
            return
        search.probe_version, search.answered = stages.envoy.version, False
        self.xds.set_snapshot(stages.envoy, node_id=node)
        self._spawn(self._timeout(search, stages.envoy.version))

    async def _timeout(self, search: _Search, version: str) -> None:
        await asyncio.sleep(self.probe_timeout)
        if self.search is search and search.probe_version == version and not search.answered:
            search.answered = True
            async with self._lock:
                if self.search is search:
                    self._end_search("the Envoy did not answer a probe")

    async def _quarantine(self, search: _Search) -> None:
        stages = self.state.stages
        assert stages is not None
        bisection = search.bisection
        now = time.time()
        for rid in bisection.guilty:
            digest = stages.contents.get(rid)
            if digest is not None:
                self.quarantine[rid] = Quarantine(digest, bisection.node, bisection.error, now)
                log.warning(
                    "resource quarantined: Envoy rejects it",
                    extra={"resource": str(rid), "node": bisection.node, "error": bisection.error},
                )
        log.info(
            "NACK attributed",
            extra={
                "node": bisection.node,
                "guilty": [str(r) for r in bisection.guilty],
                "rounds": bisection.rounds,
                "seconds": round(now - search.started_at, 3),
            },
        )
        self._end_search(None)
        await self._publish()

    def _end_search(self, why: str | None) -> None:
        search, self.search = self.search, None
        if search is None:
            return
        if why is not None:
            log.warning("NACK attribution stopped", extra={"node": search.bisection.node, "reason": why})
        self.xds.clear_snapshot(search.bisection.node)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _mentioned(error: str, suspects: list[ResourceId], stages: Stages) -> list[ResourceId]:
    """Suspects whose Envoy names the error message quotes: `namespace/name` (routes, filter
    chains, secrets), or a cluster only their routes use."""
    clusters: dict[str, set[str]] = {}
    for route in stages.result.ir.routes:
        for destination in route.destinations:
            clusters.setdefault(destination.mapping, set()).add(destination.cluster)
    found = []
    for rid in suspects:
        key = f"{rid.namespace}/{rid.name}"
        if key in error or any(c in error for c in clusters.get(key, ())):
            found.append(rid)
    return found
