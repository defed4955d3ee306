"""Who enforces each JWTPolicy (Envoy natively, or the authz service, and why), where users see it:
`legation validate --explain` (the real CLI), the resource status (`ResourceStatus.enforcement`, on
Kubernetes `status.gateways.NAME.enforcement` and the Accepted message, through the kmock
emulator), `/api/resources` and the diagnostics page (in-process over ASGI).

One set of manifests serves all three: a native policy whose Mappings include two that stay on
the service (`allowMethodOverride`, a regex Mapping under a regex rule), a policy that falls back
as a whole (two token sources, its provider named with markup by a hostile team), and a policy no
Mapping uses."""

from __future__ import annotations

import asyncio
import contextlib
import html
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import kmock
import pytest
import yaml
from fixtures.jwks_server import jwks_json, make_rsa_key
from fixtures.kube import KubeEmulator, connected_emulator, eventually, merge_patch
from fixtures.manifests import resource

from legation.controller.kubernetes import client as kc
from legation.controller.kubernetes.client import KubeClient
from legation.controller.kubernetes.source import KubernetesOptions, KubernetesSource
from legation.controller.serving.api import create_app
from legation.controller.serving.pipeline import ControllerState, Stages, build
from legation.controller.sources.directory import DirectorySource
from legation.controller.translate.envoy import HTTP_ROUTES, EnvoyOptions, translate
from legation.controller.translate.native_routes import METHOD_OVERRIDE_REASON
from legation.controller.xds.server import XdsServer
from legation.controller.xds.snapshot import ROUTE

LEGATION = Path(sys.executable).parent / "legation"
KEYS = jwks_json([make_rsa_key("k1")])
HOSTILE = "<img src=x onerror=alert(1)>"
TWO_SOURCES = (
    f"service (provider {HOSTILE}: several token sources (two different tokens must be a 400, which "
    "Envoy cannot tell); use one source for native enforcement)"
)
REGEX_REASON = (
    "the JWTPolicy's spec.rules[1] and the Mapping are both regexes, which Envoy cannot intersect; "
    "a prefix or exact path on either side makes it native"
)
NATIVE_EXCEPT = (
    f"native, except Mapping demo/legacy (service: {METHOD_OVERRIDE_REASON}), "
    f"Mapping demo/search (service: {REGEX_REASON})"
)
UNUSED = "unused (no Mapping uses it; would be native)"


def provider(name: str = "corp", **extra: Any) -> dict[str, Any]:
    return {"name": name, "issuer": "https://idp/", "jwks": {"inline": KEYS}, **extra}


def mapping(name: str, policy: str, **spec: Any) -> str:
    spec = {"prefix": f"/{name}/", "service": "api.demo:8080", "auth": {"policy": policy}, **spec}
    return resource("Mapping", name, spec)


AUTH = resource(
    "AuthService", "default", {"service": "authz.legation-system:9001"}, namespace="legation-system"
)
NATIVE = resource(
    "JWTPolicy",
    "native",
    {
        "providers": [provider()],
        "rules": [
            {"match": {"pathPrefix": "/orders/public"}, "public": True},
            {"match": {"regex": "/search/[a-z]+"}, "requires": {"anyOf": ["corp"]}},
            {"requires": {"anyOf": ["corp"]}},
        ],
    },
)
SOURCES = [{"header": "Authorization", "prefix": "Bearer "}, {"cookie": "session"}]
FALLBACK = resource(
    "JWTPolicy",
    "fallback",
    {"providers": [provider(HOSTILE, tokenSources=SOURCES)], "rules": [{"requires": {"anyOf": [HOSTILE]}}]},
)
LONELY = resource("JWTPolicy", "lonely", {"providers": [provider()], "rules": [{"public": True}]})
MAPPINGS = (
    mapping("orders", "native")
    + mapping("legacy", "native", allowMethodOverride=True)
    + mapping("search", "native", prefix=None, regex="/search/.*")
    + mapping("billing", "fallback")
)


def write(root: Path, *, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "policies.yaml").write_text(NATIVE + FALLBACK + LONELY)
    (root / "mappings.yaml").write_text(AUTH + MAPPINGS + extra)
    return root


def statuses(stages: Stages) -> dict[str, str | None]:
    return {s.id.name: s.enforcement for s in stages.statuses if s.id.kind == "JWTPolicy"}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("enforcement"))


