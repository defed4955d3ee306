"""JWTPolicies (references resolved, `secretRef` inlined, static key sets checked, one namespace
default), the one AuthService, and which policy a Mapping gets.

A key set given inline or through a Secret is parsed here with the authz service's own parser
(`legation.api.jwks`): a policy whose keys the service could not load is rejected, alone, rather
than sent in the feed every team shares. `jwks.file` is read by the authz service on its own
machine, so it is checked there (that policy alone fails closed); `jwks.uri` when fetched."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from legation.api.jwks import JwksError, parse_jwks
from legation.api.v1alpha1 import (
    AuthService,
    JWTPolicy,
    Mapping,
    ResourceId,
    Secret,
)
from legation.controller.compiler.entries import AnyEntry, Entry, age, why_rejected
from legation.core.errors import FieldPath

__all__ = ["compile_auth_service", "compile_policies", "missing_policy", "policy_of"]


def compile_policies(
    entries: list[Entry[JWTPolicy]], secrets: dict[ResourceId, AnyEntry]
) -> tuple[dict[Entry[JWTPolicy], JWTPolicy], dict[str, AnyEntry]]:
    """The resolved policy of each JWTPolicy entry, and each namespace's default policy entry."""
    resolved: dict[Entry[JWTPolicy], JWTPolicy] = {}
    for entry in entries:
        policy = entry.resource
        for where, reason in policy.spec.reference_errors():
            entry.reject(("spec", *where), reason)
        data = policy.model_dump(mode="json", by_alias=True, exclude={"status"})
        for i, provider in enumerate(policy.spec.providers):
            ref = provider.jwks.secret_ref
            if ref is None:
                continue
            path: FieldPath = ("spec", "providers", i, "jwks", "secretRef")
            value = _secret_value(entry, secrets, path, ref.name, ref.key)
            if value is not None:
                jwks = data["spec"]["providers"][i]["jwks"]
                jwks.pop("secretRef")
                jwks["inline"] = value
        _check_static_keys(entry, data)
        if entry.ok:
            try:
                resolved[entry] = JWTPolicy.model_validate(data)
            except ValidationError as exc:  # pragma: no cover - the input was already valid
                entry.reject(("spec",), str(exc))
    defaults: dict[str, AnyEntry] = {}
    for entry in sorted(entries, key=age):
        if not entry.resource.spec.namespace_default:
            continue
        winner = defaults.setdefault(entry.id.namespace, entry)
        if winner is not entry:
            entry.reject(
                ("spec", "namespaceDefault"),
                f"only one JWTPolicy per namespace may set namespaceDefault; {winner.id} is older",
            )
    return {e: p for e, p in resolved.items() if e.ok}, defaults


def _check_static_keys(entry: Entry[JWTPolicy], data: dict[str, Any]) -> None:
    """Rejects `entry` for each provider whose inline (or Secret) key set yields no usable key."""
    for i, (provider, raw) in enumerate(
        zip(entry.resource.spec.providers, data["spec"]["providers"], strict=True)
    ):
        text = raw["jwks"].get("inline")
        if text is None:
            continue
        ref = provider.jwks.secret_ref
        where = f"Secret {entry.id.namespace}/{ref.name} key {ref.key!r}" if ref else "inline JWKS"
        problem = _jwks_problem(text, tuple(provider.algorithms), where)
        if problem is not None:
            field = "secretRef" if ref is not None else "inline"
            entry.reject(("spec", "providers", i, "jwks", field), problem)


@functools.lru_cache(maxsize=256)
def _jwks_problem(text: str, algorithms: tuple[str, ...], where: str) -> str | None:
    """Why the authz service could not load this key set, or None. Cached: a compile runs on
    every change, and the same few key sets come back each time (parsing RSA keys is not free)."""
    try:
        parse_jwks(text, algorithms=algorithms, source=where)
    except JwksError as exc:
        return f"not a usable key set for the authz service: {exc}"
    return None


def _secret_value(
    entry: AnyEntry, secrets: dict[ResourceId, AnyEntry], path: FieldPath, name: str, key: str
) -> str | None:
    secret = secrets.get(ResourceId("Secret", entry.id.namespace, name))
    if secret is None:
        entry.reject((*path, "name"), f"no Secret {name!r} in namespace {entry.id.namespace}")
        return None
    if not secret.ok:
        entry.reject((*path, "name"), f"{secret.id} is rejected: {why_rejected(secret)}")
        return None
    assert isinstance(secret.resource, Secret)
    value = secret.resource.value(key)
    if value is None:
        entry.reject((*path, "key"), f"{secret.id} has no key {key!r}")
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        entry.reject((*path, "key"), f"key {key!r} of {secret.id} is not UTF-8 text")
        return None


def compile_auth_service(entries: list[Entry[AuthService]]) -> Entry[AuthService] | None:
    winner: Entry[AuthService] | None = None
    for entry in sorted(entries, key=age):
        if winner is None:
            winner = entry
        else:
            entry.reject(("metadata", "name"), f"only one AuthService is allowed; {winner.id} is older")
    return winner


def policy_of(
    entry: Entry[Mapping],
    mapping: Mapping,
    current: dict[ResourceId, AnyEntry],
    defaults: dict[str, AnyEntry],
) -> str | None:
    auth, ns = mapping.spec.auth, entry.id.namespace
    if auth is not None and auth.disabled:
        return None
    if auth is not None and auth.policy is not None:
        policy = current.get(ResourceId("JWTPolicy", ns, auth.policy))
        path: FieldPath = ("spec", "auth", "policy")
        if policy is None:
            entry.reject(path, missing_policy(auth.policy, ns, current))
            return None
        if not policy.ok:
            entry.reject(path, f"{policy.id} is rejected: {why_rejected(policy)}")
            return None
        return policy.key
    default = defaults.get(ns)
    if default is None:
        return None
    if not default.ok:
        entry.reject(
            ("spec", "auth"),
            f"the namespace's default {default.id} is rejected ({why_rejected(default)}); "
            "the Mapping is not served without it (set auth to override)",
        )
        return None
    return default.key


def missing_policy(name: str, namespace: str, present: Iterable[ResourceId]) -> str:
    """Why a Mapping of `namespace` cannot use the JWTPolicy `name`: none of `present` is it
    (pointing at a JWTPolicy of that name in another namespace, the likely mistake)."""
    elsewhere = sorted(r.namespace for r in present if r.kind == "JWTPolicy" and r.name == name)
    hint = (
        f" (JWTPolicy {elsewhere[0]}/{name} exists, but a Mapping may only use its own namespace's)"
        if elsewhere
        else ""
    )
    return f"no JWTPolicy {name!r} in namespace {namespace}{hint}"
