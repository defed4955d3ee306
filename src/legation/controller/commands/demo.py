"""The demo's local secrets: an issuer key for `legation token`, and a self-signed certificate.

Nothing here is committed: `legation up` creates them in its state directory (default
`.legation/`) on first start, and writes two manifests next to them that the controller reads
together with the user's directory — an Opaque Secret holding the issuer's JWKS (the example
JWTPolicy references it with `jwks.secretRef`) and a `kubernetes.io/tls` Secret for the example
Host. The private keys stay in files readable only by their owner.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEMO_AUDIENCE", "DEMO_ISSUER", "DemoFiles", "LocalCa", "self_signed"]

DEMO_ISSUER = "https://demo-issuer.legation.localhost/"
DEMO_AUDIENCE = "orders"
JWKS_SECRET = ("team-orders", "demo-issuer-jwks", "jwks.json")
"""(namespace, name, key) of the Secret the example JWTPolicy reads the issuer's keys from."""
TLS_SECRET = ("team-catalog", "demo-tls")
"""(namespace, name) of the example Host's certificate Secret."""
TLS_HOSTNAMES = ("shop.localhost", "*.shop.localhost")
_CERT_DAYS = 30


def _b64url(value: int, size: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()


@dataclass(frozen=True)
class DemoFiles:
    """The files under one state directory."""

    root: Path

    @property
    def issuer_key(self) -> Path:
        return self.root / "demo-issuer.pem"

    @property
    def certificate(self) -> Path:
        """The self-signed certificate (also the CA to trust: `curl --cacert`)."""
        return self.root / "demo-tls.crt"

    @property
    def manifests(self) -> Path:
        """The generated manifests directory (a second controller source)."""
        return self.root / "manifests"

    def feed_token(self, feed: str) -> Path:
        """The bearer token of one config feed (`authz`, `ratelimit`): the controller accepts
        it, that service sends it. One per feed, so that the rate limit service cannot read the
        authz feed's keys."""
        return self.root / "feed-tokens" / feed

    def ensure(self) -> None:
        """Create what is missing (and renew a certificate close to expiry); keep the rest, so
        tokens minted earlier stay valid across restarts."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(exist_ok=True)
        for feed in ("authz", "ratelimit"):
            token = self.feed_token(feed)
            if not token.exists():
                token.parent.mkdir(mode=0o700, exist_ok=True)
                _write_private(token, (secrets.token_urlsafe(32) + "\n").encode())
        if not self.issuer_key.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            _write_private(self.issuer_key, _pem(key))
        if not self.certificate.exists() or _expires_soon(self.certificate):
            self._make_certificate()
        self._write_manifests()

    # --- issuer --------------------------------------------------------------------------------

    def _key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.issuer_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{self.issuer_key} is not an EC private key")
        return key

    def jwk(self) -> dict[str, str]:
        """The issuer's public key as a JWK, with its RFC 7638 thumbprint as `kid`."""
        numbers = self._key().public_key().public_numbers()
        jwk = {"crv": "P-256", "kty": "EC", "x": _b64url(numbers.x, 32), "y": _b64url(numbers.y, 32)}
        canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()
        thumbprint = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
        return {**jwk, "kid": thumbprint, "alg": "ES256", "use": "sig"}

    def token(
        self,
        *,
        subject: str,
        scopes: list[str] | None = None,
        audience: str = DEMO_AUDIENCE,
        lifetime: float = 3600,
        claims: dict[str, Any] | None = None,
    ) -> str:
        """A token from the demo issuer."""
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": DEMO_ISSUER,
            "aud": audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + int(lifetime),
            "jti": uuid.uuid4().hex,
        }
        if scopes:
            payload["scope"] = " ".join(scopes)
        payload.update(claims or {})
        return jwt.encode(payload, self._key(), algorithm="ES256", headers={"kid": self.jwk()["kid"]})

    # --- TLS -----------------------------------------------------------------------------------

    def _make_certificate(self) -> None:
        certificate, key = self_signed(*TLS_HOSTNAMES, days=_CERT_DAYS)
        _write_private(self.root / "demo-tls.key", key.encode())
        self.certificate.write_text(certificate)

    # --- manifests -----------------------------------------------------------------------------

    def _write_manifests(self) -> None:
        namespace, name, key = JWKS_SECRET
        jwks = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque",
            "stringData": {key: json.dumps({"keys": [self.jwk()]})},
        }
        tls_namespace, tls_name = TLS_SECRET
        tls = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": tls_name, "namespace": tls_namespace},
            "type": "kubernetes.io/tls",
            "stringData": {
                "tls.crt": self.certificate.read_text(),
                "tls.key": (self.root / "demo-tls.key").read_text(),
            },
        }
        header = "# Generated by `legation up` (demo keys; never commit this directory).\n"
        text = header + yaml.safe_dump_all([jwks, tls], sort_keys=False)
        target = self.manifests / "demo-secrets.yaml"
        if not target.exists() or target.read_text() != text:
            _write_private(target, text.encode())


def self_signed(*names: str, days: float = 1) -> tuple[str, str]:
    """(certificate PEM, key PEM): a self-signed ECDSA certificate for `names` (DNS names, or IP
    addresses), which is its own CA (clients trust it with `--cacert`). For demos and tests only."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), _pem(key).decode()


@dataclass(frozen=True)
class LocalCa:
    """A small certificate authority (PEM certificate and key) for local mTLS: `legation up`'s
    xDS channel, and tests. Certificates it issues are good for both server and client use."""

    certificate: str
    key: str

    @classmethod
    def create(cls, name: str = "legation local CA", *, days: float = 30) -> LocalCa:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            _builder(subject, subject, key.public_key(), days=days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(certificate.public_bytes(serialization.Encoding.PEM).decode(), _pem(key).decode())

    def issue(self, *names: str, days: float = 30) -> tuple[str, str]:
        """(certificate PEM, key PEM) for `names` (DNS names, IP addresses or URIs with `://`)."""
        ca_cert = x509.load_pem_x509_certificate(self.certificate.encode())
        ca_key = serialization.load_pem_private_key(self.key.encode(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError("the CA key is not an EC private key")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        certificate = (
            _builder(subject, ca_cert.subject, key.public_key(), days=days)
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM).decode(), _pem(key).decode()


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, *, days: float
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _san(name: str) -> x509.GeneralName:
    if "://" in name:
        return x509.UniformResourceIdentifier(name)
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write atomically (a watcher never sees half a file), readable by the owner only."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _expires_soon(path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        return True
    left = cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return left < datetime.timedelta(days=1)
