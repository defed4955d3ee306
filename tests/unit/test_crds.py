"""The CRDs generated from the pydantic models: the committed copies are current, each is a valid
apiextensions.k8s.io/v1 object with a structural schema (the rules the API server enforces are
checked here, since no API server can run on these machines), every model field is in the
schema, and the schemas accept what users write (the DESIGN.md examples) while Kubernetes would
prune nothing the controller reads."""

from __future__ import annotations

import copy
import json
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel, Field

from legation.api.v1alpha1 import parse_resource
from legation.api.v1alpha1.kinds import CUSTOM_KINDS as KINDS
from legation.api.v1alpha1.kinds import Kind
from legation.controller.commands import crds
from legation.controller.commands.crds import (
    Condition,
    CrdError,
    GatewayStatus,
    ResourceStatus,
    crd,
    structural_schema,
)
from legation.core.durations import Duration, parse_duration
from legation.core.yamlfile import load_documents

ROOT = Path(__file__).parents[2]
CHART_CRDS = ROOT / "charts" / "legation" / "templates" / "crds"
VALID = Path(__file__).parent / "controller_manifests" / "valid"
BY_KIND = {k.kind: k for k in KINDS}
KUBERNETES = kubernetes_validate.latest_version()


def schema_of(kind: str) -> dict[str, Any]:
    return crd(BY_KIND[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# --- the committed copies ---------------------------------------------------------------------


def test_committed_crds_are_current() -> None:
    committed = {p.name: p.read_text() for p in CHART_CRDS.glob("*.yaml")}
    generated = {crds.filename(k): crds.render(k, helm=True) for k in KINDS}
    assert committed.keys() == generated.keys(), "run `make crds`"
    for name, text in generated.items():
        assert committed[name] == text, f"{name} is out of date: run `make crds`"


def test_make_crds_writes_the_files_and_removes_stale_ones(tmp_path: Path) -> None:
    (tmp_path / "gone.legation.dev.yaml").write_text("old")
    (tmp_path / "README.md").write_text("kept")
    assert crds.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["README.md", *(crds.filename(k) for k in KINDS)]
    )
    assert crds.main(["--plain", str(tmp_path)]) == 0
    plain = yaml.safe_load((tmp_path / "mappings.legation.dev.yaml").read_text())
    assert plain == crd(BY_KIND["Mapping"])


# --- valid apiextensions objects with structural schemas --------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_crd_is_a_valid_apiextensions_object(kind: Kind) -> None:
    kubernetes_validate.validate(crd(kind), KUBERNETES, strict=True)


# The fields of Kubernetes' JSONSchemaProps that a v1 CRD may use ($ref, definitions,
# patternProperties, dependencies, additionalItems and id are refused by the API server).
ALLOWED_KEYS = {
    "description", "type", "format", "title", "default", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
    "multipleOf", "enum", "maxProperties", "minProperties", "required", "items", "allOf", "oneOf",
    "anyOf", "not", "properties", "additionalProperties", "externalDocs", "example", "nullable",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys", "x-kubernetes-list-type",
    "x-kubernetes-map-type", "x-kubernetes-validations",
}  # fmt: skip
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node outside logical junctors, with its path."""
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")
    if isinstance(schema.get("items"), dict):
        yield from nodes(schema["items"], f"{path}[]")


def structural_problems(schema: dict[str, Any]) -> list[str]:
    """The API server's structural-schema rules (and the v1 CRD schema checks) as problems."""
    problems = []
    for path, node in nodes(schema):
        where = path or "<root>"
        problems += [f"{where}: {key} is not allowed" for key in node.keys() - ALLOWED_KEYS]
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        free = node.get("x-kubernetes-preserve-unknown-fields") is True
        # 1. a non-empty type everywhere, but for int-or-string and preserve-unknown-fields nodes
        if not node.get("type") and not (int_or_string or free):
            problems.append(f"{where}: no type")
        if node.get("type") not in (None, "object", "array", "string", "integer", "number", "boolean"):
            problems.append(f"{where}: unknown type {node.get('type')!r}")
        # 2 and 3. nothing inside junctors but value validations (the int-or-string anyOf aside),
        # and no fields that exist only there
        for junctor in JUNCTORS:
            if junctor not in node:
                continue
            if int_or_string and junctor == "anyOf" and node["anyOf"] == INT_OR_STRING:
                continue
            branches = node[junctor] if isinstance(node[junctor], list) else [node[junctor]]
            for branch in branches:
                for key in ("type", "description", "default", "additionalProperties", "nullable"):
                    if key in branch:
                        problems.append(f"{where}: {key} inside {junctor}")
                for name in branch.get("properties", {}):
                    if name not in node.get("properties", {}):
                        problems.append(f"{where}: {name} only inside {junctor}")
        if int_or_string and "type" in node:
            problems.append(f"{where}: int-or-string with a type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{where}: properties and additionalProperties together")
        if node.get("additionalProperties") is False:
            problems.append(f"{where}: additionalProperties false")
        if node.get("uniqueItems"):
            problems.append(f"{where}: uniqueItems true (refused by the API server)")
        if "x-kubernetes-preserve-unknown-fields" in node and not free:
            problems.append(f"{where}: x-kubernetes-preserve-unknown-fields must be true if set")
        if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
            problems.append(f"{where}: exclusiveMinimum must be a boolean in OpenAPI v3.0")
        if "$ref" in node or "$defs" in node:
            problems.append(f"{where}: references")
        if "default" in node:
            problems.append(f"{where}: a default (the models own defaults)")
        list_type = node.get("x-kubernetes-list-type")
        if list_type == "map":
            item = node["items"]
            for key in node.get("x-kubernetes-list-map-keys", []):
                if key not in item.get("required", []):
                    problems.append(f"{where}: list-map key {key} is not required")
        elif list_type == "set" and node["items"].get("type") in ("object", "array"):
            problems.append(f"{where}: a set of {node['items'].get('type')}s")
    # 4. metadata: only name and generateName restrictions
    metadata = schema.get("properties", {}).get("metadata", {"type": "object"})
    if set(metadata) - {"type", "description"} or metadata.get("type") != "object":
        problems.append(f".metadata: only type object is allowed, not {metadata}")
    return problems


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: Kind) -> None:
    schema = schema_of(kind.kind)
    assert structural_problems(schema) == []
    assert "x-kubernetes-preserve-unknown-fields" not in yaml.safe_dump(schema), "nothing is free-form"


