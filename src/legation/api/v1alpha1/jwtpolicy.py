"""The JWTPolicy resource, exactly as teams apply it to Kubernetes (legation.dev/v1alpha1).

These pydantic models are the one schema source: the authz service validates its config files
with them, the controller validates manifests with them, and the CRD schema is generated from
them. Field names are camelCase on the wire, snake_case in Python.
"""

from __future__ import annotations

from typing import Any, Literal

import re2
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from legation.api.v1alpha1.base import SpecModel
from legation.api.v1alpha1.fields import HTTP_METHODS, IdentityHeader
from legation.api.v1alpha1.meta import ObjectMeta
from legation.core.durations import Duration
from legation.core.errors import FieldPath

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "HMAC_ALGORITHMS",
    "ClaimRequirement",
    "JWTPolicy",
    "Jwks",
    "Match",
    "PolicySpec",
    "Provider",
    "Requires",
    "Rule",
    "SecretRef",
    "TokenSource",
]

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256", "HS384", "HS512"
]
MAX_CLOCK_SKEW = 300.0
_RE2_QUIET = re2.Options()
_RE2_QUIET.log_errors = False


class SecretRef(SpecModel):
    """A key of a Secret in the policy's namespace."""

    name: str = Field(min_length=1, description="A Secret in the policy's namespace.")
    key: str = Field(min_length=1, description="The key in the Secret's data holding the JWKS.")


