"""legation.core.yamlfile: documents read with libyaml must be exactly what the pure-Python loader
reads (data, positions, lines, errors), with node trees composed only when a line is needed."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from legation.core import yamlfile
from legation.core.errors import ConfigError
from legation.core.yamlfile import Document, load_documents

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted(
    p
    for d in ("tests/unit", "tests/fixtures", "examples", "standalone")
    for p in (ROOT / d).rglob("*")
    if p.suffix in (".yaml", ".yml") and p.is_file()
)
# Valid and invalid YAML the corpus lacks: flow and block styles, anchors and merge keys, tags,
# multi-line scalars, empty documents, CRLF, a BOM, comments, and syntax and key errors.
SNIPPETS = [
    "",
    "---\n",
    "# only a comment\n",
    "---\n---\na: 1\n---\n\n---\nb: [1, 2]\n...\n",
    "a: &x {k: v, n: 1}\nb: *x\nc:\n  <<: *x\n  n: 2\n",
    "list:\n- a\n-   - b\n    - c\n- {d: e}\n",
    "s: |\n  line one\n  line two\nf: >\n  folded\n  text\n\nq: 'it''s'\nd: \"tab\\there\"\n",
    "t: 2024-05-01T12:00:00Z\nd: 2024-05-01\nb: yes\nn: ~\no: 0o17\nh: 0x1F\nf: 1.5e3\ni: .inf\n",
    "tagged: !!str 123\nbin: !!binary aGVsbG8=\nset: !!set {a, b}\n",
    "\ufeffa: 1\r\nb:\r\n  c: 2\r\n",
    "a: b  # trailing comment\n? complex key\n: value\n",
    "a: [b\n",
    "a: 1\na: 2\n",
    "a:\n  b: 1\n  b: 2\n",
    "{[a]: 1}\n",
    "a: b: c\n",
    "a: 'unterminated\n",
    "x: 1\n---\ny: [\n",
    "- a\nb: c\n",
    "a: !!python/object:os.system x\n",
    "a: *missing\n",
    "\t- a\n",
    "a: \x07\n",
]


def _pure(text: str, file: str, monkeypatch: pytest.MonkeyPatch) -> list[Document] | ConfigError:
    with monkeypatch.context() as m:
        m.setattr(yamlfile, "_FastLoader", None)
        return _load(text, file)


def _load(text: str, file: str) -> list[Document] | ConfigError:
    try:
        return load_documents(text, file=file)
    except ConfigError as exc:
        return exc


def _paths(data: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(key, str):
                found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += _paths(value, (*prefix, i))
    return found


def _assert_same(fast: list[Document] | ConfigError, pure: list[Document] | ConfigError) -> None:
    if isinstance(pure, ConfigError) or isinstance(fast, ConfigError):
        assert (type(fast), str(fast)) == (type(pure), str(pure))
        return
    assert [(d.file, d.index, d.line) for d in fast] == [(d.file, d.index, d.line) for d in pure]
    assert [d.data for d in fast] == [d.data for d in pure]
    for f, p in zip(fast, pure, strict=True):
        for path in [*_paths(p.data), ("no", "such", "key"), (99,)]:
            assert f.line_of(path) == p.line_of(path), path
        assert f.node.start_mark.line == p.node.start_mark.line


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")
@pytest.mark.parametrize("path", CORPUS, ids=lambda p: str(p.relative_to(ROOT)))
def test_libyaml_reads_the_corpus_as_the_pure_loader_does(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = path.read_text(encoding="utf-8")
    _assert_same(_load(text, str(path)), _pure(text, str(path), monkeypatch))


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")
@pytest.mark.parametrize("text", SNIPPETS)
def test_libyaml_reads_snippets_as_the_pure_loader_does(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _assert_same(_load(text, "s.yaml"), _pure(text, "s.yaml", monkeypatch))


def test_errors_keep_the_pure_loaders_messages() -> None:
    with pytest.raises(ConfigError) as syntax:
        load_documents("ok: 1\nbad: [a\n", file="f.yaml")
    assert str(syntax.value).startswith("f.yaml:3: invalid YAML: while parsing a flow sequence")
    with pytest.raises(ConfigError) as duplicate:
        load_documents("a:\n  b: 1\n  b: 2\n", file="f.yaml")
    assert str(duplicate.value) == "f.yaml:3: invalid YAML: duplicate key 'b'"


def test_node_trees_are_composed_on_demand_once_per_file() -> None:
    docs = load_documents("a: 1\n---\nb:\n  c: [x, y]\n", file="f.yaml")
    assert [d.line for d in docs] == [1, 3]
    stream = docs[0]._stream
    assert stream is docs[1]._stream and stream is not None and stream._nodes is None  # nothing composed yet
    assert docs[1].line_of(("b", "c", 1)) == 4
    assert stream._nodes is not None and len(stream._nodes) == 2
    assert docs[0].node is stream._nodes[0]
    assert docs[0].source_text == "a: 1\n---\nb:\n  c: [x, y]\n"


def test_lazy_composition_is_safe_across_threads() -> None:
    text = "".join(f"---\nname: d{i}\nspec: {{k: [1, 2]}}\n" for i in range(200))
    docs = load_documents(text, file="f.yaml")
    lines: list[int] = []
    threads = [
        threading.Thread(target=lambda d=d: lines.append(d.line_of(("spec", "k")))) for d in docs[::-1]
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(lines) == [3 * i + 3 for i in range(200)]


def test_a_document_built_from_a_node() -> None:
    node = yaml.compose("\n\nkind: Mapping\n")
    assert node is not None
    doc = Document("kubernetes:Mapping/ns/a", 0, {"kind": "Mapping"}, node)
    assert (doc.line, doc.node, doc.source_text) == (3, node, None)
    assert doc.line_of(("kind",)) == 3
    with pytest.raises(TypeError):
        Document("x", 0, {})


def test_documents_are_immutable_values() -> None:
    (doc,) = load_documents("a: 1\n", file="f.yaml")
    with pytest.raises(AttributeError):
        doc.data = {}  # type: ignore[misc]
    (again,) = load_documents("a: 1\n", file="f.yaml")
    assert doc == again and doc != load_documents("a: 2\n", file="f.yaml")[0]
    assert "f.yaml" in repr(doc)


def test_equal_strings_share_one_object() -> None:
    first, second = load_documents("kind: Mapping\nns: team-a\n---\nkind: Mapping\nns: team-a\n", file="f")
    assert first.data["ns"] is second.data["ns"]
    assert next(iter(first.data)) is next(iter(second.data))


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml")
def test_lines_come_from_libyaml_if_the_pure_loader_refuses_what_it_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (doc,) = load_documents("a:\n  b: [1, 2]\n", file="f.yaml")

    class Refusing(yamlfile._Loader):
        def check_node(self) -> bool:
            raise yaml.YAMLError("refused")

    monkeypatch.setattr(yamlfile, "_Loader", Refusing)
    assert doc.line_of(("a", "b", 1)) == 2
