"""Native JWTPolicies (compiler/native.py) → Envoy's own filters: jwt_authn, RBAC, header mutation.

- jwt_authn holds one provider per (policy, provider), keyed `namespace/name/provider`, with the
  policy's keys as `local_jwks` (a key rotation is a config push) or, for `jwks.uri`, as
  `remote_jwks` (translate/remote_jwks.py), and one requirement per rule,
  `namespace/name#i`; each route names its requirement (PerRouteConfig), public rules disable it.
  The verified payload and JWT header go to dynamic metadata under the provider's key, so RBAC
  and rate limits read claims from there.
- RBAC, per route, with DENY policies in the order of the service's checks (Envoy tries them in
  the order of their names and reports the first that matches, e.g.
  `rbac_access_denied_matched_policy[4:claim:00:scope]`): `1:crit` (a critical header, which the
  service refuses as not understood), `2:alg` (remote keys: an algorithm the provider does not
  allow), `3:iat` (issued in the future, CEL), `4:claim:NN:NAME` (a required claim the principal's
  token lacks; the principal is the first provider whose token verified, as in the service) and
  `5:unforwardable:NN:NAME` (a claim to forward holding a control character).
- the checks jwt_authn lacks before it (jwt_checks.py): a token over `maxTokenBytes` or in five
  parts (JWE) is refused unread (`legation.token_checks`).
- a query token that is not forwarded is removed after jwt_authn (a second header mutation).
- a header mutation filter before jwt_authn removes client-sent copies of identity headers (and,
  on public rules, the token, which the service removes there too).
- jwt_denials.py names the denials and turns them into the service's answers (local replies).
"""

from __future__ import annotations

from typing import Any

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm
from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2, value_pb2

from legation.api.v1alpha1.jwtpolicy import PolicySpec, Rule
from legation.controller.compiler.native import NativePolicy
from legation.controller.compiler.remote_jwks import RemoteKeys
from legation.controller.translate.cel import (
    Expr,
    all_of,
    any_of,
    call,
    const,
    expression,
    ident,
    index,
    negate,
    select,
)
from legation.controller.translate.jwt_checks import (
    CHECKS_FILTER,
    condition_policy,
    token_checks,
)
from legation.controller.translate.jwt_denials import (
    ALG_POLICY,
    CRIT_POLICY,
    IAT_POLICY,
    METADATA_NAMESPACE,
    claim_policy,
    forwarded_claims,
    unforwardable_policy,
)
from legation.controller.translate.options import pack
from legation.controller.translate.remote_jwks import remote_jwks
from legation.core.text import has_control_characters

__all__ = [
    "IDENTITY_FILTER",
    "JWT_FILTER",
    "METADATA_NAMESPACE",
    "QUERY_TOKEN_FILTER",
    "RBAC_FILTER",
    "claim_value",
    "jwt_http_filters",
    "per_route",
    "provider_key",
]

JWT_FILTER = "envoy.filters.http.jwt_authn"
RBAC_FILTER = "envoy.filters.http.rbac"
IDENTITY_FILTER = "legation.identity_headers"
QUERY_TOKEN_FILTER = "legation.query_token_removal"
_HEADER_SUFFIX = "#header"
_TOKEN_CACHE = 100
"""Verified tokens kept per provider and Envoy worker (Envoy's default)."""
_METADATA = select(ident("metadata"), "filter_metadata")
_VERIFIED = index(_METADATA, JWT_FILTER)
"""CEL: jwt_authn's dynamic metadata, the verified payloads by provider key."""
_CONTROL = value_pb2.ValueMatcher(
    string_match=string_pb2.StringMatcher(
        safe_regex=regex_pb2.RegexMatcher(regex=r"(?s).*[\x{0}-\x{1f}\x{7f}-\x{9f}].*")
    )
)
"""A string claim holding a C0 or C1 control character or DEL, which the service will not forward."""


def provider_key(policy: str, provider: str) -> str:
    return f"{policy}/{provider}"


# --- filters ------------------------------------------------------------------------------------


def jwt_http_filters(natives: tuple[NativePolicy, ...]) -> list[hcm.HttpFilter]:
    """identity header removal, jwt_authn and RBAC, to run before ext_authz (none when no policy
    is native). Each is off by default: only the routes that configure it run it (filters.py)."""
    if not natives:
        return []
    config = jwt.JwtAuthentication()
    for native in natives:
        _providers(config, native)
    identity = header_mutation_pb2.HeaderMutation()
    filters = [
        (IDENTITY_FILTER, identity),
        (CHECKS_FILTER, rbac_pb2.RBAC()),
        (JWT_FILTER, config),
        (RBAC_FILTER, rbac_pb2.RBAC()),
        (QUERY_TOKEN_FILTER, header_mutation_pb2.HeaderMutation()),
    ]
    return [hcm.HttpFilter(name=n, typed_config=pack(c), disabled=True) for n, c in filters]


