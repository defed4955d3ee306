"""legation.controller.compiler.parse_cache.ParseCache: the results of parse_resource, re-validated only for the
documents whose file changed."""

from __future__ import annotations

from pathlib import Path

import yaml

from legation.api.v1alpha1 import Mapping, ResourceError, parse_resource
from legation.controller.compiler.parse_cache import ParseCache
from legation.controller.sources.directory import DirectorySource
from legation.core.yamlfile import Document, load_documents


def mapping(name: str, prefix: str = "/", service: str = "a:80") -> str:
    return (
        "apiVersion: legation.dev/v1alpha1\nkind: Mapping\n"
        f"metadata: {{name: {name}, namespace: ns}}\nspec: {{prefix: '{prefix}', service: '{service}'}}\n"
    )


def test_results_are_those_of_parse_resource(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(mapping("a") + "---\n" + mapping("b", service="bad host:80"))
    docs = DirectorySource(tmp_path).load().documents
    cache = ParseCache()
    for doc in docs:
        assert cache(doc) == parse_resource(doc)
        assert cache(doc) == parse_resource(doc)  # from the cache
    assert (cache.misses, cache.hits, len(cache)) == (2, 2, 2)
    errors = cache(docs[1])
    assert isinstance(errors, list) and str(errors[0]).startswith(
        f"{tmp_path}/a.yaml:9: Mapping ns/b: spec.service"
    )
    errors.clear()  # the caller's copy: the cached errors are untouched
    assert cache(docs[1]) == parse_resource(docs[1])


def test_a_changed_file_is_the_only_one_validated_again(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(mapping("a") + "---\n" + mapping("a2"))
    (tmp_path / "b.yaml").write_text(mapping("b"))
    source, cache = DirectorySource(tmp_path), ParseCache()
    first = [cache(d) for d in source.load().documents]
    assert cache.misses == 3

    (tmp_path / "b.yaml").write_text(mapping("b", "/b/"))
    second = [cache(d) for d in source.load().documents]
    assert (cache.misses, cache.hits) == (4, 2)
    assert second[:2] == first[:2] and second[0] is first[0]  # the same (immutable) models
    assert isinstance(second[2], Mapping) and second[2].spec.prefix == "/b/"

    # A file read again with the same text, by a fresh source (new string objects): still a hit.
    third = [cache(d) for d in DirectorySource(tmp_path).load().documents]
    assert (cache.misses, cache.hits) == (4, 5) and third == second


def test_lines_and_positions_are_part_of_the_key() -> None:
    cache = ParseCache()
    text = mapping("a", service="bad host:80")
    (doc,) = load_documents(text, file="f.yaml")
    (shifted,) = load_documents("# a comment above\n" + text, file="f.yaml")
    (moved,) = load_documents(text, file="g.yaml")
    results = [cache(d) for d in (doc, shifted, moved)]
    assert cache.misses == 3
    lines = [r[0].line for r in results if isinstance(r, list) and isinstance(r[0], ResourceError)]
    assert lines == [4, 5, 4]
    assert [str(r[0]).split(":")[0] for r in results if isinstance(r, list)] == ["f.yaml", "f.yaml", "g.yaml"]


def test_documents_without_text_are_cached_by_identity() -> None:
    node = yaml.compose(mapping("k"))
    assert node is not None
    data = yaml.safe_load(mapping("k"))
    doc = Document("kubernetes:Mapping/ns/k", 0, data, node)
    cache = ParseCache()
    assert cache(doc) is cache(doc)
    assert (cache.misses, cache.hits) == (1, 1)
    rebuilt = Document("kubernetes:Mapping/ns/k", 0, yaml.safe_load(mapping("k", "/new/")), node)
    result = cache(rebuilt)
    assert cache.misses == 2 and isinstance(result, Mapping) and result.spec.prefix == "/new/"


def test_retain_forgets_removed_documents(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(mapping("a"))
    (tmp_path / "b.yaml").write_text(mapping("b") + "---\n" + mapping("b2"))
    source, cache = DirectorySource(tmp_path), ParseCache()
    for doc in source.load().documents:
        cache(doc)
    (tmp_path / "b.yaml").write_text(mapping("b"))
    (tmp_path / "a.yaml").unlink()
    snapshot = source.load()
    for doc in snapshot.documents:
        cache(doc)
    assert len(cache) == 3
    cache.retain(snapshot.documents)
    assert len(cache) == 1
