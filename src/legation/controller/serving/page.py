"""The diagnostics page: one server-rendered HTML document, no external assets.

What a user needs to see first comes first: the summary, the rejected resources with their
reasons, warnings (certificates about to expire, service names that do not resolve), whether
every Envoy runs the current snapshot (and why not, after a NACK), then the routes, the JWT
policies (who enforces each: Envoy natively or the authz service, and why), the Hosts
with their certificates, and each upstream's health as the Envoys see it (`page_health`).
Every value that comes from input (names, paths, reasons, Envoy's error text) goes
through `html.escape`. A few lines of inline JavaScript re-fetch the page every few seconds and
swap its content in place, so the page follows the controller without losing the scroll position.

`stage_sections` renders the parts that depend only on one `Stages` (the API caches them per
run); `render` adds the parts that change between runs (sync state, history, the clock, the
background checks).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from legation.controller.compiler.ir import IR, Cluster, Route
from legation.controller.serving.page_health import Health, hosts_section, upstreams_section, warnings_section
from legation.controller.serving.page_html import e as _e
from legation.controller.serving.page_html import lines as _lines
from legation.controller.serving.page_html import table as _table
from legation.controller.serving.page_html import when as _when
from legation.controller.serving.page_policies import policies_section, route_enforcement
from legation.controller.serving.pipeline import status_errors
from legation.core.errors import ConfigError, format_path

if TYPE_CHECKING:
    from legation.controller.serving.pipeline import ControllerState, Stages
    from legation.controller.xds.protocol import Nack, NodeStatus
    from legation.controller.xds.server import XdsServer

__all__ = ["Health", "StageSections", "render", "stage_sections"]

REFRESH_MS = 5000

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f3f3f3}code{font-size:.95em}
dl{display:grid;grid-template-columns:max-content auto;gap:.15em 1em}dt{font-weight:600}dd{margin:0}
.bad{color:#a00}.ok{color:#070}section.rejected{border:2px solid #a00;padding:0 1em 1em;background:#fff6f6}
section.warnings{border:2px solid #b70;padding:0 1em 1em;background:#fffaf0}
"""

_SCRIPT = f"""
setInterval(async () => {{
  if (document.hidden) return;
  try {{
    const r = await fetch(location.pathname, {{cache: "no-store"}});
    if (!r.ok) return;
    const next = new DOMParser().parseFromString(await r.text(), "text/html").getElementById("main");
    const main = document.getElementById("main");
    if (next && next.innerHTML !== main.innerHTML) main.innerHTML = next.innerHTML;
  }} catch (e) {{}}
}}, {REFRESH_MS});
"""


@dataclass(frozen=True)
class StageSections:
    """HTML of the sections that depend on one pipeline run only."""

    rejected: str
    routes: str
    policies: str = ""


def stage_sections(stages: Stages) -> StageSections:
    return StageSections(
        rejected=_rejected(stages),
        routes=_routes(stages.result.ir, route_enforcement(stages)),
        policies=policies_section(stages),
    )


def render(
    state: ControllerState,
    xds: XdsServer,
    sections: StageSections | None,
    *,
    health: Health | None = None,
    now: float | None = None,
) -> str:
    """The whole page; `health` is what the background checks found (upstreams, DNS)."""
    stages = state.stages
    current = stages.envoy.version if stages is not None else ""
    health = health if health is not None else Health(views=None)
    now = now if now is not None else time.time()
    ir = stages.result.ir if stages is not None else None
    body = [
        "<h1>Legation controller</h1>",
        _summary(state),
        sections.rejected if sections is not None else "",
        warnings_section(ir, health, now=now) if ir is not None else "",
        _sync(xds, current),
        _programmed(state),
        _nacks(xds.nacks),
        sections.routes if sections is not None else "",
        sections.policies if sections is not None else "",
        hosts_section(ir, now=now) if ir is not None else "",
        upstreams_section(ir, health) if ir is not None else "",
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Legation controller</title><style>{_STYLE}</style></head>"
        f'<body><main id="main">{"".join(body)}</main><script>{_SCRIPT}</script></body></html>'
    )


