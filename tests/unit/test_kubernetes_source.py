"""The Kubernetes source (legation.controller.kubernetes.source) against the kmock emulator: documents as
the directory source makes them, deterministic versions, debouncing, Secrets, namespaces, status
ignored, and in-cluster credentials over HTTPS."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.kube import (
    KubeEmulator,
    connected_emulator,
    mapping,
    merge_patch,
    running_emulator,
    write_kubeconfig,
)

from legation.controller.commands.demo import self_signed
from legation.controller.kubernetes import client as kc
from legation.controller.kubernetes.client import KubeClient
from legation.controller.kubernetes.source import (
    LAST_APPLIED,
    KubernetesOptions,
    KubernetesSource,
    default_lease_namespace,
)
from legation.controller.serving.pipeline import build
from legation.controller.sources import SourceSnapshot
from legation.controller.sources.directory import DirectorySource
from legation.controller.translate.envoy import EnvoyOptions

NS = "demo"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[KubeEmulator, KubeClient, Path]]:
    async with connected_emulator(tmp_path) as running:
        yield running


async def post(client: KubeClient, resource: kc.ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    return await client.request("POST", resource.path(obj["metadata"].get("namespace", NS)), body=obj)


class Following:
    """A source's snapshots, collected by a task as they come."""

    def __init__(self, source: KubernetesSource) -> None:
        self.source = source
        self.snapshots: list[SourceSnapshot] = []
        self._new = asyncio.Event()
        self._returned = 0
        self.task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for snapshot in self.source.snapshots():
            self.snapshots.append(snapshot)
            self._new.set()

    async def next(self, timeout: float = 5.0) -> SourceSnapshot:
        """The newest snapshot not yet returned, waiting for one if there is none. (A snapshot that
        arrived before the call counts: with two followers, the second is often ahead.)"""
        async with asyncio.timeout(timeout):
            while len(self.snapshots) == self._returned:
                self._new.clear()
                await self._new.wait()
        self._returned = len(self.snapshots)
        return self.snapshots[-1]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def following(kubeconfig: Path, **options: Any) -> AsyncIterator[Following]:
    opts = {"kubeconfig": str(kubeconfig), "write_status": False, "quiet_seconds": 0.05, **options}
    follower = Following(KubernetesSource(KubernetesOptions(**opts)))
    try:
        yield follower
    finally:
        await follower.stop()


