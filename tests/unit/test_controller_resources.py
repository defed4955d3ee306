"""Controller resources: every field of every model, every error with its exact message and line,
and `legation validate` through the real CLI."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fixtures.manifests import self_signed
from pydantic import BaseModel

import legation.api.v1alpha1 as resources_module
import legation.controller.commands.validate as validate_module
from legation.api.v1alpha1 import (
    AuthService,
    Host,
    JWTPolicy,
    Mapping,
    ResourceError,
    ResourceId,
    Secret,
    Upstream,
    parse_resource,
    parse_service,
    resource_id,
)
from legation.api.v1alpha1.fields import ERROR_STATUSES
from legation.controller.commands.validate import validate_snapshot
from legation.controller.sources import SourceSnapshot
from legation.core.errors import ConfigError
from legation.core.yamlfile import load_documents

MANIFESTS = Path(__file__).parent / "controller_manifests"
ERROR_CASES = sorted((MANIFESTS / "errors").glob("*.yaml"))
LEGATION = Path(sys.executable).parent / "legation"


def parse(text: str, name: str = "r.yaml") -> Any:
    (doc,) = load_documents(textwrap.dedent(text), file=name)
    return parse_resource(doc)


def problems(text: str, name: str) -> list[str]:
    """What `legation validate` reports for one file's text."""
    try:
        documents = load_documents(text, file=name)
    except ConfigError as exc:
        return [str(exc)]
    snapshot = SourceSnapshot(documents=tuple(documents), errors=(), origins=(name,), version="")
    return [str(p) for p in validate_snapshot(snapshot).problems]


def mapping(spec: str, metadata: str = "{name: m, namespace: ns}") -> Mapping:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    result = parse(f"apiVersion: legation.dev/v1alpha1\nkind: Mapping\nmetadata: {metadata}\nspec:\n{body}\n")
    assert isinstance(result, Mapping), result
    return result


# --- error fixtures --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ERROR_CASES, ids=[p.stem for p in ERROR_CASES])
def test_each_error_has_its_exact_message_and_line(path: Path) -> None:
    text = path.read_text()
    expected = [
        line.removeprefix("# expect: ") for line in text.splitlines() if line.startswith("# expect: ")
    ]
    assert expected, f"{path.name} must start with '# expect: <message>' lines"
    assert problems(text, path.name) == expected


def test_errors_carry_file_line_resource_and_path() -> None:
    result = parse(
        "apiVersion: legation.dev/v1alpha1\nkind: Mapping\nmetadata: {name: m, namespace: ns}\nspec:\n  path: x\n  service: a:1\n"
    )
    assert isinstance(result, list)
    (error,) = result
    assert isinstance(error, ResourceError) and isinstance(error, ConfigError)
    assert (error.file, error.line, error.path) == ("r.yaml", 5, ("spec", "path"))
    assert error.resource == ResourceId("Mapping", "ns", "m")
    assert str(error) == "r.yaml:5: Mapping ns/m: spec.path: must start with /"


# --- the DESIGN.md examples --------------------------------------------------------------------------


def test_design_examples_load() -> None:
    text = (MANIFESTS / "valid/team-orders/orders.yaml").read_text()
    text += "---\n" + (MANIFESTS / "valid/legation-system/authservice.yaml").read_text()
    text += "---\n" + (MANIFESTS / "valid/team-orders/host.yaml").read_text()
    parsed = [parse_resource(d) for d in load_documents(text, file="design.yaml")]
    mapping_, policy, auth, host = parsed
    assert isinstance(mapping_, Mapping) and isinstance(policy, JWTPolicy)
    assert isinstance(auth, AuthService) and isinstance(host, Host)
    assert [str(resource_id(r)) for r in (mapping_, policy, auth, host)] == [
        "Mapping team-orders/orders",
        "JWTPolicy team-orders/orders-jwt",
        "AuthService legation-system/default",
        "Host team-orders/api",
    ]
    spec = mapping_.spec
    assert (spec.hostname, spec.prefix, spec.path, spec.regex) == ("*", "/orders/", None, None)
    assert spec.methods == ["GET", "POST"] and spec.headers == {"x-canary": "true"}
    assert spec.upstream == Upstream(scheme="http", host="orders.team-orders", port=8080)
    assert (spec.rewrite, spec.timeout, spec.weight) == ("/", 3.0, 10)
    assert spec.retries is not None
    assert (spec.retries.attempts, spec.retries.on, spec.retries.per_try_timeout) == (
        2,
        "5xx,reset,connect-failure",
        1.0,
    )
    assert spec.cors is not None
    assert spec.cors.origins == ["https://shop.example.com"] and spec.cors.methods == ["GET"]
    assert spec.cors.credentials and spec.cors.max_age == 600.0
    assert spec.allow_upgrade == ["websocket"]
    assert spec.auth is not None and (spec.auth.policy, spec.auth.disabled) == ("orders-jwt", None)
    assert [str(r) for r in mapping_.rate_limits] == ["100/m per ip", "1000/h per claim:sub", "20/s"]
    assert policy.spec.providers[0].jwks.cache_duration == 600.0
    a = auth.spec
    assert (a.service, a.timeout, a.failure_mode_allow, a.status_on_error) == (
        "legation-authz.legation-system:9001",
        0.2,
        False,
        503,
    )
    assert a.include_body is not None and (
        a.include_body.max_bytes,
        a.include_body.allow_partial_message,
    ) == (
        8192,
        False,
    )
    h = host.spec
    assert (h.hostname, h.tls_secret.name, h.insecure.action) == ("api.example.com", "api-tls", "Redirect")