# --- sections ----------------------------------------------------------------------------------


def _summary(state: ControllerState) -> str:
    stages = state.stages
    items: list[tuple[str, str]] = [
        ("Source", _e(state.source_description or "—")),
        ("Ready", '<span class="ok">yes</span>' if state.ready else '<span class="bad">no</span>'),
    ]
    if stages is not None:
        rejected = len(stages.rejected)
        last = state.history[-1] if state.history else None
        items += [
            ("Source version", f"<code>{_e(stages.source.version)}</code>"),
            ("Snapshot version", f'<code id="snapshot-version">{_e(stages.envoy.version)}</code>'),
            ("Last compile", f"{_when(last.at if last else None)} in {stages.seconds * 1000:.1f} ms"),
            (
                "Resources",
                f"{len(stages.statuses)} ({len(stages.statuses) - rejected} accepted, "
                f'<span class="{"bad" if rejected else "ok"}">{rejected} rejected</span>), '
                f"{len(stages.result.ir.routes)} routes",
            ),
        ]
    if state.last_error:
        items.append(("Last run failed", f'<span class="bad">{_e(state.last_error)}</span>'))
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in items)
    return f'<section id="summary"><dl>{rows}</dl></section>'


def _rejected(stages: Stages) -> str:
    rows: list[list[str]] = []
    for status in stages.rejected:
        name = f"{_e(status.id.kind)} {_e(status.id.namespace)}/{_e(status.id.name)}"
        # Each problem at the line of its field, as `legation validate` and the log give it.
        rows += [_problem_row(name, error) for error in status_errors(status)]
        if not status.problems:
            rows.append([name, _e(status.origin), "", "rejected"])
    kept = set(stages.source.kept)
    for file_error in stages.file_errors:
        note = " (its last good version is still served)" if file_error.file in kept else ""
        rows.append(_problem_row("(file)", file_error, note))
    count = len(stages.rejected) + len(stages.file_errors)  # resources, not problems (one row each)
    title = f"<h2>Rejected resources ({count})</h2>"
    if not rows:
        return '<section id="rejected"><h2>Rejected resources</h2><p class="ok">None.</p></section>'
    table = _table(["Resource", "Origin", "Field", "Reason"], rows)
    return f'<section id="rejected" class="rejected">{title}{table}</section>'


def _problem_row(name: str, error: ConfigError, note: str = "") -> list[str]:
    return [name, _e(error.where), f"<code>{_e(format_path(error.path))}</code>", _e(error.reason + note)]


def _routes(ir: IR, enforcement: dict[str, str]) -> str:
    """`enforcement`: route id → who enforces its policy (`native` or `service`)."""
    services = {c.name: _service(c) for c in ir.clusters}
    rows = [
        [
            _e(route.match.hostname),
            _match(route),
            _destinations(route, services),
            f"{_e(route.policy)} ({_e(enforcement.get(route.id, 'service'))})" if route.policy else "none",
            _e("; ".join(str(rule) for limit in route.rate_limits for rule in limit.rules)) or "—",
        ]
        for route in ir.routes
    ]
    table = _table(["Host", "Match", "→ Destinations", "Policy", "Rate limits"], rows)
    return f'<section id="routes"><h2>Routes ({len(ir.routes)})</h2>{table}</section>'


def _match(route: Route) -> str:
    m = route.match
    lines = [f"{_e(m.kind)} <code>{_e(m.value)}</code>"]
    if m.methods:
        lines.append("methods " + _e(", ".join(m.methods)))
    lines += [f"header <code>{_e(n)}: {_e(v)}</code>" for n, v in m.headers]
    lines += [f"query <code>{_e(n)}={_e(v)}</code>" for n, v in m.query_parameters]
    return _lines(lines)


