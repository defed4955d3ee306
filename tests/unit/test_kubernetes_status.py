"""Status written back (legation.controller.kubernetes.status) and leader election (legation.controller.kubernetes.leader),
against the kmock emulator: conditions through the status subresource, unchanged ones skipped,
only by the leader; one leader among replicas, takeover once its Lease lapses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from fixtures.kube import LEASES, MAPPINGS, KubeEmulator, connected_emulator, eventually, mapping, merge_patch

from legation.api.v1alpha1 import ResourceId
from legation.controller.compiler.ir import Origin, Problem, Programmed, ResourceStatus
from legation.controller.kubernetes import client as kc
from legation.controller.kubernetes.client import KubeClient
from legation.controller.kubernetes.leader import LeaderElector
from legation.controller.kubernetes.source import KubernetesOptions, KubernetesSource
from legation.controller.kubernetes.status import desired_statuses
from legation.controller.serving.pipeline import build
from legation.controller.sources import SourceSnapshot
from legation.controller.translate.envoy import EnvoyOptions

NS = "demo"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, KubeClient, Path]]:
    async with connected_emulator(tmp_path) as running:
        yield running


def conditions_of(obj: dict[str, Any], gateway: str = "default") -> list[dict[str, Any]]:
    entry = ((obj.get("status") or {}).get("gateways") or {}).get(gateway) or {}
    return list(entry.get("conditions") or [])


def condition(emulator: KubeEmulator, name: str, gateway: str = "default") -> dict[str, Any] | None:
    obj = emulator.object(MAPPINGS, NS, name) or {}
    return next((c for c in conditions_of(obj, gateway) if c["type"] == "Accepted"), None)


def status_patches(emulator: KubeEmulator) -> int:
    return sum(1 for r in emulator if r.method == "PATCH" and r.subresource == "status")


class Controller:
    """A source whose snapshots go through the pipeline and back as statuses, as in the app."""

    def __init__(self, kubeconfig: Path, **options: Any) -> None:
        opts = {"kubeconfig": str(kubeconfig), "quiet_seconds": 0.05, "leader_elect": False, **options}
        self.source = KubernetesSource(KubernetesOptions(**opts))
        self.runs = 0
        self.task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for snapshot in self.source.snapshots():
            stages = build(snapshot, EnvoyOptions(), gateway=self.source.options.gateway)
            self.source.report(stages.statuses, stages.source)
            self.runs += 1

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):  # bounded: a hang here hides the failure
            await asyncio.wait_for(self.task, 20)


@contextlib.asynccontextmanager
async def controller(kubeconfig: Path, **options: Any) -> AsyncIterator[Controller]:
    running = Controller(kubeconfig, **options)
    try:
        yield running
    finally:
        await running.stop()


async def test_verdicts_are_written_as_conditions_and_unchanged_ones_skipped(
    cluster: tuple[KubeEmulator, KubeClient, Path],
) -> None:
    emulator, client, kubeconfig = cluster
    await client.request("POST", kc.KINDS["Mapping"].path(NS), body=mapping("good", "/good/"))
    await client.request("POST", kc.KINDS["Mapping"].path(NS), body=mapping("bad", "bad"))
    await merge_patch(
        client,
        kc.KINDS["Mapping"].path(NS, "good", "status"),
        {"status": {"gateways": {"default": {"conditions": [{"type": "Other"}]}}}},
    )
    async with controller(kubeconfig) as running:
        bad = await eventually(lambda: condition(emulator, "bad"))
        good = await eventually(lambda: condition(emulator, "good"))
        assert (bad["status"], bad["reason"], bad["observedGeneration"]) == ("False", "Rejected", 1)
        assert bad["message"].startswith("spec.prefix: ")
        assert (good["status"], good["reason"], good["message"]) == (
            "True",
            "Accepted",
            "Accepted by the controller",
        )
        other = conditions_of(emulator.object(MAPPINGS, NS, "good") or {})
        assert {"type": "Other"} in other, "conditions of other types are kept"
        assert status_patches(emulator) == 3  # ours, and the two verdicts

        # A change that leaves both verdicts as they were writes nothing.
        await merge_patch(client, kc.KINDS["Mapping"].path(NS, "good"), {"metadata": {"labels": {"x": "y"}}})
        await eventually(lambda: running.runs == 2)
        await asyncio.sleep(0.5)
        assert status_patches(emulator) == 3
        assert running.source.status is not None and running.source.status.skipped >= 2

        # Another reason, still rejected: the transition time stays; fixed: it moves.
        await merge_patch(
            client, kc.KINDS["Mapping"].path(NS, "bad"), {"spec": {"prefix": "bad2", "timeout": "x"}}
        )
        again = await eventually(
            lambda: (c := condition(emulator, "bad")) and c["observedGeneration"] == 2 and c
        )
        assert again["lastTransitionTime"] == bad["lastTransitionTime"]
        assert "spec.timeout" in again["message"]
        await merge_patch(
            client, kc.KINDS["Mapping"].path(NS, "bad"), {"spec": {"prefix": "/bad/", "timeout": None}}
        )
        fixed = await eventually(lambda: (c := condition(emulator, "bad")) and c["status"] == "True" and c)
        assert fixed["observedGeneration"] == 3


async def test_every_legation_kind_gets_its_condition(cluster: tuple[KubeEmulator, KubeClient, Path]) -> None:
    emulator, client, kubeconfig = cluster
    api = "legation.dev/v1alpha1"
    objects = {
        kc.KINDS["Mapping"]: {"kind": "Mapping", "spec": {"prefix": "/m/", "service": "app:80"}},
        kc.KINDS["AuthService"]: {"kind": "AuthService", "spec": {"service": "127.0.0.1:9001"}},
        kc.KINDS["Host"]: {
            "kind": "Host",
            "spec": {"hostname": "api.example.com", "tlsSecret": {"name": "none"}},
        },
        kc.KINDS["JWTPolicy"]: {"kind": "JWTPolicy", "spec": {"providers": [], "rules": []}},
    }
    for resource, obj in objects.items():
        body = {"apiVersion": api, "metadata": {"name": "x", "namespace": NS}, **obj}
        await client.request("POST", resource.path(NS), body=body)
    async with controller(kubeconfig):

        def conditions() -> dict[str, tuple[str, str]] | None:
            found = {}
            for resource in objects:
                obj = stored(emulator, resource)
                for c in conditions_of(obj):
                    found[resource.kind] = (c["status"], c["message"])
            return found if len(found) == 4 else None

        found = await eventually(conditions, timeout=30)  # four kinds, four writes: slow on a busy CI
    assert found["Mapping"][0] == "True"
    # demo is a team namespace, not the platform's: the gateway-wide kind is refused, visibly.
    assert found["AuthService"] == (
        "False",
        "metadata.namespace: an AuthService is gateway-wide: only the platform namespaces "
        "(legation-system) may create one",
    )
    assert found["Host"] == ("False", "spec.tlsSecret.name: no Secret 'none' in namespace demo")
    assert found["JWTPolicy"][0] == "False" and found["JWTPolicy"][1].startswith("spec.rules: ")


def stored(emulator: KubeEmulator, resource: kc.ResourceType) -> dict[str, Any]:
    return emulator.object(kmock.resource(resource.group, resource.version, resource.plural), NS, "x") or {}


async def test_only_the_leader_writes(cluster: tuple[KubeEmulator, KubeClient, Path]) -> None:
    emulator, client, kubeconfig = cluster
    await client.request("POST", kc.KINDS["Mapping"].path(NS), body=mapping("m", "/m/"))
    async with controller(kubeconfig) as running:
        await eventually(lambda: running.runs >= 1)
        writer = running.source.status
        assert writer is not None
        leading = False
        writer.is_leader = lambda: leading
        writer.leadership_changed(False)
        before = running.runs
        await client.request("POST", kc.KINDS["Mapping"].path(NS), body=mapping("n", "n"))
        await eventually(lambda: running.runs > before)  # at least one run saw n (more are fine)
        await asyncio.sleep(0.5)
        assert condition(emulator, "n") is None, "a follower writes nothing"
        leading = True
        writer.leadership_changed(True)
        written = await eventually(lambda: condition(emulator, "n"))
        assert written["status"] == "False"


async def test_a_verdict_never_lands_on_a_recreated_object(
    cluster: tuple[KubeEmulator, KubeClient, Path],
) -> None:
    emulator, client, kubeconfig = cluster
    await client.request("POST", kc.KINDS["Mapping"].path(NS), body=mapping("m", "/m/"))
    async with controller(kubeconfig) as running:
        await eventually(lambda: condition(emulator, "m"))
        old_uid = emulator.object(MAPPINGS, NS, "m")["metadata"]["uid"]  # type: ignore[index]
        # The verdict about the old object, written against the new one, must be refused.
        with pytest.raises(kc.ApiError) as refused:
            await client.request("DELETE", kc.KINDS["Mapping"].path(NS, "m"))
            await client.request("POST", kc.KINDS["Mapping"].path(NS), body=mapping("m", "bad"))
            await merge_patch(
                client,
                kc.KINDS["Mapping"].path(NS, "m", "status"),
                {"metadata": {"uid": old_uid}, "status": {"gateways": {}}},
            )
        assert refused.value.code == 409
        new = await eventually(lambda: (c := condition(emulator, "m")) and c)
        assert new["status"] == "False", "the new object gets its own verdict"
        assert running.source.status is not None


def test_desired_statuses_carry_generation_uid_and_every_problem() -> None:
    from legation.core.yamlfile import load_documents

    text = "kind: Mapping\nmetadata: {name: m, namespace: demo, generation: 4, uid: u-1}\n"
    doc = load_documents(text, file="kubernetes:Mapping/demo/m")[0]
    secret = load_documents("kind: Secret\nmetadata: {name: s}\n", file="kubernetes:Secret/demo/s")[0]
    snapshot = SourceSnapshot(documents=(doc, secret), errors=(), origins=(), version="v")
    statuses = [
        ResourceStatus(
            ResourceId("Mapping", "demo", "m"),
            Origin.of(doc),
            "Rejected",
            (Problem(("spec", "prefix"), "must start with /"), Problem((), "conflicts with demo/n")),
        ),
        ResourceStatus(ResourceId("Secret", "demo", "s"), Origin.of(secret), "Accepted"),
        ResourceStatus(ResourceId("Mapping", "demo", "f"), Origin("files/f.yaml"), "Accepted"),
    ]
    desired = desired_statuses(statuses, snapshot)
    assert list(desired) == [("Mapping", "demo", "m")], "Secrets and files carry no status"
    verdict = desired[("Mapping", "demo", "m")]
    assert (verdict.uid, verdict.generation, verdict.accepted) == ("u-1", 4, False)
    assert verdict.message == "spec.prefix: must start with /; conflicts with demo/n"


# --- leader election -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def campaigning(client: KubeClient, identity: str, **options: Any) -> AsyncIterator[LeaderElector]:
    opts = {
        "namespace": "legation-system",
        "name": "lease",
        "lease_seconds": 1.0,
        "renew_seconds": 0.2,
        **options,
    }
    elector = LeaderElector(client, identity=identity, **opts)
    task = asyncio.create_task(elector.run())
    try:
        yield elector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def holder(emulator: KubeEmulator) -> str | None:
    lease = emulator.object(LEASES, "legation-system", "lease") or {}
    return (lease.get("spec") or {}).get("holderIdentity")


async def test_one_leader_and_a_takeover_only_once_the_lease_lapsed(
    cluster: tuple[KubeEmulator, KubeClient, Path],
) -> None:
    emulator, client, _ = cluster
    changes: list[tuple[str, bool]] = []
    async with campaigning(client, "a", on_change=lambda v: changes.append(("a", v))) as a:
        await eventually(lambda: a.is_leader)
        async with campaigning(client, "b", on_change=lambda v: changes.append(("b", v))) as b:
            await asyncio.sleep(1.5)  # longer than the lease: a renews, so b must not take it
            assert a.is_leader and not b.is_leader
            assert holder(emulator) == "a"
            # a stops renewing without releasing (a crash): b takes over after the lease lapses.
            stopped = asyncio.get_running_loop().time()
            a.renew_seconds = 3600  # its next renewal never comes
            await eventually(lambda: holder(emulator) == "b", timeout=5)
            waited = asyncio.get_running_loop().time() - stopped
            assert waited >= 1.0 - 0.2, "taken over before the lease duration"
            await eventually(lambda: b.is_leader)
            lease = emulator.object(LEASES, "legation-system", "lease")
            assert lease is not None and lease["spec"]["leaseTransitions"] == 1
    assert ("a", True) in changes and ("b", True) in changes


async def test_a_leader_that_sees_its_lease_taken_steps_down(
    cluster: tuple[KubeEmulator, KubeClient, Path],
) -> None:
    _emulator, client, _ = cluster
    async with campaigning(client, "a") as a:
        await eventually(lambda: a.is_leader)
        lease = await client.request("GET", kc.LEASES.path("legation-system", "lease"))
        lease["spec"]["holderIdentity"] = "intruder"
        await client.request("PUT", kc.LEASES.path("legation-system", "lease"), body=lease)
        await eventually(lambda: not a.is_leader, timeout=2)


async def test_a_released_lease_is_taken_at_the_next_look(
    cluster: tuple[KubeEmulator, KubeClient, Path],
) -> None:
    emulator, client, _ = cluster
    a = LeaderElector(client, namespace="legation-system", name="lease", identity="a", lease_seconds=30)
    a_task = asyncio.create_task(a.run())
    await eventually(lambda: a.is_leader)
    async with campaigning(client, "b", lease_seconds=30, renew_seconds=0.2) as b:
        await asyncio.sleep(0.3)
        assert not b.is_leader
        a_task.cancel()  # a clean stop, as the source does it: stop campaigning, then release
        with contextlib.suppress(asyncio.CancelledError):
            await a_task
        assert not a.is_leader
        await a.release()
        await eventually(lambda: b.is_leader, timeout=2)  # not 30 s
        assert holder(emulator) == "b"


async def test_concurrent_campaigns_elect_exactly_one(cluster: tuple[KubeEmulator, KubeClient, Path]) -> None:
    emulator, client, _ = cluster
    async with contextlib.AsyncExitStack() as stack:
        electors = [await stack.enter_async_context(campaigning(client, f"r{i}")) for i in range(4)]
        await eventually(lambda: any(e.is_leader for e in electors))
        for _ in range(10):
            await asyncio.sleep(0.1)
            leaders = [e.identity for e in electors if e.is_leader]
            assert leaders == [holder(emulator)]


async def test_two_gateways_write_their_own_entries_without_clobbering(
    cluster: tuple[KubeEmulator, KubeClient, Path],
) -> None:
    emulator, client, kubeconfig = cluster
    shared = mapping("shared", "/shared/")
    shared["spec"]["gateways"] = ["*"]
    blue_only = mapping("blue-only", "blue-no-slash")  # rejected, but only blue says so
    blue_only["spec"]["gateways"] = ["blue"]
    for body in (shared, blue_only):
        await client.request("POST", kc.KINDS["Mapping"].path(NS), body=body)
    async with controller(kubeconfig), controller(kubeconfig, gateway="blue"):
        default = await eventually(lambda: condition(emulator, "shared"))
        blue = await eventually(lambda: condition(emulator, "shared", "blue"))
        rejected = await eventually(lambda: condition(emulator, "blue-only", "blue"))
        await asyncio.sleep(0.5)  # both writers settle; neither may remove the other's entry
        assert condition(emulator, "shared") is not None and condition(emulator, "shared", "blue") is not None
    assert (default["status"], blue["status"], rejected["status"]) == ("True", "True", "False")
    gateways = (emulator.object(MAPPINGS, NS, "blue-only") or {}).get("status", {}).get("gateways", {})
    assert set(gateways) == {"blue"}  # the default gateway writes nothing on blue's resources


def programmed_of(emulator: KubeEmulator, name: str, gateway: str = "default") -> dict[str, Any] | None:
    obj = emulator.object(MAPPINGS, NS, name) or {}
    return next((c for c in conditions_of(obj, gateway) if c["type"] == "Programmed"), None)


async def test_programmed_is_written_in_the_gateways_entry_as_envoys_ack(
    cluster: tuple[KubeEmulator, KubeClient, Path],
) -> None:
    """Programmed arrives between pipeline runs (Envoys ACK later): only the changed ones are
    written, next to Accepted, in the writing gateway's own entry; a new run keeps it."""
    emulator, client, kubeconfig = cluster
    shared = mapping("shared", "/shared/")
    shared["spec"]["gateways"] = ["*"]
    await client.request("POST", kc.KINDS["Mapping"].path(NS), body=shared)
    await client.request("POST", kc.KINDS["Mapping"].path(NS), body=mapping("other", "/other/"))
    rid, other = ResourceId("Mapping", NS, "shared"), ResourceId("Mapping", NS, "other")
    async with controller(kubeconfig, gateway="blue") as blue, controller(kubeconfig) as default:
        await eventually(lambda: condition(emulator, "shared", "blue") and condition(emulator, "shared"))
        assert programmed_of(emulator, "shared", "blue") is None  # nothing known yet: not written
        assert blue.source.status is not None
        pending = Programmed(False, "Pending", "ACKed by 0 of 1 Envoys; waiting for blue-1", 1)
        blue.source.report_programmed({rid: pending})
        got = await eventually(lambda: programmed_of(emulator, "shared", "blue"))
        assert (got["status"], got["reason"], got["observedGeneration"]) == ("False", "Pending", 1)
        before = status_patches(emulator)
        done = Programmed(True, "Programmed", "ACKed by 1 Envoy, 0.012 s after the change", 1, 0.012)
        blue.source.report_programmed({rid: done})
        got = await eventually(
            lambda: (c := programmed_of(emulator, "shared", "blue")) and c["status"] == "True" and c
        )
        assert (got["reason"], got["message"]) == ("Programmed", done.message)
        accepted = condition(emulator, "shared", "blue")
        assert accepted is not None and accepted["status"] == "True"  # Accepted kept beside it
        assert status_patches(emulator) == before + 1  # one object changed: one write
        # The same verdict again writes nothing; the default gateway's entry has no Programmed.
        blue.source.report_programmed({rid: done})
        default.source.report_programmed({other: pending})
        await eventually(lambda: programmed_of(emulator, "other") is not None)
        await asyncio.sleep(0.4)
        assert status_patches(emulator) == before + 2
        assert programmed_of(emulator, "shared") is None
        # A new run (a label change) keeps the Programmed condition as it was.
        await merge_patch(
            client, kc.KINDS["Mapping"].path(NS, "shared"), {"metadata": {"labels": {"x": "y"}}}
        )
        await eventually(lambda: blue.runs >= 2)
        await asyncio.sleep(0.4)
        kept = programmed_of(emulator, "shared", "blue")
        assert (
            kept is not None
            and kept["status"] == "True"
            and kept["lastTransitionTime"] == got["lastTransitionTime"]
        )


def test_a_warning_keeps_the_host_accepted_and_shows_in_its_condition() -> None:
    from legation.core.yamlfile import load_documents

    text = "kind: Host\nmetadata: {name: api, namespace: demo, generation: 1, uid: u-2}\n"
    doc = load_documents(text, file="kubernetes:Host/demo/api")[0]
    snapshot = SourceSnapshot(documents=(doc,), errors=(), origins=(), version="v")
    warning = "the certificate of api.example.com expires in 3 days (2026-12-08T00:00:00Z)"
    status = ResourceStatus(
        ResourceId("Host", "demo", "api"), Origin.of(doc), "Accepted", warnings=(warning,)
    )
    verdict = desired_statuses([status], snapshot)[("Host", "demo", "api")]
    assert verdict.accepted
    assert verdict.message == f"Accepted by the controller; warning: {warning}"
