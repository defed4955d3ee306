"""How each JWTPolicy is enforced, policy by policy and route by route, as users see it.

The compiler decides per policy (`compiler/native.py`): `native` (Envoy's jwt_authn + RBAC),
`service (reason)` (ext_authz), or `unused (…)` when no route uses it. A few routes of a native
policy stay on the service all the same (a Mapping with `allowMethodOverride`, a regex Mapping
under a regex rule: `translate.native_routes.service_reason`). This module puts both together
once per pipeline run:

- `governed`: the routes each policy authorizes, each with its own enforcement (the page, the
  API, `legation validate --explain`);
- `with_route_exceptions`: a native policy's status names the routes that stay on the service,
  `native, except Mapping ns/name (service: reason)`, so that status (and Kubernetes' condition)
  never says `native` for a route Envoy does not decide.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from legation.controller.compiler.ir import IR, ResourceStatus
from legation.controller.translate.native_routes import service_reason

__all__ = ["Governed", "governed", "with_route_exceptions"]

NATIVE = "native"
_SHOWN_EXCEPTIONS = 5
"""Routes named in a policy's status at most (a status is one line; the page lists them all)."""


@dataclass(frozen=True)
class Governed:
    """One route a JWTPolicy authorizes, and who decides its requests."""

    route: str
    """The route's id: "namespace/name" of its primary Mapping."""
    mappings: tuple[str, ...]
    """Every Mapping of the route (canaries share it), primary first."""
    enforcement: str
    """`native`, or `service (reason)`: the policy's reason, or the route's own."""
    reason: str | None = None
    """Why this route stays on the service although its policy is native."""


def governed(ir: IR, statuses: Sequence[ResourceStatus]) -> dict[str, tuple[Governed, ...]]:
    """Policy key ("namespace/name") → the routes it authorizes, by route id."""
    shown = {
        f"{s.id.namespace}/{s.id.name}": s.enforcement
        for s in statuses
        if s.id.kind == "JWTPolicy" and s.enforcement is not None
    }
    natives = {n.key: n for n in ir.native_policies}
    found: dict[str, list[Governed]] = {}
    for route in ir.routes:
        if route.policy is None:
            continue
        native = natives.get(route.policy)
        reason = service_reason(route, native) if native is not None else None
        if native is None:
            enforcement = shown.get(route.policy) or "service"
        else:
            enforcement = NATIVE if reason is None else f"service ({reason})"
        found.setdefault(route.policy, []).append(Governed(route.id, route.mappings, enforcement, reason))
    return {key: tuple(sorted(routes, key=lambda g: g.route)) for key, routes in found.items()}


def with_route_exceptions(
    statuses: tuple[ResourceStatus, ...], routes: Mapping[str, tuple[Governed, ...]]
) -> tuple[ResourceStatus, ...]:
    """`statuses` with each native policy's routes that stay on the service named."""
    out = list(statuses)
    for i, status in enumerate(out):
        if status.id.kind != "JWTPolicy" or status.enforcement != NATIVE:
            continue
        key = f"{status.id.namespace}/{status.id.name}"
        exceptions = [g for g in routes.get(key, ()) if g.enforcement != NATIVE]
        if exceptions:
            out[i] = dataclasses.replace(status, enforcement=_excepting(exceptions))
    return tuple(out)


def _excepting(exceptions: Sequence[Governed]) -> str:
    named = [f"Mapping {g.route} (service: {g.reason})" for g in exceptions[:_SHOWN_EXCEPTIONS]]
    more = len(exceptions) - len(named)
    return f"{NATIVE}, except " + ", ".join(named) + (f", and {more} more" if more > 0 else "")