def test_every_mapping_field() -> None:
    docs = load_documents((MANIFESTS / "valid/team-catalog/catalog.yml").read_text(), file="c.yml")
    m = parse_resource(docs[0])
    assert isinstance(m, Mapping), m
    assert m.metadata.labels == {"team": "catalog"}
    assert m.metadata.creation_timestamp == "2024-05-01T12:00:00Z"
    assert m.metadata.model_extra == {
        "uid": "0b6a3c1e-5f9e-4d0a-9b7c-2f1d1c6a9e01",
        "resourceVersion": "4711",
    }
    assert m.status == {"gateways": {"default": {"conditions": [{"type": "Accepted", "status": "True"}]}}}
    assert [str(r) for r in m.rate_limits] == ["5/15m per header:x-api-key,method", "50/s per path"]
    s = m.spec
    assert (s.hostname, s.regex, s.prefix) == ("shop.example.com", "/catalog/[0-9]+", None)
    assert s.methods == ["GET", "HEAD"]
    assert s.headers == {"x-canary": "*", "x-version": "2"}
    assert s.query_parameters == {"preview": "1", "debug": "*"}
    assert s.upstream == Upstream(scheme="https", host="catalog-v2.team-catalog", port=443) and s.upstream.tls
    assert (s.timeout, s.weight, s.rewrite) == (90.0, 0, None)
    assert s.retries is not None and (s.retries.attempts, s.retries.on, s.retries.per_try_timeout) == (
        3,
        "gateway-error",
        None,
    )
    assert s.cors is not None
    assert s.cors.origins == ["https://*.example.com", "http://localhost:3000"]
    assert (s.cors.methods, s.cors.headers, s.cors.expose_headers) == (
        ["GET", "POST"],
        ["content-type", "x-api-key"],
        ["x-request-id"],
    )
    assert (s.cors.credentials, s.cors.max_age) == (False, 3600.0)
    assert s.auth is not None and (s.auth.policy, s.auth.disabled) == (None, True)
    assert s.add_request_headers == {
        "x-client-address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "x-discount": "50%%",
    }
    assert s.remove_request_headers == ["cookie"]
    assert s.add_response_headers == {"cache-control": "no-store"}
    assert s.remove_response_headers == ["server", "x-powered-by"]
    assert s.http2 and s.allow_upgrade == []
    assert s.circuit_breakers is not None
    cb = s.circuit_breakers
    assert (cb.max_connections, cb.max_pending_requests, cb.max_requests, cb.max_retries) == (100, 50, 200, 3)


def test_mapping_defaults() -> None:
    s = mapping("path: /healthz\nservice: health:80").spec
    assert (s.hostname, s.path, s.timeout, s.weight, s.retries, s.cors, s.auth) == (
        "*",
        "/healthz",
        15.0,
        None,
        None,
        None,
        None,
    )
    assert (s.methods, s.headers, s.query_parameters, s.allow_upgrade) == ([], {}, {}, [])
    assert (s.add_request_headers, s.remove_request_headers, s.add_response_headers) == ({}, [], {})
    assert (s.remove_response_headers, s.http2, s.circuit_breakers) == ([], False, None)
    m = mapping("prefix: /\nservice: a:80", metadata="{name: m}")
    assert m.metadata.namespace == "default" and m.rate_limits == () and m.metadata.annotations == {}


