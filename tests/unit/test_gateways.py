"""Several gateways on one set of resources: each compiles only its own Mappings, Hosts and
AuthServices (`spec.gateways`; absent = default, `*` = every gateway) and shares JWTPolicies and
Secrets; another gateway's resources are not errors and get no status here."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from legation.api.v1alpha1 import MappingSpec
from legation.controller.commands.validate import validate_snapshot
from legation.controller.compiler.gateways import claims, serves
from legation.controller.serving.pipeline import build
from legation.controller.sources.directory import DirectorySource
from legation.controller.translate.envoy import EnvoyOptions

MANIFESTS = """\
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: plain, namespace: t}
spec: {prefix: /plain/, service: "plain.t:80"}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: blue, namespace: t}
spec: {gateways: [blue], prefix: /blue/, service: "blue.t:80", auth: {policy: p}}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: everywhere, namespace: t}
spec: {gateways: ["*"], prefix: /all/, service: "all.t:80"}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: green-broken, namespace: t}
spec: {gateways: [green], prefix: no-slash, service: "g.t:80"}
---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: blue-twin, namespace: t}
spec: {gateways: [green], prefix: /blue/, service: "twin.t:80"}
---
apiVersion: legation.dev/v1alpha1
kind: JWTPolicy
metadata: {name: p, namespace: t}
spec:
  providers: [{name: idp, issuer: "https://idp.example/", jwks: {uri: "https://idp.example/jwks"}}]
  rules: [{requires: {anyOf: [idp]}}]
"""


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    (tmp_path / "m.yaml").write_text(MANIFESTS)
    return tmp_path


def names(directory: Path, gateway: str) -> dict[str, str]:
    stages = build(DirectorySource(str(directory)).load(), EnvoyOptions(), gateway=gateway)
    return {s.id.name: s.state for s in stages.statuses}


def test_each_gateway_compiles_its_own_and_the_shared_kinds(manifests: Path) -> None:
    assert names(manifests, "default") == {"plain": "Accepted", "everywhere": "Accepted", "p": "Accepted"}
    assert names(manifests, "blue") == {"blue": "Accepted", "everywhere": "Accepted", "p": "Accepted"}
    # green's broken Mapping is green's to report; its /blue/ twin does not conflict with blue's
    assert names(manifests, "green") == {
        "green-broken": "Rejected",
        "blue-twin": "Accepted",
        "everywhere": "Accepted",
        "p": "Accepted",
    }


def test_a_gateway_serves_only_the_policies_its_routes_use(manifests: Path) -> None:
    source = DirectorySource(str(manifests)).load()
    assert "name: p\n  namespace: t" in build(source, EnvoyOptions(), gateway="blue").authz_feed
    assert "kind: JWTPolicy" not in build(source, EnvoyOptions(), gateway="default").authz_feed


def test_validate_takes_the_gateway(manifests: Path) -> None:
    source = DirectorySource(str(manifests)).load()
    assert [str(p) for p in validate_snapshot(source).problems] == []
    (problem,) = validate_snapshot(source, gateway="green").problems
    assert "Mapping t/green-broken" in str(problem) and "spec.prefix" in str(problem)


def test_serves_and_claims() -> None:
    assert serves(["default"], "default") and serves(["*"], "x") and not serves(["a", "b"], "c")
    assert claims({"kind": "Mapping", "spec": {}}, "default")  # absent = default
    assert not claims({"kind": "Mapping", "spec": {"gateways": ["blue"]}}, "default")
    assert claims({"kind": "Mapping", "spec": {"gateways": "blue"}}, "default")  # unreadable: everyone's
    assert claims({"kind": "JWTPolicy"}, "blue")  # shared kinds are everyone's


def test_gateway_names_are_dns_labels_or_star() -> None:
    spec = MappingSpec.model_validate({"prefix": "/a/", "service": "a:80"})
    assert spec.gateways == ["default"]
    with pytest.raises(ValidationError, match="invalid name 'Blue_1'"):
        MappingSpec.model_validate({"prefix": "/a/", "service": "a:80", "gateways": ["Blue_1"]})
    with pytest.raises(ValidationError, match="at least 1 item"):
        MappingSpec.model_validate({"prefix": "/a/", "service": "a:80", "gateways": []})