def test_the_structural_checker_finds_what_the_api_server_refuses() -> None:
    bad = {
        "type": "object",
        "properties": {
            "metadata": {"type": "object", "properties": {"labels": {"type": "object"}}},
            "a": {"description": "no type"},
            "b": {"type": "string", "anyOf": [{"type": "string"}, {"type": "integer"}]},
            "c": {"type": "object", "additionalProperties": False, "properties": {"x": {"type": "string"}}},
            "d": {"$ref": "#/$defs/D"},
            "e": {"type": "array", "uniqueItems": True, "items": {"type": "string"}},
            "f": {"type": "integer", "minimum": 0, "exclusiveMinimum": 0},
            "g": {"type": "string", "default": "x"},
        },
    }
    found = "\n".join(structural_problems(bad))
    for expected in (
        ".a: no type",
        ".b: type inside anyOf",
        ".c: properties and additionalProperties together",
        ".c: additionalProperties false",
        ".d: $ref is not allowed",
        ".e: uniqueItems true",
        ".f: exclusiveMinimum must be a boolean",
        ".g: a default",
        ".metadata: only type object",
    ):
        assert expected in found


# --- the schema follows the models ------------------------------------------------------------


def model_fields(model: type[BaseModel], path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted alias path, field) of every field, nested models included."""
    for name, field in model.model_fields.items():
        alias = field.alias or name
        yield f"{path}.{alias}", field
        for sub in _models_in(field.annotation):
            yield from model_fields(sub, f"{path}.{alias}")


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _models_in(arg)


def schema_at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.strip(".").split("."):
        if "additionalProperties" in node and part not in node.get("properties", {}):
            node = node["additionalProperties"]  # `part` is a key of a map (status.gateways.NAME)
            continue
        while "properties" not in node:  # through lists to the model inside
            node = node.get("items") or node["additionalProperties"]
        node = node["properties"][part]
    return node


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_model_field_is_in_the_schema_with_its_description(kind: Kind) -> None:
    spec = schema_of(kind.kind)["properties"]["spec"]
    fields = list(model_fields(kind.spec_model))
    assert fields
    for path, field in fields:
        node = schema_at(spec, path)
        if field.description:
            assert node["description"] == field.description, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_required_fields_are_those_without_a_default(kind: Kind) -> None:
    spec = schema_of(kind.kind)["properties"]["spec"]
    for model, path in [
        (kind.spec_model, ""),
        *((m, p) for p, f in model_fields(kind.spec_model) for m in _models_in(f.annotation)),
    ]:
        node = schema_at(spec, path) if path else spec
        while "properties" not in node:
            node = node.get("items") or node["additionalProperties"]
        required = {f.alias or n for n, f in model.model_fields.items() if f.is_required()}
        assert set(node.get("required", [])) == required, (model.__name__, path)


def test_durations_are_int_or_string_with_the_parser_pattern() -> None:
    timeout = schema_at(schema_of("Mapping")["properties"]["spec"], ".timeout")
    assert timeout["x-kubernetes-int-or-string"] is True
    pattern = re.compile(timeout["pattern"])
    for text in ("200ms", "3s", "10m", "1h30m", "2d", "1.5s"):
        assert pattern.search(text) and parse_duration(text) >= 0
    for text in ("3 seconds", "s", "3", "-1s", "3S"):
        assert not pattern.search(text)
        with pytest.raises(ValueError):
            parse_duration(text)


def test_kinds_have_distinct_names_a_category_and_status() -> None:
    names = [crd(k)["spec"]["names"] for k in KINDS]
    every = [n for names_ in names for n in (names_["plural"], names_["singular"], *names_["shortNames"])]
    assert len(every) == len(set(every))
    assert {n["kind"] for n in names} == {"Mapping", "JWTPolicy", "AuthService", "Host", "UpstreamGrant"}
    for kind in KINDS:
        version = crd(kind)["spec"]["versions"][0]
        assert crd(kind)["spec"]["names"]["categories"] == ["legation"]
        assert version["subresources"] == {"status": {}}
        assert crd(kind)["spec"]["group"] == "legation.dev" and version["name"] == "v1alpha1"


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_printer_columns_name_fields_of_the_schema(kind: Kind) -> None:
    version = crd(kind)["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns][-3:] == ["Accepted", "Reason", "Age"]
    for column in columns:
        path = column["jsonPath"]
        if path.startswith(".metadata."):
            continue
        # `.status.gateways.default.conditions[?(@.type=="Accepted")].status` → …conditions.status
        dotted = re.sub(r"\[[^]]*\]", "", path)
        node = schema_at(schema, dotted)
        expected = {"string": "string", "boolean": "boolean", "integer": "integer"}[column["type"]]
        assert node["type"] == expected, path


def test_mapping_columns_as_the_issue_asks() -> None:
    columns = crd(BY_KIND["Mapping"])["spec"]["versions"][0]["additionalPrinterColumns"]
    shown = [c["name"] for c in columns if not c.get("priority")]
    assert shown == ["Host", "Prefix", "Service", "Accepted", "Age"]


# --- what users write -------------------------------------------------------------------------


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused where Kubernetes would prune them (kubectl's strict
    field validation reports them): a field the examples use that the CRD lacks would be lost."""
    schema = copy.deepcopy(schema)
    for path, node in nodes(schema):
        if (
            "properties" in node
            and path != ".metadata"
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
    return schema


def crd_errors(document: dict[str, Any]) -> list[str]:
    """What the API server would say about a document, with the CRD's schema (OpenAPI v3.0 is
    JSON schema draft 4 for these keywords: boolean exclusiveMinimum, int-or-string anyOf)."""
    document = json.loads(json.dumps(document))  # as kubectl sends it: a YAML `on:` key is "true"
    validator = jsonschema.Draft4Validator(strict(schema_of(document["kind"])))
    return sorted(
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)
    )