def test_retries_on_key_as_yaml_and_kubernetes_read_it() -> None:
    # `on:` unquoted is the boolean true in YAML 1.1; Kubernetes' JSON then has the key "true".
    assert mapping("prefix: /\nservice: a:80\nretries: {attempts: 1, on: reset}").spec.retries.on == "reset"  # type: ignore[union-attr]
    m = mapping('prefix: /\nservice: a:80\nretries: {attempts: 1, "true": reset}')
    assert m.spec.retries is not None and m.spec.retries.on == "reset"
    m = mapping('prefix: /\nservice: a:80\nretries: {attempts: 1, "on": " 5xx , reset"}')
    assert m.spec.retries is not None and m.spec.retries.on == "5xx,reset"


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("orders.team-orders:8080", Upstream("http", "orders.team-orders", 8080)),
        ("Orders:80", Upstream("http", "orders", 80)),
        ("orders", Upstream("http", "orders", 80)),
        ("http://orders", Upstream("http", "orders", 80)),
        ("http://orders:8080", Upstream("http", "orders", 8080)),
        ("https://orders", Upstream("https", "orders", 443)),
        ("https://10.0.0.7:8443", Upstream("https", "10.0.0.7", 8443)),
        ("[::1]:9001", Upstream("http", "::1", 9001)),
        ("https://[fd00::1]", Upstream("https", "fd00::1", 443)),
    ],
)
def test_service_addresses(service: str, expected: Upstream) -> None:
    assert parse_service(service) == expected
    assert mapping(f"prefix: /\nservice: '{service}'").spec.upstream == expected


@pytest.mark.parametrize(
    ("service", "reason"),
    [
        ("a:0", "port must be a number from 1 to 65535"),
        ("a:", "port must be a number from 1 to 65535"),
        ("a:http", "port must be a number from 1 to 65535"),
        ("tcp://a:1", "scheme must be http or https"),
        ("-a:1", "'-a' is not a host name or address"),
        ("http://a/x", "(expected host:port, http://host:port or https://host:port)"),
        ("", "(expected host:port, http://host:port or https://host:port)"),
    ],
)
def test_service_errors(service: str, reason: str) -> None:
    with pytest.raises(ValueError, match=r".*") as info:
        parse_service(service)
    assert str(info.value).endswith(reason)


@pytest.mark.parametrize(
    "hostname", ["*", "*.example.com", "api.example.com", "localhost", "10.0.0.1", "API.Example.COM"]
)
def test_hostnames(hostname: str) -> None:
    assert mapping(f"hostname: '{hostname}'\nprefix: /\nservice: a:1").spec.hostname == hostname.lower()


@pytest.mark.parametrize(
    "hostname", ["", "*example.com", "a..b", "-a.com", "a.*", "**.a", "a b", "a.com:8080"]
)
def test_bad_hostnames(hostname: str) -> None:
    result = parse(
        f"apiVersion: legation.dev/v1alpha1\nkind: Host\nmetadata: {{name: h}}\n"
        f"spec: {{hostname: '{hostname}', tlsSecret: {{name: t}}}}\n"
    )
    assert isinstance(result, list)
    assert [e.reason for e in result] == [
        f"invalid hostname {hostname!r} (expected an exact name, *.example.com or *)"
    ]


def test_regex_size_limit_is_envoys() -> None:
    assert mapping("regex: '/[a-z]{1,45}'\nservice: a:1").spec.regex == "/[a-z]{1,45}"
    result = parse(
        "apiVersion: legation.dev/v1alpha1\nkind: Mapping\nmetadata: {name: m}\n"
        "spec: {regex: '/[a-z]{1,50}', service: a:1}\n"
    )
    assert isinstance(result, list)
    assert result[0].reason == "regex too complex for Envoy (RE2 program size 104 > 100)"


def test_header_values_may_use_envoy_variables() -> None:
    m = mapping(
        "prefix: /\nservice: a:1\naddRequestHeaders:\n"
        "  x-a: '%REQ(x-b)%'\n  x-b: '%START_TIME(%s)%'\n  x-c: '100%% sure'\n  x-d: '%UPSTREAM_METADATA(a:b)%'"
    )
    assert len(m.spec.add_request_headers) == 4


