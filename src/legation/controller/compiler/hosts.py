"""Hosts (one per hostname, the oldest) with their TLS Secrets, and Secrets' own checks."""

from __future__ import annotations

from collections.abc import Iterable

from legation.api.v1alpha1 import (
    Host,
    ResourceId,
    Secret,
)
from legation.controller.compiler.certificates import certificate_info
from legation.controller.compiler.entries import AnyEntry, Entry, age, why_rejected
from legation.controller.compiler.ir import (
    HostIR,
    TlsSecret,
)
from legation.core.errors import FieldPath

__all__ = ["check_secret", "compile_hosts", "tls_secrets"]


def check_secret(entry: Entry[Secret]) -> None:
    for path, reason in entry.resource.tls_errors():
        entry.reject(path, reason)


def compile_hosts(entries: list[Entry[Host]], secrets: dict[ResourceId, AnyEntry]) -> list[HostIR]:
    by_hostname: dict[str, Entry[Host]] = {}
    for entry in sorted(entries, key=age):
        host = entry.resource
        path: FieldPath = ("spec", "tlsSecret", "name")
        secret = secrets.get(ResourceId("Secret", entry.id.namespace, host.spec.tls_secret.name))
        if secret is None:
            entry.reject(path, f"no Secret {host.spec.tls_secret.name!r} in namespace {entry.id.namespace}")
        elif not secret.ok:
            entry.reject(path, f"{secret.id} is rejected: {why_rejected(secret)}")
        elif isinstance(secret.resource, Secret) and secret.resource.type != "kubernetes.io/tls":
            entry.reject(path, f"{secret.id} has type {secret.resource.type}, not kubernetes.io/tls")
        if not entry.ok:
            continue
        winner = by_hostname.setdefault(host.spec.hostname, entry)
        if winner is not entry:
            entry.reject(
                ("spec", "hostname"), f"hostname {host.spec.hostname} is already served by {winner.id}"
            )
    return [_host_ir(entry, secrets) for entry in by_hostname.values()]


def _host_ir(entry: Entry[Host], secrets: dict[ResourceId, AnyEntry]) -> HostIR:
    """The Host with the public facts of its certificate (names, expiry; never the key)."""
    spec = entry.resource.spec
    secret = secrets[ResourceId("Secret", entry.id.namespace, spec.tls_secret.name)].resource
    pem = secret.value("tls.crt") if isinstance(secret, Secret) else None
    info = certificate_info(pem) if pem else None
    return HostIR(
        id=entry.key,
        hostname=spec.hostname,
        secret=f"{entry.id.namespace}/{spec.tls_secret.name}",
        insecure=spec.insecure.action,
        certificate_names=info.names if info is not None else (),
        not_after=info.not_after if info is not None else None,
    )


def tls_secrets(hosts: Iterable[HostIR], secrets: dict[ResourceId, AnyEntry]) -> tuple[TlsSecret, ...]:
    found: dict[str, TlsSecret] = {}
    for host in hosts:
        namespace, name = host.secret.split("/", 1)
        secret = secrets[ResourceId("Secret", namespace, name)].resource
        assert isinstance(secret, Secret)
        found[host.secret] = TlsSecret(
            name=host.secret,
            certificate_chain=(secret.value("tls.crt") or b"").decode(),
            private_key=(secret.value("tls.key") or b"").decode(),
        )
    return tuple(found[name] for name in sorted(found))
