"""The controller's HTTP API and diagnostics page (FastAPI, served by uvicorn on `--http-listen`).

Probes: `/healthz`, `/readyz`, `/metrics`. JSON of every pipeline stage: `/api/status`,
`/api/resources` (statuses, with the validated resources), `/api/ir`, `/api/envoy`,
`/api/feeds`, of the connected Envoys: `/api/envoys`, and of the background checks (upstream
health from Envoy admin, service names that do not resolve): `/api/upstreams`. The page at `/`
(legation.controller.serving.page).

Everything derived from one `Stages` is computed on first request and kept until the pipeline
publishes new stages, so polling the page or the API with 1k Mappings costs a dict lookup; only
the small parts that change without a new run (Envoy sync state, history) are built each time.

Secrets never leave (`serving.redact`): TLS private keys are redacted from the IR and from
Envoy's Secret resources, Secret resources show their keys but no values, inline JWKS show their
public members only (also in the authz feed's copy under /api/feeds), and every body is scrubbed
of the secret values the stages hold. Who may call what: `serving.access`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import yaml
from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from pydantic import BaseModel

from legation.api.v1alpha1 import JWTPolicy, ResourceId, Secret
from legation.controller.compiler.ir import Programmed, ResourceStatus, TlsSecret
from legation.controller.serving import page
from legation.controller.serving.access import ApiAccessMiddleware, HttpAccess
from legation.controller.serving.dns_check import DnsCache
from legation.controller.serving.page_health import Health
from legation.controller.serving.pipeline import status_errors
from legation.controller.serving.redact import (
    REDACTED,
    Scrubber,
    ScrubMiddleware,
    redact_policy_dump,
    secret_values,
)
from legation.core.errors import format_path
from legation.core.feed_version import feed_version

if TYPE_CHECKING:
    from legation.controller.serving.feed import Feed
    from legation.controller.serving.pipeline import ControllerState, Stages
    from legation.controller.serving.upstream_health import EnvoyAdminPoller
    from legation.controller.xds.server import XdsServer

__all__ = ["REDACTED", "create_app", "to_json"]

_REDACTED_FIELDS = {(TlsSecret, "private_key")}
"""(dataclass, field) pairs whose values never appear in a dump."""
_PROTO_SECRET_KEYS = frozenset({"private_key"})
"""Proto fields (any message, any depth) whose values never appear in a dump: a TLS key may sit
in an SDS Secret or inline in a listener's transport socket."""

T = TypeVar("T")


def create_app(
    state: ControllerState,
    xds: XdsServer,
    feeds: Mapping[str, Feed] | None = None,
    *,
    access: HttpAccess | None = None,
    upstreams: EnvoyAdminPoller | None = None,
    dns: DnsCache | None = None,
) -> FastAPI:
    """The API and page over `state` (read on every request, so new stages show at once), for
    the callers `access` admits (default: loopback clients; feeds for no one). `upstreams` and
    `dns` are the background checks whose findings the page and /api/upstreams show."""
    app = FastAPI(title="Legation controller", docs_url=None, redoc_url=None)
    views = _Views()
    access = access if access is not None else HttpAccess()

    def health() -> Health:
        return Health(
            views=upstreams.views() if upstreams is not None else None,
            unresolved=dns.unresolved() if dns is not None else (),
        )

    def scrubber() -> Scrubber | None:
        stages = state.stages
        return views.get(stages, "scrubber", _scrubber) if stages is not None else None

    app.add_middleware(ScrubMiddleware, scrubber=scrubber)
    app.add_middleware(ApiAccessMiddleware, access=access)  # added last: runs first

    programmed_cache = _LatestBody()

    def with_programmed(stages: Stages) -> dict[str, Any]:
        """The run's resources, each with its `programmed` as of the latest ACKs."""
        found = views.get(stages, "resources", _resources)
        programmed = state.programmed
        items = [
            {
                **r,
                "programmed": _programmed_json(
                    programmed.get(ResourceId(r["kind"], r["namespace"], r["name"]))
                ),
            }
            for r in found["resources"]
        ]
        return {**found, "resources": items}

    def ready_stages() -> Stages | Response:
        return state.stages if state.stages is not None else _not_ready(state)

    def stage_json(name: str, make: Callable[[Stages], bytes]) -> Response:
        stages = ready_stages()
        if isinstance(stages, Response):
            return stages
        return _json_bytes(views.get(stages, name, make))

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok\n"

    @app.get("/readyz")
    async def readyz() -> Response:
        return _json({"ready": True}) if state.ready else _not_ready(state)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/status")
    async def status() -> Response:
        return _json(_status(state, xds))

    @app.get("/api/resources")
    async def resources(
        kind: str | None = None, state_filter: Annotated[str | None, Query(alias="state")] = None
    ) -> Response:
        stages = ready_stages()
        if isinstance(stages, Response):
            return stages
        if kind is None and state_filter is None:
            key = (stages, state.programmed_generation)
            return _json_bytes(programmed_cache.get(key, lambda: with_programmed(stages)))
        found = with_programmed(stages)
        items = [
            r
            for r in found["resources"]
            if (kind is None or r["kind"].lower() == kind.lower())
            and (state_filter is None or r["state"].lower() == state_filter.lower())
        ]
        return _json({**found, "resources": items})

    @app.get("/api/ir")
    async def ir() -> Response:
        return stage_json("ir", lambda s: _dumps({"version": s.envoy.version, "ir": to_json(s.result.ir)}))

    @app.get("/api/envoy")
    async def envoy() -> Response:
        return stage_json("envoy", lambda s: _dumps(envoy_json(s), sort_keys=True))

    @app.get("/api/feeds")
    async def feeds_json() -> Response:
        if feeds is not None:
            return _json({name: _feed_json(name, feed) for name, feed in sorted(feeds.items())})
        return stage_json("feeds", lambda s: _dumps(_stage_feeds(s)))

    @app.get("/api/envoys")
    async def envoys() -> Response:
        return _json(xds.status())

    @app.get("/api/upstreams")
    async def upstream_health() -> Response:
        return _json(_health_json(health()))

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        stages = state.stages
        sections = views.get(stages, "page", page.stage_sections) if stages is not None else None
        return page.render(state, xds, sections, health=health())

    if feeds is not None:
        from legation.controller.serving.feed import feed_router  # the feed module serves its own routes

        app.include_router(feed_router(feeds, access))
    return app


