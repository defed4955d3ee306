"""The IR without some resources: what Envoy is sent while those are quarantined (Envoy rejected
them) or left out of a bisection probe (NACK attribution, `legation.controller.serving.nacks`).

Withholding happens after compiling, on the IR, so that a withheld resource keeps every claim it
won (a Mapping its match, a Host its hostname): no other namespace's resource is accepted in its
place while it is out. What it withholds, by kind:

- Mapping: every route it is part of (canaries of the same match go with it: they share one
  Envoy route), and the clusters only those routes used.
- Host: its TLS (no filter chain, no certificate); its hostname stays claimed, and plain-HTTP
  requests for it are refused (403) rather than served without the TLS the Host asked for.
- AuthService: Envoy calls the default authz service instead (authorization stays on).

Pure: same IR and ids, same result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from legation.api.v1alpha1 import ResourceId
from legation.controller.compiler.ir import IR

__all__ = ["WITHHELD_KINDS", "withhold"]

WITHHELD_KINDS = frozenset({"Mapping", "Host", "AuthService"})
"""The kinds that reach Envoy, hence can be rejected by it and withheld."""


def withhold(ir: IR, ids: Collection[ResourceId]) -> tuple[IR, frozenset[ResourceId]]:
    """`ir` without the resources `ids` names; also every resource that went with them (canary
    Mappings sharing a route)."""
    keys = {kind: {f"{i.namespace}/{i.name}" for i in ids if i.kind == kind} for kind in WITHHELD_KINDS}
    if not any(keys.values()):
        return ir, frozenset()
    routes = tuple(r for r in ir.routes if keys["Mapping"].isdisjoint(r.mappings))
    gone = {m for r in ir.routes if not keys["Mapping"].isdisjoint(r.mappings) for m in r.mappings}
    auth = (
        ir.auth_service if ir.auth_service is None or ir.auth_service.id not in keys["AuthService"] else None
    )
    hosts = tuple(
        dataclasses.replace(h, tls=False, insecure="Reject") if h.id in keys["Host"] else h for h in ir.hosts
    )
    used = {d.cluster for r in routes for d in r.destinations}
    if auth is not None:
        used.add(auth.cluster)
    secrets = {h.secret for h in hosts if h.tls}
    withheld = {ResourceId("Mapping", *m.split("/", 1)) for m in gone}
    withheld |= {i for i in ids if i.kind != "Mapping" and _present(ir, i)}
    return (
        IR(
            routes=routes,
            clusters=tuple(c for c in ir.clusters if c.name in used),
            hosts=hosts,
            tls_secrets=tuple(s for s in ir.tls_secrets if s.name in secrets),
            auth_service=auth,
        ),
        frozenset(withheld),
    )


def _present(ir: IR, rid: ResourceId) -> bool:
    key = f"{rid.namespace}/{rid.name}"
    if rid.kind == "Host":
        return any(h.id == key for h in ir.hosts)
    return ir.auth_service is not None and ir.auth_service.id == key
