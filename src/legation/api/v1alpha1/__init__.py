"""The resource schema, `legation.dev/v1alpha1`: what teams and the platform apply.

These pydantic models are the one source of truth: the controller validates manifests with them,
the authz service its policies, and the CRDs and the reference docs are generated from them. Field
names are camelCase on the wire, snake_case in Python; unknown keys are errors everywhere except in
Kubernetes `metadata`, where the API server's own fields pass.

Modules: `meta` (what every kind shares), one per kind (`mapping`, `jwtpolicy`, `authservice`,
`host`, `upstreamgrant`, `secret`), `fields` (field types and their checks), `ratelimit_annotation` (the
`legation.dev/rate-limit` grammar), `kinds` (the one registry of kinds) and `parse` (one YAML
document → one resource, or errors with file, line and field).
"""

from legation.api.v1alpha1.authservice import AuthService, AuthServiceSpec, IncludeBody
from legation.api.v1alpha1.fields import HTTP_METHODS, MAX_REGEX_PROGRAM_SIZE, Upstream, parse_service
from legation.api.v1alpha1.host import Host, HostSpec, Insecure, SecretName
from legation.api.v1alpha1.jwtpolicy import JWTPolicy
from legation.api.v1alpha1.kinds import CUSTOM_KINDS, KINDS, Kind, Resource, ResourceId, raw_id, resource_id
from legation.api.v1alpha1.mapping import AuthRef, CircuitBreakers, Cors, Mapping, MappingSpec, Retries
from legation.api.v1alpha1.meta import API_VERSION, ObjectMeta
from legation.api.v1alpha1.parse import ResourceError, parse_resource
from legation.api.v1alpha1.secret import Secret
from legation.api.v1alpha1.upstreamgrant import GrantedUpstream, UpstreamGrant, UpstreamGrantSpec

__all__ = [
    "API_VERSION",
    "CUSTOM_KINDS",
    "HTTP_METHODS",
    "KINDS",
    "MAX_REGEX_PROGRAM_SIZE",
    "AuthRef",
    "AuthService",
    "AuthServiceSpec",
    "CircuitBreakers",
    "Cors",
    "GrantedUpstream",
    "Host",
    "HostSpec",
    "IncludeBody",
    "Insecure",
    "JWTPolicy",
    "Kind",
    "Mapping",
    "MappingSpec",
    "ObjectMeta",
    "Resource",
    "ResourceError",
    "ResourceId",
    "Retries",
    "Secret",
    "SecretName",
    "Upstream",
    "UpstreamGrant",
    "UpstreamGrantSpec",
    "parse_resource",
    "parse_service",
    "raw_id",
    "resource_id",
]