def documents(path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}:{d.line_of(())}", d.data) for d in load_documents(path.read_text(), file=path.name)
    ]


DESIGN_EXAMPLES = [
    d
    for f in ("team-orders/orders.yaml", "team-orders/host.yaml", "legation-system/authservice.yaml")
    for d in documents(VALID / f)
]


@pytest.mark.parametrize(("where", "document"), DESIGN_EXAMPLES, ids=[w for w, _ in DESIGN_EXAMPLES])
def test_design_examples_are_accepted_by_the_crd_and_the_model(where: str, document: dict[str, Any]) -> None:
    assert crd_errors(document) == []
    (doc,) = load_documents(yaml.safe_dump(document), file=where)
    assert not isinstance(parse_resource(doc), list)


EXTRA_EXAMPLES = """
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: grpc, namespace: team-a}
spec:
  hostname: "*.example.com"
  path: /pkg.Service/Method
  service: https://grpc.team-a:8443
  http2: true
  timeout: 0
  retries: {attempts: 1, perTryTimeout: 250}
  circuitBreakers: {maxRequests: 10}
  addResponseHeaders: {x-served-by: legation}
  removeRequestHeaders: [x-internal]
status:
  gateways:
    default:
      conditions:
        - type: Accepted
          status: "False"
          reason: Invalid
          message: "spec.service: invalid service"
          observedGeneration: 3
          lastTransitionTime: "2026-11-26T10:00:00Z"
---
apiVersion: legation.dev/v1alpha1
kind: JWTPolicy
metadata: {name: internal, namespace: team-a}
spec:
  namespaceDefault: true
  providers:
    - name: ci
      issuer: ci
      jwks: {secretRef: {name: ci-keys, key: jwks.json}}
      algorithms: [HS256]
      tokenSources: [{query: token}]
      clockSkew: 0
      requireExpiry: false
      maxTokenBytes: 4096
  rules:
    - match: {regex: "/internal/.*", hosts: [internal.example.com], methods: [POST]}
      requires: {allOf: [ci]}
  forwardToken: true
---
apiVersion: legation.dev/v1alpha1
kind: Host
metadata: {name: any, namespace: team-a}
spec: {hostname: "*", tlsSecret: {name: default-tls}, insecure: {action: Route}}
---
apiVersion: legation.dev/v1alpha1
kind: AuthService
metadata: {name: default, namespace: legation-system}
spec: {service: "https://authz.legation-system:9001", timeout: 1, failureModeAllow: true,
       includeBody: {maxBytes: 1024, allowPartialMessage: true}}
"""


