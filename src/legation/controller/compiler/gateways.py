"""Which resources a gateway serves (`legation controller --gateway NAME`).

Mappings, Hosts and AuthServices name their gateways in `spec.gateways` (absent = `default`, `*` =
every gateway); a gateway compiles only its own and ignores the others entirely: no status, no
conflicts, no errors about them. JWTPolicies and Secrets belong to no gateway: every gateway reads
them, and each serves the policies its own routes use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from legation.api.v1alpha1 import AuthService, Host, Mapping, Resource
from legation.api.v1alpha1.fields import ANY_GATEWAY
from legation.core.names import DEFAULT_GATEWAY

__all__ = ["GATEWAY_KINDS", "claims", "for_gateway", "serves"]

GATEWAY_KINDS = frozenset({"Mapping", "Host", "AuthService"})
"""The kinds that name their gateways; every other kind is shared."""

T = TypeVar("T")


def serves(gateways: Iterable[str], gateway: str) -> bool:
    return any(name in (gateway, ANY_GATEWAY) for name in gateways)


def _of(resource: Resource) -> Sequence[str] | None:
    if isinstance(resource, Mapping | Host | AuthService):
        return resource.spec.gateways
    return None


def for_gateway(resources: Iterable[tuple[T, Resource]], gateway: str) -> list[tuple[T, Resource]]:
    """The resources `gateway` compiles: its own, and the shared kinds."""
    return [(origin, r) for origin, r in resources if (names := _of(r)) is None or serves(names, gateway)]


def claims(data: Any, gateway: str) -> bool:
    """Whether a document that failed validation is `gateway`'s to report. Read from the raw
    document; one whose gateways cannot be read is reported by every gateway (better twice than
    never)."""
    if not isinstance(data, dict) or data.get("kind") not in GATEWAY_KINDS:
        return True
    spec = data.get("spec")
    names = spec.get("gateways", [DEFAULT_GATEWAY]) if isinstance(spec, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return True
    return serves(names, gateway)