@pytest.fixture(scope="module")
def stages(root: Path) -> Stages:
    return build(DirectorySource(root).load(), EnvoyOptions())


# --- the status -------------------------------------------------------------------------------


def test_status_says_who_enforces_each_policy_and_why(stages: Stages) -> None:
    assert statuses(stages) == {"fallback": TWO_SOURCES, "lonely": UNUSED, "native": NATIVE_EXCEPT}


def test_the_routes_named_as_exceptions_are_the_ones_left_on_ext_authz(stages: Stages) -> None:
    """The reasons come from the translator's own decisions: a route split per rule (jwt_authn)
    is native, the others go to ext_authz."""
    config = translate(stages.result.ir, EnvoyOptions())[ROUTE][HTTP_ROUTES]
    names = [r.name for v in config.virtual_hosts for r in v.routes]
    split = {n.split("#")[0] for n in names if "#" in n}
    shown = {g.route: g.enforcement for routes in stages.governed.values() for g in routes}
    assert {r for r, how in shown.items() if how == "native"} == split == {"demo/orders"}
    assert shown["demo/legacy"] == f"service ({METHOD_OVERRIDE_REASON})"
    assert shown["demo/search"] == f"service ({REGEX_REASON})"
    assert shown["demo/billing"] == TWO_SOURCES


def test_a_policy_used_again_leaves_unused(tmp_path: Path) -> None:
    text = mapping("late", "lonely")
    assert statuses(build(DirectorySource(write(tmp_path, extra=text)).load(), EnvoyOptions()))["lonely"] == (
        "native"
    )


def test_an_unused_policy_says_what_it_would_be(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(FALLBACK)
    found = statuses(build(DirectorySource(tmp_path).load(), EnvoyOptions()))
    assert found == {
        "fallback": f"unused (no Mapping uses it; would be service: provider {HOSTILE}: several token "
        "sources (two different tokens must be a 400, which Envoy cannot tell); use one source for "
        "native enforcement)"
    }


# --- legation validate --explain (the real CLI) -----------------------------------------------


def validate(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LEGATION), "validate", *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def test_explain_prints_one_line_per_policy_with_its_mappings(root: Path) -> None:
    done = validate("--explain", root)
    policies = root / "policies.yaml"
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        f"{policies}:2: JWTPolicy demo/native: enforcement: {NATIVE_EXCEPT}; "
        "Mappings: demo/legacy, demo/orders, demo/search",
        f"{policies}:27: JWTPolicy demo/fallback: enforcement: {TWO_SOURCES}; Mappings: demo/billing",
        f"{policies}:48: JWTPolicy demo/lonely: enforcement: {UNUSED}",
        "ok: 8 resource(s) in 2 file(s) (1 AuthService, 3 JWTPolicy, 4 Mapping)",
    ]


def test_without_explain_the_output_is_unchanged(root: Path) -> None:
    done = validate(root)
    assert (done.returncode, done.stdout) == (
        0,
        "ok: 8 resource(s) in 2 file(s) (1 AuthService, 3 JWTPolicy, 4 Mapping)\n",
    )


def test_explain_keeps_the_exit_status_of_the_problems(tmp_path: Path) -> None:
    bad = resource("JWTPolicy", "broken", {"providers": [], "rules": [{"requires": {"anyOf": ["nobody"]}}]})
    root = write(tmp_path, extra=bad)
    done = validate("--explain", root)
    assert done.returncode == 1 and done.stderr == "1 problem(s)\n"
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{root}/mappings.yaml:") and "JWTPolicy demo/broken: spec.rules" in lines[0]
    assert [line.split(": enforcement: ")[0].rsplit(" ", 1)[1] for line in lines[1:]] == [
        "demo/native",
        "demo/fallback",
        "demo/lonely",
    ], "a rejected policy has a problem line, not an enforcement line"


# --- /api/resources and the page --------------------------------------------------------------


@contextlib.asynccontextmanager
async def api(stages: Stages) -> AsyncIterator[httpx.AsyncClient]:
    state = ControllerState(source_description="directory <test>")
    state.record(stages)
    xds = XdsServer()
    xds.set_snapshot(stages.envoy)
    transport = httpx.ASGITransport(app=create_app(state, xds))
    async with httpx.AsyncClient(transport=transport, base_url="http://controller") as client:
        yield client


