"""IR routes → Envoy route configurations (RDS), for `legation.controller.translate.envoy.translate`.

One route configuration per listener. Virtual hosts are keyed by hostname: every hostname that a
route or a Host names gets one (unless nothing serves it), holding the routes of every hostname
that covers it, most specific hostname first (`api.example.com`, then `*.example.com`, then
`*`). Envoy sends a request to exactly one virtual host, so a route for `*` would otherwise
vanish for every host that has routes of its own; with the merge, a `*` route serves every host
unless a more specific route matches first.

On the plain-HTTP listener a Host's `insecure.action` (Redirect: 301 to https, Reject: 403, or
Route: served as on https) applies to the routes of the Host's namespace and of the namespaces it
delegates to, and to what no route matches; other namespaces' `*` routes serving the same
hostname keep their own handling.

Pure: messages from `xds-protos`, no I/O. Names: virtual hosts are named by their hostname,
routes by their IR id (`namespace/name` of the primary Mapping), generated routes by the Host
they belong to, so no name depends on a list position.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2

from legation.api.v1alpha1 import Cors
from legation.controller.compiler.ir import IR, DescriptorEntry, HostIR, RateLimitIR, Route, RouteMatch
from legation.controller.compiler.ratelimits import ABSENT
from legation.controller.translate.native_routes import split_route
from legation.controller.translate.options import (
    CORS_FILTER,
    EXT_AUTHZ_FILTER,
    EXT_AUTHZ_METADATA_NAMESPACE,
    METHOD_OVERRIDE_CONTEXT_KEY,
    METHOD_OVERRIDE_FILTER,
    POLICY_CONTEXT_KEY,
    duration,
    pack,
)

__all__ = [
    "CORS_FILTER",
    "EXT_AUTHZ_FILTER",
    "EXT_AUTHZ_METADATA_NAMESPACE",
    "POLICY_CONTEXT_KEY",
    "RouteOptions",
    "covers",
    "rate_limit_action",
    "route_configurations",
]

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


@dataclass(frozen=True)
class RouteOptions:
    """What route translation needs to know about the rest of the gateway."""

    authz: bool
    """Whether the listeners have the ext_authz filter (off by default: a route with a policy
    turns it on with the policy's name)."""
    redirect_port: int
    """The port of https:// URLs in insecure redirects (443 leaves the URL without a port)."""


# --- hostnames ---------------------------------------------------------------------------------


def covers(pattern: str, hostname: str) -> bool:
    """Whether requests for `hostname` (exact or `*.domain`) are also requests for `pattern`, as
    Envoy matches virtual host domains and SNI names (`*.example.com` covers any depth of
    subdomain, never `example.com` itself)."""
    return pattern in _candidates(hostname)


def _candidates(hostname: str) -> list[str]:
    """Every pattern that covers `hostname`, most specific first: itself, each `*.parent`
    (longest first), then `*`. Envoy prefers them in this order too."""
    wildcard = hostname.startswith("*.")
    labels = (hostname[2:] if wildcard else hostname).split(".")
    parents = (f"*.{'.'.join(labels[i:])}" for i in range(0 if wildcard else 1, len(labels)))
    return list(dict.fromkeys([hostname, *parents, "*"]))


def _specificity(pattern: str) -> tuple[int, int, str]:
    """Sort key, most specific first: exact names, longer wildcard suffixes, then `*`."""
    if pattern == "*":
        return (2, 0, pattern)
    if pattern.startswith("*."):
        return (1, -len(pattern), pattern)
    return (0, 0, pattern)


# --- route configurations ----------------------------------------------------------------------


def route_configurations(ir: IR, options: RouteOptions, names: Mapping[str, bool]) -> dict[str, Any]:
    """Route configurations by name; `names` maps each name to whether it serves the plain-HTTP
    listener (where Hosts' insecure actions apply) or the TLS one (the hostnames Hosts cover)."""
    # Each route built once (and split per policy rule when its policy is native), copied into every
    # virtual host it serves: (route, its message, the messages that serve it).
    by_hostname: dict[str, list[tuple[Route, rc.Route, list[rc.Route]]]] = {}
    natives = {n.key: n for n in ir.native_policies}
    for route in ir.routes:
        message = rc.Route()
        _route(message, route, options)
        native = natives.get(route.policy or "")
        split = None
        if native is not None and not route.allow_method_override and options.authz:
            # Overriding methods need every method checked: that stays with the service.
            split = split_route(message, route.match, native)
        by_hostname.setdefault(route.match.hostname, []).append((route, message, split or [message]))
    hosts = {h.hostname: h for h in ir.hosts}
    hostnames = sorted({*by_hostname, *hosts}, key=_specificity)
    insecure = _InsecureRoutes(options)
    configs = {}
    for name, plain_http in names.items():
        config = configs[name] = route_pb2.RouteConfiguration(name=name)
        for hostname in hostnames:
            candidates = _candidates(hostname)
            covering = [hosts[p] for p in candidates if p in hosts]  # most specific first
            if not plain_http and not covering:
                # A TLS connection only exists for a Host's SNI names, so a hostname no Host
                # covers is never legitimately asked for here: leaving it out refuses Host
                # headers that differ from SNI (domain fronting) and keeps the TLS route
                # configuration as small as the Hosts (profile: it duplicated every route, +30 MB
                # of the peak RSS at 10k Mappings).
                continue
            routes = [
                served
                for p in candidates
                for route, message, pieces in by_hostname.get(p, ())
                for served in _served(route, message, pieces, insecure if plain_http else None, covering)
            ]
            if plain_http and covering and covering[0].insecure != "Route":
                routes.append(insecure.catch_all(covering[0]))  # what no route matches
            if routes:  # a hostname nothing serves gets Envoy's 404 without a virtual host
                config.virtual_hosts.add(name=hostname, domains=[hostname]).routes.extend(routes)
    return configs


def _served(
    route: Route,
    message: rc.Route,
    pieces: list[rc.Route],
    insecure: _InsecureRoutes | None,
    covering: list[HostIR],
) -> list[rc.Route]:
    """What serves `route` here: its plain-HTTP variant (a redirect or refusal of the whole match)
    if a Host's `insecure` action applies, else its messages (several when split per policy rule)."""
    variant = insecure.variant(route, message, covering) if insecure is not None else message
    return pieces if variant is message else [variant]


class _InsecureRoutes:
    """Plain-HTTP versions of routes: a Host's `insecure` action applies to the routes of its own
    namespace and of the namespaces it delegates to, never to another team's `*` routes that
    also serve its hostname (a team's Host must not turn other teams' plain HTTP into 403s)."""

    def __init__(self, options: RouteOptions) -> None:
        self.options = options
        self._built: dict[tuple[str, str], rc.Route] = {}

    def variant(self, route: Route, message: rc.Route, covering: list[HostIR]) -> rc.Route:
        host = next((h for h in covering if route.namespace in h.namespaces), None)
        if host is None or host.insecure == "Route":
            return message
        key = (route.id, host.id)
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = rc.Route()
            built.match.CopyFrom(message.match)
            _insecure_route(built, host, self.options, name=f"{route.id}:{host.insecure.lower()}")
        return built

    def catch_all(self, host: HostIR) -> rc.Route:
        key = ("", host.id)
        built = self._built.get(key)
        if built is None:
            built = self._built[key] = rc.Route()
            built.match.prefix = "/"
            _insecure_route(built, host, self.options, name=f"host:{host.id}:{host.insecure.lower()}")
        return built


def _insecure_route(out: rc.Route, host: HostIR, options: RouteOptions, *, name: str) -> None:
    out.name = name
    if host.insecure == "Redirect":
        out.redirect.https_redirect = True
        out.redirect.response_code = rc.RedirectAction.MOVED_PERMANENTLY
        if options.redirect_port != 443:
            out.redirect.port_redirect = options.redirect_port
    else:
        out.direct_response.status = 403
        out.direct_response.body.inline_string = f"{host.hostname} is served over https only\n"


def _route(out: rc.Route, route: Route, options: RouteOptions) -> None:
    out.name = route.id
    _match(out.match, route.match)
    if route.policy is not None and not options.authz:
        # Fail closed: a route that needs authorization is never served without it.
        _unavailable(out, "no authorization service is configured for this route\n")
    elif route.total_weight == 0:
        _unavailable(out, "no upstream: every destination of this route has weight 0\n")
    else:
        _action(out.route, route)
    for key, value in route.add_request_headers:
        out.request_headers_to_add.add(
            header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
        )
    out.request_headers_to_remove.extend(route.remove_request_headers)
    for key, value in route.add_response_headers:
        out.response_headers_to_add.add(
            header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
        )
    out.response_headers_to_remove.extend(route.remove_response_headers)
    if options.authz and route.policy is not None:  # ext_authz is off on every other route
        per_route = ext_authz_pb2.ExtAuthzPerRoute()
        per_route.check_settings.context_extensions[POLICY_CONTEXT_KEY] = route.policy
        if route.allow_method_override:
            per_route.check_settings.context_extensions[METHOD_OVERRIDE_CONTEXT_KEY] = "allow"
        out.typed_per_filter_config[EXT_AUTHZ_FILTER].CopyFrom(pack(per_route))
    if route.allow_method_override:
        out.typed_per_filter_config[METHOD_OVERRIDE_FILTER].CopyFrom(pack(rc.FilterConfig(disabled=True)))
    if route.cors is not None:
        out.typed_per_filter_config[CORS_FILTER].CopyFrom(pack(_cors(route.cors)))


def _unavailable(out: rc.Route, body: str) -> None:
    out.direct_response.status = 503
    out.direct_response.body.inline_string = body


def _match(out: rc.RouteMatch, match: RouteMatch) -> None:
    if match.kind == "prefix" and match.value == "/":
        out.prefix = "/"
    elif match.kind == "prefix":
        # Whole segments: `/orders` matches `/orders` and `/orders/…`, never `/ordersX`.
        out.path_separated_prefix = match.value
    elif match.kind == "path":
        out.path = match.value
    else:
        out.safe_regex.regex = match.value  # RE2, checked by the resource validator
    if match.methods:
        method = out.headers.add(name=":method")
        if len(match.methods) == 1:
            method.string_match.exact = match.methods[0]
        else:  # methods are validated tokens from a fixed list: no escaping needed
            method.string_match.safe_regex.regex = "|".join(match.methods)
    for name, value in match.headers:
        _present_or_exact(out.headers.add(name=name), value)
    for name, value in match.query_parameters:
        _present_or_exact(out.query_parameters.add(name=name), value)


def _present_or_exact(matcher: Any, value: str) -> None:
    """A header or query parameter matcher: `*` = present, anything else exactly that value."""
    if value == "*":
        matcher.present_match = True
    else:
        matcher.string_match.exact = value


def _action(out: rc.RouteAction, route: Route) -> None:
    weights: dict[str, int] = {}
    for destination in route.destinations:
        if destination.weight > 0:  # two canaries may share a cluster: one entry, summed
            weights[destination.cluster] = weights.get(destination.cluster, 0) + destination.weight
    if len(weights) == 1:
        out.cluster = next(iter(weights))
    else:
        for cluster, weight in weights.items():
            out.weighted_clusters.clusters.add(name=cluster).weight.value = weight
    _rewrite(out, route)
    out.timeout.CopyFrom(duration(route.timeout))  # 0s: Envoy's "no timeout"
    if route.retries is not None:
        policy = out.retry_policy
        policy.retry_on = route.retries.on
        policy.num_retries.value = route.retries.attempts
        if route.retries.per_try_timeout is not None:
            policy.per_try_timeout.CopyFrom(duration(route.retries.per_try_timeout))
    for upgrade in route.allow_upgrade:
        out.upgrade_configs.add(upgrade_type=upgrade)
    for limit in route.rate_limits:
        _rate_limit(out, limit)


def _rewrite(out: rc.RouteAction, route: Route) -> None:
    """The matched prefix (or the whole path) replaced by `rewrite`, as Gateway API's
    ReplacePrefixMatch: the prefix `/orders` rewritten to `/v1` sends `/orders/42` to `/v1/42`,
    and rewritten to `/` (or `/v1/`) sends it to `/42` (`/v1/42`), not `//42`."""
    rewrite, match = route.rewrite, route.match
    if rewrite is None:
        return
    if match.kind == "prefix" and match.value != "/" and rewrite.endswith("/"):
        out.regex_rewrite.pattern.regex = f"^{re.escape(match.value)}/*"
        out.regex_rewrite.substitution = rewrite
    else:
        out.prefix_rewrite = rewrite


def _rate_limit(out: rc.RouteAction, limit: RateLimitIR) -> None:
    """The route's `rate_limits` entries for one descriptor. A request without a header the rule
    keys on is counted too, in one bucket shared by all such requests (value ABSENT): Envoy's
    `request_headers` action cannot supply a default, so each header entry gets a second variant
    that fires only when the header is absent (`header_value_match`, expect_match false). Envoy
    drops a `rate_limits` entry when any of its actions yields nothing, so exactly one variant
    applies to each request; n header keys in one rule make 2^n entries (rules have few keys)."""
    variants: list[list[rc.RateLimit.Action]] = [[]]
    for entry in limit.entries:
        present = rate_limit_action(entry)
        if entry.source == "request_header" and not (entry.value or "").startswith(":"):
            absent = _absent_header_action(entry)
            variants = [[*v, a] for v in variants for a in (present, absent)]
        else:
            variants = [[*v, present] for v in variants]
    for actions in variants:
        out.rate_limits.add().actions.extend(actions)


def _absent_header_action(entry: DescriptorEntry) -> rc.RateLimit.Action:
    action = rc.RateLimit.Action()
    match = action.header_value_match
    match.descriptor_key = entry.key
    match.descriptor_value = ABSENT
    match.expect_match.value = False
    match.headers.add(name=entry.value or "", present_match=True)
    return action


def rate_limit_action(entry: DescriptorEntry) -> rc.RateLimit.Action:
    """The route `rate_limits` action that makes Envoy send `entry` (see ir.DescriptorEntry).

    A claim missing from the dynamic metadata (no token on a public rule, or a token without
    it) is sent as ABSENT, so that omitting the claim never escapes the limit; for a missing
    header, see `_rate_limit`."""
    action = rc.RateLimit.Action()
    if entry.source == "generic_key":
        action.generic_key.descriptor_key = entry.key
        action.generic_key.descriptor_value = entry.value or ""
    elif entry.source == "remote_address":
        if entry.key != "remote_address":  # Envoy's fixed key for this action
            raise ValueError(f"a remote_address entry must have the key remote_address, not {entry.key!r}")
        action.remote_address.SetInParent()
    elif entry.source == "request_header":
        action.request_headers.header_name = entry.value or ""
        action.request_headers.descriptor_key = entry.key
    else:
        # The authz service emits each claim as a top-level key of its dynamic metadata, named
        # exactly as in metadataClaims: `org.team` is one key holding a dot, not a nested path.
        metadata = action.metadata
        metadata.descriptor_key = entry.key
        metadata.source = rc.RateLimit.Action.MetaData.DYNAMIC
        metadata.metadata_key.key = EXT_AUTHZ_METADATA_NAMESPACE
        metadata.metadata_key.path.add().key = entry.value or ""
        metadata.default_value = ABSENT
    return action


def _cors(cors: Cors) -> cors_pb2.CorsPolicy:
    policy = cors_pb2.CorsPolicy()
    for origin in cors.origins:
        matcher = policy.allow_origin_string_match.add()
        if origin == "*":
            matcher.safe_regex.regex = ".*"
        elif "://*." in origin:
            scheme, rest = origin.split("://*.", 1)
            domain, _, port = rest.partition(":")
            suffix = re.escape(f".{domain}" + (f":{port}" if port else ""))
            matcher.safe_regex.regex = f"{re.escape(scheme)}://[-a-z0-9.]+{suffix}"
        else:
            matcher.exact = origin
    if cors.methods:
        policy.allow_methods = ",".join(cors.methods)
    if cors.headers:
        policy.allow_headers = ",".join(cors.headers)
    if cors.expose_headers:
        policy.expose_headers = ",".join(cors.expose_headers)
    if cors.max_age is not None:
        policy.max_age = str(int(cors.max_age))
    if cors.credentials:
        policy.allow_credentials.value = True
    return policy
