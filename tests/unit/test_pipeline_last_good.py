"""Directory source + pipeline: a file that stops parsing keeps serving its last good resources,
with its error reported; it applies again once it parses; deleting it removes its resources."""

from __future__ import annotations

from pathlib import Path

from legation.controller.compiler.parse_cache import ParseCache
from legation.controller.serving.pipeline import Stages, build, problem_errors
from legation.controller.sources.directory import DirectorySource
from legation.controller.translate.envoy import EnvoyOptions

CATALOG = """\
apiVersion: legation.dev/v1alpha1
kind: Mapping
metadata: {name: catalog, namespace: team-catalog}
spec:
  prefix: PREFIX
  service: catalog:80
"""


def run(source: DirectorySource, cache: ParseCache) -> Stages:
    snapshot = source.load()
    stages = build(snapshot, EnvoyOptions(), parse=cache.parse)
    cache.retain(snapshot.documents)
    return stages


def route_prefixes(stages: Stages) -> list[str]:
    return [r.match.value for r in stages.result.ir.routes]


def test_broken_file_keeps_its_routes_then_applies_again_and_deletion_removes(tmp_path: Path) -> None:
    source, cache = DirectorySource(tmp_path), ParseCache()
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG.replace("PREFIX", "/catalog/"))
    assert route_prefixes(run(source, cache)) == ["/catalog"]

    catalog.write_text(CATALOG.replace("PREFIX", "/changed/").replace("  service:", " service:"))
    broken = run(source, cache)
    assert route_prefixes(broken) == ["/catalog"]
    assert [s.state for s in broken.statuses] == ["Accepted"]
    assert broken.source.kept == (str(catalog),)
    (error,) = problem_errors(broken)
    assert error.file == str(catalog) and error.line == 6 and "invalid YAML" in error.reason

    catalog.write_text(CATALOG.replace("PREFIX", "/changed/"))
    fixed = run(source, cache)
    assert route_prefixes(fixed) == ["/changed"] and problem_errors(fixed) == []

    catalog.unlink()
    assert route_prefixes(run(source, cache)) == [] and len(cache) == 0