async def test_api_resources_show_enforcement_and_the_routes_governed(stages: Stages) -> None:
    async with api(stages) as client:
        found = (await client.get("/api/resources", params={"kind": "JWTPolicy"})).json()["resources"]
    by_name = {r["name"]: r for r in found}
    assert by_name["fallback"]["enforcement"] == TWO_SOURCES
    assert by_name["fallback"]["governs"] == [
        {"route": "demo/billing", "mappings": ["demo/billing"], "enforcement": TWO_SOURCES}
    ]
    assert by_name["lonely"] == {**by_name["lonely"], "enforcement": UNUSED, "governs": []}
    assert by_name["native"]["enforcement"] == NATIVE_EXCEPT
    assert [(g["route"], g["enforcement"]) for g in by_name["native"]["governs"]] == [
        ("demo/legacy", f"service ({METHOD_OVERRIDE_REASON})"),
        ("demo/orders", "native"),
        ("demo/search", f"service ({REGEX_REASON})"),
    ]


async def test_page_shows_each_policy_s_enforcement_escaped(stages: Stages) -> None:
    async with api(stages) as client:
        page = (await client.get("/")).text
    section = page[page.index('<section id="policies">') :]
    section = section[: section.index("</section>")]
    assert HOSTILE not in page, "a provider name is input: escaped like everything else"
    assert f'<span class="enforcement">{html.escape(TWO_SOURCES)}</span>' in section
    assert f'<span class="enforcement">{html.escape(UNUSED)}</span>' in section
    assert f"demo/legacy: {html.escape(f'service ({METHOD_OVERRIDE_REASON})')}" in section
    routes = page[page.index('<section id="routes">') :]
    assert "demo/fallback (service)" in routes and "demo/native (native)" in routes


# --- Kubernetes status (kmock) ----------------------------------------------------------------

NS = "demo"
JWTPOLICIES = kmock.resource("legation.dev", "v1alpha1", "jwtpolicies")


def entry(emulator: KubeEmulator, name: str) -> dict[str, Any]:
    obj = emulator.object(JWTPOLICIES, NS, name) or {}
    return ((obj.get("status") or {}).get("gateways") or {}).get("default") or {}


def accepted_message(found: dict[str, Any]) -> str | None:
    return next((c["message"] for c in found.get("conditions", ()) if c["type"] == "Accepted"), None)


async def follow(source: KubernetesSource) -> None:
    async for snapshot in source.snapshots():
        stages = build(snapshot, EnvoyOptions())
        source.report(stages.statuses, stages.source)


async def create(client: KubeClient, text: str) -> None:
    for doc in yaml.safe_load_all(text):
        kind = kc.KINDS[doc["kind"]]
        await client.request("POST", kind.path(doc["metadata"]["namespace"]), body=doc)


async def test_kubernetes_status_carries_enforcement(tmp_path: Path) -> None:
    async with connected_emulator(tmp_path) as (emulator, client, kubeconfig):
        await create(client, FALLBACK + LONELY + mapping("billing", "fallback"))
        source = KubernetesSource(
            KubernetesOptions(kubeconfig=str(kubeconfig), quiet_seconds=0.05, leader_elect=False)
        )
        task = asyncio.create_task(follow(source))
        try:
            fallback = await eventually(lambda: (e := entry(emulator, "fallback")).get("enforcement") and e)
            assert fallback["enforcement"] == TWO_SOURCES
            assert accepted_message(fallback) == f"Accepted by the controller; enforcement: {TWO_SOURCES}"
            lonely = await eventually(lambda: (e := entry(emulator, "lonely")).get("enforcement") and e)
            assert lonely["enforcement"] == UNUSED

            # One token source: native, and the status follows.
            path = kc.KINDS["JWTPolicy"].path(NS, "fallback")
            await merge_patch(client, path, {"spec": {"providers": [provider(HOSTILE)]}})
            await eventually(lambda: entry(emulator, "fallback").get("enforcement") == "native")
            # Rejected: no enforcement left behind (the condition says why).
            await merge_patch(client, path, {"spec": {"rules": [{"requires": {"anyOf": ["nobody"]}}]}})
            rejected = await eventually(
                lambda: (e := entry(emulator, "fallback")) and "enforcement" not in e and e
            )
            assert (accepted_message(rejected) or "").startswith("spec.rules")
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
