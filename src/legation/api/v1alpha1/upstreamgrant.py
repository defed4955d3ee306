"""UpstreamGrant: the platform lets namespaces name upstreams beyond their own Services.

On Kubernetes a Mapping may name only Services of its own namespace (`name`, `name.ns`,
`name.ns.svc`, `name.ns.svc.cluster.local`); another namespace's Service, an external host or an
IP address needs a grant, in the spirit of Gateway API's ReferenceGrant. Grants are accepted only
from platform namespaces (`--platform-namespace`), and never open the gateway's own endpoints
(`--reserved-upstream`) or loopback, link-local and unspecified addresses.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from legation.api.v1alpha1.base import SpecModel
from legation.api.v1alpha1.fields import check_hostname, unique
from legation.api.v1alpha1.meta import ApiVersion, ObjectMeta, Status, TypedObject
from legation.core.names import DNS_LABEL

__all__ = ["GrantedUpstream", "UpstreamGrant", "UpstreamGrantSpec"]


def _namespace(value: str) -> str:
    if value != "*" and (len(value) > 63 or not DNS_LABEL.fullmatch(value)):
        raise ValueError(f"invalid namespace {value!r} (a DNS-1123 label, or * for every namespace)")
    return value


def _host(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        pass
    if value == "*":
        raise ValueError("* would grant every host; name the hosts, or *.example.com")
    return check_hostname(value)


GrantNamespace = Annotated[str, AfterValidator(_namespace)]
GrantHost = Annotated[str, AfterValidator(_host)]


class GrantedUpstream(SpecModel):
    """Upstreams a grant opens: a host, and optionally only some of its ports."""

    host: GrantHost = Field(
        description="A Service as `name.namespace` (any of its DNS forms matches), an external DNS "
        "name, `*.example.com` (names under example.com), or an IP address."
    )
    ports: Annotated[list[Annotated[int, Field(ge=1, le=65535)]], AfterValidator(unique)] = Field(
        default_factory=list, description="Ports opened; empty = every port."
    )


class UpstreamGrantSpec(SpecModel):
    """Which namespaces' Mappings may name which upstreams beyond their own namespace's Services."""

    namespaces: Annotated[list[GrantNamespace], AfterValidator(unique)] = Field(
        min_length=1, description="Namespaces whose Mappings may name these upstreams; `*` = every one."
    )
    upstreams: list[GrantedUpstream] = Field(min_length=1, description="The upstreams opened to them.")


class UpstreamGrant(TypedObject):
    """Lets the Mappings of some namespaces name upstreams outside their own namespace (another
    namespace's Service, an external host). Accepted only from platform namespaces."""

    api_version: ApiVersion
    kind: Literal["UpstreamGrant"] = Field(description="UpstreamGrant")
    metadata: ObjectMeta = Field(description="Name and namespace (a platform namespace).")
    spec: UpstreamGrantSpec = Field(description="Who may name which upstreams.")
    status: Status = None