class _LatestBody:
    """The JSON of one value, kept while its key (stages, Programmed generation) stays."""

    def __init__(self) -> None:
        self._key: tuple[object, int] | None = None
        self._body = b""

    def get(self, key: tuple[object, int], make: Callable[[], Any]) -> bytes:
        if key != self._key:
            self._key, self._body = key, _dumps(make())
        return self._body


def _programmed_json(programmed: Programmed | None) -> dict[str, Any] | None:
    return dataclasses.asdict(programmed) if programmed is not None else None


class _Views:
    """Values derived from one `Stages`, made on first use, dropped when the stages change."""

    def __init__(self) -> None:
        self._stages: Stages | None = None
        self._made: dict[str, Any] = {}

    def get(self, stages: Stages, name: str, make: Callable[[Stages], T]) -> T:
        if stages is not self._stages:
            self._stages, self._made = stages, {}
        if name not in self._made:
            self._made[name] = make(stages)
        return cast(T, self._made[name])


# --- JSON of the stages ------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """Plain JSON data from IR values: dataclasses → dicts (in field order, redacted fields
    replaced), pydantic models → their JSON dump by alias, tuples → lists."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        return {
            f.name: REDACTED if (kind, f.name) in _REDACTED_FIELDS else to_json(getattr(value, f.name))
            for f in dataclasses.fields(value)
        }
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # NamedTuple, e.g. ResourceId
        return {k: to_json(v) for k, v in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def envoy_json(stages: Stages) -> dict[str, Any]:
    """The Envoy snapshot: version, then resources by type URL and name, keys redacted."""
    snapshot = stages.envoy
    return {
        "version": snapshot.version,
        "resources": {
            type_url: {
                name: _redact_proto(json_format.MessageToDict(message, preserving_proto_field_name=True))
                for name, message in sorted(by_name.items())
            }
            for type_url, by_name in sorted(snapshot.resources.items())
        },
    }


def _redact_proto(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if k in _PROTO_SECRET_KEYS else _redact_proto(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_proto(v) for v in value]
    return value


def _resources(stages: Stages) -> dict[str, Any]:
    """Every input's status (with the resource as validated, when it was valid on its own) and
    every input that gave no resources at all."""
    by_origin = dict(stages.resources)
    kept = set(stages.source.kept)
    return {
        "version": stages.source.version,
        "resources": [
            {
                "kind": s.id.kind,
                "namespace": s.id.namespace,
                "name": s.id.name,
                "origin": {"file": s.origin.file, "line": s.origin.line, "index": s.origin.index},
                "where": str(s.origin),
                "state": s.state,
                "warnings": list(s.warnings),
                "enforcement": s.enforcement,
                "problems": [
                    {"path": format_path(e.path), "line": e.line, "where": e.where, "reason": e.reason}
                    for e in status_errors(s)
                ],
                "resource": _resource_json(by_origin.get(s.origin)),
                **_enforcement_json(s, stages),
            }
            for s in stages.statuses
        ],
        "file_errors": [
            {
                "file": e.file,
                "line": e.line,
                "where": e.where,
                "path": format_path(e.path),
                "reason": e.reason,
                "last_good_kept": e.file in kept,
            }
            for e in stages.file_errors
        ],
    }


def _enforcement_json(status: ResourceStatus, stages: Stages) -> dict[str, Any]:
    """A JWTPolicy's `enforcement` (null when rejected) and the routes it governs, each with its
    own enforcement; nothing for other kinds."""
    if status.id.kind != "JWTPolicy":
        return {}
    governs = stages.governed.get(f"{status.id.namespace}/{status.id.name}", ())
    return {
        "enforcement": status.enforcement,
        "governs": [
            {"route": g.route, "mappings": list(g.mappings), "enforcement": g.enforcement} for g in governs
        ],
    }


def _resource_json(resource: BaseModel | None) -> Any:
    if resource is None:
        return None
    data = resource.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(resource, Secret):
        for key in ("data", "stringData"):
            data[key] = dict.fromkeys(data.get(key, {}), REDACTED)
    if isinstance(resource, JWTPolicy):
        redact_policy_dump(data)
    return data


def _scrubber(stages: Stages) -> Scrubber:
    keys = [tls.private_key for tls in stages.result.ir.tls_secrets]
    resources = [r for _, r in stages.resources if r is not None]
    return Scrubber(secret_values([*resources, *stages.result.policies], keys))


def _redacted_feed(name: str, text: str | None) -> str | None:
    """A feed's text as the API shows it: the authz feed's JWKS without their secret members."""
    if name != "authz" or not text or "inline" not in text:
        return text  # nothing to redact: the text as served
    documents = [redact_policy_dump(d) for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    return yaml.safe_dump_all(documents, sort_keys=False, allow_unicode=True, width=1 << 20)


def _stage_feeds(stages: Stages) -> dict[str, Any]:
    texts = {"authz": stages.authz_feed, "ratelimit": stages.ratelimit_feed}
    return {
        name: {"version": feed_version(text), "content": _redacted_feed(name, text)}
        for name, text in texts.items()
    }


def _feed_json(name: str, feed: Feed) -> dict[str, Any]:
    current = feed.current()  # one read: version and content of the same publish
    version, content = current if current is not None else (None, None)
    return {"version": version, "content": _redacted_feed(name, content)}


def _status(state: ControllerState, xds: XdsServer) -> dict[str, Any]:
    stages = state.stages
    summary: dict[str, Any] = {
        "ready": state.ready,
        "source": state.source_description,
        "started_at": state.started_at,
        "last_error": state.last_error,
        "history": [dataclasses.asdict(run) for run in state.history],
        "envoys": {
            "versions": xds.snapshots.versions(),
            "nodes": len(xds.nodes()),
            "nacks": len(xds.nacks),
        },
        "quarantined": [
            {"resource": to_json(rid), **dataclasses.asdict(q)} for rid, q in sorted(state.quarantine.items())
        ],
    }
    if stages is not None:
        rejected = len(stages.rejected)
        summary |= {
            "source_version": stages.source.version,
            "envoy_version": stages.envoy.version,
            "last_run": dataclasses.asdict(state.history[-1]) if state.history else None,
            "counts": {
                "resources": len(stages.statuses),
                "accepted": len(stages.statuses) - rejected,
                "rejected": rejected,
                "file_errors": len(stages.file_errors),
                "routes": len(stages.result.ir.routes),
                "clusters": len(stages.result.ir.clusters),
                "envoy_resources": {t: len(r) for t, r in sorted(stages.envoy.resources.items())},
            },
        }
    return summary


def _health_json(health: Health) -> dict[str, Any]:
    """Upstream health per Envoy admin (null: no --envoy-admin given) and names that do not resolve."""
    envoys = None
    if health.views is not None:
        envoys = [
            {
                "admin": v.admin,
                "at": v.at,
                "error": v.error,
                "clusters": {name: [to_json(h) for h in hosts] for name, hosts in sorted(v.clusters.items())},
            }
            for v in health.views
        ]
    return {"envoys": envoys, "unresolved": [to_json(r) for r in health.unresolved]}


def _not_ready(state: ControllerState) -> Response:
    reason = "no pipeline run has finished yet"
    if state.last_error:
        reason += f" (last run failed: {state.last_error})"
    return _json({"ready": False, "reason": reason}, status_code=503)


def _dumps(data: Any, *, sort_keys: bool = False) -> bytes:
    return json.dumps(data, sort_keys=sort_keys, ensure_ascii=False, separators=(",", ":")).encode()


def _json(data: Any, *, status_code: int = 200) -> Response:
    return _json_bytes(_dumps(data), status_code=status_code)


def _json_bytes(body: bytes, *, status_code: int = 200) -> Response:
    return Response(body, status_code=status_code, media_type="application/json")
