"""The Helm chart, with the real helm v4: lint, render three value profiles and validate every
object against Kubernetes' own schemas, check the wiring between the components (names, ports,
flags parsed by the real CLI, Envoy's bootstrap validated by the real Envoy), the security
settings, the RBAC, the values schema's refusals, and the Dockerfile the chart's image comes from.

No API server runs here: `helm install` itself is not exercised, only what it would send."""

from __future__ import annotations

import argparse
import base64
import json
import re
import shlex
import subprocess
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fixtures.managed import free_port, http_get, wait_for

from legation.api.v1alpha1 import parse_resource
from legation.api.v1alpha1.kinds import CUSTOM_KINDS
from legation.controller.commands import crds
from legation.controller.commands.bootstrap import XdsTls, sds_files
from legation.controller.commands.bootstrap import bootstrap as legation_bootstrap
from legation.controller.xds.identity import PeerIdentity
from legation.core.yamlfile import load_documents

from .conftest import KubeTools

ROOT = Path(__file__).parents[2]
CHART = ROOT / "charts" / "legation"
RELEASE, NAMESPACE = "legation", "legation-system"
LEGATION_IMAGE_COMPONENTS = ("controller", "authz", "ratelimit")
CONTROLLER_HOST = f"{RELEASE}-controller.{NAMESPACE}.svc"
XDS_TLS = XdsTls(cert_dir="/etc/legation/xds-tls", sds_dir="/etc/envoy", server_name=CONTROLLER_HOST)
XDS_SECRETS = [f"{RELEASE}-xds-ca", f"{RELEASE}-controller-xds-tls", f"{RELEASE}-envoy-xds-tls"]

PROFILES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "external-redis": {
        "redis": {"url": "rediss+sentinel://:s3cret@redis-a:26379,redis-b:26379/mymaster"},
        "ratelimit": {"replicas": 2, "failureMode": "allow", "responseHeaders": True},
        "controller": {"watchNamespaces": ["team-orders", "team-catalog", NAMESPACE]},
        "envoy": {"service": {"type": "NodePort", "nodePorts": {"http": 30080}}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    },
    "ha": {
        "controller": {"replicas": 3},
        "envoy": {
            "replicas": 3,
            "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12},
            "podDisruptionBudget": {"enabled": True, "minAvailable": 2},
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "envoy"}},
                }
            ],
        },
        "authz": {"replicas": 3},
        "ratelimit": {"replicas": 3},
        "redis": {"enabled": True},
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
            ],
        },
    },
}


