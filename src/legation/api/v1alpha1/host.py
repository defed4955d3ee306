"""Host: TLS termination for a hostname."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator

from legation.api.v1alpha1.base import SpecModel
from legation.api.v1alpha1.fields import GatewayNames, Hostname, UrlPath, gateways_field, unique
from legation.api.v1alpha1.meta import ApiVersion, ObjectMeta, Status, TypedObject
from legation.core.names import DNS_LABEL

__all__ = ["Delegation", "Host", "HostSpec", "Insecure", "SecretName"]


class SecretName(SpecModel):
    """A Secret in the referring resource's namespace."""

    name: str = Field(min_length=1, description="The Secret's name.")


class Insecure(SpecModel):
    """What plain-HTTP requests for the host get."""

    action: Literal["Redirect", "Reject", "Route"] = Field(
        default="Redirect", description="Redirect to https (301), Reject (403), or Route as usual."
    )


class Delegation(SpecModel):
    """Path prefixes of the Host's hostname that another namespace may route."""

    namespace: str = Field(description="The namespace given the prefixes (DNS-1123 label).")
    prefixes: Annotated[list[UrlPath], AfterValidator(unique)] = Field(
        min_length=1,
        description="Path prefixes, matched by whole segments (`/b` covers `/b` and `/b/…`, not "
        "`/bc`); `/` gives the whole hostname. The namespace's Mappings on this hostname must lie "
        "inside one of them.",
    )

    @field_validator("namespace")
    @classmethod
    def _label(cls, value: str) -> str:
        if not DNS_LABEL.fullmatch(value) or len(value) > 63:
            raise ValueError(f"invalid namespace {value!r} (expected a DNS-1123 label)")
        return value


class HostSpec(SpecModel):
    """TLS termination for one hostname (SNI), and who may route on it."""

    gateways: GatewayNames = gateways_field()
    hostname: Hostname = Field(description="Exact name, `*.example.com`, or `*` (the default certificate).")
    tls_secret: SecretName = Field(description="A kubernetes.io/tls Secret in the Host's namespace.")
    insecure: Insecure = Field(default_factory=Insecure, description="Plain-HTTP handling; default Redirect.")
    delegate: list[Delegation] = Field(
        default_factory=list,
        description="The Host's namespace owns its hostname: Mappings of other namespaces route on it "
        "(or on names under it) only inside the prefixes given to them here. On a `*` Host (platform "
        "namespaces only), this hands out prefixes of the shared hostname.",
    )

    @field_validator("delegate")
    @classmethod
    def _one_entry_per_namespace(cls, value: list[Delegation]) -> list[Delegation]:
        unique([d.namespace for d in value])
        return value


class Host(TypedObject):
    """TLS termination for a hostname."""

    api_version: ApiVersion
    kind: Literal["Host"] = Field(description="Host")
    metadata: ObjectMeta = Field(description="Name and namespace.")
    spec: HostSpec = Field(description="The hostname and its certificate.")
    status: Status = None