class Jwks(SpecModel):
    """Where the provider's keys come from: exactly one of uri, inline, file, secretRef."""

    uri: str | None = Field(default=None, description="HTTPS URL of a JWKS document.")
    inline: str | None = Field(default=None, description="A JWKS (or one JWK) as JSON text.")
    file: str | None = Field(default=None, description="Path of a JWKS file (standalone use).")
    secret_ref: SecretRef | None = Field(default=None, description="A Secret holding the JWKS (Kubernetes).")
    cache_duration: Duration = Field(default=600.0, description="How long fetched keys are fresh (uri only).")
    refetch_cooldown: Duration = Field(
        default=30.0,
        description="uri only: at most one refetch triggered by unknown `kid`s per this long (1s to 1h); "
        "the first unknown kid after any fetch refetches at once.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Jwks:
        given = [n for n in ("uri", "inline", "file", "secret_ref") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of uri, inline, file, secretRef")
        if self.uri is not None and not self.uri.startswith(("https://", "http://")):
            raise ValueError("uri must be an https:// URL")
        if not 1.0 <= self.refetch_cooldown <= 3600.0:
            raise ValueError("refetchCooldown must be between 1s and 1h")
        return self


class TokenSource(SpecModel):
    """Where a token is read from: one of header (with prefix), cookie, query."""

    header: str | None = Field(default=None, description="Header name, e.g. Authorization.")
    prefix: str = Field(default="", description="Prefix before the token in the header, e.g. 'Bearer '.")
    cookie: str | None = Field(default=None, description="Cookie name.")
    query: str | None = Field(default=None, description="Query parameter name.")

    @model_validator(mode="after")
    def _one_place(self) -> TokenSource:
        given = [n for n in ("header", "cookie", "query") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("set exactly one of header, cookie, query")
        if self.prefix and not self.header:
            raise ValueError("prefix applies to header sources only")
        return self


DEFAULT_TOKEN_SOURCES = (TokenSource(header="Authorization", prefix="Bearer "),)


class Provider(SpecModel):
    """An identity provider a policy trusts."""

    name: str = Field(min_length=1, description="Referenced by rules' requires.")
    issuer: str = Field(min_length=1, description="The `iss` claim, compared exactly.")
    audiences: list[str] = Field(
        default_factory=list, description="Any one must be in `aud`; empty = not checked."
    )
    jwks: Jwks = Field(
        description="Where the provider's signing keys come from: one of uri, inline, file, secretRef."
    )
    algorithms: list[Algorithm] = Field(
        default_factory=lambda: list[Algorithm](["RS256"]),
        min_length=1,
        description="Signature algorithms accepted (never none); HS* only alone, with inline, file or "
        "secretRef keys.",
    )
    token_sources: list[TokenSource] = Field(
        default_factory=lambda: list(DEFAULT_TOKEN_SOURCES),
        min_length=1,
        description="Where the token is looked for, in order; two different tokens are a 400.",
    )
    clock_skew: Duration = Field(default=60.0, description="Leeway for exp, nbf and iat; at most 300s.")
    require_expiry: bool = Field(default=True, description="Reject tokens without `exp`.")
    max_token_bytes: int = Field(
        default=8192, ge=256, le=65536, description="Larger tokens are rejected unread."
    )

    @field_validator("algorithms")
    @classmethod
    def _no_mixing(cls, algorithms: list[str]) -> list[str]:
        hmac = [a for a in algorithms if a in HMAC_ALGORITHMS]
        if hmac and len(hmac) != len(algorithms):
            raise ValueError("HS* algorithms cannot be mixed with asymmetric ones in one provider")
        return algorithms

    @field_validator("clock_skew")
    @classmethod
    def _bounded_skew(cls, skew: float) -> float:
        if skew > MAX_CLOCK_SKEW:
            raise ValueError("clockSkew must be at most 300s")
        return skew

    @model_validator(mode="after")
    def _hmac_needs_a_secret(self) -> Provider:
        if self.algorithms[0] in HMAC_ALGORITHMS and self.jwks.uri is not None:
            raise ValueError("HS* algorithms need a secret key source (inline, file or secretRef), not a uri")
        return self


class Match(SpecModel):
    """Which requests a rule covers; every given condition must hold. Empty = all requests."""

    path_prefix: str | None = Field(
        default=None,
        description="Path prefix in whole segments (one of pathPrefix, path, regex): /orders/public "
        "covers /orders/public and /orders/public/…, not /orders/publicity; a trailing / changes nothing.",
    )
    path: str | None = Field(default=None, description="Exact path (query string excluded).")
    regex: str | None = Field(default=None, description="RE2 regex matched against the whole path.")
    methods: list[str] = Field(default_factory=list, description="Methods matched; empty = any.")
    hosts: list[str] = Field(default_factory=list, description="Exact host, or '*.example.com'.")

    @model_validator(mode="after")
    def _one_path(self) -> Match:
        if sum(x is not None for x in (self.path_prefix, self.path, self.regex)) > 1:
            raise ValueError("set at most one of pathPrefix, path, regex")
        return self

    @field_validator("regex")
    @classmethod
    def _re2(cls, regex: str | None) -> str | None:
        # Checked with RE2, the engine Envoy uses: what passes here compiles there too.
        if regex is not None:
            try:
                re2.compile(regex, options=_RE2_QUIET)
            except re2.error as exc:
                detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
                raise ValueError(f"invalid RE2 regex: {detail}") from None
        return regex

    @field_validator("path_prefix", "path")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith("/"):
            raise ValueError("must start with /")
        return path

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, methods: list[str]) -> list[str]:
        upper = [m.upper() for m in methods]
        unknown = [m for m in upper if m not in HTTP_METHODS]
        if unknown:
            raise ValueError(f"unknown HTTP method {unknown[0]!r}")
        return upper


class Requires(SpecModel):
    """Which providers' tokens a rule needs: exactly one of anyOf, allOf."""

    any_of: list[str] | None = Field(default=None, description="A valid token from any of these providers.")
    all_of: list[str] | None = Field(default=None, description="A valid token from each of these providers.")

    @model_validator(mode="after")
    def _one_list(self) -> Requires:
        if (self.any_of is None) == (self.all_of is None):
            raise ValueError("set exactly one of anyOf, allOf")
        if not (self.any_of or self.all_of):
            raise ValueError("name at least one provider")
        return self

    @property
    def providers(self) -> list[str]:
        return list(self.any_of or self.all_of or [])


ClaimRequirement = dict[str, list[str]]


class Rule(SpecModel):
    """One access rule: the requests it matches, and public or what they need."""

    match: Match = Field(default_factory=Match, description="Which requests the rule covers; empty = all.")
    public: bool = Field(default=False, description="No token needed.")
    requires: Requires | None = Field(
        default=None, description="The tokens needed (when not public): anyOf or allOf provider names."
    )
    claims: ClaimRequirement = Field(
        default_factory=dict, description="Each listed value must be in the claim."
    )

    @model_validator(mode="after")
    def _public_or_requires(self) -> Rule:
        if self.public == (self.requires is not None):
            raise ValueError("a rule is either public: true or has requires")
        if self.public and self.claims:
            raise ValueError("a public rule cannot require claims")
        return self


class PolicySpec(SpecModel):
    """Who may call: the JWT providers trusted, and path rules (first match wins, no match = deny)."""

    namespace_default: bool = Field(
        default=False, description="Applies to the namespace's Mappings without auth."
    )
    providers: list[Provider] = Field(
        default_factory=list, description="Identity providers trusted; rules name them in requires."
    )
    rules: list[Rule] = Field(min_length=1, description="First match wins; no match = deny.")
    claims_to_headers: dict[str, IdentityHeader] = Field(
        default_factory=dict,
        description="claim path -> request header, set for the upstream (a client's copy is removed). "
        "A plain header name: not a pseudo-header, hop-by-hop header (connection, keep-alive, "
        "proxy-*, te, trailer, transfer-encoding, upgrade), host, content-length or x-envoy-*.",
    )
    metadata_claims: list[str] = Field(
        default_factory=list, description="Claims emitted as dynamic metadata."
    )
    forward_token: bool = Field(default=False, description="Keep the token's header for the upstream.")
    enforcement: Literal["auto", "service"] = Field(
        default="auto",
        description="auto: Envoy enforces the policy itself (jwt_authn, RBAC) wherever its decisions are "
        "the authz service's, else the service does, with the reason in status; service: always the "
        "authz service.",
    )

    def reference_errors(self) -> list[tuple[FieldPath, str]]:
        """(field path under spec, reason) for names that do not resolve. Kept out of the
        validators so that each error can point at its own field."""
        errors: list[tuple[FieldPath, str]] = []
        names = [p.name for p in self.providers]
        for i, name in enumerate(names):
            if name in names[:i]:
                errors.append((("providers", i, "name"), f"duplicate provider name {name!r}"))
        for i, rule in enumerate(self.rules):
            for name in rule.requires.providers if rule.requires else []:
                if name not in names:
                    errors.append((("rules", i, "requires"), f"unknown provider {name!r}"))
        return errors


class JWTPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    api_version: Literal["legation.dev/v1alpha1"] = Field(
        alias="apiVersion", description="legation.dev/v1alpha1"
    )
    kind: Literal["JWTPolicy"] = Field(description="JWTPolicy")
    metadata: ObjectMeta = Field(description="Name and namespace.")
    spec: PolicySpec = Field(description="The providers and rules.")
    status: dict[str, Any] | None = Field(
        default=None, description="Written by the controller; ignored on input."
    )

    @property
    def key(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"
