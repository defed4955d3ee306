"""The one registry of kinds: each kind's model, API version, plural and short names, and the
columns `kubectl get` shows. The parser, the CRD generator, the reference docs and the Kubernetes
client all read it, so a kind is declared once."""

from __future__ import annotations

from collections.abc import Mapping as MappingType
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import BaseModel

from legation.api.v1alpha1.authservice import AuthService
from legation.api.v1alpha1.host import Host
from legation.api.v1alpha1.jwtpolicy import JWTPolicy
from legation.api.v1alpha1.mapping import Mapping
from legation.api.v1alpha1.meta import API_VERSION
from legation.api.v1alpha1.secret import Secret
from legation.api.v1alpha1.upstreamgrant import UpstreamGrant

__all__ = [
    "CUSTOM_KINDS",
    "KINDS",
    "Column",
    "Kind",
    "Resource",
    "ResourceId",
    "raw_id",
    "resource_id",
]

Resource = Mapping | JWTPolicy | AuthService | Host | UpstreamGrant | Secret


@dataclass(frozen=True)
class Column:
    """An additionalPrinterColumn: what `kubectl get` shows."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


@dataclass(frozen=True, kw_only=True)
class Kind:
    """One kind: its model (whose `spec` gives a CRD its schema) and its names in the API."""

    model: type[BaseModel]
    api_version: str
    plural: str
    short_names: tuple[str, ...] = ()
    columns: tuple[Column, ...] = ()
    summary: str = ""
    """Describes the kind when its model has no docstring."""

    @property
    def kind(self) -> str:
        return self.model.__name__

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def custom(self) -> bool:
        """Served through a CRD of ours (not a core kind such as Secret)."""
        return self.api_version == API_VERSION

    @property
    def name(self) -> str:
        """The CRD's name: `plural.group`."""
        return f"{self.plural}.{self.group}"

    @property
    def spec_model(self) -> type[BaseModel]:
        annotation = self.model.model_fields["spec"].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel), annotation
        return annotation


_ACCEPTED = '.status.gateways.default.conditions[?(@.type=="Accepted")]'
"""`kubectl get` shows the default gateway's verdict; `-o yaml` shows every gateway's."""
_STATUS_COLUMNS = (
    Column("Accepted", f"{_ACCEPTED}.status", description="Compiled into Envoy config."),
    Column("Reason", f"{_ACCEPTED}.reason", description="Why not, in one word.", priority=1),
    Column("Age", ".metadata.creationTimestamp", type="date"),
)

_ALL = (
    Kind(
        model=Mapping,
        api_version=API_VERSION,
        plural="mappings",
        short_names=("lmap",),
        columns=(
            Column("Host", ".spec.hostname", description="Hostname matched."),
            Column("Prefix", ".spec.prefix", description="Path prefix matched."),
            Column("Path", ".spec.path", description="Exact path matched.", priority=1),
            Column("Service", ".spec.service", description="Upstream."),
            Column("Policy", ".spec.auth.policy", description="JWTPolicy applied.", priority=1),
            *_STATUS_COLUMNS,
        ),
        summary="One route (or one canary share of a route).",
    ),
    Kind(
        model=JWTPolicy,
        api_version=API_VERSION,
        plural="jwtpolicies",
        short_names=("jwtpol",),
        columns=(
            Column("Providers", ".spec.providers[*].name", description="Trusted identity providers."),
            Column("Default", ".spec.namespaceDefault", type="boolean", description="Namespace default."),
            Column(
                "Enforcement",
                ".status.gateways.default.enforcement",
                description="native (Envoy), service (the authz service, and why) or unused.",
                priority=1,
            ),
            *_STATUS_COLUMNS,
        ),
        summary="A team's authentication and authorization policy: the JWT providers it trusts and path "
        "rules (first match wins, no match = deny). Mappings of its namespace name it in auth.policy.",
    ),
    Kind(
        model=AuthService,
        api_version=API_VERSION,
        plural="authservices",
        short_names=("authsvc",),
        columns=(
            Column("Service", ".spec.service", description="The ext_authz gRPC service."),
            Column("Fail open", ".spec.failureModeAllow", type="boolean", priority=1),
            *_STATUS_COLUMNS,
        ),
        summary="Gateway-wide ext_authz settings.",
    ),
    Kind(
        model=Host,
        api_version=API_VERSION,
        plural="hosts",
        short_names=("lhost",),
        columns=(
            Column("Hostname", ".spec.hostname", description="The TLS hostname (SNI)."),
            Column("Secret", ".spec.tlsSecret.name", description="The kubernetes.io/tls Secret."),
            Column("Insecure", ".spec.insecure.action", description="Plain-HTTP handling.", priority=1),
            *_STATUS_COLUMNS,
        ),
        summary="TLS termination for a hostname.",
    ),
    Kind(
        model=UpstreamGrant,
        api_version=API_VERSION,
        plural="upstreamgrants",
        short_names=("upgrant",),
        columns=(
            Column("Upstreams", ".spec.upstreams[*].host", description="The hosts opened."),
            *_STATUS_COLUMNS,
        ),
        summary="Lets namespaces' Mappings name upstreams beyond their own Services (platform only).",
    ),
    Kind(model=Secret, api_version="v1", plural="secrets", summary="TLS pairs and JWKS documents."),
)

KINDS: MappingType[str, Kind] = {k.kind: k for k in _ALL}
"""Every kind the controller reads, by name."""

CUSTOM_KINDS: tuple[Kind, ...] = tuple(k for k in _ALL if k.custom)
"""The kinds with a CRD of ours (and status written back)."""


class ResourceId(NamedTuple):
    """What identifies a resource: unique per kind and namespace, as in Kubernetes."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def resource_id(resource: Resource) -> ResourceId:
    return ResourceId(resource.kind, resource.metadata.namespace, resource.metadata.name)


def raw_id(data: Any) -> ResourceId | None:
    """The identity a document claims, read without validating it; None if it names none."""
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        return None
    metadata = data.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        return None
    namespace = metadata.get("namespace")
    return ResourceId(data["kind"], namespace if isinstance(namespace, str) else "default", metadata["name"])