def _providers(config: jwt.JwtAuthentication, native: NativePolicy) -> None:
    spec = native.policy.spec
    for p in spec.providers:
        key = provider_key(native.key, p.name)
        out = config.providers[key]
        out.issuer = p.issuer
        out.audiences.extend(p.audiences)
        _keys(out, native.keys_of(p.name))
        out.forward = spec.forward_token
        out.clock_skew_seconds = int(p.clock_skew)
        out.require_expiration = p.require_expiry
        out.payload_in_metadata = key
        out.header_in_metadata = key + _HEADER_SUFFIX
        out.normalize_payload_in_metadata.space_delimited_claims.extend(_claim_names(spec))
        _token_source(out, p.token_sources[0])
        for claim, header in spec.claims_to_headers.items():
            out.claim_to_headers.add(header_name=header.lower(), claim_name=claim)
    for i, rule in enumerate(spec.rules):
        if rule.requires is not None:
            config.requirement_map[f"{native.key}#{i}"].CopyFrom(_requirement(native.key, rule))


def _keys(out: jwt.JwtProvider, keys: str | RemoteKeys) -> None:
    """Local keys (bound JWKS JSON: a rotation is a config push) or remote ones (translate/remote_jwks.py)."""
    if isinstance(keys, RemoteKeys):
        out.remote_jwks.CopyFrom(remote_jwks(keys))
    else:
        out.local_jwks.inline_string = keys
        # Verified tokens (up to 4 KiB) skip the signature check; issuer, time and audience are
        # checked on every hit. Local keys only: their rotation is a config push, which rebuilds
        # the filter and so empties the cache, whereas a key that a remote JWKS drops would leave
        # its tokens cached until they expire. (Profiled: RS256 verification was most of the
        # native route's cost, 105 → 58 µs of Envoy CPU per request; bench/README.md.)
        out.jwt_cache_config.jwt_cache_size = _TOKEN_CACHE


def _claim_names(spec: PolicySpec) -> list[str]:
    return sorted({c for rule in spec.rules for c in rule.claims if "." not in c})


def _token_source(out: jwt.JwtProvider, source: Any) -> None:
    if source.header:
        prefixes = dict.fromkeys([source.prefix, source.prefix.lower(), source.prefix.upper()])
        for prefix in prefixes:  # the scheme is case-insensitive (RFC 7235), as in the service
            out.from_headers.add(name=source.header, value_prefix=prefix)
    elif source.cookie:
        out.from_cookies.append(source.cookie)
    else:
        out.from_params.append(source.query)


def _requirement(policy: str, rule: Rule) -> jwt.JwtRequirement:
    assert rule.requires is not None
    names = [provider_key(policy, n) for n in rule.requires.providers]
    if len(names) == 1:
        return jwt.JwtRequirement(provider_name=names[0])
    parts = [jwt.JwtRequirement(provider_name=n) for n in names]
    if rule.requires.all_of is not None:
        return jwt.JwtRequirement(requires_all=jwt.JwtRequirementAndList(requirements=parts))
    return jwt.JwtRequirement(requires_any=jwt.JwtRequirementOrList(requirements=parts))


# --- per route ----------------------------------------------------------------------------------


def per_route(native: NativePolicy, rule_index: int) -> dict[str, Any]:
    """typed_per_filter_config entries of a route that rule `rule_index` of `native` governs."""
    spec = native.policy.spec
    rule = spec.rules[rule_index]
    remove = sorted({h.lower() for h in spec.claims_to_headers.values()})
    configs: dict[str, Any] = {}
    if rule.requires is None:  # jwt_authn, off by default, stays off
        if not spec.forward_token:  # the service removes the token on public rules too
            remove += [s.header.lower() for p in spec.providers for s in p.token_sources if s.header]
    else:
        configs[CHECKS_FILTER] = pack(token_checks(spec, rule))
        configs[JWT_FILTER] = pack(jwt.PerRouteConfig(requirement_name=f"{native.key}#{rule_index}"))
        configs[RBAC_FILTER] = pack(_rbac(native, rule, algorithms=_remote_algorithms(native)))
    if remove:
        mutation = header_mutation_pb2.HeaderMutationPerRoute()
        mutation.mutations.request_mutations.extend(
            mutation_rules_pb2.HeaderMutation(remove=h) for h in dict.fromkeys(remove)
        )
        configs[IDENTITY_FILTER] = pack(mutation)
    queries = sorted({s.query for p in spec.providers for s in p.token_sources if s.query})
    if queries and not spec.forward_token:  # after jwt_authn, which reads the token there
        removal = header_mutation_pb2.HeaderMutationPerRoute()
        removal.mutations.query_parameter_mutations.extend(
            base_pb2.KeyValueMutation(remove=q) for q in queries
        )
        configs[QUERY_TOKEN_FILTER] = pack(removal)
    return configs


