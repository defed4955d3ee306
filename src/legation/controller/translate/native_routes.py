"""A route whose policy is native, split into one Envoy route per policy rule it can reach.

A JWTPolicy's rules are first-match on path, method and host, while jwt_authn's requirement is
chosen per route: so the Mapping's route becomes, in rule order, one route per rule whose match
intersects the Mapping's (the intersection: the narrower path, the common methods, the rule's
hosts as an `:authority` matcher), each with that rule's requirement and RBAC, then a final route
with the Mapping's own match that answers what the service answers when no rule matches (403).
Envoy tries routes in order, so a request takes the first rule that matches it, as in the service.

Paths: the route keeps one path specifier; a second condition becomes a matcher on `:path`
(literal prefixes and exact paths are exact there, the query string aside). Two regexes (a regex
Mapping and a regex rule) cannot be intersected: that route stays on ext_authz.

`service_reason` says why a route of a native policy stays on ext_authz (for status, the page and
`legation validate --explain`), from the same decisions as the translation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.rate_limit_descriptors.expr.v3 import expr_pb2
from google.protobuf import struct_pb2

from legation.api.v1alpha1.jwtpolicy import Match
from legation.controller.compiler.ir import Route, RouteMatch
from legation.controller.compiler.native import NativePolicy
from legation.controller.compiler.ownership import normalize_prefix, prefix_covers
from legation.controller.translate.jwt import METADATA_NAMESPACE, claim_value, per_route, provider_key
from legation.controller.translate.options import EXT_AUTHZ_FILTER, EXT_AUTHZ_METADATA_NAMESPACE, pack

__all__ = ["METHOD_OVERRIDE_REASON", "service_reason", "split_route"]

_NO_RULE_BODY = '{"error": "forbidden", "reason": "no rule matches"}'


METHOD_OVERRIDE_REASON = (
    "allowMethodOverride: the rules must allow every overriding method, which Envoy cannot check; "
    "without it the route is native"
)


class _Inexpressible(Exception):
    """A rule whose match cannot be intersected with the route's (`rule`: its index, once known)."""

    def __init__(self, rule: int = -1) -> None:
        super().__init__(rule)
        self.rule = rule


@dataclass(frozen=True)
class _Path:
    kind: str  # prefix | path | regex
    value: str


def split_route(base: rc.Route, match: RouteMatch, native: NativePolicy) -> list[rc.Route] | None:
    """The routes replacing `base` (built for `match`), or None when they cannot be exact."""
    try:
        out = _split(base, match, native)
    except _Inexpressible:
        return None
    for route in out:
        _mark(route, native.key)
    return out


def service_reason(route: Route, native: NativePolicy) -> str | None:
    """Why `route`, whose policy is `native`, stays on the authz service; None when Envoy
    enforces it (as `translate.routes` decides: method overrides, then `split_route`)."""
    if route.allow_method_override:
        return METHOD_OVERRIDE_REASON
    if route.match.kind != "regex":
        return None  # only two regexes cannot be intersected: no routes to build for nothing
    try:
        _split(rc.Route(), route.match, native)
    except _Inexpressible as exc:
        return (
            f"the JWTPolicy's spec.rules[{exc.rule}] and the Mapping are both regexes, which Envoy "
            "cannot intersect; a prefix or exact path on either side makes it native"
        )
    return None


def _split(base: rc.Route, match: RouteMatch, native: NativePolicy) -> list[rc.Route]:
    out: list[rc.Route] = []
    for i, rule in enumerate(native.policy.spec.rules):
        try:
            route = _rule_route(base, match, rule.match)
        except _Inexpressible:
            raise _Inexpressible(i) from None
        if route is None:
            continue
        route.name = f"{base.name}#rule{i}"
        for name, config in per_route(native, i).items():
            route.typed_per_filter_config[name].CopyFrom(config)
        if rule.requires is not None:
            principals = rule.requires.any_of or rule.requires.providers[:1]
            _claims_from_jwt(route, [provider_key(native.key, p) for p in principals])
        out.append(route)
        if not (rule.match.methods or rule.match.hosts) and route.match == base.match:
            break  # the rule takes every request of the route: no later rule can match
    else:
        out.append(_no_rule(base))
    return out


def _claims_from_jwt(route: rc.Route, providers: list[str]) -> None:
    """`per claim:` limits read the claim from jwt_authn's payload metadata, not ext_authz's.

    Each provider's payload has its own key, so the descriptor's value is a CEL expression that
    takes the claim from the first provider whose token verified (anyOf: a token of the second
    provider must count as well), a string as it is, and anything else as ABSENT, as Envoy's
    metadata action does (a missing claim never escapes the limit)."""
    for limit in route.route.rate_limits:
        for action in limit.actions:
            key = action.metadata.metadata_key
            if action.HasField("metadata") and key.key == EXT_AUTHZ_METADATA_NAMESPACE:
                descriptor = expr_pb2.Descriptor(
                    descriptor_key=action.metadata.descriptor_key,
                    parsed=claim_value(providers, key.path[0].key, default=action.metadata.default_value),
                )
                action.ClearField("metadata")
                action.extension.name = "envoy.rate_limit_descriptors.expr"
                action.extension.typed_config.CopyFrom(pack(descriptor))


