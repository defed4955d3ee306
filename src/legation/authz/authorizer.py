"""The authorization decision for one HTTP request: policy → rule → tokens → claims → verdict.

Deny by default at every step: no policy, unknown policy, a policy the config holds but could not
load (503), ambiguous path or host, no matching rule, missing or invalid token, missing claim, a
claim to forward holding control characters. Knows nothing of gRPC; the server adapts.

Method-override headers (X-HTTP-Method-Override…) make some upstreams run a POST as a DELETE.
The gateway removes them before authorization unless the route opts in; if one arrives anyway
(another Envoy in front), the request is refused. On a route that opts in, the rules must allow
the request's method and every overriding one: a GET-only rule never admits a DELETE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from legation.api.v1alpha1.mapping import METHOD_OVERRIDE_HEADERS
from legation.authz.policy import (
    CompiledPolicy,
    CompiledRule,
    claim_at,
    claim_header_value,
    claim_values,
    has_control_characters,
    normalize_host,
    normalize_path,
)
from legation.authz.tokens import TokenCache, TokenError, find_token, parse_cookies, verify, without_cookies
from legation.core.memo import Memo

__all__ = ["Authorizer", "HttpRequest", "Verdict"]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    host: str
    path: str  # as received: with query string
    headers: Mapping[str, str]  # lowercase names
    policy: str | None  # from context_extensions["legation.policy"]
    method_override: bool = False  # context_extensions["legation.methodOverride"] == "allow"


@dataclass(frozen=True, slots=True)
class Verdict:
    allow: bool
    status: int  # 200 on allow
    policy: str
    reason: str  # short, fixed: metric label and response body
    error: str = ""  # RFC 6750 error code, or a body error word
    www_authenticate: str | None = None
    set_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    remove_query: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)
    subject: str | None = None


_AMBIGUOUS = ("", "")  # memo marker for paths normalize_path refuses
_STATUS = {"invalid_token": 401, "invalid_request": 400, "insufficient_scope": 403, "unavailable": 503}
# Which failure to report when several providers failed: the most informative one.
_RANK = {"insufficient_scope": 0, "invalid_token": 1, "unavailable": 2, "invalid_request": 3}


class Authorizer:
    def __init__(
        self, policies: Mapping[str, CompiledPolicy], *, default_policy: str | None, cache: TokenCache
    ) -> None:
        self.policies = policies
        self.rejected: Mapping[str, str] = {}
        """Policies of the config in force that could not be loaded (key -> why): requests
        naming one are denied with 503, as when a policy's keys cannot be obtained."""
        self.default_policy = default_policy
        self.cache = cache
        self._paths: Memo[str, tuple[str, str]] = Memo(10_000)  # raw path -> normalised (paths recur)
        self._verdicts: Memo[tuple[int, int, int, str | None], tuple[CompiledPolicy, Any, Verdict]] = Memo(
            10_000
        )

    async def check(self, request: HttpRequest) -> Verdict:
        name = request.policy or self.default_policy
        if not name:
            return _forbidden("-", "no policy for this route")
        policy = self.policies.get(name)
        if policy is None:
            if name in self.rejected:
                return _deny(name, 503, "unavailable", "policy rejected")
            return _forbidden(name, "unknown policy")
        split = self._paths.get(request.path)
        if split is None:
            split = self._paths.put(request.path, normalize_path(request.path) or _AMBIGUOUS)
        if split is _AMBIGUOUS:
            return _deny(policy.key, 400, "invalid_request", "ambiguous path")
        path, query = split
        host = normalize_host(request.host)
        if host is None:
            return _deny(policy.key, 400, "invalid_request", "ambiguous host")
        methods = _methods(request)
        if methods is None:
            return _deny(policy.key, 400, "invalid_request", "method override not allowed")
        allowed = []
        for method in methods:  # the request's own first; every overriding one must pass too
            verdict = await self._decide(policy, request, method=method, host=host, path=path, query=query)
            if not verdict.allow:
                return verdict
            allowed.append(verdict)
        return allowed[0]  # headers and metadata as for the request's own method

    async def _decide(
        self, policy: CompiledPolicy, request: HttpRequest, *, method: str, host: str, path: str, query: str
    ) -> Verdict:
        rule = policy.rule_for(method, host, path)
        if rule is None:
            return _forbidden(policy.key, "no rule matches")
        if rule.public:
            return self._allowed(policy, rule, None, request.headers)
        try:
            claims = await self._authenticate(rule, request.headers, query)
        except TokenError as exc:
            return _token_denied(policy.key, exc)
        if claims is None:
            return _missing(policy.key)
        return self._allowed(policy, rule, claims, request.headers)

    def _allowed(
        self,
        policy: CompiledPolicy,
        rule: CompiledRule,
        claims: dict[str, Any] | None,
        headers: Mapping[str, str],
    ) -> Verdict:
        """The allow verdict, or the claims' denial. Verdicts are remembered: the token cache
        hands back the same claims object for a repeated token, so a verdict is reused while
        policy, rule, claims and Cookie header are the very same (public rules: claims None)."""
        key = (id(policy), rule.index, id(claims), headers.get("cookie"))
        memo = self._verdicts.get(key)
        if memo is not None and memo[0] is policy and memo[1] is claims:
            return memo[2]
        if claims is not None:
            for claim, required in rule.claims:
                if not set(required) <= claim_values(claim_at(claims, claim)):
                    return _deny(policy.key, 403, "insufficient_scope", f"missing required {claim}")
        verdict = _allow(policy, claims, "allowed" if claims is not None else "public", headers)
        self._verdicts.put(key, (policy, claims, verdict))
        return verdict

    async def _authenticate(
        self, rule: CompiledRule, headers: Mapping[str, str], query: str
    ) -> dict[str, Any] | None:
        """Claims of the first valid token (anyOf) or of the first provider when all are valid
        (allOf). None if no token at all; TokenError for the most telling failure."""
        cookies = parse_cookies(headers.get("cookie"))
        principal: dict[str, Any] | None = None
        failure: TokenError | None = None
        saw_token = False
        for provider in rule.providers:
            try:
                token = find_token(provider.sources, headers, query, cookies)
                if token is None:
                    if rule.mode == "all":
                        return None
                    continue
                saw_token = True
                claims = await verify(token, provider, self.cache)
            except TokenError as exc:
                if rule.mode == "all" or exc.kind == "invalid_request":
                    raise
                if failure is None or _RANK[exc.kind] < _RANK[failure.kind]:
                    failure = exc
                continue
            if rule.mode == "any":
                return claims
            principal = principal or claims
        if principal is not None:
            return principal
        if failure is not None and saw_token:
            raise failure
        return None


