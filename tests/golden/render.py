"""Golden translation: one input manifest file → the text of every output file.

`render(case)` runs the controller's pure pipeline (`legation.controller.serving.pipeline.build`, no processes)
on `in/<case>.yaml` and returns `{file name: text}` for `out/<case>/`: the xDS resources Envoy
would receive (one JSON file per type, resources keyed and sorted by name), both config feeds as
the controller serves them, and every resource's status. Nothing in the output depends on the
clock or on content digests of other files: snapshot and source versions are left out.

TLS private keys: the input holds a fixed, self-signed test key (the compiler checks that key and
certificate match, so it must be real). The SDS secrets in `secrets.json` carry a placeholder
with the key's SHA-256 instead of the PEM, as the controller's API does (with `[redacted]`): key
material stays in one committed place, and a changed or swapped key still changes the output.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from legation.controller.compiler.upstreams import UpstreamRules
from legation.controller.serving.pipeline import Stages, build
from legation.controller.sources import SourceSnapshot
from legation.controller.translate.envoy import EnvoyOptions
from legation.controller.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from legation.core.digest import content_version
from legation.core.errors import ConfigError, format_path
from legation.core.yamlfile import load_documents

__all__ = [
    "IN",
    "OPTIONS",
    "OUT",
    "XDS_FILES",
    "case_names",
    "dump",
    "render",
    "source_snapshot",
    "status_json",
    "xds_json",
]

HERE = Path(__file__).parent
IN = HERE / "in"
OUT = HERE / "out"

OPTIONS = EnvoyOptions()
UPSTREAMS = UpstreamRules(native_remote_jwks=True)
"""The jwt-remote case shows what Envoy is given when the platform lets it fetch JWKS."""
"""The controller's defaults: a change to them shows up in every case, as it should."""

XDS_FILES = {
    LISTENER: "listeners.json",
    ROUTE: "routes.json",
    CLUSTER: "clusters.json",
    ENDPOINT: "endpoints.json",
    SECRET: "secrets.json",
}
ALWAYS = ("listeners.json", "routes.json", "clusters.json", "secrets.json")
"""Written even when empty, so that the first resource of a kind shows up as a diff."""


def case_names() -> list[str]:
    return sorted(p.stem for p in IN.glob("*.yaml"))


def render(case: str) -> dict[str, str]:
    """Every output file of `case`, by file name."""
    stages = build(source_snapshot(case), OPTIONS, upstreams=UPSTREAMS)
    files = {name: dump({}) for name in ALWAYS}
    for type_url, by_name in stages.envoy.resources.items():
        files[XDS_FILES[type_url]] = dump({name: xds_json(m) for name, m in by_name.items()})
    files["authz-feed.yaml"] = stages.authz_feed
    files["ratelimit-feed.yaml"] = stages.ratelimit_feed
    files["status.json"] = dump(status_json(stages))
    return files


def source_snapshot(case: str) -> SourceSnapshot:
    """What the directory source would give for a directory holding only `<case>.yaml`."""
    file = f"{case}.yaml"
    text = (IN / file).read_text(encoding="utf-8")
    try:
        documents, errors = tuple(load_documents(text, file=file)), ()
    except ConfigError as exc:
        documents, errors = (), (exc,)
    return SourceSnapshot(
        documents=documents, errors=errors, origins=(file,), version=content_version([(file, text)])
    )


def xds_json(message: Any) -> Any:
    """A protobuf message as JSON (proto field names), private keys replaced by their digest."""
    return _elide_keys(json_format.MessageToDict(message, preserving_proto_field_name=True))


def _elide_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _key_placeholder(v) if k == "private_key" else _elide_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_elide_keys(v) for v in value]
    return value


def _key_placeholder(source: Any) -> Any:
    pem = source.get("inline_string") if isinstance(source, dict) else None
    if not isinstance(pem, str):
        return _elide_keys(source)
    digest = hashlib.sha256(pem.encode()).hexdigest()
    return {**source, "inline_string": f"[test key elided, sha256 {digest}]"}


def status_json(stages: Stages) -> dict[str, Any]:
    """Each document's verdict, in the pipeline's order, and the inputs that gave no documents."""
    return {
        "resources": [
            {
                "kind": s.id.kind,
                "namespace": s.id.namespace,
                "name": s.id.name,
                "where": str(s.origin),
                "state": s.state,
                "problems": [{"path": format_path(p.path), "reason": p.reason} for p in s.problems],
            }
            for s in stages.statuses
        ],
        "file_errors": [str(e) for e in stages.file_errors],
    }


def dump(data: Any) -> str:
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
