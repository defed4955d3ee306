"""Hosts' own checks and IR, with their TLS Secrets, and Secrets' own checks (which Host owns
a hostname is decided in `tenancy`)."""

from __future__ import annotations

from collections.abc import Iterable

from legation.api.v1alpha1 import (
    Host,
    ResourceId,
    Secret,
)
from legation.controller.compiler.certificates import certificate_info
from legation.controller.compiler.entries import AnyEntry, Entry, why_rejected
from legation.controller.compiler.ir import (
    HostIR,
    TlsSecret,
)
from legation.core.errors import FieldPath

__all__ = ["check_host", "check_secret", "host_irs", "tls_secrets"]


def check_secret(entry: Entry[Secret]) -> None:
    for path, reason in entry.resource.tls_errors():
        entry.reject(path, reason)


def check_host(entry: Entry[Host], secrets: dict[ResourceId, AnyEntry]) -> None:
    """The Host's own checks: its `tlsSecret` is a kubernetes.io/tls Secret of its namespace."""
    host = entry.resource
    path: FieldPath = ("spec", "tlsSecret", "name")
    secret = secrets.get(ResourceId("Secret", entry.id.namespace, host.spec.tls_secret.name))
    if secret is None:
        entry.reject(path, f"no Secret {host.spec.tls_secret.name!r} in namespace {entry.id.namespace}")
    elif not secret.ok:
        entry.reject(path, f"{secret.id} is rejected: {why_rejected(secret)}")
    elif isinstance(secret.resource, Secret) and secret.resource.type != "kubernetes.io/tls":
        entry.reject(path, f"{secret.id} has type {secret.resource.type}, not kubernetes.io/tls")


def host_irs(entries: Iterable[Entry[Host]], secrets: dict[ResourceId, AnyEntry]) -> list[HostIR]:
    """The IR of the Hosts that own their hostnames (see `tenancy.settle_hosts`)."""
    return [_host_ir(e, secrets) for e in entries]


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
        namespaces=(entry.id.namespace, *sorted({d.namespace for d in spec.delegate} - {entry.id.namespace})),
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