def render(tools: KubeTools, tmp: Path, values: dict[str, Any], *extra: str) -> list[dict[str, Any]]:
    values_file = tmp / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = tools.run_helm("template", RELEASE, CHART, "--namespace", NAMESPACE, "-f", values_file, *extra)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(
    kube_tools: KubeTools, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("values")
    return {name: render(kube_tools, tmp, values) for name, values in PROFILES.items()}


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def deployment(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return one(objects, "Deployment", f"{RELEASE}-{component}")


def container(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (c,) = deployment(objects, component)["spec"]["template"]["spec"]["containers"]
    return c


def pod_specs(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objects:
        if o["kind"] == "Deployment":
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]
        elif o["kind"] == "Pod":
            yield o["metadata"]["name"], o["spec"]


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")]
    assert len(values) == 1, f"{name} in {args}"
    return values[0]


# --- helm itself ---------------------------------------------------------------------------------


def test_helm_is_v4(kube_tools: KubeTools) -> None:
    assert kube_tools.run_helm("version", "--short").stdout.startswith("v4.")
    version = subprocess.run([kube_tools.kubectl, "version", "--client"], capture_output=True, text=True)
    assert version.returncode == 0 and "Client Version: v1." in version.stdout


@pytest.mark.parametrize("profile", PROFILES)
def test_lint_strict(kube_tools: KubeTools, tmp_path: Path, profile: str) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(PROFILES[profile]))
    result = kube_tools.run_helm("lint", "--strict", CHART, "-f", values)
    assert "0 chart(s) failed" in result.stdout


# --- every object is valid Kubernetes ------------------------------------------------------------


def kubernetes_versions() -> list[str]:
    """The oldest version the chart claims (Chart.yaml kubeVersion) and the newest one known."""
    floor = re.fullmatch(
        r">=\s*(\d+\.\d+)\.\d+(-0)?", yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    )
    assert floor, "kubeVersion must be a >= constraint"
    return [floor.group(1), kubernetes_validate.latest_version()]


OWN_KINDS = {("legation.dev/v1alpha1", "Mapping")}
OPERATOR_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


@pytest.mark.parametrize("version", kubernetes_versions())
@pytest.mark.parametrize("profile", PROFILES)
def test_every_object_is_valid_for_kubernetes(
    rendered: dict[str, list[dict[str, Any]]], profile: str, version: str
) -> None:
    objects = rendered[profile]
    checked = 0
    for obj in objects:
        what = f"{obj['kind']} {obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in OWN_KINDS | OPERATOR_KINDS:
            continue  # no schema in kubernetes-validate: checked by the tests below
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{what} against {version}: {'.'.join(map(str, exc.path))}: {exc.message}")
        checked += 1
    assert checked >= 20


def test_the_helm_test_mapping_is_valid_for_the_crd_and_the_controller(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    (mapping,) = of_kind(rendered["defaults"], "Mapping")
    schema = crds.openapi_schema(next(k for k in CUSTOM_KINDS if k.kind == "Mapping"))
    jsonschema.Draft4Validator(schema).validate(mapping)
    (doc,) = load_documents(yaml.safe_dump(mapping), file="helm-test.yaml")
    resource = parse_resource(doc)
    assert not isinstance(resource, list), resource


def test_service_monitor_selects_the_metrics_services(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["external-redis"]
    (monitor,) = of_kind(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in of_kind(objects, "Service") if selector.items() <= s["metadata"]["labels"].items()]
    endpoints = {e["port"]: e["path"] for e in monitor["spec"]["endpoints"]}
    scraped = {
        (s["metadata"]["name"], p["name"]): endpoints[p["name"]]
        for s in selected
        for p in s["spec"]["ports"]
        if p["name"] in endpoints
    }
    assert scraped == {
        (f"{RELEASE}-controller", "http"): "/metrics",
        (f"{RELEASE}-authz", "metrics"): "/metrics",
        (f"{RELEASE}-ratelimit", "metrics"): "/metrics",
        (f"{RELEASE}-envoy-stats", "stats"): "/stats/prometheus",
    }
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_rendered_crds_are_the_generated_ones(
    kube_tools: KubeTools, tmp_path: Path, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    found = {o["metadata"]["name"]: o for o in of_kind(rendered["defaults"], "CustomResourceDefinition")}
    assert found.keys() == {k.name for k in CUSTOM_KINDS}
    for kind in CUSTOM_KINDS:
        obj = found[kind.name]
        assert obj["spec"] == crds.crd(kind)["spec"]
        assert obj["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "legation"
    not_kept = render(kube_tools, tmp_path, {"crds": {"keep": False}})
    assert all("annotations" not in o["metadata"] for o in of_kind(not_kept, "CustomResourceDefinition"))
    assert (
        of_kind(render(kube_tools, tmp_path, {"crds": {"install": False}}), "CustomResourceDefinition") == []
    )


# --- the profiles ----------------------------------------------------------------------------------


def kinds(objects: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for o in objects:
        counts[o["kind"]] = counts.get(o["kind"], 0) + 1
    return counts


def test_defaults(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["defaults"]
    assert kinds(objects) == {
        "CustomResourceDefinition": 5,
        "ServiceAccount": 1,
        "ClusterRole": 4,  # the controller's; edit, view and platform for people
        "ClusterRoleBinding": 1,
        "Role": 1,
        "RoleBinding": 1,
        "ConfigMap": 1,
        "Secret": 5,  # xDS: the CA, the controller's and the Envoys' certificates; feeds: HTTPS, tokens
        "Service": 5,  # with the helm test's upstream
        "Deployment": 4,
        "PodDisruptionBudget": 4,
        "NetworkPolicy": 4,
        "Mapping": 1,
        "Pod": 1,
    }
    ratelimit = container(objects, "ratelimit")
    assert not any(a.startswith("--redis-url") for a in ratelimit["args"])
    assert deployment(objects, "ratelimit")["spec"]["replicas"] == 1
    envoy_service = one(objects, "Service", f"{RELEASE}-envoy")["spec"]
    assert envoy_service["type"] == "LoadBalancer" and envoy_service["externalTrafficPolicy"] == "Local"
    assert [(p["name"], p["port"], p["targetPort"]) for p in envoy_service["ports"]] == [
        ("http", 80, "http"),
        ("https", 443, "https"),
    ]
    assert container(objects, "envoy")["image"] == "docker.io/envoyproxy/envoy:v1.40.0"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container(objects, "controller")["image"] == f"ghcr.io/legation/legation:{chart['appVersion']}"


def test_external_redis(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["external-redis"]
    url = PROFILES["external-redis"]["redis"]["url"]
    secret = one(objects, "Secret", f"{RELEASE}-redis-url")
    assert secret["stringData"] == {"url": url}
    ratelimit = container(objects, "ratelimit")
    assert flag(ratelimit["args"], "--redis-url") == "$(LEGATION_REDIS_URL)"
    (env,) = [e for e in ratelimit["env"] if e["name"] == "LEGATION_REDIS_URL"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": "url"}
    # The password stays in the Secret: no other object carries the URL.
    assert [o["kind"] for o in objects if url in json.dumps(o)] == ["Secret"]
    assert deployment(objects, "ratelimit")["spec"]["replicas"] == 2
    assert flag(ratelimit["args"], "--failure-mode") == "allow" and "--response-headers" in ratelimit["args"]
    assert not of_kind(objects, "Deployment") or f"{RELEASE}-redis" not in [
        d["metadata"]["name"] for d in of_kind(objects, "Deployment")
    ]
    node_port = one(objects, "Service", f"{RELEASE}-envoy")["spec"]
    assert node_port["type"] == "NodePort" and node_port["ports"][0]["nodePort"] == 30080


def test_existing_secret_for_the_redis_url(kube_tools: KubeTools, tmp_path: Path) -> None:
    objects = render(
        kube_tools, tmp_path, {"redis": {"existingSecret": {"name": "corp-redis", "key": "uri"}}}
    )
    (env,) = container(objects, "ratelimit")["env"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "corp-redis", "key": "uri"}
    assert [s for s in of_kind(objects, "Secret") if "redis" in s["metadata"]["name"]] == []


def test_ha(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["ha"]
    for component in ("controller", "authz", "ratelimit"):
        assert deployment(objects, component)["spec"]["replicas"] == 3, component
    assert "replicas" not in deployment(objects, "envoy")["spec"], "the HPA owns Envoy's replica count"
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-envoy"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert one(objects, "PodDisruptionBudget", f"{RELEASE}-envoy")["spec"]["minAvailable"] == 2
    assert flag(container(objects, "ratelimit")["args"], "--redis-url") == "$(LEGATION_REDIS_URL)"
    (env,) = container(objects, "ratelimit")["env"]
    assert env["value"] == f"redis://{RELEASE}-redis.{NAMESPACE}.svc:6379/0"
    redis = deployment(objects, "redis")
    assert redis["spec"]["replicas"] == 1


def pods_selected(objects: list[dict[str, Any]], selector: dict[str, str]) -> list[str]:
    return [
        d["metadata"]["name"]
        for d in of_kind(objects, "Deployment")
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]


def test_network_policies_admit_only_the_callers(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["ha"]
    policies = {p["metadata"]["name"]: p["spec"] for p in of_kind(objects, "NetworkPolicy")}
    name = {c: f"{RELEASE}-{c}" for c in ("controller", "envoy", "authz", "ratelimit", "redis")}
    assert policies.keys() == set(name.values())
    monitoring = PROFILES["ha"]["networkPolicy"]["metricsFrom"]

    def admitted(component: str) -> dict[str, list[Any]]:
        """port name → the components (or raw peers) it admits."""
        spec = policies[name[component]]
        assert pods_selected(objects, spec["podSelector"]["matchLabels"]) == [name[component]]
        assert spec["policyTypes"] == ["Ingress"]
        out: dict[str, list[Any]] = {}
        for rule in spec["ingress"]:
            assert rule.get("from"), "every rule names its peers (an absent or empty from admits everyone)"
            peers = []
            for peer in rule["from"]:
                if isinstance(peer, dict) and "podSelector" in peer:
                    (pods,) = pods_selected(objects, peer["podSelector"]["matchLabels"])
                    peers.append(pods.removeprefix(f"{RELEASE}-"))
                else:
                    peers.append(peer)
            for port in rule["ports"]:
                out.setdefault(port["port"], []).extend(peers)
        return out

    assert admitted("controller") == {"grpc-xds": ["envoy"], "http": ["authz", "ratelimit", *monitoring]}
    everyone = [{"namespaceSelector": {}}, {"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]
    assert admitted("envoy") == {"http": everyone, "https": everyone, "stats": monitoring}
    assert admitted("authz") == {"grpc": ["envoy"], "metrics": monitoring}
    assert admitted("ratelimit") == {"grpc": ["envoy"], "metrics": monitoring}
    assert admitted("redis") == {"redis": ["ratelimit"]}
    # Every named port a policy admits is one the selected pods declare.
    for policy in policies.values():
        (pod,) = pods_selected(objects, policy["podSelector"]["matchLabels"])
        declared = {
            p["name"]
            for c in one(objects, "Deployment", pod)["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        assert {port["port"] for rule in policy["ingress"] for port in rule["ports"]} <= declared


def test_network_policies_are_on_by_default_and_every_rule_names_its_peers(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Without any value set; and with no metrics peers there is no metrics rule at all."""
    objects = rendered["defaults"]
    policies = of_kind(objects, "NetworkPolicy")
    assert {p["metadata"]["name"] for p in policies} == {
        f"{RELEASE}-{c}" for c in ("controller", "envoy", "authz", "ratelimit")
    }
    for policy in policies:
        for rule in policy["spec"]["ingress"]:
            ports = {p["port"] for p in rule["ports"]}
            assert rule.get("from"), policy["metadata"]["name"]
            assert not ports & {"metrics", "stats"}
    controller = one(objects, "NetworkPolicy", f"{RELEASE}-controller")["spec"]["ingress"]
    envoy_pods = {"app.kubernetes.io/component": "envoy"}
    (http_rule,) = [r for r in controller if r["ports"][0]["port"] == "http"]
    assert not any(
        envoy_pods.items() <= p["podSelector"]["matchLabels"].items() for p in http_rule["from"]
    ), "Envoy (which carries tenant traffic) never reaches the controller's HTTP port"


def test_network_policies_can_be_turned_off(kube_tools: KubeTools, tmp_path: Path) -> None:
    objects = render(kube_tools, tmp_path, {"networkPolicy": {"enabled": False}})
    assert of_kind(objects, "NetworkPolicy") == []


# --- RBAC ------------------------------------------------------------------------------------------

READS = {
    ("legation.dev", r, v)
    for r in ("mappings", "jwtpolicies", "authservices", "hosts", "upstreamgrants")
    for v in ("get", "list", "watch")
} | {("", "secrets", "get")}
"""Secrets: get only. The controller reads a Secret by name when a resource names it; it can
neither list nor watch them."""
STATUS_WRITES = {
    ("legation.dev", f"{r}/status", v)
    for r in ("mappings", "jwtpolicies", "authservices", "hosts", "upstreamgrants")
    for v in ("get", "update", "patch")
}
LEASE = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": [f"{RELEASE}-controller"],
        "verbs": ["get", "update", "patch"],
    },
]
"""Its own Lease only (named in --lease-name); create cannot name one."""


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    out = set()
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb)
                    out.add((group, resource, verb))
    return out


def test_rbac_all_namespaces(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["defaults"]
    account = one(objects, "ServiceAccount", f"{RELEASE}-controller")
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    cluster_role = one(objects, "ClusterRole", f"{RELEASE}-controller")
    assert grants(cluster_role) == READS | STATUS_WRITES
    binding = one(objects, "ClusterRoleBinding", f"{RELEASE}-controller")
    assert binding["subjects"] == [subject] and binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    lease_role = one(objects, "Role", f"{RELEASE}-controller-leader-election")
    assert lease_role["metadata"]["namespace"] == NAMESPACE and lease_role["rules"] == LEASE
    assert flag(container(objects, "controller")["args"], "--lease-name") == f"{RELEASE}-controller"
    lease_binding = one(objects, "RoleBinding", f"{RELEASE}-controller-leader-election")
    assert lease_binding["subjects"] == [subject]
    spec = deployment(objects, "controller")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    assert not any(a.startswith("--namespace") for a in container(objects, "controller")["args"])


def test_rbac_listed_namespaces(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["external-redis"]
    watched = PROFILES["external-redis"]["controller"]["watchNamespaces"]
    controller_cluster_roles = [
        r for r in of_kind(objects, "ClusterRole") if r["metadata"]["name"] == f"{RELEASE}-controller"
    ]
    assert controller_cluster_roles == [] and of_kind(objects, "ClusterRoleBinding") == []
    roles = [r for r in of_kind(objects, "Role") if r["metadata"]["name"] == f"{RELEASE}-controller"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
    assert all(grants(r) == READS | STATUS_WRITES for r in roles)
    bindings = [
        b for b in of_kind(objects, "RoleBinding") if b["metadata"]["name"] == f"{RELEASE}-controller"
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(watched)
    assert [a for a in container(objects, "controller")["args"] if a.startswith("--namespace")] == [
        f"--namespace={ns}" for ns in watched
    ]


def test_only_the_controller_gets_an_api_token(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for profile, objects in rendered.items():
        for name, spec in pod_specs(objects):
            expected = name == f"{RELEASE}-controller"
            assert spec["automountServiceAccountToken"] is expected, (profile, name)


# --- pods: security, resources, probes --------------------------------------------------------------


def test_every_pod_is_locked_down(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for profile, objects in rendered.items():
        for name, spec in pod_specs(objects):
            where = f"{profile}: {name}"
            assert spec["securityContext"]["runAsNonRoot"] is True, where
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert (
                isinstance(spec["securityContext"]["runAsUser"], int)
                and spec["securityContext"]["runAsUser"] > 0
            )
            for c in spec["containers"]:
                security = c["securityContext"]
                assert security["readOnlyRootFilesystem"] is True, where
                assert security["allowPrivilegeEscalation"] is False, where
                assert security["capabilities"] == {"drop": ["ALL"]}, where
                assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"], where


def test_legation_pods_run_as_the_image_user(rendered: dict[str, list[dict[str, Any]]]) -> None:
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert user, "the Dockerfile's USER must be numeric"
    objects = rendered["defaults"]
    for component in LEGATION_IMAGE_COMPONENTS:
        security = deployment(objects, component)["spec"]["template"]["spec"]["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"]) == (int(user[1]), int(user[2])), component


def probes_of(c: dict[str, Any]) -> dict[str, tuple[int, str]]:
    """probe kind → (container port number, path)."""
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    out = {}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind not in c:
            continue
        get = c[kind]["httpGet"]
        assert get["port"] in ports, f"{c['name']} {kind} names an undeclared port"
        out[kind] = (ports[get["port"]], get["path"])
    return out


def listen_port(args: list[str], name: str) -> int:
    return int(flag(args, name).rsplit(":", 1)[1])


def test_probes_hit_the_real_health_endpoints(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["defaults"]
    controller = container(objects, "controller")
    http = listen_port(controller["args"], "--http-listen")
    assert probes_of(controller) == {"livenessProbe": (http, "/healthz"), "readinessProbe": (http, "/readyz")}
    for component in ("authz", "ratelimit"):
        c = container(objects, component)
        ops = listen_port(c["args"], "--metrics-listen")
        assert probes_of(c) == {"livenessProbe": (ops, "/healthz"), "readinessProbe": (ops, "/readyz")}
    envoy = container(objects, "envoy")
    stats = next(
        listener["address"]["socket_address"]["port_value"]
        for listener in envoy_bootstrap(objects)["static_resources"]["listeners"]
        if listener["name"] == "legation-stats"
    )
    assert probes_of(envoy) == {
        "startupProbe": (stats, "/healthz"),
        "livenessProbe": (stats, "/healthz"),
        "readinessProbe": (stats, "/ready"),
    }


def test_container_ports_are_the_ones_the_processes_listen_on(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["defaults"]
    declared = {
        component: {p["name"]: p["containerPort"] for p in container(objects, component)["ports"]}
        for component in ("controller", "authz", "ratelimit", "envoy")
    }
    controller_args = container(objects, "controller")["args"]
    assert declared["controller"] == {
        "grpc-xds": listen_port(controller_args, "--xds-listen"),
        "http": listen_port(controller_args, "--http-listen"),
    }
    for component in ("authz", "ratelimit"):
        args = container(objects, component)["args"]
        assert declared[component] == {
            "grpc": listen_port(args, "--listen"),
            "metrics": listen_port(args, "--metrics-listen"),
        }
    # Envoy's HTTP and HTTPS listeners come from the controller over xDS.
    assert declared["envoy"]["http"] == int(flag(controller_args, "--envoy-http-port"))
    assert declared["envoy"]["https"] == int(flag(controller_args, "--envoy-https-port"))
    assert flag(controller_args, "--envoy-listen-address") == "0.0.0.0"


def test_services_select_one_deployment_and_its_ports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for profile, objects in rendered.items():
        for service in of_kind(objects, "Service"):
            if service["metadata"]["name"] == f"{RELEASE}-helm-test":
                continue  # selects the test Pod (test_components_find_each_other)
            (target,) = pods_selected(objects, service["spec"]["selector"])
            containers = one(objects, "Deployment", target)["spec"]["template"]["spec"]["containers"]
            names = {p["name"] for c in containers for p in c["ports"]}
            for port in service["spec"]["ports"]:
                assert port["targetPort"] in names, (profile, service["metadata"]["name"], port)
        for budget in of_kind(objects, "PodDisruptionBudget"):
            assert len(pods_selected(objects, budget["spec"]["selector"]["matchLabels"])) == 1
        for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
            one(objects, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])


# --- wiring between the components ---------------------------------------------------------------


def service_address(objects: list[dict[str, Any]], component: str, port_name: str) -> str:
    service = one(objects, "Service", f"{RELEASE}-{component}")
    (port,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == port_name]
    return f"{service['metadata']['name']}.{NAMESPACE}.svc:{port}"


@pytest.mark.parametrize("profile", PROFILES)
def test_components_find_each_other(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    objects = rendered[profile]
    controller_http = service_address(objects, "controller", "http")
    assert (
        flag(container(objects, "authz")["args"], "--config-url") == f"https://{controller_http}/feed/authz"
    )
    assert (
        flag(container(objects, "ratelimit")["args"], "--config-url")
        == f"https://{controller_http}/feed/ratelimit"
    )
    controller_args = container(objects, "controller")["args"]
    assert flag(controller_args, "--authz-service") == service_address(objects, "authz", "grpc")
    assert flag(controller_args, "--ratelimit-service") == service_address(objects, "ratelimit", "grpc")
    # The gateway's own gRPC endpoints are never a Mapping's upstream, whatever a grant says.
    reserved = {a.split("=", 1)[1] for a in controller_args if a.startswith("--reserved-upstream=")}
    for component, port in (
        ("authz", "grpc"),
        ("ratelimit", "grpc"),
        ("controller", "grpc-xds"),
        ("controller", "http"),
    ):
        assert service_address(objects, component, port) in reserved, (component, reserved)
    (cluster,) = [
        c for c in envoy_bootstrap(objects)["static_resources"]["clusters"] if c["name"] == "legation-xds"
    ]
    socket = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ]
    assert f"{socket['address']}:{socket['port_value']}" == service_address(objects, "controller", "grpc-xds")
    # helm test: a route to the test pod's own upstream (its Service), requested through Envoy.
    (mapping,) = of_kind(objects, "Mapping")
    (pod,) = of_kind(objects, "Pod")
    test_service = one(objects, "Service", f"{RELEASE}-helm-test")
    assert mapping["spec"]["service"] == f"{RELEASE}-helm-test.{NAMESPACE}:8080"
    assert test_service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert [p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]] == [8080]
    script = pod["spec"]["containers"][0]["args"][0]
    envoy_http = service_address(objects, "envoy", "http")
    assert f'url = "http://{envoy_http}{mapping["spec"]["path"]}"' in script
    assert '("0.0.0.0", 8080)' in script and "answer == nonce" in script
    assert "controller" not in json.dumps(mapping) and "8877" not in script


def test_disabled_services_are_left_out_of_envoy(kube_tools: KubeTools, tmp_path: Path) -> None:
    objects = render(kube_tools, tmp_path, {"authz": {"enabled": False}, "ratelimit": {"enabled": False}})
    args = container(objects, "controller")["args"]
    assert flag(args, "--ratelimit-service") == "none"
    assert not any(a.startswith("--authz-service") for a in args)
    assert {d["metadata"]["name"] for d in of_kind(objects, "Deployment")} == {
        f"{RELEASE}-controller",
        f"{RELEASE}-envoy",
    }
    assert {p["metadata"]["name"] for p in of_kind(objects, "PodDisruptionBudget")} == {
        f"{RELEASE}-controller",
        f"{RELEASE}-envoy",
    }


def legation_parser(command: str) -> argparse.ArgumentParser:
    from legation.cli import build_parser

    return build_parser(command)


@pytest.mark.parametrize("profile", PROFILES)
def test_arguments_parse_with_the_real_cli(rendered: dict[str, list[dict[str, Any]]], profile: str) -> None:
    objects = rendered[profile]
    deployed = {d["metadata"]["name"] for d in of_kind(objects, "Deployment")}
    components = [c for c in LEGATION_IMAGE_COMPONENTS if f"{RELEASE}-{c}" in deployed]
    assert "controller" in components, deployed
    for component in components:
        # Kubernetes expands $(VAR) from the container's env before the CLI sees it.
        env = {e["name"]: e["value"] for e in container(objects, component).get("env", []) if "value" in e}
        args = [
            re.sub(r"\$\((\w+)\)", lambda m, env=env: env.get(m[1], "redis://redis.example:6379/0"), a)
            for a in container(objects, component)["args"]
        ]
        try:
            parsed = legation_parser(component).parse_args(args)
        except SystemExit:
            pytest.fail(f"legation {shlex.join(args)} is refused by the CLI")
        assert parsed.command == component
        if component == "controller":
            assert parsed.kubernetes is True


def test_the_helm_test_pod_uses_only_the_image_python(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (pod,) = of_kind(rendered["defaults"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (mapping,) = of_kind(rendered["defaults"], "Mapping")
    assert int(mapping["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        pod["metadata"]["annotations"]["helm.sh/hook-weight"]
    )
    c = pod["spec"]["containers"][0]
    assert c["image"] == container(rendered["defaults"], "controller")["image"]
    assert c["command"] == ["python", "-c"]
    compile(c["args"][0], "helm-test", "exec")  # the rendered script is valid Python


# --- Envoy's bootstrap -------------------------------------------------------------------------------


def envoy_bootstrap(objects: list[dict[str, Any]]) -> dict[str, Any]:
    config_map = one(objects, "ConfigMap", f"{RELEASE}-envoy")
    bootstrap: dict[str, Any] = yaml.safe_load(config_map["data"]["bootstrap.yaml"])
    return bootstrap


def test_bootstrap_is_what_legation_envoy_bootstrap_prints(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["defaults"]
    chart = envoy_bootstrap(objects)
    expected = legation_bootstrap(
        xds=service_address(objects, "controller", "grpc-xds"), node_cluster=f"{RELEASE}-envoy", tls=XDS_TLS
    )
    extra_clusters = [c for c in chart["static_resources"]["clusters"] if c["name"] != "legation-xds"]
    assert [c["name"] for c in extra_clusters] == ["legation-admin"]
    chart["static_resources"]["clusters"] = [
        c for c in chart["static_resources"]["clusters"] if c not in extra_clusters
    ]
    assert [listener["name"] for listener in chart["static_resources"].pop("listeners")] == ["legation-stats"]
    # The same connection limit, through the resource monitor that replaces the runtime key.
    (monitor,) = chart.pop("overload_manager")["resource_monitors"]
    assert monitor["name"] == "envoy.resource_monitors.global_downstream_max_connections"
    limit = expected.pop("layered_runtime")["layers"][0]["static_layer"]["overload"][
        "global_downstream_max_connections"
    ]
    assert monitor["typed_config"]["max_active_downstream_connections"] == limit
    assert chart == expected
    config_map = one(objects, "ConfigMap", f"{RELEASE}-envoy")["data"]
    for name, content in sds_files(XDS_TLS).items():
        assert yaml.safe_load(config_map[name]) == content, name


def envoy_files(objects: list[dict[str, Any]], tmp: Path) -> str:
    """The Envoy pod's files under `tmp`: the ConfigMap's (bootstrap and SDS files) and the xDS
    client certificate Secret's, with the paths between them moved there; the bootstrap's text."""
    config_dir, cert_dir = tmp / "etc-envoy", tmp / "xds-tls"
    config_dir.mkdir(exist_ok=True)
    cert_dir.mkdir(exist_ok=True)

    def moved(text: str) -> str:
        return text.replace("/etc/legation/xds-tls", str(cert_dir)).replace("/etc/envoy", str(config_dir))

    for name, content in one(objects, "Secret", f"{RELEASE}-envoy-xds-tls")["data"].items():
        (cert_dir / name).write_bytes(base64.b64decode(content))
    data = one(objects, "ConfigMap", f"{RELEASE}-envoy")["data"]
    for name, content in data.items():
        (config_dir / name).write_text(moved(content))
    return moved(data["bootstrap.yaml"])


def test_bootstrap_and_arguments_pass_envoy_validation(
    rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    from fixtures.managed import envoy_binary

    objects = rendered["ha"]
    config = tmp_path / "bootstrap.yaml"
    config.write_text(envoy_files(objects, tmp_path))
    envoy = container(objects, "envoy")
    assert envoy["command"] == ["envoy"]
    args = [
        str(config) if a == "/etc/envoy/bootstrap.yaml" else "envoy-0" if a == "$(POD_NAME)" else a
        for a in envoy["args"]
    ]
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
    assert "deprecated" not in result.stderr.lower()
    mount = next(m for m in envoy["volumeMounts"] if m["name"] == "bootstrap")
    assert f"{mount['mountPath']}/bootstrap.yaml" in envoy["args"]


@pytest.mark.e2e
def test_the_stats_port_exposes_probes_and_metrics_only(
    rendered: dict[str, list[dict[str, Any]]], envoy: Any, tmp_path: Path
) -> None:
    """The real Envoy on the chart's bootstrap (ports moved to free loopback ones, the controller
    replaced by a closed port): /healthz, /ready and /stats/prometheus answer on the stats port,
    the rest of the admin interface does not."""
    text = envoy_files(rendered["defaults"], tmp_path)
    controller = service_address(rendered["defaults"], "controller", "grpc-xds").split(":")[0]
    text = text.replace(f"address: {controller}", "address: 127.0.0.1")
    text = text.replace("port_value: 18000", f"port_value: {free_port()}")
    text = text.replace(
        "address: 0.0.0.0, port_value: 8002", "address: 127.0.0.1, port_value: ${LISTENER_PORT}"
    )
    text = text.replace("port_value: 9901", "port_value: ${ADMIN_PORT}")
    # Listeners open once the first xDS fetch times out (15s per type): shorter here, for speed.
    text = text.replace("resource_api_version: V3}", "resource_api_version: V3, initial_fetch_timeout: 0.5s}")
    for gone in ("port_value: 8002", "port_value: 9901", "port_value: 18000", f"address: {controller}"):
        assert gone not in text
    assert text.count("initial_fetch_timeout") == 2
    proxy = envoy(text, wait=False)
    stats = f"http://127.0.0.1:{proxy.port}"
    wait_for(lambda: http_get(f"{stats}/healthz")[0] == 200, timeout=20, what="envoy stats listener")
    assert http_get(f"{stats}/healthz") == (200, "ok\n")
    status, body = http_get(f"{stats}/ready")  # the admin's answer, relayed
    assert (status, body.strip()) in {(503, "PRE_INITIALIZING"), (503, "INITIALIZING"), (200, "LIVE")}
    status, body = http_get(f"{stats}/stats/prometheus")
    assert status == 200 and "# TYPE envoy_" in body
    for path in ("/config_dump", "/clusters", "/certs", "/runtime", "/stats", "/"):
        assert http_get(f"{stats}{path}")[0] == 404, path
    request = urllib.request.Request(f"{stats}/quitquitquit", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=2)
    assert refused.value.code == 404
    proxy.process.ensure_alive()
    log = proxy.process.stderr_path.read_text()
    assert "deprecated" not in log and "no configured limit" not in log, log


# --- xDS over mTLS --------------------------------------------------------------------------------


def secret_file(objects: list[dict[str, Any]], name: str, key: str) -> bytes:
    return base64.b64decode(one(objects, "Secret", name)["data"][key])


def mounted_secret(objects: list[dict[str, Any]], component: str, volume: str) -> tuple[str, str]:
    """(mount path, Secret name) of one of a component's volumes."""
    pod = deployment(objects, component)["spec"]["template"]["spec"]
    [source] = [v["secret"]["secretName"] for v in pod["volumes"] if v["name"] == volume]
    [path] = [m["mountPath"] for m in container(objects, component)["volumeMounts"] if m["name"] == volume]
    return path, source


@pytest.mark.parametrize("profile", PROFILES)
def test_xds_is_mtls_with_certificates_from_the_charts_ca(
    rendered: dict[str, list[dict[str, Any]]], profile: str
) -> None:
    objects = rendered[profile]
    path, secret = mounted_secret(objects, "controller", "xds-tls")
    assert secret == f"{RELEASE}-controller-xds-tls"
    args = container(objects, "controller")["args"]
    assert flag(args, "--xds-tls-cert") == f"{path}/tls.crt"
    assert flag(args, "--xds-tls-key") == f"{path}/tls.key"
    assert flag(args, "--xds-client-ca") == f"{path}/ca.crt"
    assert mounted_secret(objects, "envoy", "xds-tls") == (XDS_TLS.cert_dir, f"{RELEASE}-envoy-xds-tls")
    [cluster] = [
        c for c in envoy_bootstrap(objects)["static_resources"]["clusters"] if c["name"] == "legation-xds"
    ]
    context = cluster["transport_socket"]["typed_config"]
    assert context["@type"].endswith("UpstreamTlsContext") and context["sni"] == CONTROLLER_HOST
    assert [c["name"] for c in context["common_tls_context"]["tls_certificate_sds_secret_configs"]] == [
        "xds-client-certificate"
    ]

    ca = x509.load_pem_x509_certificate(secret_file(objects, f"{RELEASE}-xds-ca", "tls.crt"))
    server = x509.load_pem_x509_certificate(secret_file(objects, secret, "tls.crt"))
    client = x509.load_pem_x509_certificate(secret_file(objects, f"{RELEASE}-envoy-xds-tls", "tls.crt"))
    for name in (secret, f"{RELEASE}-envoy-xds-tls"):
        assert secret_file(objects, name, "ca.crt") == ca.public_bytes(serialization.Encoding.PEM)
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)
    assert CONTROLLER_HOST in server.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)
    names = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    identity = PeerIdentity(tuple(names.get_values_for_type(x509.DNSName)))
    assert identity.names == (f"{RELEASE}-envoy",)
    node = flag_value(container(objects, "envoy")["args"], "--service-node").replace("$(POD_NAME)", "envoy-0")
    assert identity.allows(node) and node == f"{RELEASE}-envoy/envoy-0"
    # The CA's key signs nothing at run time: no pod mounts it.
    for d in of_kind(objects, "Deployment"):
        assert f"{RELEASE}-xds-ca" not in json.dumps(d["spec"]["template"]), d["metadata"]["name"]


def flag_value(args: list[str], name: str) -> str:
    """The argument after `name` (flags written as two list items)."""
    return args[args.index(name) + 1]


@pytest.mark.e2e
def test_envoy_on_the_charts_bootstrap_and_certificates_syncs_with_a_controller(
    rendered: dict[str, list[dict[str, Any]]], launch: Any, tmp_path: Path
) -> None:
    """The chart's certificates and bootstrap with a real controller and Envoy (addresses moved to
    loopback; the certificate names and the SNI stay the Service's, as in the cluster)."""
    from fixtures.managed import HOST, legation_binary

    objects = rendered["defaults"]
    server_dir = tmp_path / "controller-tls"
    server_dir.mkdir()
    for key in ("tls.crt", "tls.key", "ca.crt"):
        (server_dir / key).write_bytes(secret_file(objects, f"{RELEASE}-controller-xds-tls", key))
    source = tmp_path / "manifests"
    source.mkdir()
    xds, api = free_port(), free_port()
    launch.spawn(
        "controller",
        [
            legation_binary(), "controller", "--source", str(source),
            "--xds-listen", f"{HOST}:{xds}", "--http-listen", f"{HOST}:{api}",
            "--xds-tls-cert", str(server_dir / "tls.crt"), "--xds-tls-key", str(server_dir / "tls.key"),
            "--xds-client-ca", str(server_dir / "ca.crt"), "--ratelimit-service", "none",
        ],
    )  # fmt: skip
    wait_for(lambda: http_get(f"http://{HOST}:{api}/readyz")[0] == 200, timeout=30, what="controller")
    text = envoy_files(objects, tmp_path)
    text = text.replace(f"address: {CONTROLLER_HOST}", f"address: {HOST}")
    text = text.replace("port_value: 18000", f"port_value: {xds}")
    text = text.replace("address: 0.0.0.0, port_value: 8002", f"address: {HOST}, port_value: {free_port()}")
    text = text.replace("port_value: 9901", "port_value: ${ADMIN_PORT}")
    text = text.replace("id: envoy  #", f"id: {RELEASE}-envoy/envoy-0  #")
    proxy = launch.envoy(text, wait=False)

    def synced() -> bool:
        nodes = json.loads(http_get(f"http://{HOST}:{api}/api/envoys")[1])["nodes"]
        return [(n["node_id"], n["identity"], n["state"]) for n in nodes] == [
            (f"{RELEASE}-envoy/envoy-0", f"{RELEASE}-envoy", "acked")
        ]

    wait_for(synced, timeout=30, what="Envoy synced over the chart's mTLS")
    assert proxy.stat("control_plane.connected_state") == 1


# --- values.schema.json ------------------------------------------------------------------------------

BAD_VALUES = {
    "unknown top-level key": (
        {"contoller": {"replicas": 2}},
        "at '': additional properties 'contoller' not allowed",
    ),
    "unknown component key": (
        {"envoy": {"replica": 2}},
        "at '/envoy': additional properties 'replica' not allowed",
    ),
    "envoy service type": ({"envoy": {"service": {"type": "Ingress"}}}, "/envoy/service/type"),
    "envoy port out of range": (
        {"envoy": {"service": {"ports": {"http": 70000}}}},
        "/envoy/service/ports/http",
    ),
    "envoy image tag empty": ({"envoy": {"image": {"tag": ""}}}, "/envoy/image/tag"),
    "envoy log level": ({"envoy": {"logLevel": "verbose"}}, "/envoy/logLevel"),
    "negative replicas": ({"controller": {"replicas": -1}}, "/controller/replicas"),
    "replicas as text": ({"authz": {"replicas": "3"}}, "/authz/replicas"),
    "pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "image digest": ({"image": {"digest": "latest"}}, "/image/digest"),
    "namespace name": ({"controller": {"watchNamespaces": ["Team_Orders"]}}, "/controller/watchNamespaces/0"),
    "ratelimit failure mode": ({"ratelimit": {"failureMode": "open"}}, "/ratelimit/failureMode"),
    "ratelimit backend timeout": ({"ratelimit": {"backendTimeout": 0}}, "/ratelimit/backendTimeout"),
    "in-memory ratelimit with 3 replicas": ({"ratelimit": {"replicas": 3}}, "/ratelimit/replicas"),
    "in-memory ratelimit autoscaled": (
        {"ratelimit": {"autoscaling": {"enabled": True}}},
        "/ratelimit/autoscaling/enabled",
    ),
    "redis url scheme": ({"redis": {"url": "http://redis:6379"}}, "/redis/url"),
    "built-in and external redis": ({"redis": {"enabled": True, "url": "redis://x:6379"}}, "/redis/url"),
    "url and existing secret": (
        {"redis": {"url": "redis://x:6379", "existingSecret": {"name": "s"}}},
        "/redis/existingSecret/name",
    ),
    "pdb negative bound": (
        {"authz": {"podDisruptionBudget": {"minAvailable": -1}}},
        "/authz/podDisruptionBudget/minAvailable",
    ),
    "pdb percent": (
        {"envoy": {"podDisruptionBudget": {"maxUnavailable": "half"}}},
        "/envoy/podDisruptionBudget",
    ),
    "resource quantity": (
        {"controller": {"resources": {"limits": {"memory": "lots"}}}},
        "/controller/resources/limits/memory",
    ),
    "hpa target": (
        {"envoy": {"autoscaling": {"targetCPUUtilizationPercentage": 150}}},
        "/envoy/autoscaling/targetCPUUtilizationPercentage",
    ),
    "network policy flag": ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled"),
    "empty metrics peer": ({"networkPolicy": {"metricsFrom": [{}]}}, "/networkPolicy/metricsFrom/0"),
    "service monitor interval": ({"serviceMonitor": {"interval": "30 seconds"}}, "/serviceMonitor/interval"),
    "platform namespace name": ({"platform": {"namespaces": ["Team_A"]}}, "/platform/namespaces/0"),
    "user roles flag": ({"rbac": {"userRoles": "yes"}}, "/rbac/userRoles"),
    "feeds tls secret": ({"feeds": {"tls": {"existingSecret": 1}}}, "/feeds/tls/existingSecret"),
}


@pytest.mark.parametrize(("values", "where"), BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_values_schema_refuses(
    kube_tools: KubeTools, tmp_path: Path, values: dict[str, Any], where: str
) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = kube_tools.run_helm("template", RELEASE, CHART, "-f", values_file, check=False)
    assert result.returncode != 0, f"accepted: {values}"
    assert "don't meet the specifications of the schema" in result.stderr, result.stderr
    assert where in result.stderr, result.stderr


def test_each_refusal_is_that_value_alone(kube_tools: KubeTools, tmp_path: Path) -> None:
    # The bad values above differ from good ones in one place: the good twins render.
    good = [
        {"ratelimit": {"replicas": 3}, "redis": {"enabled": True}},
        {"ratelimit": {"autoscaling": {"enabled": True}}, "redis": {"url": "redis+cluster://r:6379"}},
        {"redis": {"url": "unix:///run/redis.sock"}},
        {"authz": {"podDisruptionBudget": {"minAvailable": 1}}},
        {"envoy": {"podDisruptionBudget": {"maxUnavailable": "50%"}}},
        {"controller": {"watchNamespaces": ["team-orders"]}},
        {"image": {"digest": "sha256:" + "a" * 64}},
        {"networkPolicy": {"enabled": True, "metricsFrom": [{"podSelector": {}}]}},
    ]
    for values in good:
        assert render(kube_tools, tmp_path, values), values


def test_in_memory_ratelimit_is_refused_by_the_templates_too(kube_tools: KubeTools, tmp_path: Path) -> None:
    # --skip-schema-validation skips values.schema.json, not the template's own check.
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump({"ratelimit": {"replicas": 2}}))
    result = kube_tools.run_helm(
        "template", RELEASE, CHART, "-f", values_file, "--skip-schema-validation", check=False
    )
    assert result.returncode != 0
    assert "in-memory counters" in result.stderr and "exactly one replica" in result.stderr


def test_autoscaling_bounds_are_checked(kube_tools: KubeTools, tmp_path: Path) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(
        yaml.safe_dump({"authz": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}})
    )
    result = kube_tools.run_helm("template", RELEASE, CHART, "-f", values_file, check=False)
    assert result.returncode != 0 and "minReplicas (5) is above maxReplicas (2)" in result.stderr


# --- NOTES.txt -----------------------------------------------------------------------------------------


def notes(tools: KubeTools, tmp_path: Path, values: dict[str, Any]) -> str:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = tools.run_helm("install", RELEASE, CHART, "-n", NAMESPACE, "-f", values_file, "--dry-run=client")
    return result.stdout.split("NOTES:", 1)[1]


def test_notes_show_a_valid_first_mapping_and_warn_about_in_memory_limits(
    kube_tools: KubeTools, tmp_path: Path
) -> None:
    text = notes(kube_tools, tmp_path, {})
    assert "kubectl get legation -A" in text and f"helm test {RELEASE} -n {NAMESPACE}" in text
    example = textwrap.dedent(text.split("<<'YAML'\n", 1)[1].split("  YAML\n", 1)[0])
    (doc,) = load_documents(example, file="NOTES.txt")
    assert not isinstance(parse_resource(doc), list)
    assert "rate limit counters are in memory" in text
    assert "rate limit counters are in memory" not in notes(
        kube_tools, tmp_path, {"redis": {"enabled": True}}
    )


# --- the image -------------------------------------------------------------------------------------------


def test_dockerfile_builds_the_installed_packages_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.replace("\\\n", " ").splitlines() if line and not line.startswith("#")]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2 and any(" AS build" in s for s in stages[:-1]), "multi-stage: build, then runtime"
    runtime = lines[lines.index(stages[-1]) :]
    assert [line for line in runtime if line.startswith("ENTRYPOINT")] == ['ENTRYPOINT ["legation"]']
    (user,) = [line for line in runtime if line.startswith("USER ")]
    uid = int(user.split()[1].split(":")[0])
    assert uid >= 1000
    assert any(line.startswith("COPY --from=build ") for line in runtime)
    # The build stage installs the wheelhouse image/build.sh makes from uv.lock (`make wheelhouse`);
    # tests/image builds the image for real.
    copied = {
        part.rstrip("/")
        for line in lines
        if line.startswith("COPY ") and "--from" not in line
        for part in line.split()[1:-1]
    }
    assert copied == {"build/image/wheels", "build/image/legation"}
    assert "-r /wheels/requirements.txt" in text and "--require-hashes" in text


def test_dockerignore_lets_through_exactly_what_the_build_copies() -> None:
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "*", "allow-list: everything else stays out of the build context"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    text = (ROOT / "Dockerfile").read_text()
    copied = {
        p.rstrip("/")
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for p in line.split()[1:-1]
    }
    assert allowed == copied


def test_a_cluster_ip_envoy_service_sets_no_external_fields(kube_tools: KubeTools, tmp_path: Path) -> None:
    objects = render(
        kube_tools, tmp_path, {"envoy": {"service": {"type": "ClusterIP", "nodePorts": {"http": 30080}}}}
    )
    spec = one(objects, "Service", f"{RELEASE}-envoy")["spec"]
    assert spec["type"] == "ClusterIP" and "externalTrafficPolicy" not in spec
    assert all("nodePort" not in p for p in spec["ports"])
    kubernetes_validate.validate(
        one(objects, "Service", f"{RELEASE}-envoy"), kubernetes_validate.latest_version(), strict=True
    )


# --- feeds, people's RBAC, platform namespaces ---------------------------------------------------


def volume(objects: list[dict[str, Any]], component: str, name: str) -> dict[str, Any]:
    spec = deployment(objects, component)["spec"]["template"]["spec"]
    (found,) = [v for v in spec["volumes"] if v["name"] == name]
    return found


def mounted_at(objects: list[dict[str, Any]], component: str, path: str) -> dict[str, Any]:
    """The volume whose mount contains `path` in the component's container."""
    c = container(objects, component)
    (mount,) = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mount.get("readOnly") is True
    return volume(objects, component, mount["name"])


def test_feeds_are_https_and_each_service_holds_only_its_own_token(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from cryptography import x509

    objects = rendered["defaults"]
    controller = container(objects, "controller")["args"]
    cert, key = flag(controller, "--http-tls-cert"), flag(controller, "--http-tls-key")
    tokens = dict(a.split("=", 1)[1].split("=", 1) for a in controller if a.startswith("--feed-token-file="))
    assert set(tokens) == {"authz", "ratelimit"}
    tls_secret = one(objects, "Secret", f"{RELEASE}-controller-http-tls")
    token_secret = one(objects, "Secret", f"{RELEASE}-feed-tokens")
    assert mounted_at(objects, "controller", cert)["secret"]["secretName"] == tls_secret["metadata"]["name"]
    assert mounted_at(objects, "controller", key) == mounted_at(objects, "controller", cert)
    assert (
        mounted_at(objects, "controller", tokens["authz"])["secret"]["secretName"]
        == (token_secret["metadata"]["name"])
    )
    for probe in ("livenessProbe", "readinessProbe"):
        assert container(objects, "controller")[probe]["httpGet"]["scheme"] == "HTTPS"

    # Tokens: generated, long, different per feed.
    values = {k: base64.b64decode(v).decode() for k, v in token_secret["data"].items()}
    assert set(values) == {"authz-token", "ratelimit-token"}
    assert all(len(v) >= 32 for v in values.values()) and values["authz-token"] != values["ratelimit-token"]

    # The certificate: for the controller's Service name, signed by the CA the services trust.
    data = {k: base64.b64decode(v) for k, v in tls_secret["data"].items()}
    certificate = x509.load_pem_x509_certificate(data["tls.crt"])
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    certificate.verify_directly_issued_by(ca)
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    host = service_address(objects, "controller", "http").rsplit(":", 1)[0]
    assert host in names.get_values_for_type(x509.DNSName)

    for component in ("authz", "ratelimit"):
        args = container(objects, component)["args"]
        assert flag(args, "--config-url").startswith("https://")
        token_file, ca_file = flag(args, "--feed-token-file"), flag(args, "--feed-ca")
        sources = mounted_at(objects, component, token_file)["projected"]["sources"]
        assert mounted_at(objects, component, ca_file) == mounted_at(objects, component, token_file)
        items = {(s["secret"]["name"], i["key"], i["path"]) for s in sources for i in s["secret"]["items"]}
        directory = token_file.rsplit("/", 1)[0]
        assert items == {
            (
                token_secret["metadata"]["name"],
                f"{component}-token",
                token_file.removeprefix(directory + "/"),
            ),
            (tls_secret["metadata"]["name"], "ca.crt", ca_file.removeprefix(directory + "/")),
        }, "its own token and the CA, nothing else (no key, no other feed's token)"


def test_feed_secrets_you_manage(kube_tools: KubeTools, tmp_path: Path) -> None:
    objects = render(
        kube_tools,
        tmp_path,
        {"feeds": {"tls": {"existingSecret": "corp-tls"}, "tokens": {"existingSecret": "corp-tokens"}}},
    )
    assert [s["metadata"]["name"] for s in of_kind(objects, "Secret")] == XDS_SECRETS  # only xDS's own
    assert volume(objects, "controller", "http-tls")["secret"]["secretName"] == "corp-tls"
    assert volume(objects, "controller", "feed-tokens")["secret"]["secretName"] == "corp-tokens"
    names = {s["secret"]["name"] for s in volume(objects, "authz", "feed")["projected"]["sources"]}
    assert names == {"corp-tls", "corp-tokens"}


def test_service_monitor_scrapes_the_controller_over_https(rendered: dict[str, list[dict[str, Any]]]) -> None:
    (monitor,) = of_kind(rendered["external-redis"], "ServiceMonitor")
    (endpoint,) = [e for e in monitor["spec"]["endpoints"] if e["port"] == "http"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["ca"]["secret"] == {
        "name": f"{RELEASE}-controller-http-tls",
        "key": "ca.crt",
    }


def test_people_get_legation_through_the_aggregated_roles(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["defaults"]
    kinds_ = ("mappings", "jwtpolicies", "hosts", "authservices")
    reads = {("legation.dev", r, v) for r in kinds_ for v in ("get", "list", "watch")}
    status = {("legation.dev", f"{r}/status", v) for r in kinds_ for v in ("get", "list", "watch")}
    writes = {"create", "update", "patch", "delete", "deletecollection"}

    def writes_of(role: dict[str, Any]) -> set[str]:
        return {r for g, r, v in grants(role) if v in writes}

    edit = one(objects, "ClusterRole", f"{RELEASE}-edit")
    labels = edit["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert writes_of(edit) == {"mappings", "jwtpolicies"}, "teams write Mappings and JWTPolicies only"
    assert reads | status <= grants(edit), "and read everything, status included"
    assert not any(r.endswith("/status") and v in writes for _, r, v in grants(edit))

    view = one(objects, "ClusterRole", f"{RELEASE}-view")
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert grants(view) == reads | status

    platform = one(objects, "ClusterRole", f"{RELEASE}-platform")
    assert not any(
        k.startswith("rbac.authorization.k8s.io/aggregate-to") for k in platform["metadata"]["labels"]
    )
    assert writes_of(platform) == set(kinds_)
    assert "aggregationRule" not in platform
    # Only the platform role writes Hosts and AuthServices.
    for role in of_kind(objects, "ClusterRole"):
        if role["metadata"]["name"] != f"{RELEASE}-platform":
            assert not writes_of(role) & {"hosts", "authservices"}, role["metadata"]["name"]


def test_user_roles_can_be_left_out(kube_tools: KubeTools, tmp_path: Path) -> None:
    objects = render(kube_tools, tmp_path, {"rbac": {"userRoles": False}})
    assert [r["metadata"]["name"] for r in of_kind(objects, "ClusterRole")] == [f"{RELEASE}-controller"]


def test_platform_namespaces_reach_the_controller(kube_tools: KubeTools, tmp_path: Path) -> None:
    def platform_args(objects: list[dict[str, Any]]) -> list[str]:
        return [a for a in container(objects, "controller")["args"] if a.startswith("--platform-namespace")]

    assert platform_args(render(kube_tools, tmp_path, {})) == [f"--platform-namespace={NAMESPACE}"]
    objects = render(kube_tools, tmp_path, {"platform": {"namespaces": ["edge", NAMESPACE, "shared-gw"]}})
    assert platform_args(objects) == [
        f"--platform-namespace={NAMESPACE}",
        "--platform-namespace=edge",
        "--platform-namespace=shared-gw",
    ], "the release namespace always counts, once"
