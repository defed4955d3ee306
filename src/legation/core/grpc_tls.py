"""TLS for a gRPC server, with client certificates required and files re-read when they change.

`ServerTls.credentials()` gives grpc's dynamic server credentials: grpc asks for the certificate
configuration before every new connection's handshake, and this module answers from the files,
re-reading them only when one of them changed (a stat of three files per connection). So a
rotated certificate, key or client CA (a Kubernetes Secret volume swaps all its files at once)
applies to the next connection without a restart; established connections keep theirs. A
half-written or mismatched set (a key that does not belong to the certificate) is refused with a
log line, and the last good set stays in use.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["ServerTls", "TlsFilesError"]

log = logging.getLogger("legation.grpc")

_Stamp = tuple[tuple[int, int, int], ...]


class TlsFilesError(ValueError):
    """The certificate, key or CA files cannot be used."""


@dataclass(frozen=True)
class _Material:
    key: bytes
    chain: bytes
    client_ca: bytes


def _stamp(paths: tuple[Path, ...]) -> _Stamp:
    stats = [os.stat(path) for path in paths]  # follows the Secret volume's symlinks
    return tuple((s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)


def _load(cert: Path, key: Path, client_ca: Path) -> _Material:
    try:
        chain, key_pem, ca = cert.read_bytes(), key.read_bytes(), client_ca.read_bytes()
        leaf = x509.load_pem_x509_certificate(chain)
        private = serialization.load_pem_private_key(key_pem, password=None)
        roots = x509.load_pem_x509_certificates(ca)
    except (OSError, ValueError, TypeError) as exc:
        raise TlsFilesError(f"cannot load TLS files ({cert}, {key}, {client_ca}): {exc}") from exc
    if private.public_key() != leaf.public_key():
        raise TlsFilesError(f"{key} is not the private key of {cert}")
    if not roots:
        raise TlsFilesError(f"{client_ca} holds no certificate")
    return _Material(key_pem, chain, ca)


@dataclass(kw_only=True)
class ServerTls:
    """A server certificate and key, and the CA bundle client certificates must chain to."""

    cert: Path
    key: Path
    client_ca: Path
    _stamp: _Stamp = field(default=(), init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials requiring a client certificate; raises TlsFilesError when the files
        are unusable at start (a later bad rotation only logs)."""
        initial = self._configuration(self._read())
        return grpc.dynamic_ssl_server_credentials(initial, self._fetch, require_client_authentication=True)

    def _paths(self) -> tuple[Path, ...]:
        return (self.cert, self.key, self.client_ca)

    def _read(self) -> _Material:
        try:
            stamp = _stamp(self._paths())
        except OSError as exc:
            raise TlsFilesError(f"cannot read TLS files: {exc}") from exc
        material = _load(self.cert, self.key, self.client_ca)
        self._stamp = stamp
        return material

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by grpc before each handshake: a new configuration if the files changed."""
        with self._lock:
            try:
                stamp = _stamp(self._paths())
                if stamp == self._stamp:
                    return None
                self._stamp = stamp  # a bad set is reported once, not at every connection
                material = _load(self.cert, self.key, self.client_ca)
            except (OSError, TlsFilesError) as exc:
                log.error("TLS files not reloaded; the previous ones stay in use", extra={"error": str(exc)})
                return None
        log.info("TLS files reloaded", extra={"cert": str(self.cert), "client_ca": str(self.client_ca)})
        return self._configuration(material)

    @staticmethod
    def _configuration(material: _Material) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key, material.chain)], root_certificates=material.client_ca
        )
