"""The page's sections about what is out there: Hosts and their certificates, upstream health as
the Envoys see it, and warnings (certificates about to expire, service names that do not
resolve). They are rendered on every request (they depend on the clock and on background
checks, not only on the pipeline run). Certificates show their names and expiry, never a key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from legation.controller.compiler.certificates import expiry_warning
from legation.controller.compiler.ir import IR, Cluster, HostIR
from legation.controller.serving.dns_check import DnsResult
from legation.controller.serving.page_html import e, lines, table, when
from legation.controller.serving.upstream_health import AdminView, HostHealth

__all__ = ["Health", "hosts_section", "upstreams_section", "warnings_section"]


@dataclass(frozen=True)
class Health:
    """What the background checks found, at render time."""

    views: Sequence[AdminView] | None
    """One per `--envoy-admin`; None when the controller was given none."""
    unresolved: Sequence[DnsResult] = ()


def hosts_section(ir: IR, *, now: float) -> str:
    rows = [_host_row(host, now) for host in ir.hosts]
    title = f"<h2>Hosts ({len(rows)})</h2>"
    if not rows:
        return f'<section id="hosts">{title}<p>No Hosts: no HTTPS listener.</p></section>'
    headers = ["Hostname", "Host", "Certificate names", "Expires (notAfter)", "Plain HTTP"]
    return f'<section id="hosts">{title}{table(headers, rows)}</section>'


def _host_row(host: HostIR, now: float) -> list[str]:
    warning = expiry_warning(host.not_after, now=now) if host.not_after else None
    expires = f"<code>{e(host.not_after or '—')}</code>"
    if warning:
        expires += f'<br><span class="bad">{e(warning)}</span>'
    names = lines(f"<code>{e(n)}</code>" for n in host.certificate_names) or "—"
    return [e(host.hostname), e(host.id), names, expires, e(host.insecure)]


def upstreams_section(ir: IR, health: Health) -> str:
    title = "<h2>Upstream health</h2>"
    if health.views is None:
        note = (
            "Not known here: the controller reads it from Envoy's admin interface, given with "
            "<code>--envoy-admin URL</code> (<code>legation up</code> passes its Envoy's)."
        )
        return f'<section id="upstreams">{title}<p>{note}</p></section>'
    users = _cluster_users(ir)
    headers = ["Service", "Used by", *(f"Envoy {v.admin}" for v in health.views)]
    rows = [
        [_service(c), e(", ".join(users.get(c.name, ())) or "—"), *(_cell(v, c.name) for v in health.views)]
        for c in ir.clusters
    ]
    polled = lines(_polled(v) for v in health.views) or "Not polled yet."
    return f'<section id="upstreams">{title}<p>{polled}</p>{table(headers, rows)}</section>'


def _polled(view: AdminView) -> str:
    text = f"{e(view.admin)}: read at {when(view.at)}"
    return text + (f' <span class="bad">(last read failed: {e(view.error)})</span>' if view.error else "")


def _cell(view: AdminView, cluster: str) -> str:
    hosts = view.clusters.get(cluster)
    if hosts is None:
        return "not in this Envoy (yet)"
    if not hosts:
        return '<span class="bad">no endpoints (the name did not resolve?)</span>'
    return lines(_host_health(h) for h in hosts)


def _host_health(host: HostHealth) -> str:
    cls = "ok" if host.state == "healthy" else "bad"
    return (
        f'<span class="{cls}" data-state="{e(host.state)}"><code>{e(host.address)}</code> '
        f"{e(host.state)}</span> ({e(host.detail)})"
    )


def warnings_section(ir: IR, health: Health, *, now: float) -> str:
    items = [
        f"Host {e(h.id)} ({e(h.hostname)}): {e(warning)}"
        for h in ir.hosts
        if h.not_after and (warning := expiry_warning(h.not_after, now=now))
    ]
    by_host = _services_by_host(ir)
    for result in health.unresolved:
        items.append(
            f"Service {e(by_host.get(result.host, result.host))}: the name <code>{e(result.host)}</code> "
            f"does not resolve ({e(result.error)}; checked {when(result.checked_at)})"
        )
    title = f"<h2>Warnings ({len(items)})</h2>" if items else "<h2>Warnings</h2>"
    if not items:
        return f'<section id="warnings">{title}<p class="ok">None.</p></section>'
    body = "".join(f"<li>{item}</li>" for item in items)
    return f'<section id="warnings" class="warnings">{title}<ul>{body}</ul></section>'


def _cluster_users(ir: IR) -> dict[str, tuple[str, ...]]:
    users: dict[str, set[str]] = {}
    for route in ir.routes:
        for d in route.destinations:
            users.setdefault(d.cluster, set()).add(d.mapping)
    if ir.auth_service is not None:
        users.setdefault(ir.auth_service.cluster, set()).add(f"AuthService {ir.auth_service.id}")
    return {name: tuple(sorted(found)) for name, found in users.items()}


def _services_by_host(ir: IR) -> Mapping[str, str]:
    """Each upstream host name → its services and who uses them, e.g. `a:80 (used by ns/m)`."""
    users = _cluster_users(ir)
    found: dict[str, list[str]] = {}
    for cluster in ir.clusters:
        used = ", ".join(users.get(cluster.name, ()))
        found.setdefault(cluster.host, []).append(_address(cluster) + (f" (used by {used})" if used else ""))
    return {host: "; ".join(services) for host, services in found.items()}


def _service(cluster: Cluster) -> str:
    return f'<code title="cluster {e(cluster.name)}">{e(_address(cluster))}</code>'


def _address(cluster: Cluster) -> str:
    return f"{'https://' if cluster.tls else ''}{cluster.host}:{cluster.port}"