def _rbac(
    native: NativePolicy, rule: Rule, *, algorithms: dict[str, tuple[str, ...]]
) -> rbac_pb2.RBACPerRoute:
    """The denials after jwt_authn, in the service's order of checks. Envoy's RBAC tries a DENY
    config's policies in the order of their names (a std::map) and reports the first that
    matches; the names sort in the service's order, so each policy holds only its own test.
    (Profiled with bench native: policies that excluded the ones before them, and a filter of
    their own for `iat`, cost ~15 µs a request; the differential test checks the reasons.)"""
    assert rule.requires is not None
    keys = [provider_key(native.key, n) for n in rule.requires.providers]
    principals = keys if rule.requires.any_of is not None else keys[:1]
    rules = rbac_config.RBAC(action=rbac_config.RBAC.DENY)
    rules.policies[CRIT_POLICY].CopyFrom(_policy(_crit(keys)))
    alg = _alg_refused([k for k in keys if k in algorithms], algorithms)
    if alg is not None:
        rules.policies[ALG_POLICY].CopyFrom(_policy(alg))
    rules.policies[IAT_POLICY].CopyFrom(condition_policy(_issued_later(native, rule)))
    for i, (claim, values) in enumerate(rule.claims.items()):
        lacking = [
            _whose(keys, principals, j, _not(_has(k, claim, values))) for j, k in enumerate(principals)
        ]
        rules.policies[claim_policy(i, claim)].CopyFrom(_policy(_or(lacking)))
    _forwarded_claims(rules, native.policy.spec, rule, keys=keys, principals=principals)
    return rbac_pb2.RBACPerRoute(rbac=rbac_pb2.RBAC(rules=rules))


def _forwarded_claims(
    rules: rbac_config.RBAC, spec: PolicySpec, rule: Rule, *, keys: list[str], principals: list[str]
) -> None:
    """Denials of a claim the service would forward (the claims forwarded as headers, then `sub`,
    `iss` and the metadata claims, in this order) holding a control character: metadata regex
    matchers (profiled: CEL cost ~10 µs a request per claim). `iss` needs no test when every
    principal's issuer is plain: jwt_authn has compared it with that issuer."""
    assert rule.requires is not None
    issuers = {p.name: p.issuer for p in spec.providers}
    plain_iss = not any(
        has_control_characters(issuers[n]) for n in rule.requires.providers[: len(principals)]
    )
    for i, claim in enumerate(forwarded_claims(spec)):
        if claim == "iss" and plain_iss:
            continue
        path = claim.split(".")
        held = [
            _whose(keys, principals, j, _metadata([k, *path], _CONTROL)) for j, k in enumerate(principals)
        ]
        rules.policies[unforwardable_policy(i, claim)].CopyFrom(_policy(_or(held)))


def claim_value(keys: list[str], claim: str, *, default: str) -> Expr:
    """CEL: the string at `claim` (dotted path) of the first verified payload among `keys`, or
    `default` (claim missing, or not a string)."""
    value: Expr = const(default)
    for key in reversed(keys):
        checks, node = [_in(key)], index(_VERIFIED, key)
        for part in claim.split("."):
            checks.append(call("@in", const(part), node))
            node = index(node, part)
        checks.append(call("_==_", call("type", node), ident("string")))
        value = call("_?_:_", all_of(*checks), node, value)
    return expression(value)


def _crit(keys: list[str]) -> rbac_config.Principal:
    return _or([_present([k + _HEADER_SUFFIX, "crit"]) for k in keys])


