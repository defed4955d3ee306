"""AuthService: the gateway-wide ext_authz settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from legation.api.v1alpha1.base import SpecModel
from legation.api.v1alpha1.fields import GatewayNames, ServiceAddress, check_status, gateways_field
from legation.api.v1alpha1.meta import ApiVersion, ObjectMeta, Status, TypedObject
from legation.core.durations import Duration

__all__ = ["AuthService", "AuthServiceSpec", "IncludeBody"]


class IncludeBody(SpecModel):
    """Send the request body to the authorization service."""

    max_bytes: int = Field(ge=1, le=2**32 - 1, description="Most body bytes buffered and sent.")
    allow_partial_message: bool = Field(
        default=False, description="Send the first maxBytes of a bigger body (false: answer 413)."
    )


class AuthServiceSpec(SpecModel):
    """How Envoy calls the ext_authz service, gateway-wide."""

    gateways: GatewayNames = gateways_field()
    service: ServiceAddress = Field(description="The authz gRPC service: `host:port` (https:// = TLS).")
    timeout: Duration = Field(default=0.2, gt=0, description="Per-check timeout. Default 200ms.")
    failure_mode_allow: bool = Field(
        default=False, description="Let requests through when the service fails (true) or deny (false)."
    )
    status_on_error: Annotated[int, AfterValidator(check_status)] = Field(
        default=503,
        description="Status sent when the service fails and failureModeAllow is false. Default 503 "
        "(Envoy's own default is 403, which blames the client).",
    )
    include_body: IncludeBody | None = Field(
        default=None, description="Send the body; absent = headers only."
    )


class AuthService(TypedObject):
    """Gateway-wide ext_authz settings."""

    api_version: ApiVersion
    kind: Literal["AuthService"] = Field(description="AuthService")
    metadata: ObjectMeta = Field(description="Name and namespace.")
    spec: AuthServiceSpec = Field(description="The ext_authz settings.")
    status: Status = None
