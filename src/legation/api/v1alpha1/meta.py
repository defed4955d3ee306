"""What every kind shares: the API version, Kubernetes object metadata and the object envelope."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from legation.api.v1alpha1.ratelimit_annotation import ANNOTATION

__all__ = ["API_VERSION", "ApiVersion", "ObjectMeta", "Status", "TypedObject"]

API_VERSION = "legation.dev/v1alpha1"


class ObjectMeta(BaseModel):
    """Kubernetes object metadata. `name` and `namespace` identify the resource; labels and
    annotations are read; the API server's own fields (uid, resourceVersion, …) pass through."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(min_length=1, description="Unique per kind and namespace (DNS-1123 subdomain).")
    namespace: str = Field(default="default", description="The resource's namespace (DNS-1123 label).")
    labels: dict[str, str] = Field(default_factory=dict, description="Kubernetes labels.")
    annotations: dict[str, str] = Field(
        default_factory=dict, description=f"Kubernetes annotations; `{ANNOTATION}` on a Mapping sets limits."
    )
    creation_timestamp: str | None = Field(
        default=None,
        alias="creationTimestamp",
        description="Set by Kubernetes; older wins conflicts between namespaces. Ignored in "
        "manifest files (a directory source), where anyone can write it.",
    )

    @field_validator("labels", "annotations", mode="before")
    @classmethod
    def _null_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value


class TypedObject(BaseModel):
    """The envelope of every kind: apiVersion, kind, metadata, spec; unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# The fields every legation.dev kind has besides kind, metadata and spec.
ApiVersion = Annotated[
    Literal["legation.dev/v1alpha1"], Field(alias="apiVersion", description="legation.dev/v1alpha1")
]
Status = Annotated[dict[str, Any] | None, Field(description="Written by the controller; ignored on input.")]