async def test_documents_look_like_the_directory_sources(
    cluster: tuple[KubeEmulator, KubeClient, Path], tmp_path: Path
) -> None:
    _emulator, client, kubeconfig = cluster
    annotations = {"legation.dev/rate-limit": "10/s", LAST_APPLIED: '{"kind": "Mapping"}'}
    created = await post(
        client, kc.KINDS["Mapping"], mapping("orders", annotations=annotations, labels={"team": "a"})
    )
    async with following(kubeconfig) as follow:
        snapshot = await follow.next()
    (doc,) = snapshot.documents
    assert doc.file == "kubernetes:Mapping/demo/orders"
    assert snapshot.origins == ("kubernetes:Mapping/demo/orders",)
    assert snapshot.errors == ()
    metadata = doc.data["metadata"]
    assert metadata["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    # The API server set it, so it may settle conflicts between namespaces (a file's may not).
    assert snapshot.trusted_timestamps and snapshot.ages is None
    assert metadata["generation"] == 1 and metadata["uid"] == created["metadata"]["uid"]
    assert metadata["annotations"] == {"legation.dev/rate-limit": "10/s"}
    assert metadata["labels"] == {"team": "a"}
    assert "resourceVersion" not in metadata

    # The same object from a file compiles to the same routes.
    (tmp_path / "m.yaml").write_text(
        "apiVersion: legation.dev/v1alpha1\nkind: Mapping\n"
        "metadata: {name: orders, namespace: demo, annotations: {legation.dev/rate-limit: 10/s}}\n"
        "spec: {prefix: /a/, service: 'app:8080'}\n"
    )
    from_file = build(DirectorySource(tmp_path / "m.yaml").load(), EnvoyOptions())
    from_api = build(snapshot, EnvoyOptions())
    assert [s.state for s in from_api.statuses] == ["Accepted"]
    assert from_api.result.ir.routes == from_file.result.ir.routes
    assert from_api.ratelimit_feed == from_file.ratelimit_feed


async def test_status_and_resource_version_changes_make_no_new_snapshot(
    cluster: tuple[KubeEmulator, KubeClient, Path],
) -> None:
    _emulator, client, kubeconfig = cluster
    await post(client, kc.KINDS["Mapping"], mapping("a"))
    async with following(kubeconfig) as follow:
        first = await follow.next()
        await merge_patch(
            client, kc.KINDS["Mapping"].path(NS, "a", "status"), {"status": {"conditions": [{"type": "X"}]}}
        )
        await merge_patch(client, kc.KINDS["Mapping"].path(NS, "a"), {"metadata": {"labels": {"x": "1"}}})
        second = await follow.next()
        assert second.version != first.version
        assert second.documents[0].data["metadata"]["labels"] == {"x": "1"}
        assert "status" not in second.documents[0].data
        await merge_patch(
            client, kc.KINDS["Mapping"].path(NS, "a", "status"), {"status": {"conditions": [{"type": "Y"}]}}
        )
        with pytest.raises(TimeoutError):
            await follow.next(timeout=0.5)


async def test_a_burst_of_changes_gives_one_snapshot(cluster: tuple[KubeEmulator, KubeClient, Path]) -> None:
    _emulator, client, kubeconfig = cluster
    async with following(kubeconfig, quiet_seconds=0.3, max_batch_seconds=5) as follow:
        empty = await follow.next()
        assert empty.documents == ()
        for i in range(20):
            await post(client, kc.KINDS["Mapping"], mapping(f"m{i:02}", prefix=f"/m{i}/"))
        burst = await follow.next()
        assert len(burst.documents) == 20
        assert [d.file for d in burst.documents] == sorted(d.file for d in burst.documents)
        assert len(follow.snapshots) == 2


async def test_replicas_build_identical_snapshots(cluster: tuple[KubeEmulator, KubeClient, Path]) -> None:
    _emulator, client, kubeconfig = cluster
    for name in ("b", "a", "c"):
        await post(client, kc.KINDS["Mapping"], mapping(name, prefix=f"/{name}/"))
    await post(client, kc.KINDS["Host"], {
        "apiVersion": "legation.dev/v1alpha1", "kind": "Host", "metadata": {"name": "h", "namespace": NS},
        "spec": {"hostname": "api.example.com", "tlsSecret": {"name": "missing"}},
    })  # fmt: skip
    async with following(kubeconfig) as one, following(kubeconfig, namespaces=(NS,)) as two:
        first, second = await one.next(), await two.next()
    assert first.version == second.version
    assert [(d.file, d.data) for d in first.documents] == [(d.file, d.data) for d in second.documents]
    options = EnvoyOptions()
    assert build(first, options).envoy.version == build(second, options).envoy.version


async def test_only_referenced_tls_and_opaque_secrets_are_in_snapshots(
    cluster: tuple[KubeEmulator, KubeClient, Path],
) -> None:
    _emulator, client, kubeconfig = cluster
    for name, kind in (
        ("api-tls", "kubernetes.io/tls"),
        ("unused", "Opaque"),
        ("token", "kubernetes.io/basic-auth"),
    ):
        await post(
            client, kc.SECRETS, {"metadata": {"name": name, "namespace": NS}, "type": kind, "data": {}}
        )
    host = {
        "apiVersion": "legation.dev/v1alpha1", "kind": "Host", "metadata": {"name": "h", "namespace": NS},
        "spec": {"hostname": "api.example.com", "tlsSecret": {"name": "api-tls"}},
    }  # fmt: skip
    await post(client, kc.KINDS["Host"], host)
    async with following(kubeconfig) as follow:
        snapshot = await follow.next()
        assert snapshot.origins == ("kubernetes:Host/demo/h", "kubernetes:Secret/demo/api-tls")
        secret = snapshot.documents[1].data
        assert (secret["apiVersion"], secret["kind"], secret["type"]) == ("v1", "Secret", "kubernetes.io/tls")
        # A change to an unreferenced Secret is no change of the inputs.
        await merge_patch(client, kc.SECRETS.path(NS, "unused"), {"data": {"k": "dg=="}})
        with pytest.raises(TimeoutError):
            await follow.next(timeout=0.5)
        # The Host now names a Secret of a type that is never kept.
        await merge_patch(client, kc.KINDS["Host"].path(NS, "h"), {"spec": {"tlsSecret": {"name": "token"}}})
        changed = await follow.next()
        assert changed.origins == ("kubernetes:Host/demo/h",)
        statuses = build(changed, EnvoyOptions()).statuses
        assert [s.state for s in statuses] == ["Rejected"]
        assert "no Secret 'token'" in (statuses[0].reason or "")


async def test_only_the_given_namespaces_are_read(cluster: tuple[KubeEmulator, KubeClient, Path]) -> None:
    emulator, client, kubeconfig = cluster
    for namespace in ("one", "two", "three"):
        await post(client, kc.KINDS["Mapping"], mapping("m", namespace=namespace))
    async with following(kubeconfig, namespaces=("one", "three")) as follow:
        snapshot = await follow.next()
    assert snapshot.origins == ("kubernetes:Mapping/one/m", "kubernetes:Mapping/three/m")
    lists = {
        r.namespace for r in emulator if r.method == "GET" and r.resource and r.resource.plural == "mappings"
    }
    assert lists == {"one", "three"}, "no cluster-wide list or watch"


async def test_an_invalid_object_names_its_origin_and_field(
    cluster: tuple[KubeEmulator, KubeClient, Path],
) -> None:
    _emulator, client, kubeconfig = cluster
    await post(client, kc.KINDS["Mapping"], mapping("bad", prefix="no-slash"))
    async with following(kubeconfig) as follow:
        snapshot = await follow.next()
    (status,) = build(snapshot, EnvoyOptions()).statuses
    assert status.state == "Rejected"
    assert str(status.origin).startswith("kubernetes:Mapping/demo/bad:")
    assert status.problems[0].path == ("spec", "prefix")


# --- in-cluster credentials --------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    certificate, key = self_signed("127.0.0.1")  # the emulator is reached by address
    crt, pem = directory / "tls.crt", directory / "tls.key"
    crt.write_text(certificate)
    pem.write_text(key)
    return crt, pem


async def test_in_cluster_credentials_from_the_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crt, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text("pod-token")
    (account / "namespace").write_text("legation-prod\n")
    (account / "ca.crt").write_bytes(crt.read_bytes())
    async with running_emulator(ssl_context=context, token="pod-token") as (emulator, url):
        port = url.rsplit(":", 1)[1]
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
        client = await KubeClient.connect(serviceaccount=str(account))
        assert client.server == f"https://127.0.0.1:{port}"
        await client.request("POST", kc.KINDS["Mapping"].path(NS), body=mapping("a"))
        listed = await client.request("GET", kc.KINDS["Mapping"].path(NS))
        assert [i["metadata"]["name"] for i in listed["items"]] == ["a"]
        assert all(r.headers.get("Authorization") == "Bearer pod-token" for r in emulator)
        await client.close()
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert default_lease_namespace(str(account)) == "legation-prod"
    assert default_lease_namespace(str(tmp_path / "nowhere")) == "legation-system"
    monkeypatch.setenv("POD_NAMESPACE", "from-downward-api")
    assert default_lease_namespace(str(account)) == "from-downward-api"


async def test_a_wrong_token_is_refused(tmp_path: Path) -> None:
    async with running_emulator(token="right") as (_emulator, url):
        config = write_kubeconfig(tmp_path / "kubeconfig", url, token="wrong")
        with pytest.raises(kc.KubeError):
            await KubeClient.connect(str(config))
        client = await KubeClient.connect(str(write_kubeconfig(tmp_path / "ok", url, token="right")))
        assert (await client.request("GET", kc.KINDS["Mapping"].path(NS)))["items"] == []
        await client.close()


async def test_secrets_are_read_by_name_only_never_listed_or_watched(
    cluster: tuple[KubeEmulator, KubeClient, Path],
) -> None:
    """The controller reads the Secrets resources name, one GET each: it never lists or watches
    Secrets (its RBAC has `get` only), an unreferenced Secret never enters its memory, and a
    referenced one is followed (polled) as it changes, and forgotten when no longer named."""
    emulator, client, kubeconfig = cluster
    secret_text = "never-read-" + "x" * 24
    await post(client, kc.SECRETS, {
        "metadata": {"name": "unused", "namespace": NS}, "type": "Opaque", "stringData": {"pw": secret_text},
    })  # fmt: skip
    await post(client, kc.SECRETS, {
        "metadata": {"name": "jwks", "namespace": NS}, "type": "Opaque", "data": {"k": "djE="},
    })  # fmt: skip
    await post(client, kc.SECRETS, {
        "metadata": {"name": "jwks", "namespace": "other"}, "type": "Opaque", "data": {"k": "djE="},
    })  # fmt: skip
    policy = {
        "apiVersion": "legation.dev/v1alpha1", "kind": "JWTPolicy", "metadata": {"name": "p", "namespace": NS},
        "spec": {"providers": [{"name": "idp", "issuer": "https://idp/", "jwks": {"secretRef": {
            "name": "jwks", "key": "k"}}}], "rules": [{"requires": {"anyOf": ["idp"]}}]},
    }  # fmt: skip
    await post(client, kc.KINDS["JWTPolicy"], policy)
    async with following(kubeconfig, secret_poll_seconds=0.2) as follow:
        first = await follow.next()
        source = follow.source
        assert first.origins == ("kubernetes:JWTPolicy/demo/p", "kubernetes:Secret/demo/jwks")
        assert source.secrets is not None and set(source.secrets.objects) == {(NS, "jwks")}

        # Followed: a change to the referenced Secret makes a new snapshot.
        await merge_patch(client, kc.SECRETS.path(NS, "jwks"), {"data": {"k": "djI="}})
        changed = await follow.next(timeout=5)
        assert changed.documents[1].data["data"] == {"k": "djI="}
        # An unreferenced one changing is no change at all.
        await merge_patch(client, kc.SECRETS.path(NS, "unused"), {"stringData": {"pw": secret_text + "2"}})
        with pytest.raises(TimeoutError):
            await follow.next(timeout=0.8)

        # No longer named: forgotten.
        await merge_patch(client, kc.KINDS["JWTPolicy"].path(NS, "p"), {"spec": {"providers": [
            {"name": "idp", "issuer": "https://idp/", "jwks": {"uri": "https://idp/jwks"}}]}})  # fmt: skip
        gone = await follow.next()
        assert gone.origins == ("kubernetes:JWTPolicy/demo/p",)
        assert source.secrets.objects == {}
        held = repr(
            (source.secrets.objects, [i.objects for i in source.informers.values()], source._documents)
        )
        assert secret_text not in held and "unused" not in held

    secret_requests = [r for r in emulator if r.resource is not None and r.resource.plural == "secrets"]
    assert secret_requests, "the referenced Secret was read"
    reads = {(r.method, r.namespace, r.name) for r in secret_requests if r.method == "GET"}
    assert reads == {("GET", NS, "jwks")}, "one Secret, by name: no list, no watch, no other namespace"
