"""The checks of the authz service that jwt_authn does not make, as RBAC conditions in CEL.

The service refuses, before it looks for a key, a token longer than the provider's
`maxTokenBytes` and a token in five parts (a JWE); jwt_authn has neither check. A second RBAC
filter, before jwt_authn, holds them (`token:too-large`, `token:jwe`), so that a 9 KiB token is
refused unread and described as the service describes it. An empty cookie or query token is no
token to the service (401 without an error code) and a malformed one to jwt_authn: `token:empty`;
a cookie or parameter sent twice with different values is a 400 (`token:twice`), as in the service.

(The checks after jwt_authn, such as a token issued in the future, are policies of the RBAC
filter after it: jwt.py.)

The token is found as the service finds it (tokens.py): after the header's prefix, compared
without case, trimmed; the first `name=` cookie, spaces removed; the first `name=` query
parameter, undecoded (a JWT has nothing to decode).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from envoy.config.rbac.v3 import rbac_pb2 as rbac_config
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from legation.api.v1alpha1.jwtpolicy import PolicySpec, Provider, Rule, TokenSource
from legation.controller.translate.cel import (
    Expr,
    all_of,
    any_of,
    call,
    const,
    expression,
    ident,
    index,
    member,
    negate,
    select,
)

__all__ = [
    "CHECKS_FILTER",
    "EMPTY",
    "JWE",
    "TOO_LARGE",
    "TWICE",
    "condition_policy",
    "token_checks",
]

CHECKS_FILTER = "legation.token_checks"
TOO_LARGE = "token:too-large"
EMPTY = "token:empty"
TWICE = "token:twice"
JWE = "token:jwe"
_FIVE_PARTS = r"^[^.]*\.[^.]*\.[^.]*\.[^.]*\.[^.]*$"
_HEADERS = select(ident("request"), "headers")
_Test = Callable[[Provider, TokenSource], Expr]


def token_checks(spec: PolicySpec, rule: Rule) -> rbac_pb2.RBACPerRoute:
    """The pre-jwt_authn RBAC of a route that `rule` (which requires a token) governs."""
    assert rule.requires is not None
    by_name = {p.name: p for p in spec.providers}
    providers = [by_name[n] for n in rule.requires.providers]
    every = rule.requires.all_of is not None
    sources = list({s.model_dump_json(): s for s in (p.token_sources[0] for p in providers)}.values())
    repeatable = [s for s in sources if not s.header]
    checks = {
        TOO_LARGE: _refused(providers, every=every, test=_too_large),
        JWE: _refused(providers, every=every, test=_jwe),
    }
    if repeatable:
        twice = any_of(*(_twice(s) for s in repeatable))
        checks = {name: all_of(negate(twice), check) for name, check in checks.items()}
        checks[EMPTY] = all_of(negate(twice), _only_empty(sources))
        checks[TWICE] = twice
    rules = rbac_config.RBAC(action=rbac_config.RBAC.DENY)
    for name, check in checks.items():
        rules.policies[name].CopyFrom(condition_policy(check))
    if not repeatable:  # CEL runs only for a header shaped like a JWE (profiled: ~6 µs a request)
        rules.policies[JWE].principals[0].CopyFrom(_five_part_headers(sources))
    return rbac_pb2.RBACPerRoute(rbac=rbac_pb2.RBAC(rules=rules))


def _five_part_headers(sources: list[TokenSource]) -> rbac_config.Principal:
    """A header of one of `sources` holds its prefix and a five-part token: a cheap necessary
    condition of the JWE policy (RBAC evaluates principals before the CEL condition)."""
    ids = []
    for source in sources:
        assert source.header is not None
        prefix = f"(?i:{re.escape(source.prefix)})" if source.prefix else ""
        regex = regex_pb2.RegexMatcher(regex=rf"{prefix}\s*[^.]*\.[^.]*\.[^.]*\.[^.]*\.[^.]*\s*")
        matcher = route_components_pb2.HeaderMatcher(
            name=source.header.lower(), string_match=string_pb2.StringMatcher(safe_regex=regex)
        )
        ids.append(rbac_config.Principal(header=matcher))
    return ids[0] if len(ids) == 1 else rbac_config.Principal(or_ids=rbac_config.Principal.Set(ids=ids))


def condition_policy(condition: Expr) -> rbac_config.Policy:
    policy = rbac_config.Policy(condition=expression(condition))
    policy.permissions.add(any=True)
    policy.principals.add(any=True)
    policy.cel_config.enable_string_functions = True
    policy.cel_config.enable_string_concat = True
    return policy


def _refused(providers: list[Provider], *, every: bool, test: _Test) -> Expr:
    """The service's verdict over the rule's providers: allOf stops at the first provider without
    a token, or whose token fails; anyOf fails only when every provider that has a token fails.
    Providers that read the same source with the same limit decide alike, so they count once."""
    unique = list({(p.token_sources[0].model_dump_json(), p.max_token_bytes): p for p in providers}.values())
    sources = [(p, p.token_sources[0]) for p in unique]
    if len(sources) == 1:
        return test(*sources[0])
    if every:
        return any_of(
            *(all_of(*(_present(s) for _, s in sources[:i]), test(p, s)) for i, (p, s) in enumerate(sources))
        )
    failing = any_of(*(test(p, s) for p, s in sources))
    return all_of(failing, *(any_of(negate(_present(s)), test(p, s)) for p, s in sources))


def _twice(source: TokenSource) -> Expr:
    """The cookie or parameter comes again with another value (the service answers 400: which
    token is meant?). The first against the second and third, which is what a client sends."""
    parts = _split_after(source)
    separator = ";" if source.cookie else "&"

    def value(i: int) -> Expr:
        return index(member(index(parts, const(i)), "split", const(separator)), const(0))

    second = all_of(call("_>_", call("size", parts), const(2)), call("_!=_", value(1), value(2)))
    third = all_of(call("_>_", call("size", parts), const(3)), call("_!=_", value(1), value(3)))
    return all_of(_found(source), any_of(second, third))


def _only_empty(sources: list[TokenSource]) -> Expr:
    """No source holds a token, and a cookie or parameter holds an empty one: jwt_authn would read
    `session=` as a malformed token, the service as no token at all."""
    found = [s for s in sources if not s.header]
    empty = [all_of(_found(s), call("_==_", call("size", _token(s)), const(0))) for s in found]
    return all_of(*(negate(_present(s)) for s in sources), any_of(*empty))


def _too_large(provider: Provider, source: TokenSource) -> Expr:
    longer = call("_>_", call("size", _token(source)), const(provider.max_token_bytes))
    if source.header:  # first what is cheap and false for almost every request: the header's size
        name = source.header.lower()
        limit = const(provider.max_token_bytes + len(source.prefix))
        bound = all_of(
            call("@in", const(name), _HEADERS), call("_>_", call("size", index(_HEADERS, name)), limit)
        )
        return all_of(bound, _present(source), longer)
    return all_of(_present(source), longer)


def _jwe(provider: Provider, source: TokenSource) -> Expr:
    """Five parts, within the size limit (the service measures first)."""
    token = _token(source)
    within = call("_<=_", call("size", token), const(provider.max_token_bytes))
    return all_of(_present(source), within, member(token, "matches", const(_FIVE_PARTS)))


def _present(source: TokenSource) -> Expr:
    """The source holds a non-empty token (CEL evaluates `&&` left to right, short-circuiting
    on false, so the lookups after a presence check are safe)."""
    if source.header:
        name = source.header.lower()
        checks = [call("@in", const(name), _HEADERS)]
        if source.prefix:
            lowered = member(index(_HEADERS, name), "lowerAscii")
            checks.append(member(lowered, "startsWith", const(source.prefix.lower())))
        return all_of(*checks, call("_>_", call("size", _token(source)), const(0)))
    return all_of(_found(source), call("_>_", call("size", _token(source)), const(0)))


def _found(source: TokenSource) -> Expr:
    """The cookie or query parameter of a (cookie or query) source is there, maybe empty."""
    found = call("_>_", call("size", _split_after(source)), const(1))
    return all_of(call("@in", const("cookie"), _HEADERS), found) if source.cookie else found


def _token(source: TokenSource) -> Expr:
    if source.header:
        value = index(_HEADERS, source.header.lower())
        if source.prefix:
            value = member(value, "substring", const(len(source.prefix)))
        return member(value, "trim")
    separator = ";" if source.cookie else "&"
    return index(member(index(_split_after(source), const(1)), "split", const(separator)), const(0))


def _split_after(source: TokenSource) -> Expr:
    """The cookie header (spaces removed) or the query string, split at `;name=` / `&name=`:
    a second part exists when the token's cookie or parameter does, and starts with its value."""
    if source.cookie:
        cookies = member(index(_HEADERS, "cookie"), "replace", const(" "), const(""))
        text = call("_+_", const(";"), cookies)
        return member(text, "split", const(f";{source.cookie}="))
    assert source.query is not None
    text = call("_+_", const("&"), select(ident("request"), "query"))
    return member(text, "split", const(f"&{source.query}="))
