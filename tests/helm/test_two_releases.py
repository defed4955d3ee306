"""Two releases of the chart in one cluster, as gateways `default` and `next` (e.g. during an
upgrade): rendered with the real helm into one set of objects, nothing collides, the CRDs come
once, and each release's controller, Lease, RBAC, Services and NetworkPolicies are its own."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import KubeTools

CHART = Path(__file__).parents[2] / "charts" / "legation"
NAMESPACE = "legation-system"
RELEASES = {
    "legation": {},
    "legation-next": {"gateway": {"name": "next"}, "crds": {"install": False}},
}
"""Release name → values. The second one leaves the CRDs to the first."""
INSTANCE = "app.kubernetes.io/instance"


def render(tools: KubeTools, tmp: Path, release: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    values_file = tmp / f"{release}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = tools.run_helm("template", release, CHART, "--namespace", NAMESPACE, "-f", values_file)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def releases(
    kube_tools: KubeTools, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("two-releases")
    return {release: render(kube_tools, tmp, release, values) for release, values in RELEASES.items()}


def key(obj: dict[str, Any]) -> tuple[str, str, str]:
    return obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"]


def controller_args(objects: list[dict[str, Any]], release: str) -> list[str]:
    (deployment,) = [o for o in objects if key(o) == ("Deployment", NAMESPACE, f"{release}-controller")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args: list[str] = container["args"]
    return args


def flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    return value


def test_no_two_objects_share_kind_namespace_and_name(releases: dict[str, list[dict[str, Any]]]) -> None:
    together = [o for objects in releases.values() for o in objects]
    shared = {k: n for k, n in Counter(key(o) for o in together).items() if n > 1}
    assert shared == {}, "a second release would overwrite (or fail on) these"


def test_the_crds_come_once_from_the_release_that_installs_them(
    releases: dict[str, list[dict[str, Any]]],
) -> None:
    crds = {
        r: sorted(o["metadata"]["name"] for o in objs if o["kind"] == "CustomResourceDefinition")
        for r, objs in releases.items()
    }
    assert crds == {
        "legation": [
            "authservices.legation.dev",
            "hosts.legation.dev",
            "jwtpolicies.legation.dev",
            "mappings.legation.dev",
            "upstreamgrants.legation.dev",
        ],
        "legation-next": [],
    }


def test_each_controller_is_its_own_gateway_with_its_own_lease(
    releases: dict[str, list[dict[str, Any]]],
) -> None:
    gateways = {r: flag(controller_args(objs, r), "--gateway") for r, objs in releases.items()}
    leases = {r: flag(controller_args(objs, r), "--lease-name") for r, objs in releases.items()}
    assert gateways == {"legation": "default", "legation-next": "next"}
    assert leases == {"legation": "legation-controller", "legation-next": "legation-next-controller"}
    for release, objects in releases.items():
        (role,) = [
            o for o in objects if key(o) == ("Role", NAMESPACE, f"{release}-controller-leader-election")
        ]
        named = [rule["resourceNames"] for rule in role["rules"] if "resourceNames" in rule]
        assert named == [[leases[release]]], "a release may renew or take over only its own Lease"
        assert all(set(rule["verbs"]) == {"create"} for rule in role["rules"] if "resourceNames" not in rule)


def test_each_release_binds_its_roles_to_its_own_service_account(
    releases: dict[str, list[dict[str, Any]]],
) -> None:
    for release, objects in releases.items():
        account = {"kind": "ServiceAccount", "name": f"{release}-controller", "namespace": NAMESPACE}
        bindings = [o for o in objects if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]
        assert bindings and all(b["subjects"] == [account] for b in bindings)
        assert all(b["roleRef"]["name"].startswith(f"{release}-") for b in bindings)
        (deployment,) = [o for o in objects if key(o) == ("Deployment", NAMESPACE, f"{release}-controller")]
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == f"{release}-controller"


def test_peoples_roles_are_per_release_and_grant_the_same(releases: dict[str, list[dict[str, Any]]]) -> None:
    """Aggregated roles named per release: uninstalling the old release of an upgrade leaves the
    new one's, and two identical aggregated roles grant no more than one."""
    roles = {
        r: {
            o["metadata"]["name"].removeprefix(f"{r}-"): o["rules"]
            for o in objs
            if o["kind"] == "ClusterRole"
        }
        for r, objs in releases.items()
    }
    assert (
        roles["legation"].keys()
        == roles["legation-next"].keys()
        == {"controller", "edit", "view", "platform"}
    )
    assert roles["legation"] == roles["legation-next"]


def test_services_and_network_policies_select_only_their_own_release(
    releases: dict[str, list[dict[str, Any]]],
) -> None:
    for release, objects in releases.items():
        for service in (o for o in objects if o["kind"] == "Service"):
            assert service["spec"]["selector"][INSTANCE] == release, service["metadata"]["name"]
        for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
            spec = policy["spec"]
            assert spec["podSelector"]["matchLabels"][INSTANCE] == release
            for rule in spec["ingress"]:
                for peer in rule["from"]:
                    if "podSelector" in peer:  # e.g. the other release's Envoy never reaches this xDS
                        assert peer["podSelector"]["matchLabels"][INSTANCE] == release


def test_envoys_and_the_helm_tests_belong_to_their_gateway(releases: dict[str, list[dict[str, Any]]]) -> None:
    for release, objects in releases.items():
        gateway = RELEASES[release].get("gateway", {}).get("name", "default")
        (mapping,) = [o for o in objects if o["kind"] == "Mapping"]
        assert mapping["spec"]["gateways"] == [gateway]
        (config,) = [o for o in objects if key(o) == ("ConfigMap", NAMESPACE, f"{release}-envoy")]
        assert f"{release}-controller.{NAMESPACE}.svc" in yaml.safe_dump(config["data"])