def _destinations(route: Route, services: dict[str, str]) -> str:
    """Each share as the service address the Mapping wrote (the cluster name on hover)."""
    total = route.total_weight
    return _lines(
        f'<code title="cluster {_e(d.cluster)}">{_e(services.get(d.cluster, d.cluster))}</code> '
        f"{d.weight * 100 / total if total else 0:.3g}% ({_e(d.mapping)})"
        for d in route.destinations
    )


def _service(cluster: Cluster) -> str:
    return f"{'https://' if cluster.tls else ''}{cluster.host}:{cluster.port}"


def _sync(xds: XdsServer, current: str) -> str:
    nodes = xds.nodes()
    title = f"<h2>Envoy sync ({len(nodes)} connected)</h2>"
    if not nodes:
        return f'<section id="sync">{title}<p>No Envoy connected.</p></section>'
    table = _table(
        ["Node", "Cluster", "State", "Acked version", "Current version", "Last NACK"],
        [_node_row(node, xds, current) for node in nodes],
    )
    return f'<section id="sync">{title}{table}</section>'


_SHOWN_NOT_PROGRAMMED = 200
"""Rows of the Programmed section at most (the counts cover all)."""


def _programmed(state: ControllerState) -> str:
    """How many resources every Envoy runs; the others with why not, the quarantined (Envoy
    rejected them) first, with Envoy's message."""
    found = state.programmed
    done = sum(1 for p in found.values() if p.programmed)
    title = f"<h2>Programmed ({done} of {len(found)} in every Envoy)</h2>"
    order = {"Nacked": 0, "Rejected": 3, "Pending": 1, "NoEnvoy": 2}
    missing = sorted(
        (p for p in found.items() if not p[1].programmed), key=lambda p: (order[p[1].reason], p[0])
    )
    if not missing:
        return f'<section id="programmed">{title}<p class="ok">Every resource is programmed.</p></section>'
    rows = [
        [
            _e(f"{rid.kind} {rid.namespace}/{rid.name}"),
            f'<span class="{"bad" if p.reason == "Nacked" else ""}">{_e(p.reason)}</span>',
            _e(p.message),
        ]
        for rid, p in missing[:_SHOWN_NOT_PROGRAMMED]
    ]
    more = len(missing) - len(rows)
    note = f"<p>…and {more} more (see /api/resources).</p>" if more > 0 else ""
    table = _table(["Resource", "Programmed", "Why not"], rows)
    return f'<section id="programmed">{title}{table}{note}</section>'


def _node_row(node: NodeStatus, xds: XdsServer, current: str) -> list[str]:
    serving = xds.snapshots.current(node.node_id)
    version = serving.version if serving is not None else current
    in_sync = bool(version) and node.acked_version == version
    state_cls = "ok" if in_sync else "bad" if node.state == "nacked" else ""
    return [
        _e(node.node_id),
        _e(node.cluster),
        f'<span class="{state_cls}">{_e(node.state)}{" (in sync)" if in_sync else ""}</span>',
        f"<code>{_e(node.acked_version or '—')}</code>",
        f"<code>{_e(version or '—')}</code>",
        _nack_text(node.last_nack) if node.last_nack else "—",
    ]


def _nack_text(nack: Nack) -> str:
    return (
        f'<span class="bad">{_e(_short_type(nack.type_url))} <code>{_e(nack.version)}</code> '
        f"at {_when(nack.at)}: {_e(nack.error)}</span>"
    )


def _nacks(nacks: Iterable[Nack]) -> str:
    rows = [
        [
            _when(n.at),
            _e(n.node_id),
            _e(_short_type(n.type_url)),
            f"<code>{_e(n.version)}</code>",
            _e(n.error),
        ]
        for n in reversed(list(nacks))
    ]
    if not rows:
        return '<section id="nacks"><h2>NACK history</h2><p>No NACKs.</p></section>'
    table = _table(["When", "Node", "Type", "Version", "Error"], rows, cls="bad")
    return f'<section id="nacks"><h2>NACK history ({len(rows)}, newest first)</h2>{table}</section>'


def _short_type(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]
