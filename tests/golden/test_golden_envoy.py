"""Envoy accepts the golden output: every case's listeners, route configurations and clusters,
wrapped in a static bootstrap, pass `envoy --mode validate`.

The golden files name their routes and certificates by RDS and SDS over ADS; the bootstrap
inlines them instead (`rds` → `route_config`, SDS configs → static secrets). The golden
`secrets.json` holds only a digest of the test key, so the secrets come from the pipeline."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fixtures.managed import envoy_binary
from google.protobuf import json_format

from golden.render import OPTIONS, OUT, case_names, source_snapshot
from legation.controller.serving.pipeline import build
from legation.controller.xds.snapshot import SECRET

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("case", case_names())
def test_golden_output_passes_envoy_validate(case: str, tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(_bootstrap(case)))
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _bootstrap(case: str) -> dict[str, Any]:
    routes = _golden(case, "routes.json")
    listeners = [_inline(listener, routes) for listener in _golden(case, "listeners.json").values()]
    secrets = build(source_snapshot(case), OPTIONS).envoy.resources.get(SECRET, {})
    return {
        "node": {"id": "golden", "cluster": "golden"},
        "static_resources": {
            "listeners": listeners,
            "clusters": list(_golden(case, "clusters.json").values()),
            "secrets": [
                json_format.MessageToDict(s, preserving_proto_field_name=True) for s in secrets.values()
            ],
        },
    }


def _golden(case: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((OUT / case / name).read_text(encoding="utf-8"))
    return data


def _inline(value: Any, routes: dict[str, Any]) -> Any:
    """`value` with every RDS reference replaced by its route configuration and every SDS
    reference made static (the secret by name, no config source)."""
    if isinstance(value, list):
        return [_inline(v, routes) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _inline(v, routes) for k, v in value.items() if k not in ("rds", "sds_config")}
    if "rds" in value:
        out["route_config"] = routes[value["rds"]["route_config_name"]]
    return out