@pytest.mark.parametrize("index", range(4))
def test_every_other_field_is_accepted_by_the_crd_and_the_model(index: int) -> None:
    doc = load_documents(EXTRA_EXAMPLES, file="extra.yaml")[index]
    assert crd_errors(doc.data) == []
    result = parse_resource(doc)
    assert not isinstance(result, list), result


def test_status_as_the_controller_writes_it_is_accepted() -> None:
    accepted = Condition(type="Accepted", status="True", reason="Accepted", observed_generation=1)
    status = ResourceStatus(
        gateways={"default": GatewayStatus(conditions=[accepted]), "blue": GatewayStatus(conditions=[])}
    ).model_dump(by_alias=True, exclude_none=True, mode="json")
    document = {"apiVersion": "legation.dev/v1alpha1", "kind": "Host", "status": status}
    document["spec"] = {"hostname": "a.example.com", "tlsSecret": {"name": "a"}}
    assert crd_errors(document) == []


def test_the_full_field_mapping_differs_only_where_yaml_numbers_meet_strings() -> None:
    # The directory source coerces `X-Version: 2` to a string (YAML users forget the quotes);
    # the API server checks types before anything reads the object, so it asks for "2".
    ((_, mapping), _secret) = documents(VALID / "team-catalog" / "catalog.yml")
    assert crd_errors(mapping) == ["spec.headers.X-Version: 2 is not of type 'string'"]
    mapping["spec"]["headers"]["X-Version"] = "2"
    assert crd_errors(mapping) == []


