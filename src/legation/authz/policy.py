"""Compiled policies: what a JWTPolicy means at request time, built once per config version.

`compile_policy` turns a validated resource into lookups that need no parsing per request:
rule matchers (prefix, exact, RE2), provider settings bound to their key sources, claim paths
split once. Evaluation helpers here are pure; the decision flow is in authorizer.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import re2

from legation.api.v1alpha1.jwtpolicy import JWTPolicy, Provider, Rule
from legation.authz.jwks import KeySource
from legation.authz.tokens import CompiledProvider
from legation.core.text import has_control_characters

__all__ = [
    "CompiledPolicy",
    "CompiledRule",
    "claim_at",
    "claim_header_value",
    "claim_values",
    "compile_policy",
    "has_control_characters",
    "normalize_host",
    "normalize_path",
    "segment_prefix",
]


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int
    path_prefix: str | None
    path: str | None
    regex: Any  # re2 pattern or None
    methods: frozenset[str]
    hosts: frozenset[str]
    host_suffixes: tuple[str, ...]  # from "*.example.com": ".example.com"
    public: bool
    mode: Literal["any", "all"]
    providers: tuple[CompiledProvider, ...]
    claims: tuple[tuple[str, tuple[str, ...]], ...]

    def matches(self, method: str, host: str, path: str) -> bool:
        if self.methods and method not in self.methods:
            return False
        if (self.hosts or self.host_suffixes) and not (
            host in self.hosts or any(host.endswith(s) and len(host) > len(s) for s in self.host_suffixes)
        ):
            return False
        if self.path_prefix is not None:
            return segment_prefix(self.path_prefix, path)
        if self.path is not None:
            return path == self.path
        if self.regex is not None:
            return self.regex.fullmatch(path) is not None
        return True


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    key: str  # namespace/name
    rules: tuple[CompiledRule, ...]
    claims_to_headers: tuple[tuple[str, str], ...]  # (claim path, lowercase header)
    identity_headers: tuple[str, ...]  # always removed from the client's request
    token_headers: tuple[str, ...]  # removed unless forward_token
    token_cookies: frozenset[str]  # likewise, cut out of the Cookie header
    token_queries: tuple[str, ...]  # likewise, removed from the query string
    metadata_claims: tuple[str, ...]
    forward_token: bool
    namespace_default: bool

    def rule_for(self, method: str, host: str, path: str) -> CompiledRule | None:
        for rule in self.rules:
            if rule.matches(method, host, path):
                return rule
        return None


def compile_policy(policy: JWTPolicy, key_source: Callable[[str, Provider], KeySource]) -> CompiledPolicy:
    """`key_source(provider_id, provider)` builds (or reuses) the provider's key source."""
    spec = policy.spec
    providers = {
        p.name: _provider(f"{policy.key}/{p.name}", p, key_source(f"{policy.key}/{p.name}", p))
        for p in spec.providers
    }
    sources = [s for p in spec.providers for s in p.token_sources]
    token_headers = sorted({s.header.lower() for s in sources if s.header})
    identity = sorted({h.lower() for h in spec.claims_to_headers.values()})
    return CompiledPolicy(
        key=policy.key,
        rules=tuple(_rule(i, r, providers) for i, r in enumerate(spec.rules)),
        claims_to_headers=tuple((claim, header.lower()) for claim, header in spec.claims_to_headers.items()),
        identity_headers=tuple(identity),
        token_headers=tuple(token_headers),
        token_cookies=frozenset(s.cookie for s in sources if s.cookie),
        token_queries=tuple(sorted({s.query for s in sources if s.query})),
        metadata_claims=tuple(spec.metadata_claims),
        forward_token=spec.forward_token,
        namespace_default=spec.namespace_default,
    )


