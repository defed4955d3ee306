"""Property: for random Mappings spread over namespaces, no request is routed to a namespace other
than the owner of the URL space it falls in.

The Mappings go through the compiler and the Envoy translator; requests are routed through the
translated plain-HTTP route configuration by a model of Envoy's selection (virtual host by
domain: exact, then the longest `*.suffix`, then `*`; then the first route whose match holds, with
the semantics of prefix, path_separated_prefix, path, safe_regex, header, query and method
matchers). Requests are drawn from the generated paths (each prefix itself, below it, beside it;
each exact path; a string each regex matches), on hostnames the Mappings name and others, with and
without the conditions.

Owner of a request: the namespaces of the *accepted* Mappings whose hostname and path (ignoring
conditions) cover it. The invariant: there is at most one, and Envoy routes the request to it
or to nobody. Then, on Kubernetes (trusted, distinct creation times), the oldest Mapping always
stands: conflicts only ever cost the newer party.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legation.api.v1alpha1 import Mapping
from legation.controller.compiler.compile import Tenancy, compile_resources
from legation.controller.compiler.ir import CompileResult, Origin
from legation.controller.compiler.ownership import covers, normalize_prefix, prefix_covers
from legation.controller.translate.envoy import HTTP_ROUTES, EnvoyOptions, translate
from legation.controller.xds.snapshot import ROUTE

NAMESPACES = ("team-a", "team-b", "team-c")
HOSTNAMES = ("*", "*", "*", "api.example", "*.example", "x.api.example")
SEGMENTS = ("o", "o4", "p")


@dataclass(frozen=True)
class Spec:
    namespace: str
    hostname: str
    kind: str
    value: str
    sample: str
    """A path the match serves."""
    condition: str


def _path(segments: list[str]) -> str:
    return "/" + "/".join(segments)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    path = _path(draw(st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=3)))
    kind = draw(st.sampled_from(["prefix", "prefix", "path", "regex"]))
    if kind == "prefix":
        value = path + draw(st.sampled_from(["", "/"])) if path != "/" else "/"
        sample = path
    elif kind == "path":
        value = sample = path
    else:
        base = path.rstrip("/")
        template, sample = draw(
            st.sampled_from(
                [(f"{base}/.*", f"{base}/z"), (f"{base}[0-9]+", f"{base}7"), (f"{base}/o4?", f"{base}/o")]
            )
        )
        value = template
    return Spec(
        namespace=draw(st.sampled_from(NAMESPACES)),
        hostname=draw(st.sampled_from(HOSTNAMES)),
        kind=kind,
        value=value,
        sample=sample,
        condition=draw(st.sampled_from(["", "", "header", "query", "method"])),
    )


def to_mapping(spec: Spec, index: int, stamp: int | None) -> Mapping:
    data: dict[str, Any] = {
        "hostname": spec.hostname,
        spec.kind: spec.value,
        "service": f"m{index}.{spec.namespace}:80",
        "auth": {"disabled": True},
    }
    if spec.condition == "header":
        data["headers"] = {"authorization": "*"}
    elif spec.condition == "query":
        data["queryParameters"] = {"q": "1"}
    elif spec.condition == "method":
        data["methods"] = ["POST"]
    metadata: dict[str, Any] = {"name": f"m{index}", "namespace": spec.namespace}
    if stamp is not None:
        metadata["creationTimestamp"] = f"2024-01-01T00:{stamp // 60:02d}:{stamp % 60:02d}Z"
    return Mapping.model_validate(
        {"apiVersion": "legation.dev/v1alpha1", "kind": "Mapping", "metadata": metadata, "spec": data}
    )


# --- a model of Envoy's route selection --------------------------------------------------------


@dataclass(frozen=True)
class Request:
    host: str
    path: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    query: str = ""


def select_virtual_host(config: Any, host: str) -> Any:
    exact = [v for v in config.virtual_hosts if host in v.domains]
    if exact:
        return exact[0]
    suffixes = [
        (len(d), v)
        for v in config.virtual_hosts
        for d in v.domains
        if d.startswith("*.") and host.endswith(d[1:])
    ]
    if suffixes:
        return max(suffixes, key=lambda s: s[0])[1]
    return next((v for v in config.virtual_hosts if "*" in v.domains), None)


def route_matches(match: Any, request: Request) -> bool:
    which = match.WhichOneof("path_specifier")
    path = request.path
    if which == "prefix" and not path.startswith(match.prefix):
        return False
    if which == "path" and path != match.path:
        return False
    if which == "path_separated_prefix":
        p = match.path_separated_prefix
        if not (path == p or path.startswith(p + "/")):
            return False
    if which == "safe_regex" and re2.fullmatch(match.safe_regex.regex, path) is None:
        return False
    headers = dict(request.headers) | {":method": request.method}
    for h in match.headers:
        value = headers.get(h.name)
        if value is None:
            return False
        if h.HasField("string_match"):
            sm = h.string_match
            if sm.HasField("safe_regex") and re2.fullmatch(sm.safe_regex.regex, value) is None:
                return False
            if not sm.HasField("safe_regex") and value != sm.exact:
                return False
    query = dict(parse_qsl(request.query))
    for q in match.query_parameters:
        if q.name not in query or (q.HasField("string_match") and query[q.name] != q.string_match.exact):
            return False
    return True


def route_of(config: Any, request: Request) -> str | None:
    vhost = select_virtual_host(config, request.host)
    if vhost is None:
        return None
    for route in vhost.routes:
        if route_matches(route.match, request):
            return str(route.name)
    return None


# --- the property ------------------------------------------------------------------------------


def requests_for(spec_list: list[Spec]) -> list[Request]:
    paths = {"/", "/x"}
    for s in spec_list:
        base = s.sample
        paths |= {base, base.rstrip("/") + "/deeper", base.rstrip("/") + "x", base + "/"}
    hosts = ["api.example", "x.api.example", "other.example", "127.0.0.1"]
    variants = [
        {},
        {"method": "POST"},
        {"headers": (("authorization", "Bearer t"),)},
        {"query": "q=1"},
    ]
    return [Request(host=h, path=p, **v) for h in hosts for p in sorted(paths) for v in variants]  # type: ignore[arg-type]


def claim_covers(spec: Mapping, request: Request) -> bool:
    m = spec.spec
    if not covers(m.hostname, request.host):
        return False
    if m.prefix is not None:
        return prefix_covers(normalize_prefix(m.prefix), request.path)
    if m.path is not None:
        return request.path == m.path
    return re2.fullmatch(m.regex or "", request.path) is not None


def check(spec_list: list[Spec], trusted: bool) -> CompileResult:
    stamps = list(range(len(spec_list))) if trusted else [None] * len(spec_list)
    mappings = [to_mapping(s, i, stamps[i]) for i, s in enumerate(spec_list)]
    result = compile_resources(
        [(Origin("p.yaml", i), m) for i, m in enumerate(mappings)],
        tenancy=Tenancy(trusted_timestamps=trusted),
    )
    accepted = [
        m
        for m in mappings
        if (st_ := result.status("Mapping", m.metadata.namespace, m.metadata.name)) and st_.accepted
    ]
    config = translate(result.ir, EnvoyOptions())[ROUTE][HTTP_ROUTES]
    for request in requests_for(spec_list):
        owners = {m.metadata.namespace for m in accepted if claim_covers(m, request)}
        assert len(owners) <= 1, (request, owners)
        routed = route_of(config, request)
        if routed is not None:
            namespace = routed.split("/", 1)[0]
            assert owners == {namespace}, (request, routed, owners)
    return result


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(specs(), min_size=1, max_size=8), st.booleans())
def test_no_request_reaches_a_namespace_that_does_not_own_it(spec_list: list[Spec], trusted: bool) -> None:
    result = check(spec_list, trusted)
    if trusted:  # distinct, trusted creation times: the oldest claim always stands
        first = result.status("Mapping", spec_list[0].namespace, "m0")
        assert first is not None and first.accepted, first
