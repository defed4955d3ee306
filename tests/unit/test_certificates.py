"""Certificates of Hosts: names and expiry read from the Secret (never the key), the 14-day
warning (a Host stays Accepted), and how the API and page show them."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fixtures.manifests import resource, self_signed, tls_secret

from legation.controller.compiler.certificates import (
    EXPIRY_WARNING_DAYS,
    certificate_info,
    expiry_seconds,
    expiry_warning,
)
from legation.controller.compiler.ir import ResourceStatus
from legation.controller.serving.api import create_app
from legation.controller.serving.pipeline import ControllerState, Stages, build
from legation.controller.sources.directory import DirectorySource
from legation.controller.translate.envoy import EnvoyOptions
from legation.controller.xds.server import XdsServer

DAY = 86400.0


def certificate(
    *, days: float, cn: str = "api.example.com", sans: list[x509.GeneralName] | None = None
) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_names_come_from_the_subject_alternative_names_dns_first() -> None:
    import ipaddress

    pem = certificate(
        days=90,
        cn="ignored.example.com",
        sans=[x509.IPAddress(ipaddress.ip_address("10.0.0.7")), x509.DNSName("api.example.com"),
              x509.DNSName("*.api.example.com")],
    )  # fmt: skip
    info = certificate_info(pem.encode())
    assert info is not None
    assert info.names == ("api.example.com", "*.api.example.com", "10.0.0.7")


def test_without_sans_the_common_name_is_the_name() -> None:
    info = certificate_info(certificate(days=90, cn="legacy.example.com").encode())
    assert info is not None and info.names == ("legacy.example.com",)


def test_not_after_is_utc_iso_and_matches_the_certificate() -> None:
    pem = certificate(days=30, sans=[x509.DNSName("a.example.com")])
    info = certificate_info(pem.encode())
    assert info is not None
    expected = x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc.timestamp()
    assert info.not_after.endswith("Z")
    assert expiry_seconds(info.not_after) == expected


@pytest.mark.parametrize(
    "text", [b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_garbage_is_no_certificate(text: bytes) -> None:
    assert certificate_info(text) is None


@pytest.mark.parametrize(
    ("days_left", "expect"),
    [
        (90, None),
        (EXPIRY_WARNING_DAYS + 0.01, None),
        (EXPIRY_WARNING_DAYS, "under 14 days"),
        (3, "in 3 days"),
        (0.5, "in 12 hours"),
        (0.01, "under 2 hours"),
        (-1, "expired at"),
    ],
)
def test_expiry_warning_within_fourteen_days(days_left: float, expect: str | None) -> None:
    not_after = "2030-01-15T00:00:00Z"
    now = expiry_seconds(not_after) - days_left * DAY
    warning = expiry_warning(not_after, now=now)
    if expect is None:
        assert warning is None
    else:
        assert warning is not None and expect in warning and not_after in warning


def stages_with(tmp_path: Path, days: float) -> Stages:
    crt, key = self_signed("api.example.com", "www.example.com")
    if days != 1:  # self_signed makes one-day certificates: replace the certificate, keep the pair
        crt, key = _pair(days)
    text = tls_secret("api-tls", crt, key) + resource(
        "Host", "api", {"hostname": "api.example.com", "tlsSecret": {"name": "api-tls"}}
    )
    (tmp_path / "m.yaml").write_text(text)
    return build(DirectorySource(tmp_path).load(), EnvoyOptions())


def _pair(days: float) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api.example.com")])
    now = datetime.datetime.now(datetime.UTC)
    crt = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("api.example.com")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return crt.public_bytes(serialization.Encoding.PEM).decode(), pem_key.decode()


def host_status(stages: Stages) -> ResourceStatus:
    return next(s for s in stages.statuses if s.id.kind == "Host")


def test_a_host_whose_certificate_expires_soon_stays_accepted_with_a_warning(tmp_path: Path) -> None:
    stages = stages_with(tmp_path, days=1)
    status = host_status(stages)
    assert status.accepted and not status.problems
    assert len(status.warnings) == 1 and "under 14 days" in status.warnings[0]
    host = stages.result.ir.hosts[0]
    assert host.certificate_names == ("api.example.com", "www.example.com")
    assert host.not_after is not None and status.warnings[0].startswith(
        f"the certificate expires at {host.not_after}"
    )
    assert stages.envoy.resources  # still served


def test_a_host_with_a_long_lived_certificate_has_no_warning(tmp_path: Path) -> None:
    status = host_status(stages_with(tmp_path, days=200))
    assert status.accepted and status.warnings == ()


def test_the_warning_follows_the_time_the_run_is_given(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    stages_with(tmp_path / "m", days=200)
    snapshot = DirectorySource(tmp_path / "m").load()
    later = build(snapshot, EnvoyOptions(), now=time.time() + 190 * DAY)
    assert "under 14 days" in host_status(later).warnings[0]
    assert later.envoy.version == build(snapshot, EnvoyOptions()).envoy.version  # Envoy sees no change


async def test_api_and_page_show_names_expiry_and_warning_but_no_key(tmp_path: Path) -> None:
    stages = stages_with(tmp_path, days=1)
    state = ControllerState(source_description="test")
    state.record(stages)
    app = create_app(state, XdsServer())
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        resources = (await client.get("/api/resources", params={"kind": "Host"})).json()["resources"]
        page = (await client.get("/")).text
        ir = (await client.get("/api/ir")).json()["ir"]
    assert "under 14 days" in resources[0]["warnings"][0]
    assert ir["hosts"][0]["certificate_names"] == ["api.example.com", "www.example.com"]
    not_after = stages.result.ir.hosts[0].not_after
    assert not_after is not None
    hosts = page.split('<section id="hosts">', 1)[1].split("</section>", 1)[0]
    assert "api.example.com" in hosts and "www.example.com" in hosts and not_after in hosts
    assert "under 14 days" in page.split('<section id="warnings"', 1)[1].split("</section>", 1)[0]
    key = stages.result.ir.tls_secrets[0].private_key
    body = key.split("-----")[2].strip().splitlines()[0]
    assert body not in page