def _provider(provider_id: str, p: Provider, keys: KeySource) -> CompiledProvider:
    # The id keys the verified-token cache: it changes with any setting that affects
    # verification, so a reload that narrows a provider re-checks tokens already cached.
    fingerprint = hashlib.sha256(p.model_dump_json().encode()).hexdigest()[:16]
    return CompiledProvider(
        id=f"{provider_id}#{fingerprint}",
        name=p.name,
        issuer=p.issuer,
        audiences=tuple(p.audiences),
        algorithms=frozenset(p.algorithms),
        sources=tuple(p.token_sources),
        skew=p.clock_skew,
        require_expiry=p.require_expiry,
        max_token_bytes=p.max_token_bytes,
        keys=keys,
    )


def _rule(index: int, rule: Rule, providers: Mapping[str, CompiledProvider]) -> CompiledRule:
    m = rule.match
    hosts = [h.lower() for h in m.hosts]
    requires = rule.requires
    return CompiledRule(
        index=index,
        path_prefix=m.path_prefix.rstrip("/") if m.path_prefix is not None else None,
        path=m.path,
        regex=re2.compile(m.regex) if m.regex is not None else None,
        methods=frozenset(m.methods),
        hosts=frozenset(h for h in hosts if not h.startswith("*.")),
        host_suffixes=tuple(h[1:] for h in hosts if h.startswith("*.")),
        public=rule.public,
        mode="all" if requires is not None and requires.all_of is not None else "any",
        providers=tuple(providers[n] for n in (requires.providers if requires else [])),
        claims=tuple((claim, tuple(values)) for claim, values in rule.claims.items()),
    )


def segment_prefix(prefix: str, path: str) -> bool:
    """Whether `prefix` (its trailing slashes dropped, as `_rule` stores it) covers `path` in
    whole segments, as Gateway API's PathPrefix: `/orders/public` covers `/orders/public` and
    `/orders/public/…`, never `/orders/publicity`. The prefix `/` (stored as "") covers all."""
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/")


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name, or by dotted path into nested objects (`org.team`). None if absent."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def claim_values(value: Any) -> set[str]:
    """A claim as a set of values: space-separated string (OAuth scope) or array."""
    if value is None:
        return set()
    if isinstance(value, str):
        return set(value.split())
    if isinstance(value, list):
        return {_scalar(v) for v in value if not isinstance(v, dict | list)}
    if isinstance(value, dict):
        return set()
    return {_scalar(value)}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def claim_header_value(value: Any) -> str | None:
    """A claim as a header value: arrays comma-joined, objects as compact JSON; None if absent.
    Never altered: a value with control characters is refused by the caller (see
    `has_control_characters`), since `alice\0admin` silently becoming `aliceadmin` would make
    two identities one."""
    if value is None:
        return None
    if isinstance(value, list):
        return ",".join(_scalar(v) if not isinstance(v, dict | list) else json.dumps(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return _scalar(value)


def normalize_host(raw: str) -> str | None:
    """The request's host as policy rules match it: without a port, lowercase, and without the
    one trailing dot of an absolute name (`Admin.Example.com.:8080` → `admin.example.com`), as
    Envoy's `strip_trailing_host_dot` does. None for names no rule could mean (an empty label:
    `a..b`, `a.b..`), refused rather than matched by no host rule."""
    host = raw.rpartition(":")[0] if raw.rpartition(":")[2].isdigit() else raw
    host = host.lower().removesuffix(".")
    if host.startswith(".") or host.endswith(".") or ".." in host or (raw and not host):
        return None
    return host


def normalize_path(raw: str) -> tuple[str, str] | None:
    """(path, query) with dot segments resolved and slashes merged, as the upstream will see it.

    None for paths whose meaning depends on who decodes them (encoded slash, backslash or dot):
    a rule's prefix must not be bypassable by `/public/%2e%2e/admin`."""
    path, _, query = raw.partition("?")
    path = path.partition("#")[0]
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "%2e" in lowered or "\\" in path:
        return None
    out: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if out:
                out.pop()
            continue
        out.append(segment)
    normalized = "/" + "/".join(out)
    if path.endswith("/") and out:
        normalized += "/"
    return normalized, query
