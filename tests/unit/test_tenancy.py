"""Who may route what (legation.controller.compiler.tenancy), through the compiler: an attacker
namespace tries every way to capture team-orders' `/orders/`, Hosts own hostnames and delegate
prefixes, the platform's kinds come only from platform namespaces, and only trusted creation
times settle conflicts between namespaces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fixtures.manifests import self_signed

from legation.api.v1alpha1 import AuthService, Host, Mapping, Resource, ResourceId, Secret
from legation.controller.compiler.compile import Tenancy, compile_resources
from legation.controller.compiler.ir import CompileResult, Origin
from legation.controller.serving.pipeline import build
from legation.controller.sources.directory import DirectorySource
from legation.controller.translate.envoy import EnvoyOptions

API = "legation.dev/v1alpha1"
OLD, NEW, NEWER = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00Z", "2024-09-01T00:00:00Z"
KUBERNETES = Tenancy(trusted_timestamps=True)
DIRECTORY = Tenancy(trusted_timestamps=False)


def obj(kind: str, name: str, ns: str, spec: dict[str, Any], ts: str | None = None) -> Resource:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if ts:
        meta["creationTimestamp"] = ts
    model: Any = {"Mapping": Mapping, "Host": Host, "AuthService": AuthService}[kind]
    resource: Resource = model.model_validate(
        {"apiVersion": API, "kind": kind, "metadata": meta, "spec": spec}
    )
    return resource


def mapping(name: str, ns: str, ts: str | None = NEW, **spec: Any) -> Resource:
    spec.setdefault("service", f"{name}.{ns}:80")
    if not {"prefix", "path", "regex"} & spec.keys():
        spec["prefix"] = f"/{name}/"
    return obj("Mapping", name, ns, spec, ts)


def tls(ns: str, name: str = "tls") -> Resource:
    certificate, key = CERT
    data = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns}}
    data |= {"type": "kubernetes.io/tls", "stringData": {"tls.crt": certificate, "tls.key": key}}
    return Secret.model_validate(data)


def host(name: str, ns: str, hostname: str, ts: str | None = NEW, **spec: Any) -> list[Resource]:
    spec |= {"hostname": hostname, "tlsSecret": {"name": "tls"}}
    return [tls(ns), obj("Host", name, ns, spec, ts)]


CERT = self_signed("example")
VICTIM = mapping("orders", "team-orders", OLD, prefix="/orders/", auth={"disabled": True})


def run(*items: Resource | list[Resource], tenancy: Tenancy = KUBERNETES) -> CompileResult:
    flat: list[Resource] = []
    for item in items:
        flat += item if isinstance(item, list) else [item]
    unique = {(r.kind, r.metadata.namespace, r.metadata.name): r for r in flat}
    return compile_resources(
        [(Origin("t.yaml", i), r) for i, r in enumerate(unique.values())], tenancy=tenancy
    )


def verdict(result: CompileResult, kind: str, ns: str, name: str) -> tuple[str, str]:
    status = result.status(kind, ns, name)
    assert status is not None
    return status.state, status.reason or ""


# --- the attacks of the issue ------------------------------------------------------------------

OWNED = "path /orders/ on host * is owned by team-orders (Mapping team-orders/orders)"


@pytest.mark.parametrize(
    "spec",
    [
        {"path": "/orders/42"},
        {"prefix": "/orders/4"},
        {"prefix": "/orders"},
        {"prefix": "/orders/", "headers": {"authorization": "*"}},
        {"prefix": "/orders/", "queryParameters": {"debug": "1"}},
        {"prefix": "/orders/", "methods": ["GET"]},
        {"regex": "/orders/.*"},
        {"regex": "/o.*"},
        {"prefix": "/"},
        {"prefix": "/orders/", "hostname": "127.0.0.1"},
        {"prefix": "/orders/", "hostname": "*.example"},
        {"path": "/orders/42", "hostname": "api.example", "headers": {"authorization": "*"}},
    ],
    ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()),
)
def test_every_capture_of_an_older_namespaces_paths_is_rejected_naming_the_owner(
    spec: dict[str, Any],
) -> None:
    result = run(VICTIM, mapping("evil", "attacker", NEW, auth={"disabled": True}, **spec))
    state, reason = verdict(result, "Mapping", "attacker", "evil")
    assert state == "Rejected"
    assert reason == OWNED
    assert [r.id for r in result.ir.routes] == ["team-orders/orders"]


def test_neighbours_on_distinct_prefixes_need_no_configuration() -> None:
    result = run(
        VICTIM,
        mapping("catalog", "team-catalog", prefix="/catalog/"),
        mapping("near", "attacker", prefix="/ordersx"),  # another segment
        mapping("rx", "attacker", regex="/catalogue/[0-9]+"),
        mapping("host", "attacker", hostname="attacker.example", prefix="/catalogx"),
    )
    assert not result.rejected
    assert len(result.ir.routes) == 5


def test_a_namespace_may_overlap_itself() -> None:
    result = run(
        VICTIM,
        mapping("one", "team-orders", path="/orders/1"),
        mapping("rx", "team-orders", regex="/orders/.*"),
    )
    assert not result.rejected


# --- age you can trust -------------------------------------------------------------------------


def test_in_a_directory_a_written_timestamp_wins_nothing_and_both_parties_lose() -> None:
    early = mapping("evil", "aaa-first", "1970-01-01T00:00:00Z", prefix="/orders/")
    result = run(VICTIM, early, mapping("catalog", "team-catalog", prefix="/catalog/"), tenancy=DIRECTORY)
    for ns, name in [("aaa-first", "evil"), ("team-orders", "orders")]:
        state, reason = verdict(result, "Mapping", ns, name)
        assert state == "Rejected"
        assert "manifests' own creation times are not trusted), so neither is served" in reason
    assert [r.id for r in result.ir.routes] == ["team-catalog/catalog"]  # the rest keeps working


def test_on_kubernetes_the_older_wins_and_equal_times_reject_both() -> None:
    result = run(VICTIM, mapping("evil", "aaa-first", NEW, prefix="/orders/"))
    assert verdict(result, "Mapping", "team-orders", "orders")[0] == "Accepted"
    result = run(VICTIM, mapping("evil", "aaa-first", OLD, prefix="/orders/"))
    assert verdict(result, "Mapping", "team-orders", "orders") == (
        "Rejected",
        "path /orders/ on host * overlaps path /orders/ on host * of aaa-first (Mapping aaa-first/evil); "
        "neither is older (same creation time), so neither is served",
    )
    assert verdict(result, "Mapping", "aaa-first", "evil")[0] == "Rejected"


def test_a_chain_of_conflicts_is_settled_oldest_first() -> None:
    # b loses to a; c overlapped only b, which was never served, so c stands.
    result = run(
        mapping("a", "ns-a", OLD, path="/o/x"),
        mapping("b", "ns-b", NEW, prefix="/o"),
        mapping("c", "ns-c", NEWER, path="/o/y"),
    )
    assert [s.id.name for s in result.rejected] == ["b"]


# --- the platform's kinds ----------------------------------------------------------------------


def test_auth_services_and_the_star_host_come_only_from_platform_namespaces() -> None:
    evil_auth = obj(
        "AuthService", "takeover", "attacker", {"service": "127.0.0.1:1", "failureModeAllow": True}
    )
    result = run(evil_auth, host("any", "attacker", "*", insecure={"action": "Reject"}))
    assert result.ir.auth_service is None and not result.ir.hosts
    assert verdict(result, "AuthService", "attacker", "takeover") == (
        "Rejected",
        "an AuthService is gateway-wide: only the platform namespaces (legation-system) may create one",
    )
    assert verdict(result, "Host", "attacker", "any")[1].startswith("a Host for * is gateway-wide")
    platform = Tenancy(platform_namespaces=frozenset({"attacker"}), trusted_timestamps=True)
    result = run(evil_auth, host("any", "attacker", "*"), tenancy=platform)
    assert not result.rejected and result.ir.auth_service is not None


# --- hostnames: ownership and delegation -------------------------------------------------------


def test_a_host_owns_its_name_against_later_mappings_and_hosts_of_others() -> None:
    result = run(
        host("shop", "team-shop", "shop.example", OLD),
        mapping("cart", "team-shop", hostname="shop.example", prefix="/cart/"),
        mapping("squat", "attacker", hostname="shop.example", prefix="/other/"),
        mapping("wild", "attacker", hostname="*.example", prefix="/wild/"),
        host("same", "attacker", "shop.example", NEW),
        host("wider", "attacker", "*.example", NEW),
    )
    assert verdict(result, "Mapping", "attacker", "squat") == (
        "Rejected",
        "path /other/ on host shop.example is owned by team-shop (Host team-shop/shop)",
    )
    assert verdict(result, "Mapping", "attacker", "wild")[1] == (
        "path /wild/ on host *.example is owned by team-shop (Host team-shop/shop)"
    )
    assert verdict(result, "Host", "attacker", "same")[1] == (
        "shop.example overlaps hostname shop.example is owned by team-shop (Host team-shop/shop)"
    )
    assert verdict(result, "Host", "attacker", "wider")[0] == "Rejected"
    assert [h.id for h in result.ir.hosts] == ["team-shop/shop"]
    assert verdict(result, "Mapping", "team-shop", "cart")[0] == "Accepted"


def test_a_host_cannot_take_a_name_an_older_mapping_of_another_namespace_routes() -> None:
    result = run(
        mapping("api", "team-orders", OLD, hostname="orders.example", prefix="/"),
        host("steal", "attacker", "orders.example", NEW),
        host("any", "attacker", "other.example", NEW),
    )
    assert verdict(result, "Host", "attacker", "steal") == (
        "Rejected",
        "hostname orders.example overlaps orders.example, routed by team-orders (Mapping team-orders/api), "
        "which is older",
    )
    assert verdict(result, "Host", "attacker", "any")[0] == "Accepted"  # a name nobody routes


def test_a_host_delegates_prefixes_and_the_delegate_routes_inside_them_only() -> None:
    delegate = [{"namespace": "team-b", "prefixes": ["/b/"]}]
    result = run(
        host("api", "team-a", "api.example", OLD, delegate=delegate),
        mapping("root", "team-a", hostname="api.example", prefix="/"),
        mapping("b", "team-b", hostname="api.example", prefix="/b/x"),
        mapping("rx", "team-b", hostname="api.example", regex="/b/[0-9]+"),
        mapping("out", "team-b", hostname="api.example", prefix="/c/"),
        mapping("loose", "team-b", hostname="api.example", regex="/b.*"),
    )
    assert verdict(result, "Mapping", "team-b", "b")[0] == "Accepted"
    assert verdict(result, "Mapping", "team-b", "rx")[0] == "Accepted"
    assert verdict(result, "Mapping", "team-a", "root")[0] == "Accepted"  # the owner's fallback
    assert verdict(result, "Mapping", "team-b", "out") == (
        "Rejected",
        "path /c/ on host api.example is owned by team-a (Host team-a/api), which delegates only /b/ to team-b",
    )
    assert verdict(result, "Mapping", "team-b", "loose")[0] == "Rejected"  # could match /bx
    routes = [r.id for r in result.ir.routes]
    assert routes.index("team-b/b") < routes.index("team-a/root")  # the delegate's longer prefix first


def test_the_platforms_star_host_hands_out_prefixes_of_the_shared_hostname() -> None:
    delegate = [{"namespace": "team-orders", "prefixes": ["/orders"]}]
    result = run(
        host("default", "legation-system", "*", OLD, delegate=delegate, insecure={"action": "Route"}),
        mapping("fallback", "legation-system", prefix="/"),
        VICTIM,
        mapping("named", "team-orders", hostname="orders.example", path="/orders/1"),
        mapping("nogrant", "team-catalog", prefix="/catalog/"),
        mapping("nogrant-host", "team-catalog", hostname="catalog.example", prefix="/catalog/"),
    )
    assert verdict(result, "Mapping", "team-orders", "orders")[0] == "Accepted"
    assert verdict(result, "Mapping", "team-orders", "named")[0] == "Accepted"
    assert verdict(result, "Mapping", "legation-system", "fallback")[0] == "Accepted"
    assert verdict(result, "Mapping", "team-catalog", "nogrant")[1] == (
        "path /catalog/ on host * is owned by legation-system (Host legation-system/default)"
    )
    assert verdict(result, "Mapping", "team-catalog", "nogrant-host")[0] == "Rejected"
    # A team that owns a name of its own routes there without a grant.
    result = run(
        host("default", "legation-system", "*", OLD, insecure={"action": "Route"}),
        host("catalog", "team-catalog", "catalog.example", NEW),
        mapping("mine", "team-catalog", hostname="catalog.example", prefix="/"),
    )
    assert not result.rejected


def test_a_team_host_decides_plain_http_only_for_its_own_routes() -> None:
    result = run(VICTIM, host("squat", "attacker", "127.0.0.1", NEW, insecure={"action": "Reject"}))
    (h,) = result.ir.hosts
    assert h.namespaces == ("attacker",)


# --- a directory source stamps what it reads ---------------------------------------------------


def team_file(ns: str, name: str, prefix: str, timestamp: str | None = None) -> str:
    stamp = f", creationTimestamp: '{timestamp}'" if timestamp else ""
    return (
        "apiVersion: legation.dev/v1alpha1\nkind: Mapping\n"
        f"metadata: {{name: {name}, namespace: {ns}{stamp}}}\n"
        f"spec: {{prefix: {prefix}, service: 'app.{ns}:9', auth: {{disabled: true}}}}\n"
    )


def test_a_directory_source_never_gives_a_served_route_to_a_newcomer(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path)
    (tmp_path / "orders.yaml").write_text(team_file("team-orders", "orders", "/orders/"))
    first = source.load()
    assert first.ages == {ResourceId("Mapping", "team-orders", "orders"): 0.0}
    assert not build(first, EnvoyOptions()).rejected
    # The attacker writes an early timestamp and sorts first: neither helps.
    (tmp_path / "a.yaml").write_text(team_file("aaa", "evil", "/orders/4", "1970-01-01T00:00:00Z"))
    stages = build(source.load(), EnvoyOptions())
    [rejected] = stages.rejected
    assert rejected.id == ResourceId("Mapping", "aaa", "evil")
    assert rejected.reason == "path /orders/ on host * is owned by team-orders (Mapping team-orders/orders)"
    # An edit keeps the victim's age; the same two files read afresh (a restart, `validate`) tie.
    (tmp_path / "orders.yaml").write_text(team_file("team-orders", "orders", "/orders"))
    assert [s.id.name for s in build(source.load(), EnvoyOptions()).rejected] == ["evil"]
    fresh = build(DirectorySource(tmp_path).load(), EnvoyOptions())
    assert sorted(s.id.name for s in fresh.rejected) == ["evil", "orders"]
    assert all("neither was there first" in (s.reason or "") for s in fresh.rejected)