def _issued_later(native: NativePolicy, rule: Rule) -> Expr:
    """A token the service refuses for its `iat`: allOf verifies every provider's token, anyOf
    takes the first that verified (jwt_authn does not look at `iat`)."""
    assert rule.requires is not None
    by_name = {p.name: p for p in native.policy.spec.providers}
    payloads = [(by_name[n], provider_key(native.key, n)) for n in rule.requires.providers]
    now = call("int", select(ident("request"), "time"))

    def later(i: int) -> Expr:
        """`iat` later than now plus the skew. A missing `iat` (or payload) makes it an error,
        which RBAC takes as no match, as it does false: nothing to guard."""
        provider, key = payloads[i]
        limit = call("double", call("_+_", now, const(int(provider.clock_skew))))
        return call("_>_", call("double", index(index(_VERIFIED, key), "iat")), limit)

    if rule.requires.all_of is not None:
        return any_of(*(later(i) for i in range(len(payloads))))
    before = [[negate(_in(k)) for _, k in payloads[:i]] for i in range(len(payloads))]
    return any_of(*(all_of(*before[i], later(i)) for i in range(len(payloads))))


def _in(key: str) -> Expr:
    """jwt_authn verified the token of `key` (CEL's `in`; the metadata may be absent altogether)."""
    return all_of(call("@in", const(JWT_FILTER), _METADATA), call("@in", const(key), _VERIFIED))


def _remote_algorithms(native: NativePolicy) -> dict[str, tuple[str, ...]]:
    """Provider key → allowed algorithms, for remote providers: Envoy verifies with any algorithm
    a fetched key fits (local keys are bound to one each), so RBAC refuses the others."""
    return {provider_key(native.key, name): keys.algorithms for name, keys in native.remote}


def _alg_refused(keys: list[str], algorithms: dict[str, tuple[str, ...]]) -> rbac_config.Principal | None:
    """A verified token of one of `keys` whose header `alg` its provider does not allow."""
    if not keys:
        return None
    return _or(
        [
            _and(
                [
                    _present([k + _HEADER_SUFFIX]),
                    _not(_or([_metadata([k + _HEADER_SUFFIX, "alg"], _exact(a)) for a in algorithms[k]])),
                ]
            )
            for k in keys
        ]
    )


def _whose(
    keys: list[str], principals: list[str], j: int, test: rbac_config.Principal
) -> rbac_config.Principal:
    """`test`, of the principal's token when it is provider j's. With one candidate (one provider,
    or allOf, where the first is the principal) jwt_authn has verified it before RBAC runs."""
    return test if len(principals) == 1 else _and([_is_principal(keys, j), test])


def _is_principal(keys: list[str], i: int) -> rbac_config.Principal:
    """The token of provider i verified and no earlier provider's did (anyOf: the first wins)."""
    return _and([_present([keys[i]]), *(_not(_present([k])) for k in keys[:i])])


def _has(key: str, claim: str, values: list[str]) -> rbac_config.Principal:
    path = [key, *claim.split(".")]
    return _and([_or([_metadata(path, _in_list(v)), _metadata(path, _exact(v))]) for v in values])


def _in_list(value: str) -> value_pb2.ValueMatcher:
    return value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=_exact(value)))


def _exact(value: str) -> value_pb2.ValueMatcher:
    return value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=value))


def _present(path: list[str]) -> rbac_config.Principal:
    return _metadata(path, value_pb2.ValueMatcher(present_match=True))


def _metadata(path: list[str], value: value_pb2.ValueMatcher) -> rbac_config.Principal:
    matcher = metadata_pb2.MetadataMatcher(filter=JWT_FILTER, value=value)
    for part in path:
        matcher.path.add(key=part)
    # sourced_metadata: Principal.metadata is deprecated (Envoy warns at every config load).
    sourced = rbac_config.SourcedMetadata(metadata_matcher=matcher, metadata_source=rbac_config.DYNAMIC)
    return rbac_config.Principal(sourced_metadata=sourced)


def _and(ids: list[rbac_config.Principal]) -> rbac_config.Principal:
    if len(ids) == 1:
        return ids[0]
    return rbac_config.Principal(and_ids=rbac_config.Principal.Set(ids=ids))


def _or(ids: list[rbac_config.Principal]) -> rbac_config.Principal:
    if len(ids) == 1:
        return ids[0]
    return rbac_config.Principal(or_ids=rbac_config.Principal.Set(ids=ids))


def _not(principal: rbac_config.Principal) -> rbac_config.Principal:
    return rbac_config.Principal(not_id=principal)


def _policy(principal: rbac_config.Principal) -> rbac_config.Policy:
    policy = rbac_config.Policy(principals=[principal])
    policy.permissions.add(any=True)
    return policy
