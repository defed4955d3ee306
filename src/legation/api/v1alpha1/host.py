"""Host: TLS termination for a hostname."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from legation.api.v1alpha1.base import SpecModel
from legation.api.v1alpha1.fields import GatewayNames, Hostname, gateways_field
from legation.api.v1alpha1.meta import ApiVersion, ObjectMeta, Status, TypedObject

__all__ = ["Host", "HostSpec", "Insecure", "SecretName"]


class SecretName(SpecModel):
    """A Secret in the referring resource's namespace."""

    name: str = Field(min_length=1, description="The Secret's name.")


class Insecure(SpecModel):
    """What plain-HTTP requests for the host get."""

    action: Literal["Redirect", "Reject", "Route"] = Field(
        default="Redirect", description="Redirect to https (301), Reject (403), or Route as usual."
    )


class HostSpec(SpecModel):
    """TLS termination for one hostname (SNI)."""

    gateways: GatewayNames = gateways_field()
    hostname: Hostname = Field(description="Exact name, `*.example.com`, or `*` (the default certificate).")
    tls_secret: SecretName = Field(description="A kubernetes.io/tls Secret in the Host's namespace.")
    insecure: Insecure = Field(default_factory=Insecure, description="Plain-HTTP handling; default Redirect.")


class Host(TypedObject):
    """TLS termination for a hostname."""

    api_version: ApiVersion
    kind: Literal["Host"] = Field(description="Host")
    metadata: ObjectMeta = Field(description="Name and namespace.")
    spec: HostSpec = Field(description="The hostname and its certificate.")
    status: Status = None