def test_auth_service_and_host_defaults() -> None:
    auth = parse(
        "apiVersion: legation.dev/v1alpha1\nkind: AuthService\nmetadata: {name: a}\nspec: {service: 'https://authz:9001'}\n"
    )
    assert isinstance(auth, AuthService)
    s = auth.spec
    assert (s.timeout, s.failure_mode_allow, s.status_on_error, s.include_body) == (0.2, False, 503, None)
    body = parse(
        "apiVersion: legation.dev/v1alpha1\nkind: AuthService\nmetadata: {name: a}\n"
        "spec: {service: 'authz:9001', statusOnError: 403, failureModeAllow: true,"
        " includeBody: {maxBytes: 1024, allowPartialMessage: true}}\n"
    )
    assert isinstance(body, AuthService) and body.spec.include_body is not None
    assert body.spec.include_body.allow_partial_message and body.spec.status_on_error == 403
    host = parse(
        "apiVersion: legation.dev/v1alpha1\nkind: Host\nmetadata: {name: h}\nspec: {hostname: '*.a.com', tlsSecret: {name: t}}\n"
    )
    assert (
        isinstance(host, Host) and host.spec.insecure.action == "Redirect" and host.spec.hostname == "*.a.com"
    )
    for action in ("Reject", "Route"):
        h = parse(
            "apiVersion: legation.dev/v1alpha1\nkind: Host\nmetadata: {name: h}\n"
            f"spec: {{hostname: a.com, tlsSecret: {{name: t}}, insecure: {{action: {action}}}}}\n"
        )
        assert isinstance(h, Host) and h.spec.insecure.action == action


def test_status_on_error_matches_envoys_status_codes() -> None:
    from envoy.type.v3 import http_status_pb2

    envoy_codes = set(http_status_pb2.StatusCode.values())
    assert envoy_codes >= ERROR_STATUSES


# --- Secrets -------------------------------------------------------------------------------------


def tls_pair(name: str = "api.example.com") -> tuple[bytes, bytes]:
    certificate, key = self_signed(name)
    return certificate.encode(), key.encode()


def tls_secret(crt: bytes, key: bytes, *, name: str = "api-tls", namespace: str = "team-orders") -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "kubernetes.io/tls",
            "data": {"tls.crt": base64.b64encode(crt).decode(), "tls.key": base64.b64encode(key).decode()},
        }
    )


def test_tls_secret() -> None:
    crt, key = tls_pair()
    secret = parse(tls_secret(crt, key))
    assert isinstance(secret, Secret)
    assert (
        secret.type == "kubernetes.io/tls"
        and secret.value("tls.crt") == crt
        and secret.value("tls.key") == key
    )
    assert secret.value("ca.crt") is None and secret.tls_errors() == []


def test_tls_secret_from_string_data() -> None:
    crt, key = tls_pair()
    text = yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s"},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": crt.decode(), "tls.key": key.decode()},
        }
    )
    assert isinstance(parse(text), Secret)


def test_tls_key_must_match_the_certificate() -> None:
    crt, _ = tls_pair()
    _, other_key = tls_pair()
    text = tls_secret(crt, other_key)
    result = parse(text)
    assert isinstance(result, list)
    line = text.splitlines().index(next(x for x in text.splitlines() if x.startswith("  tls.key:"))) + 1
    assert [str(e) for e in result] == [
        f"r.yaml:{line}: Secret team-orders/api-tls: data.tls.key: the key does not match the certificate"
    ]


def test_encrypted_tls_key_is_refused() -> None:
    crt, _ = tls_pair()
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    result = parse(tls_secret(crt, encrypted))
    assert isinstance(result, list)
    assert [e.reason for e in result] == ["the key is encrypted"]


def test_opaque_secret_and_other_types() -> None:
    secret = parse(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: n}\n"
        "data: {a: YWFh, b: YmJi}\nstringData: {b: override}\nimmutable: true\n"
    )
    assert isinstance(secret, Secret)
    assert (secret.type, secret.immutable) == ("Opaque", True)
    assert (secret.value("a"), secret.value("b")) == (b"aaa", b"override")
    token = parse(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: kubernetes.io/service-account-token\ndata: null\n"
    )
    assert isinstance(token, Secret) and token.data == {} and token.tls_errors() == []


# --- schema hygiene --------------------------------------------------------------------------------


def _models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    todo: list[type[BaseModel]] = [Mapping, AuthService, Host, Secret]
    while todo:
        model = todo.pop()
        if model in found:
            continue
        found.append(model)
        for field in model.model_fields.values():
            todo.extend(_nested_models(field.annotation))
    return found


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _nested_models(arg)]


