"""End to end through `legation up` and a real Envoy: a manifest file that stops parsing keeps
serving its last good resources (routes and TLS Host) while its error is shown on the API and the
page; once it parses again, it applies again (a change made with the fix is served)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.gateway import Gateway, copy_examples, start_gateway, stop_gateway
from fixtures.processes import Launcher

pytestmark = pytest.mark.e2e

NEW_MAPPING = """---
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: catalog-new, namespace: team-catalog}
spec: {prefix: /catalog-new/, service: 127.0.0.1:9082}
"""


@pytest.fixture(scope="module")
def gateway(module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("up")
    gateway = start_gateway(module_launcher, copy_examples(root / "examples"), root / "state")
    yield gateway
    envoys = gateway.api_json("/api/envoys")
    assert envoys["nacks"] == [], f"Envoy rejected configuration: {envoys['nacks']}"
    assert stop_gateway(gateway) == 0, gateway.process.stdout_text()


def _write(path: Path, text: str) -> None:
    """As editors do: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    tmp.replace(path)


def _file_errors(gateway: Gateway, path: Path) -> list[dict[str, object]]:
    errors = gateway.api_json("/api/resources")["file_errors"]
    return [e for e in errors if e["file"] == str(path)]


def _serving(gateway: Gateway) -> bool:
    plain = gateway.request("GET", "/catalog/items")
    tls = gateway.request_tls("/catalog/items", server_name="shop.localhost")
    return plain.status == 200 and tls.status == 200 and tls.json()["name"].startswith("team-catalog/")


def test_a_mis_indented_catalog_keeps_serving_then_the_fix_applies(gateway: Gateway) -> None:
    path = gateway.source / "team-catalog" / "catalog.yaml"
    original = path.read_text()
    gateway.wait_until(lambda: _serving(gateway), what="the catalog over HTTP and TLS")
    broken = original.replace(
        "  service: 127.0.0.1:9082\n  weight: 80", " service: 127.0.0.1:9082\n  weight: 80"
    )
    assert broken != original
    _write(path, broken + NEW_MAPPING)

    (error,) = gateway.wait_until(lambda: _file_errors(gateway, path), what="the file error in the API")
    assert "invalid YAML" in str(error["reason"]) and error["line"] == 9 and error["last_good_kept"] is True
    page = gateway.api_text("/")
    assert f"{path}:9" in page and "invalid YAML" in page and "last good version is still served" in page
    for _ in range(10):  # the last good routes and Host keep serving while the file is broken
        assert _serving(gateway)
        assert gateway.request("GET", "/catalog-new/1").status == 404  # the broken text is not applied
        time.sleep(0.1)

    _write(path, original + NEW_MAPPING)
    gateway.wait_until(lambda: gateway.request("GET", "/catalog-new/1").status == 200, what="the fixed file")
    assert _file_errors(gateway, path) == []
    assert _serving(gateway)
    _write(path, original)
    gateway.wait_until(
        lambda: gateway.request("GET", "/catalog-new/1").status == 404, what="the original file"
    )
