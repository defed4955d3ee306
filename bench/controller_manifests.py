"""Manifests for the controller bench: N Mappings in realistic variety, as YAML files.

Several namespaces and files (50 Mappings per file), prefixes, exact paths, RE2 regexes, header
and method constraints, canaries with weights, rewrites, retries, CORS, rate-limit annotations
keyed on ip, headers and JWT claims, JWTPolicies (namespace defaults, named ones, one with a
Secret-backed JWKS), an AuthService, and a Host with its kubernetes.io/tls Secret. Every resource
is valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["generate"]

API = "legation.dev/v1alpha1"
PER_FILE = 50
"""Mappings per generated file (teams keep a few dozen routes per file)."""
SERVICES = ("orders", "catalog", "payments", "users", "search", "carts", "reviews", "shipping")
LIMITS = (
    "{n}/m per ip",
    "{n}/h per claim:sub; 20/s",
    "{n}/s per header:x-api-key",
    "10/s per ip,header:x-tenant; {n}/d per claim:org.team",
    "{n}/15m per claim:sub",
    "{n}/m per ip; 1000/h per claim:sub; 20/s",
)


def generate(n: int, root: Path) -> dict[str, int]:
    """Write about `n` Mappings (canaries included) and their surroundings under `root`."""
    namespaces = [f"team-{i:02d}" for i in range(min(50, max(5, n // 100)))]
    per_ns = -(-n // len(namespaces))
    counts = {"Mapping": 0, "JWTPolicy": 0, "Secret": 0, "Host": 0, "AuthService": 0, "files": 0}
    gateway = [
        _obj("AuthService", "default", "legation-system", {"service": "legation-authz.legation-system:9001"}),
        _obj(
            "Host",
            "api",
            "team-00",
            {
                "hostname": "api.example.com",
                "tlsSecret": {"name": "api-tls"},
                # team-00 owns the name and gives every other team its own path space on it
                "delegate": [
                    {"namespace": ns, "prefixes": [f"/{ns.removeprefix('team-')}"]} for ns in namespaces[1:]
                ],
            },
        ),
        _tls_secret("api-tls", "team-00"),
    ]
    _write(root / "gateway.yaml", gateway)
    counts.update(AuthService=1, Host=1, Secret=1, files=1)
    made = 0
    for k, ns in enumerate(namespaces):
        policies = [_policy(f"{ns}-admin", ns, default=False)]
        if k % 3 != 2:
            policies.append(_policy(f"{ns}-default", ns, default=True))
        if k % 5 == 0:
            jwks = '{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}]}'
            policies.append(_policy(f"{ns}-partner", ns, default=False, secret=True))
            policies.append(_obj("Secret", f"{ns}-jwks", ns, None, stringData={"jwks.json": jwks}))
            counts["Secret"] += 1
        counts["JWTPolicy"] += sum(1 for p in policies if p["kind"] == "JWTPolicy")
        _write(root / ns / "policies.yaml", policies)
        counts["files"] += 1
        docs: list[dict[str, Any]] = []
        j = 0
        while j < per_ns and made < n:
            for doc in _mappings(ns, j, canary=made + 1 < n):
                docs.append(doc)
                made += 1
            j += 1
            if len(docs) >= PER_FILE or j >= per_ns or made >= n:
                _write(root / ns / f"mappings-{counts['files']:04d}.yaml", docs)
                counts["files"] += 1
                docs = []
    counts["Mapping"] = made
    return counts


def _mappings(ns: str, j: int, *, canary: bool) -> list[dict[str, Any]]:
    svc = SERVICES[j % len(SERVICES)]
    base = f"/{ns.removeprefix('team-')}/{svc}"  # teams own their path space
    spec: dict[str, Any] = {"service": f"{svc}.{ns}:8080"}
    kind = j % 10
    if kind == 7:
        spec["path"] = f"{base}/exact/{j}"
    elif kind == 8:
        spec["regex"] = f"{base}/items/[0-9]+/v{j}(/.*)?"
    else:
        spec["prefix"] = f"{base}/v{j}/"
        if j % 5 == 1:
            spec["rewrite"] = "/"
    if kind == 9:
        spec["headers"] = {"x-canary": "true"} if j % 20 == 9 else {"x-tenant": "*"}
    if j % 3 == 0:
        spec["methods"] = ["GET", "POST"]
    spec["hostname"] = {0: "api.example.com", 1: "*.shop.example.com"}.get(j % 13, "*")
    if j % 4 == 0:
        spec["timeout"] = "3s"
    if j % 5 == 2:
        spec["retries"] = {"attempts": 2, "on": "5xx,reset", "perTryTimeout": "1s"}
    if j % 20 == 3:
        spec["cors"] = {"origins": ["https://shop.example.com"], "methods": ["GET"], "maxAge": "10m"}
    if j % 10 == 4:
        spec["addRequestHeaders"] = {"x-client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}
    if j % 17 == 5:
        spec["service"] = f"https://{svc}.{ns}"
    if j % 11 == 6:
        spec["http2"] = True
    if j % 10 == 5:
        spec["auth"] = {"policy": f"{ns}-admin"}
    elif j % 20 == 6:
        spec["auth"] = {"disabled": True}
    annotations = {}
    if j % 3 == 1:
        template = LIMITS[(j // 3) % len(LIMITS)]
        annotations["legation.dev/rate-limit"] = template.format(n=100 * (1 + j % 7))
    name = f"{svc}-{j}"
    stamp = f"2026-0{1 + j % 9}-1{j % 10}T08:{j % 60:02d}:00Z" if j % 2 else None
    primary = _obj("Mapping", name, ns, spec, annotations=annotations, stamp=stamp)
    if not canary or j % 10 != 1:
        return [primary]
    # A canary: the same match, 10% of the traffic, route settings left to the primary.
    primary["spec"]["weight"] = 90
    match_keys = ("hostname", "prefix", "path", "regex", "methods", "headers")
    canary_spec = {k: v for k, v in spec.items() if k in match_keys}
    canary_spec.update(service=f"{svc}-next.{ns}:8080", weight=10)
    return [primary, _obj("Mapping", f"{name}-canary", ns, canary_spec, stamp=stamp)]


def _policy(name: str, ns: str, *, default: bool, secret: bool = False) -> dict[str, Any]:
    jwks = (
        {"secretRef": {"name": f"{ns}-jwks", "key": "jwks.json"}}
        if secret
        else {
            "uri": "https://idp.example.com/jwks.json",
            "cacheDuration": "10m",
        }
    )
    provider = {
        "name": "corp",
        "issuer": "https://idp.example.com/",
        "audiences": [ns],
        "jwks": jwks,
        "algorithms": ["HS256"] if secret else ["RS256", "ES256"],
    }
    rules = [
        {"match": {"pathPrefix": "/public"}, "public": True},
        {"match": {"methods": ["GET"]}, "requires": {"anyOf": ["corp"]}, "claims": {"scope": ["read"]}},
        {"requires": {"anyOf": ["corp"]}, "claims": {"scope": ["write"], "org.team": [ns]}},
    ]
    spec = {
        "namespaceDefault": default,
        "providers": [provider],
        "rules": rules,
        "claimsToHeaders": {"sub": "x-user-id"},
        "metadataClaims": ["sub", "org.team"],
    }
    return _obj("JWTPolicy", name, ns, spec)


def _obj(
    kind: str,
    name: str,
    ns: str,
    spec: dict[str, Any] | None,
    *,
    annotations: dict[str, str] | None = None,
    stamp: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": ns}
    if stamp is not None:
        metadata["creationTimestamp"] = stamp
    if annotations:
        metadata["annotations"] = annotations
    doc: dict[str, Any] = {
        "apiVersion": "v1" if kind == "Secret" else API,
        "kind": kind,
        "metadata": metadata,
    }
    if spec is not None:
        doc["spec"] = spec
    doc.update(extra)
    return doc


def _tls_secret(name: str, ns: str) -> dict[str, Any]:
    from legation.controller.commands.demo import self_signed

    certificate, pem_key = self_signed("api.example.com")
    return _obj(
        "Secret",
        name,
        ns,
        None,
        type="kubernetes.io/tls",
        stringData={
            "tls.crt": certificate,
            "tls.key": pem_key,
        },
    )


def _write(path: Path, docs: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=1000))