def test_every_field_has_a_description() -> None:
    missing = [
        f"{model.__name__}.{name}"
        for model in _models()
        if model.__module__ == "legation.api.v1alpha1"
        for name, field in model.model_fields.items()
        if not field.description
    ]
    assert missing == []
    assert {m.__name__ for m in _models()} >= {"MappingSpec", "Retries", "Cors", "AuthRef", "CircuitBreakers"}


def test_json_schema_is_camel_case() -> None:
    schema = Mapping.model_json_schema(by_alias=True)
    spec = schema["$defs"]["MappingSpec"]["properties"]
    assert {"queryParameters", "allowUpgrade", "addRequestHeaders", "circuitBreakers"} <= set(spec)
    assert spec["service"]["description"].startswith("Upstream")


def test_public_names() -> None:
    assert sorted(resources_module.__all__) == sorted(
        [
            "API_VERSION", "CUSTOM_KINDS", "HTTP_METHODS", "KINDS", "Kind", "MAX_REGEX_PROGRAM_SIZE", "AuthRef", "AuthService",
            "AuthServiceSpec", "CircuitBreakers", "Cors", "Host", "HostSpec", "IncludeBody", "Insecure",
            "JWTPolicy", "Mapping", "MappingSpec", "ObjectMeta", "Resource", "ResourceError", "ResourceId",
            "Retries", "Secret", "SecretName", "Upstream", "GrantedUpstream", "UpstreamGrant",
            "UpstreamGrantSpec", "parse_resource", "parse_service", "raw_id",
            "resource_id",
        ]
    )  # fmt: skip
    assert sorted(validate_module.__all__) == ["Report", "add_arguments", "run", "validate_snapshot"]


# --- legation validate (the real CLI) ----------------------------------------------------------------


def run_validate(directory: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LEGATION), "validate", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )


def valid_tree(tmp_path: Path) -> Path:
    root = tmp_path / "manifests"
    shutil.copytree(MANIFESTS / "valid", root)
    crt, key = tls_pair()
    (root / "team-orders" / "api-tls.yaml").write_text(tls_secret(crt, key))
    return root


def test_validate_ok(tmp_path: Path) -> None:
    done = run_validate(valid_tree(tmp_path))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        "ok: 7 resource(s) in 5 file(s) (1 AuthService, 1 Host, 1 JWTPolicy, 2 Mapping, 2 Secret)\n"
    )


def test_validate_reports_every_problem(tmp_path: Path) -> None:
    root = valid_tree(tmp_path)
    (root / "team-orders" / "api-tls.yaml").unlink()
    (root / "broken.yaml").write_text("kind: [\n")
    # more.yaml is invalid on its own: rejected with its own reason, and (as in the controller) not
    # counted as a duplicate of catalog.yml's Mapping of the same name.
    (root / "team-catalog" / "more.yaml").write_text(
        "apiVersion: legation.dev/v1alpha1\nkind: Mapping\nmetadata: {name: catalog-canary, namespace: team-catalog}\n"
        "spec:\n  prefix: /c/\n  service: c:80\n  auth: {policy: orders-jwt}\n  timeot: 1s\n"
    )
    done = run_validate(root)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        f"{root}/broken.yaml:2: invalid YAML: while parsing a flow node expected the node content, but found '<stream end>'",
        f"{root}/team-catalog/more.yaml:8: Mapping team-catalog/catalog-canary: spec.timeot: unknown key (did you mean 'timeout'?)",
        f"{root}/team-orders/host.yaml:5: Host team-orders/api: spec.tlsSecret.name: no Secret 'api-tls' in namespace team-orders",
    ]
    assert done.stderr == "3 problem(s)\n"


def test_validate_missing_directory(tmp_path: Path) -> None:
    done = run_validate(tmp_path / "nope")
    assert (done.returncode, done.stdout) == (1, f"{tmp_path}/nope: no such file or directory\n")


def test_validate_empty_directory(tmp_path: Path) -> None:
    done = run_validate(tmp_path)
    assert (done.returncode, done.stdout) == (0, "ok: 0 resource(s) in 0 file(s)\n")


def test_validate_is_in_legation_help() -> None:
    done = subprocess.run([str(LEGATION), "--help"], capture_output=True, text=True, timeout=60, check=True)
    assert "validate" in done.stdout
