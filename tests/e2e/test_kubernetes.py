"""`legation controller --kubernetes` as a real process against the kmock Kubernetes emulator
(fixtures/kube.py: no real API server can run on these machines), with a real Envoy bootstrapped
at the controller and `legation echo` upstreams.

- objects created, changed and deleted through the API reach Envoy;
- a bad object gets `Accepted=False` (reason Rejected) written back, read from the API;
- a watch answered 410 Gone relists without losing the changes made while it was away;
- two replicas elect one leader (the Lease names it; only it writes status); SIGKILLed, the
  leader's Lease lapses and the other replica takes over and writes status.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures.echo import EchoProcess, echo_body, start_echo
from fixtures.kube import LEASES, MAPPINGS, KubeApi, kube_api
from fixtures.managed import HOST, free_port, http_get, legation_binary, wait_for
from fixtures.processes import EnvoyProcess, Launcher, ManagedProcess, controller_bootstrap

pytestmark = pytest.mark.e2e

NS = "team-a"
LEASE_NS = "legation-system"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubeApi]:
    with kube_api(tmp_path, bookmark_seconds=1.0) as running:
        yield running


def mapping(name: str, prefix: str, service: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "legation.dev/v1alpha1",
        "kind": "Mapping",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"prefix": prefix, "service": service, **spec},
    }


class Controller:
    def __init__(self, process: ManagedProcess, api_port: int, xds_port: int) -> None:
        self.process = process
        self.api_port = api_port
        self.xds_port = xds_port

    def ready(self) -> bool:  # polled by wait_for, which takes an exception for "not yet"
        return http_get(f"http://{HOST}:{self.api_port}/readyz", timeout=1)[0] == 200


def start_controller(
    launch: Launcher,
    api: KubeApi,
    envoy_http_port: int,
    *extra: str,
    name: str = "controller",
) -> Controller:
    xds, http_api = free_port(), free_port()
    process = launch.spawn(
        name,
        [
            legation_binary(), "controller", "--kubernetes",
            "--namespace", NS,
            "--lease-namespace", LEASE_NS,
            "--lease-duration", "3", "--lease-renew", "1",
            "--xds-listen", f"{HOST}:{xds}",
            "--http-listen", f"{HOST}:{http_api}",
            "--envoy-http-port", str(envoy_http_port),
            "--envoy-https-port", str(free_port()),
            "--ratelimit-service", "none",
            *extra,
        ],
        env={**os.environ, "KUBECONFIG": str(api.kubeconfig)},
    )  # fmt: skip
    controller = Controller(process, http_api, xds)
    wait_for(lambda: process.ensure_alive() or controller.ready(), timeout=30, what=f"{name} ready")
    return controller


def start_envoy(launch: Launcher, controller: Controller) -> EnvoyProcess:
    return launch.envoy(controller_bootstrap(controller.xds_port, "kube-test"), wait=False)


def start_gateway(launch: Launcher, api: KubeApi, *extra: str) -> tuple[Controller, int]:
    """A controller and an Envoy following it: (the controller, Envoy's HTTP port)."""
    http = free_port()
    controller = start_controller(launch, api, http, *extra)
    start_envoy(launch, controller)
    return controller, http


def get(port: int, path: str) -> tuple[int, str]:
    try:
        return http_get(f"http://{HOST}:{port}{path}", timeout=2)
    except OSError:
        return -1, ""


def served_by(port: int, path: str) -> str | None:
    status, body = get(port, path)
    return echo_body(body)["name"] if status == 200 else None


def accepted(api: KubeApi, name: str) -> dict[str, Any] | None:
    obj = api.get(MAPPINGS, NS, name)
    entry = (((obj or {}).get("status") or {}).get("gateways") or {}).get("default") or {}
    conditions = entry.get("conditions") or []
    return next((c for c in conditions if c.get("type") == "Accepted"), None)


@pytest.fixture
def upstreams(launch: Launcher) -> tuple[EchoProcess, EchoProcess]:
    return start_echo(launch, "one"), start_echo(launch, "two")


def test_objects_created_changed_and_deleted_reach_envoy(
    launch: Launcher, api: KubeApi, upstreams: tuple[EchoProcess, EchoProcess]
) -> None:
    one, two = upstreams
    _, http = start_gateway(launch, api)

    api.create(MAPPINGS, mapping("orders", "/orders/", one.service))
    wait_for(lambda: served_by(http, "/orders/1") == "one", timeout=20, what="the new Mapping served")

    api.patch(MAPPINGS, NS, "orders", {"spec": {"service": two.service}})
    wait_for(lambda: served_by(http, "/orders/1") == "two", timeout=20, what="the changed Mapping served")

    api.delete(MAPPINGS, NS, "orders")
    wait_for(lambda: get(http, "/orders/1")[0] == 404, timeout=20, what="the deleted Mapping gone")

    # Objects of other namespaces are not watched.
    other = mapping("elsewhere", "/elsewhere/", one.service)
    other["metadata"]["namespace"] = "team-b"
    api.create(MAPPINGS, other)
    api.create(MAPPINGS, mapping("marker", "/marker/", one.service))
    wait_for(lambda: served_by(http, "/marker/") == "one", timeout=20, what="a later Mapping served")
    assert get(http, "/elsewhere/")[0] == 404


def test_a_bad_object_is_rejected_in_its_status(
    launch: Launcher, api: KubeApi, upstreams: tuple[EchoProcess, EchoProcess]
) -> None:
    one, _ = upstreams
    api.create(MAPPINGS, mapping("good", "/good/", one.service))
    api.create(MAPPINGS, mapping("bad", "no-slash/", one.service))
    _, http = start_gateway(launch, api)

    condition = wait_for(lambda: accepted(api, "bad"), timeout=20, what="status written on the bad Mapping")
    assert condition["status"] == "False"
    assert condition["reason"] == "Rejected"
    assert "spec.prefix" in condition["message"]
    assert condition["observedGeneration"] == 1
    good = wait_for(lambda: accepted(api, "good"), timeout=20, what="status written on the good Mapping")
    assert (good["status"], good["reason"]) == ("True", "Accepted")
    wait_for(lambda: served_by(http, "/good/") == "one", timeout=20, what="the good Mapping served")

    api.patch(MAPPINGS, NS, "bad", {"spec": {"prefix": "/fixed/"}})
    fixed = wait_for(
        lambda: (c := accepted(api, "bad")) and c["status"] == "True" and c,
        timeout=20,
        what="the fix accepted",
    )
    assert fixed["observedGeneration"] == 2
    wait_for(lambda: served_by(http, "/fixed/") == "one", timeout=20, what="the fixed Mapping served")


def test_a_410_on_the_watch_relists_without_losing_changes(
    launch: Launcher, api: KubeApi, upstreams: tuple[EchoProcess, EchoProcess]
) -> None:
    one, two = upstreams
    api.create(MAPPINGS, mapping("kept", "/kept/", one.service))
    api.create(MAPPINGS, mapping("changed", "/changed/", one.service))
    api.create(MAPPINGS, mapping("deleted", "/deleted/", one.service))
    controller, http = start_gateway(launch, api, "--no-status")
    for path in ("/kept/", "/changed/", "/deleted/"):
        wait_for(lambda p=path: served_by(http, p) == "one", timeout=20, what=f"{path} served")

    # The controller's watches end and cannot resume until released: meanwhile objects change
    # and the history they would resume from is compacted away, so the API answers 410.
    api.call(lambda k: k.hold_watches())
    api.call(lambda k: k.drop_watches())
    api.patch(MAPPINGS, NS, "changed", {"spec": {"service": two.service}})
    api.delete(MAPPINGS, NS, "deleted")
    api.create(MAPPINGS, mapping("created", "/created/", two.service))
    api.call(lambda k: k.compact())
    lists_before = _lists_of_mappings(api)
    api.call(lambda k: k.release_watches())

    wait_for(lambda: served_by(http, "/created/") == "two", timeout=20, what="the created Mapping served")
    wait_for(lambda: served_by(http, "/changed/") == "two", timeout=20, what="the changed Mapping served")
    wait_for(lambda: get(http, "/deleted/")[0] == 404, timeout=20, what="the deleted Mapping gone")
    assert served_by(http, "/kept/") == "one"
    assert _lists_of_mappings(api) > lists_before, "the controller relisted"
    assert controller.process.running


def _lists_of_mappings(api: KubeApi) -> int:
    def count(k: Any) -> int:
        return sum(
            1
            for r in k
            if r.method == "GET" and r.resource is not None and r.resource.plural == "mappings"
            and r.params.get("watch") != "true"
        )  # fmt: skip

    return api.call(count)


def test_two_replicas_elect_one_leader_and_the_other_takes_over(
    launch: Launcher, api: KubeApi, upstreams: tuple[EchoProcess, EchoProcess]
) -> None:
    one, _ = upstreams
    http = free_port()
    api.create(MAPPINGS, mapping("first", "/first/", one.service))
    a = start_controller(launch, api, http, name="replica-a")
    b = start_controller(launch, api, http, name="replica-b")
    start_envoy(launch, b)  # any replica serves: this Envoy follows the one that does not lead
    wait_for(lambda: served_by(http, "/first/") == "one", timeout=20, what="served through replica b")
    wait_for(lambda: accepted(api, "first"), timeout=20, what="status written by the leader")

    def holder() -> str | None:
        lease = api.get(LEASES, LEASE_NS, "legation-controller")
        return ((lease or {}).get("spec") or {}).get("holderIdentity")

    replicas = {str(a.process.pid): a, str(b.process.pid): b}
    leader_identity = wait_for(holder, timeout=10, what="a Lease holder")
    leader_pid = leader_identity.rsplit("_", 1)[1]
    assert leader_pid in replicas, leader_identity
    leader = replicas.pop(leader_pid)
    follower = next(iter(replicas.values()))
    assert _status_writers(api) == {leader_pid}, "only the leader writes status"

    leader.process.kill()  # SIGKILL: no release, the Lease must lapse
    killed_at = time.monotonic()
    new_identity = wait_for(
        lambda: (h := holder()) and h != leader_identity and h, timeout=20, what="the Lease taken over"
    )
    assert new_identity.rsplit("_", 1)[1] == str(follower.process.pid)
    assert time.monotonic() - killed_at >= 2.0, "taken over before the 3 s lease could lapse"
    lease = api.get(LEASES, LEASE_NS, "legation-controller")
    assert lease is not None and lease["spec"]["leaseTransitions"] >= 1

    api.create(MAPPINGS, mapping("second", "second/", one.service))
    condition = wait_for(lambda: accepted(api, "second"), timeout=20, what="status written by the new leader")
    assert condition["status"] == "False"
    assert str(follower.process.pid) in _status_writers(api)

    # A clean stop (SIGTERM) releases the Lease, so that a successor need not wait for it.
    assert follower.process.stop() == 0
    assert holder() is None


def _status_writers(api: KubeApi) -> set[str]:
    """Pids of the controllers that wrote status (their User-Agent names their identity)."""

    def writers(k: Any) -> set[str]:
        agents = {
            r.headers.get("User-Agent", "")
            for r in k
            if r.method == "PATCH" and r.subresource == "status"
        }  # fmt: skip
        return {agent.rstrip(")").rsplit("_", 1)[-1] for agent in agents}

    return api.call(writers)