@pytest.mark.parametrize(
    ("kind", "spec", "error"),
    [
        ("Mapping", {"service": "a:80", "prefix": "/", "weight": 101}, "spec.weight: 101 is greater than"),
        (
            "Mapping",
            {"service": "a:80", "prefix": "/", "timeout": "3 seconds"},
            "spec.timeout: '3 seconds' does not match",
        ),
        (
            "Mapping",
            {"service": "a:80", "prefix": "/", "timeout": True},
            "spec.timeout: True is not valid under any",
        ),
        (
            "Mapping",
            {"service": "a:80", "prefix": "/", "allowUpgrade": ["h2c"]},
            "spec.allowUpgrade.0: 'h2c' is not one of",
        ),
        (
            "Mapping",
            {"service": "a:80", "prefix": "/", "retries": {"attempts": 0}},
            "spec.retries.attempts: 0 is less than",
        ),
        (
            "Mapping",
            {"service": "a:80", "prefix": "/", "prefx": "/"},
            "spec: Additional properties are not allowed ('prefx'",
        ),
        ("Mapping", {"prefix": "/"}, "spec: 'service' is a required property"),
        (
            "AuthService",
            {"service": "a:1", "includeBody": {"maxBytes": 0}},
            "spec.includeBody.maxBytes: 0 is less than",
        ),
        (
            "Host",
            {"hostname": "a", "tlsSecret": {"name": "s"}, "insecure": {"action": "Allow"}},
            "spec.insecure.action: 'Allow' is not one of",
        ),
        ("JWTPolicy", {"rules": []}, "spec.rules: [] should be non-empty"),
        (
            "JWTPolicy",
            {
                "rules": [{"public": True}],
                "providers": [
                    {"name": "a", "issuer": "i", "jwks": {"uri": "https://x"}, "algorithms": ["none"]}
                ],
            },
            "spec.providers.0.algorithms.0: 'none' is not one of",
        ),
    ],
)
def test_the_crd_refuses_what_it_can_express(kind: str, spec: dict[str, Any], error: str) -> None:
    document = {"apiVersion": "legation.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}
    errors = crd_errors(document)
    assert len(errors) == 1 and errors[0].startswith(error), errors


# --- the converter on shapes the current models do not use -------------------------------------


class _Inner(BaseModel):
    """Inner docstring."""

    n: int = Field(gt=0, description="A positive number.")


class _Shapes(BaseModel):
    free: Any = Field(default=None, description="Anything.")
    map_any: dict[str, Any] = Field(default_factory=dict)
    tags: set[str] = Field(default_factory=set)
    inner: _Inner | None = None
    described: _Inner | None = Field(default=None, description="The field's words.")
    mode: Literal["a"] = "a"
    wait: Duration = 1.0


def test_converter_shapes() -> None:
    props = structural_schema(_Shapes)["properties"]
    assert props["free"] == {"description": "Anything.", "x-kubernetes-preserve-unknown-fields": True}
    assert props["map_any"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"}
    assert props["inner"]["description"] == "Inner docstring."
    assert props["inner"]["properties"]["n"] == {
        "description": "A positive number.",
        "type": "integer",
        "minimum": 0,
        "exclusiveMinimum": True,
    }
    assert props["described"]["description"] == "The field's words."
    assert props["mode"] == {"type": "string", "enum": ["a"]}
    assert props["wait"]["x-kubernetes-int-or-string"] is True
    assert structural_problems(structural_schema(_Shapes)) == []


class _Union(BaseModel):
    value: int | str


class _Tree(BaseModel):
    children: list[_Tree] = Field(default_factory=list)


class _Objects(BaseModel):
    items: set[tuple[int, int]] = Field(default_factory=set)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_Union, "a union of 2 types"),
        (_Tree, "_Tree contains itself"),
        (_Objects, "has no structural-schema equivalent"),
    ],
)
def test_converter_refuses_what_kubernetes_cannot_express(model: type[BaseModel], message: str) -> None:
    with pytest.raises(CrdError, match=message):
        structural_schema(model)


