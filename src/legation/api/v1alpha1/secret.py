"""Secret: core/v1 Secrets as the controller reads them (TLS pairs for Hosts, JWKS for policies)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from legation.api.v1alpha1.meta import ObjectMeta, TypedObject
from legation.core.errors import FieldPath

__all__ = ["Secret"]


def _base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        raise ValueError("not valid base64 (use stringData for plain text)") from None
    return value


_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _secret_keys(values: dict[str, str]) -> dict[str, str]:
    for key in values:
        if not _SECRET_KEY.fullmatch(key):
            raise ValueError(f"invalid key {key!r} (letters, digits, '-', '_' and '.' only)")
    return values


class Secret(TypedObject):
    """A core/v1 Secret: `kubernetes.io/tls` for Hosts, Opaque (e.g. a JWKS) for JWTPolicies.
    Other types are accepted and ignored by the compiler."""

    api_version: Literal["v1"] = Field(alias="apiVersion", description="v1")
    kind: Literal["Secret"] = Field(description="Secret")
    metadata: ObjectMeta = Field(description="Name and namespace.")
    type: str = Field(default="Opaque", description="kubernetes.io/tls (tls.crt, tls.key) or Opaque.")
    data: Annotated[dict[str, Annotated[str, AfterValidator(_base64)]], AfterValidator(_secret_keys)] = Field(
        default_factory=dict, description="Values, base64-encoded."
    )
    string_data: Annotated[dict[str, str], AfterValidator(_secret_keys)] = Field(
        default_factory=dict, alias="stringData", description="Values as plain text; win over data."
    )
    immutable: bool | None = Field(default=None, description="Kubernetes: the data cannot change.")

    @field_validator("data", "string_data", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    def value(self, key: str) -> bytes | None:
        """The decoded value of `key` (stringData first, as Kubernetes merges them)."""
        if key in self.string_data:
            return self.string_data[key].encode()
        return base64.b64decode(self.data[key]) if key in self.data else None

    def tls_errors(self) -> list[tuple[FieldPath, str]]:
        """(field path, reason) for a kubernetes.io/tls Secret whose pair Envoy would refuse."""
        if self.type != "kubernetes.io/tls":
            return []
        missing = [k for k in ("tls.crt", "tls.key") if self.value(k) is None]
        if missing:
            return [(("data",), f"a kubernetes.io/tls Secret needs {' and '.join(missing)}")]
        return _check_pair(
            self._where("tls.crt"),
            self.value("tls.crt") or b"",
            self._where("tls.key"),
            self.value("tls.key") or b"",
        )

    def _where(self, key: str) -> FieldPath:
        return ("stringData", key) if key in self.string_data else ("data", key)


def _check_pair(
    crt_path: FieldPath, crt: bytes, key_path: FieldPath, key: bytes
) -> list[tuple[FieldPath, str]]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    errors: list[tuple[FieldPath, str]] = []
    try:
        cert: x509.Certificate | None = x509.load_pem_x509_certificates(crt)[0]
    except ValueError:
        cert = None
        errors.append((crt_path, "not a PEM certificate"))
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        reason = "the key is encrypted" if isinstance(exc, TypeError) else "not a PEM private key"
        return [*errors, (key_path, reason)]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert is not None and cert.public_key().public_bytes(*spki) != private.public_key().public_bytes(*spki):
        errors.append((key_path, "the key does not match the certificate"))
    return errors