def _methods(request: HttpRequest) -> list[str] | None:
    """The request's method, then each distinct overriding one; None if override headers are
    present on a route that does not allow them."""
    method = request.method.upper()
    overrides = [
        value.strip().upper()
        for name in METHOD_OVERRIDE_HEADERS
        for value in request.headers.get(name, "").split(",")
        if value.strip()
    ]
    if overrides and not request.method_override:
        return None
    return list(dict.fromkeys([method, *overrides]))


def _challenge(realm: str, error: str | None = None, description: str | None = None) -> str:
    value = f'Bearer realm="{realm}"'
    if error:
        value += f', error="{error}"'
    if description:
        value += f', error_description="{description}"'
    return value


def _deny(realm: str, status: int, error: str, reason: str) -> Verdict:
    return Verdict(
        allow=False,
        status=status,
        policy=realm,
        reason=reason,
        error=error,
        www_authenticate=_challenge(realm, error, reason) if status in (400, 401, 403) else None,
    )


def _forbidden(realm: str, reason: str) -> Verdict:
    return Verdict(allow=False, status=403, policy=realm, reason=reason, error="forbidden")


def _missing(realm: str) -> Verdict:
    # RFC 6750 §3.1: no error code when the request had no authentication at all.
    return Verdict(
        allow=False, status=401, policy=realm, reason="missing token", error="unauthorized",
        www_authenticate=_challenge(realm),
    )  # fmt: skip


def _token_denied(realm: str, exc: TokenError) -> Verdict:
    return _deny(realm, _STATUS[exc.kind], exc.kind, exc.description)


def _unforwardable(realm: str, claim: str) -> Verdict:
    # Refused, never cleaned: `alice\0admin` must not reach the upstream as `aliceadmin`.
    return _deny(realm, 401, "invalid_token", f"claim {claim} holds control characters")


def _allow(
    policy: CompiledPolicy, claims: Mapping[str, Any] | None, reason: str, request_headers: Mapping[str, str]
) -> Verdict:
    remove = list(policy.identity_headers)
    headers: list[tuple[str, str]] = []
    remove_query: tuple[str, ...] = ()
    if not policy.forward_token:
        # The token goes no further than the gateway, wherever it came from.
        remove += [h for h in policy.token_headers if h not in remove]
        remove_query = policy.token_queries
        cookie = request_headers.get("cookie")
        if cookie and policy.token_cookies:
            kept = without_cookies(cookie, policy.token_cookies)
            if kept != cookie:
                if kept:
                    headers.append(("cookie", kept))
                else:
                    remove.append("cookie")
    if claims is None:
        return Verdict(
            allow=True, status=200, policy=policy.key, reason=reason, set_headers=tuple(headers),
            remove_headers=tuple(remove), remove_query=remove_query,
        )  # fmt: skip
    for claim, header in policy.claims_to_headers:
        value = claim_header_value(claim_at(claims, claim))
        if value is not None:
            if has_control_characters(value):
                return _unforwardable(policy.key, claim)
            headers.append((header, value))
    metadata = {}
    for claim in ("sub", "iss", *policy.metadata_claims):
        value = claim_header_value(claim_at(claims, claim))
        if value is not None:
            if has_control_characters(value):
                return _unforwardable(policy.key, claim)
            metadata[claim] = value
    subject = claims.get("sub")
    # A header we set (overwriting the client's copy) must not also be listed for removal:
    # whichever order Envoy applies them in, the identity value must survive.
    set_names = {h for h, _ in headers}
    return Verdict(
        allow=True,
        status=200,
        policy=policy.key,
        reason=reason,
        set_headers=tuple(headers),
        remove_headers=tuple(h for h in remove if h not in set_names),
        remove_query=remove_query,
        metadata=metadata,
        subject=subject if isinstance(subject, str) else None,
    )
