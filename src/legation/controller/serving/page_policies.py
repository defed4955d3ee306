"""The page's JWTPolicies section: who enforces each policy (Envoy natively, or the authz
service, and why), and the Mappings it governs, each with its own enforcement when a route of a
native policy stays on the service (`legation.controller.serving.enforcement`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from legation.controller.serving.page_html import e, lines, table

if TYPE_CHECKING:
    from legation.controller.serving.pipeline import Stages

__all__ = ["policies_section", "route_enforcement"]


def policies_section(stages: Stages) -> str:
    """One row per valid JWTPolicy (rejected ones are in the rejected section, with why)."""
    rows = []
    for status in stages.statuses:
        if status.id.kind != "JWTPolicy" or status.enforcement is None:
            continue
        key = f"{status.id.namespace}/{status.id.name}"
        governed = stages.governed.get(key, ())
        # A route's own enforcement only where it differs from its policy's (a native policy's
        # route that stays on the service).
        mappings = [
            e(", ".join(g.mappings))
            + ("" if g.enforcement in (status.enforcement, "native") else f": {e(g.enforcement)}")
            for g in governed
        ]
        rows.append(
            [
                e(key),
                e(status.origin),
                f'<span class="enforcement">{e(status.enforcement)}</span>',
                lines(mappings) or "none",
            ]
        )
    title = f"<h2>JWT policies ({len(rows)})</h2>"
    if not rows:
        return f'<section id="policies">{title}<p>None.</p></section>'
    body = table(["Policy", "Origin", "Enforcement", "Mappings"], rows)
    return f'<section id="policies">{title}{body}</section>'


def route_enforcement(stages: Stages) -> dict[str, str]:
    """Route id → who enforces its policy: `native` or `service` (the reason is in the section)."""
    return {
        g.route: "native" if g.enforcement == "native" else "service"
        for routes in stages.governed.values()
        for g in routes
    }