def _mark(route: rc.Route, policy: str) -> None:
    route.metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(
        struct_pb2.Struct(fields={"policy": struct_pb2.Value(string_value=policy)})
    )
    # ext_authz, off by default, stays off: the base route turned it on for the policy.
    route.typed_per_filter_config.pop(EXT_AUTHZ_FILTER, None)


def _no_rule(base: rc.Route) -> rc.Route:
    route = rc.Route()
    route.CopyFrom(base)
    route.name = f"{base.name}#norule"
    route.ClearField("route")
    route.ClearField("request_headers_to_add")
    route.direct_response.status = 403
    route.direct_response.body.inline_string = _NO_RULE_BODY
    route.response_headers_to_add.add(
        header=base_pb2.HeaderValue(key="content-type", value="application/json"),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    return route


def _rule_route(base: rc.Route, match: RouteMatch, rule: Match) -> rc.Route | None:
    """`base` narrowed to the requests `rule` also matches; None if none."""
    methods = _methods(match.methods, rule.methods)
    if methods is None:
        return None
    paths = _paths(_Path(match.kind, match.value), rule)
    if paths is None:
        return None
    route = rc.Route()
    route.CopyFrom(base)
    primary, extra = paths
    _set_path(route.match, primary)
    if extra is not None:
        _path_header(route.match.headers.add(name=":path"), extra)
    if methods and tuple(methods) != match.methods:
        _set_methods(route.match, methods)
    if rule.hosts:
        route.match.headers.add(name=":authority").string_match.safe_regex.regex = _hosts_regex(rule.hosts)
    return route


def _methods(route: tuple[str, ...], rule: list[str]) -> list[str] | None:
    """The methods both allow ([] = any), or None when they share none."""
    if not rule:
        return list(route)
    if not route:
        return sorted(rule)
    common = sorted(set(route) & set(rule))
    return common or None


def _paths(route: _Path, rule: Match) -> tuple[_Path, _Path | None] | None:
    """(route path specifier, an extra :path condition) for both; None if they share no path."""
    if rule.path_prefix is not None:
        other = _Path("prefix", normalize_prefix(rule.path_prefix))
    elif rule.path is not None:
        other = _Path("path", rule.path)
    elif rule.regex is not None:
        other = _Path("regex", rule.regex)
    else:
        return route, None
    if route.kind == "regex" and other.kind == "regex":
        raise _Inexpressible
    if route.kind == "regex":
        return route, other
    if other.kind == "regex":
        return other, route
    return _literal(route, other)


def _literal(a: _Path, b: _Path) -> tuple[_Path, None] | None:
    """The intersection of two (whole-segment) prefixes or exact paths, itself one."""
    if a.kind == "path" and b.kind == "path":
        return (a, None) if a.value == b.value else None
    if a.kind == "path" or b.kind == "path":
        exact, prefix = (a, b) if a.kind == "path" else (b, a)
        return (exact, None) if prefix_covers(prefix.value, exact.value) else None
    if prefix_covers(b.value, a.value):
        return a, None
    if prefix_covers(a.value, b.value):
        return b, None
    return None


def _set_path(out: rc.RouteMatch, path: _Path) -> None:
    out.ClearField("path_specifier")
    if path.kind == "prefix" and path.value == "/":
        out.prefix = "/"
    elif path.kind == "prefix":  # whole segments, as the Mapping's own route and the service
        out.path_separated_prefix = path.value
    elif path.kind == "path":
        out.path = path.value
    else:
        out.safe_regex.regex = path.value


def _path_header(out: rc.HeaderMatcher, path: _Path) -> None:
    if path.kind == "prefix":  # whole segments; `:path` carries the query string too
        tail = r"(?:[/?].*)?" if path.value != "/" else r".*"
        out.string_match.safe_regex.regex = re.escape(path.value.rstrip("/")) + tail
    elif path.kind == "path":
        out.string_match.safe_regex.regex = re.escape(path.value) + r"(?:\?.*)?"
    else:  # pragma: no cover - two regexes are refused above
        raise _Inexpressible


def _set_methods(out: rc.RouteMatch, methods: list[str]) -> None:
    kept = [h for h in out.headers if h.name != ":method"]
    del out.headers[:]
    out.headers.extend(kept)
    method = out.headers.add(name=":method")
    if len(methods) == 1:
        method.string_match.exact = methods[0]
    else:
        method.string_match.safe_regex.regex = "|".join(methods)


def _hosts_regex(hosts: list[str]) -> str:
    """Hosts as the service matches them: exact names, or `*.suffix` for any longer name."""
    parts = [r"[^/]+" + re.escape(h[1:]) if h.startswith("*.") else re.escape(h.lower()) for h in hosts]
    return "(?i)(?:" + "|".join(parts) + ")"