def test_helm_template_text_cannot_hide_in_descriptions(monkeypatch: pytest.MonkeyPatch) -> None:
    kind = BY_KIND["Host"]
    real = crds.crd

    def with_braces(k: Kind) -> dict[str, Any]:
        data = real(k)
        data["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = "{{ .Values.x }}"
        return data

    monkeypatch.setattr(crds, "crd", with_braces)
    with pytest.raises(CrdError, match="contains"):
        crds.render(kind, helm=True)
    assert "{{ .Values.x }}" in crds.render(kind, helm=False)


def test_plain_render_is_the_crd() -> None:
    text = crds.render(BY_KIND["JWTPolicy"], helm=False)
    assert text.startswith(crds.HEADER)
    assert yaml.safe_load(text) == crd(BY_KIND["JWTPolicy"])
    assert textwrap.dedent(text) == text


def test_an_unquoted_on_key_survives_the_api_server() -> None:
    # kubectl reads YAML 1.1 like PyYAML: the key `on` becomes true, sent as "true" in JSON.
    text = """
    apiVersion: legation.dev/v1alpha1
    kind: Mapping
    metadata: {name: m, namespace: ns}
    spec: {prefix: /, service: a:80, retries: {attempts: 2, on: gateway-error}}
    """
    (doc,) = load_documents(textwrap.dedent(text), file="m.yaml")
    as_sent = json.loads(json.dumps(doc.data))
    assert as_sent["spec"]["retries"] == {"attempts": 2, "true": "gateway-error"}
    assert crd_errors(as_sent) == []
    (stored,) = load_documents(yaml.safe_dump(as_sent), file="m.yaml")
    mapping = parse_resource(stored)
    assert not isinstance(mapping, list) and mapping.spec.retries is not None
    assert mapping.spec.retries.on == "gateway-error"


def readme_documents() -> list[tuple[str, dict[str, Any]]]:
    """The legation.dev documents in the READMEs' YAML blocks, named by file and line."""
    found = []
    for readme in (ROOT / "README.md", ROOT / "charts" / "legation" / "README.md"):
        text = readme.read_text() if readme.exists() else ""
        for block in re.finditer(r"```yaml\n(.*?)```", text, re.S):
            offset = text.count("\n", 0, block.start(1))
            for doc in load_documents(block[1], file=readme.name):
                if isinstance(doc.data, dict) and str(doc.data.get("apiVersion", "")).startswith(
                    "legation.dev/"
                ):
                    found.append((f"{readme.relative_to(ROOT)}:{offset + doc.line_of(())}", doc.data))
    return found


README_DOCUMENTS = readme_documents()


def test_the_readmes_have_examples() -> None:
    assert {d["kind"] for _, d in README_DOCUMENTS} >= {"Mapping", "JWTPolicy"}


@pytest.mark.parametrize(("where", "document"), README_DOCUMENTS, ids=[w for w, _ in README_DOCUMENTS])
def test_readme_examples_are_accepted_by_the_crd_and_the_model(where: str, document: dict[str, Any]) -> None:
    assert crd_errors(document) == []
    (doc,) = load_documents(yaml.safe_dump(document), file=where)
    assert not isinstance(parse_resource(doc), list), where


def example_documents() -> list[tuple[str, dict[str, Any]]]:
    """The legation.dev documents of examples/ (what `legation up` serves)."""
    found = []
    for path in sorted((ROOT / "examples").rglob("*.y*ml")):
        for doc in load_documents(path.read_text(), file=path.name):
            if isinstance(doc.data, dict) and str(doc.data.get("apiVersion", "")).startswith("legation.dev/"):
                found.append((f"{path.relative_to(ROOT)}:{doc.line_of(())}", doc.data))
    return found


EXAMPLE_DOCUMENTS = example_documents()


@pytest.mark.parametrize(("where", "document"), EXAMPLE_DOCUMENTS, ids=[w for w, _ in EXAMPLE_DOCUMENTS])
def test_the_examples_apply_to_kubernetes_unchanged(where: str, document: dict[str, Any]) -> None:
    assert crd_errors(document) == []
    (doc,) = load_documents(yaml.safe_dump(document), file=where)
    assert not isinstance(parse_resource(doc), list), where
