"""What the page and statuses show of a Host's certificate: its names and when it expires.

Pure: `certificate_info` reads the PEM the Secret holds (the leaf, i.e. the first certificate of
the chain) and never looks at the key; `expiry_warning` takes the time as an argument, so the
compiler stays clock-free and the caller (the pipeline run, the page) says what "now" is.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from legation.controller.compiler.ir import HostIR

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "CertificateInfo",
    "certificate_info",
    "expiry_seconds",
    "expiry_warning",
    "host_warnings",
]

EXPIRY_WARNING_DAYS = 14
"""A certificate that expires within this many days gets a warning (the Host stays Accepted)."""


@dataclass(frozen=True)
class CertificateInfo:
    """The public facts of a leaf certificate."""

    names: tuple[str, ...]
    """DNS names (then IP addresses) of its subjectAltName; the subject's CN when it has none."""
    not_after: str
    """Expiry, ISO 8601 in UTC (`2026-01-31T12:00:00Z`)."""


def certificate_info(pem: bytes) -> CertificateInfo | None:
    """The names and expiry of the first certificate in `pem`; None when it is not one."""
    from cryptography import x509  # imported here: only runs with Hosts

    try:
        cert = x509.load_pem_x509_certificates(pem)[0]
    except (ValueError, IndexError):
        return None
    not_after = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return CertificateInfo(names=_names(cert), not_after=not_after)


def _names(cert: object) -> tuple[str, ...]:
    from cryptography import x509

    assert isinstance(cert, x509.Certificate)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return tuple(str(a.value) for a in cn)
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return (*dns, *ips)


def expiry_seconds(not_after: str) -> float:
    """`not_after` as Unix time."""
    moment = datetime.datetime.strptime(not_after, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def expiry_warning(not_after: str, *, now: float, days: int = EXPIRY_WARNING_DAYS) -> str | None:
    """A warning when the certificate expired or expires within `days` of `now`; else None."""
    left = expiry_seconds(not_after) - now
    if left <= 0:
        return f"the certificate expired at {not_after}"
    if left <= days * 86400:
        return f"the certificate expires at {not_after}, in {_span(left)} (under {days} days)"
    return None


def _span(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.0f} days" if seconds >= 1.5 * 86400 else "1 day"
    hours = seconds / 3600
    return f"{hours:.0f} hours" if hours >= 1.5 else "under 2 hours"


def host_warnings(hosts: Iterable[HostIR], *, now: float) -> dict[str, str]:
    """ "namespace/name" of each Host whose certificate expires soon (or expired) → the warning."""
    found: dict[str, str] = {}
    for host in hosts:
        warning = expiry_warning(host.not_after, now=now) if host.not_after else None
        if warning is not None:
            found[host.id] = warning
    return found
