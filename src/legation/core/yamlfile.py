"""YAML documents that remember where each value came from.

Config errors must name the file and line of the offending field. PyYAML's composed node tree
keeps those marks; the plain data is built from the same tree, so both always agree.

Documents are read with libyaml (PyYAML's C parser) when it is available: a profile of 10,000
Mappings (2.9 MB of YAML) spent 7.1 s in the pure-Python loader, a third of it in the garbage
collector walking the node trees kept for error lines (~100 objects per document). So the data is
constructed from a node tree that is then dropped, and a document's tree is composed again only
when a line is asked for (an error), by the pure-Python loader from the same text, as before. Any
input libyaml refuses is read again by the pure-Python loader, whose error (or data) counts, so
messages are those of the pure loader.

Work per input is bounded. Anchors and aliases (`&name`, `*name`) are refused: Kubernetes objects
never need them, and aliases let a few hundred bytes expand into gigabytes of data (a "billion
laughs"; CVE-2019-11253 in Kubernetes' own decoder). A text with an `&` where an anchor could
start is read by the pure loader, which refuses the first anchor or alias before building
anything. Nesting deeper than Python's recursion allows is an error, not a crash. Files are read
at most `MAX_FILE_BYTES` (1 MiB, Kubernetes' own limit for a ConfigMap) by `read_yaml_text`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from legation.core.errors import ConfigError, ConfigErrors, FieldPath
from legation.core.model_keys import did_you_mean

__all__ = [
    "MAX_FILE_BYTES",
    "Document",
    "SafeDumper",
    "load_documents",
    "read_config_files",
    "read_yaml_text",
]

MAX_FILE_BYTES = 1 << 20
"""Largest YAML file read (manifests, authz and rate limit config): 1 MiB, the limit Kubernetes
puts on a ConfigMap. A bigger file is refused whole; split it into several files."""

_MAYBE_ANCHOR = re.compile(r"(?:^|[\s\[\]{},:\ufeff])&")
"""Where an anchor can start: after a separator or a flow indicator. `&` elsewhere (a URL's query)
cannot begin one, so such texts keep libyaml's speed."""

_NO_ANCHORS = "anchors and aliases (&name, *name) are not accepted: write each value out"


def _unique_mapping(
    loader: yaml.constructor.SafeConstructor, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, list | dict):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            )
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    mapping: dict[Any, Any] = yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep=deep)
    return mapping


def _interned_str(loader: yaml.SafeLoader | yaml.CSafeLoader, node: yaml.ScalarNode) -> str:
    # Manifests repeat the same keys and many values (apiVersion, kind, namespaces, services):
    # 10,000 Mappings held 229k strings with 11k distinct values, 12 of the 24 MB their data
    # took. Interned, each value is one object, shared by the models built from it.
    return sys.intern(str(loader.construct_scalar(node)))


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of silently keeping the last, and
    anchors and aliases (see the module docstring)."""

    construct_mapping = _unique_mapping

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, _NO_ANCHORS, event.start_mark)
        return super().compose_node(parent, index)


_Loader.add_constructor("tag:yaml.org,2002:str", _interned_str)


_FastLoader: type[yaml.CSafeLoader] | None = None
if yaml.__with_libyaml__:  # pragma: no branch - the wheels ship libyaml

    class _CLoader(yaml.CSafeLoader):
        """The same, on libyaml's parser."""

        construct_mapping = _unique_mapping

    _CLoader.add_constructor("tag:yaml.org,2002:str", _interned_str)

    _FastLoader = _CLoader


class _Stream:
    """The text of one YAML stream; composed into node trees (once) when a line is needed."""

    __slots__ = ("_nodes", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._nodes: list[yaml.Node] | None = None

    def node(self, index: int) -> yaml.Node:
        if self._nodes is None:
            try:
                self._nodes = _compose_all(self.text, _Loader)
            except yaml.YAMLError:
                # libyaml read this text but the pure loader does not (none is known): its own
                # marks are the same, so use them rather than fail while reporting an error.
                assert _FastLoader is not None
                self._nodes = _compose_all(self.text, _FastLoader)
        return self._nodes[index]


def _compose_all(text: str, loader_type: type[_Loader] | type[yaml.CSafeLoader]) -> list[yaml.Node]:
    loader = loader_type(text)
    try:
        nodes = []
        while loader.check_node() and (node := loader.get_node()) is not None:
            nodes.append(node)
        return nodes
    finally:
        loader.dispose()


class Document:
    """One YAML document: its data, its first line, and its node tree for locating fields.

    Built by `load_documents` (the node tree is then composed on first use), or by a source
    without files from data and a node tree of its own."""

    __slots__ = ("_node", "_stream", "data", "file", "index", "line")

    file: str
    index: int
    """Position in its stream, counting empty documents."""
    data: Any
    line: int
    """1-based line where the document's content starts."""
    _node: yaml.Node | None
    _stream: _Stream | None

    def __init__(
        self,
        file: str,
        index: int,
        data: Any,
        node: yaml.Node | None = None,
        *,
        line: int | None = None,
        stream: _Stream | None = None,
    ) -> None:
        if node is None and (stream is None or line is None):
            raise TypeError("a Document needs its node, or its stream and line")
        setter = object.__setattr__
        setter(self, "file", file)
        setter(self, "index", index)
        setter(self, "data", data)
        setter(self, "line", line if line is not None else int(node.start_mark.line) + 1)  # type: ignore[union-attr]
        setter(self, "_node", node)
        setter(self, "_stream", stream)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Document is immutable (cannot set {name!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Document):
            return NotImplemented
        mine, theirs = (self.file, self.index, self.line), (other.file, other.index, other.line)
        return mine == theirs and self.data == other.data

    __hash__ = None  # type: ignore[assignment]  # data is usually a dict

    def __repr__(self) -> str:
        return f"Document(file={self.file!r}, index={self.index}, line={self.line}, data={self.data!r})"

    @property
    def node(self) -> yaml.Node:
        """The document's node tree (marks give the line of every value)."""
        node: yaml.Node | None = self._node
        if node is None:
            assert self._stream is not None
            node = self._stream.node(self.index)
            object.__setattr__(self, "_node", node)
        return node

    @property
    def source_text(self) -> str | None:
        """The whole text of the stream the document was read from; None when built from a node.
        Equal texts and positions mean equal documents (a cheap key for caches)."""
        return self._stream.text if self._stream is not None else None

    def line_of(self, path: Sequence[str | int]) -> int:
        """1-based line of the field at `path`: its key's line for a mapping entry, the item's
        line for a list element; the deepest existing ancestor if the path does not exist."""
        node, line = self.node, self.node.start_mark.line
        for part in path:
            found = _child(node, part)
            if found is None:
                break
            node, line = found
        return int(line) + 1

    def error(self, path: Sequence[str | int], reason: str) -> ConfigError:
        return ConfigError(file=self.file, line=self.line_of(path), path=tuple(path), reason=reason)

    def validate(self, model: type[M], errors: list[ConfigError]) -> M | None:
        """The document as `model`, or None with every problem appended to `errors`."""
        if not isinstance(self.data, dict):
            errors.append(self.error((), f"a {model.__name__} document must be a mapping"))
            return None
        try:
            return model.model_validate(self.data)
        except ValidationError as exc:
            for err in exc.errors():
                path = _clean_loc(err["loc"])
                errors.append(self.error(path, _message(err, model, path)))
            return None


M = TypeVar("M", bound=BaseModel)


def _clean_loc(loc: Sequence[Any]) -> FieldPath:
    # pydantic adds pseudo-segments for unions, tagged models and validators: not YAML keys.
    return tuple(
        p for p in loc if isinstance(p, int) or not str(p).startswith(("function-", "union", "tagged-union"))
    )


def _message(err: Any, model: type[BaseModel], path: FieldPath) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key" + did_you_mean(model, path)
    return str(err["msg"]).removeprefix("Value error, ")


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, int] | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == part:
                return value_node, key_node.start_mark.line
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return item, item.start_mark.line
    return None


def load_documents(text: str, *, file: str) -> list[Document]:
    """Parse every document in `text`; a syntax error becomes a ConfigError with its line, and so
    do anchors and aliases (refused)."""
    if _FastLoader is not None and _MAYBE_ANCHOR.search(text) is None:
        try:
            return _read_documents(file, _FastLoader(text), _Stream(text))
        except (yaml.YAMLError, RecursionError):
            pass  # read again below: the pure loader's verdict and messages are the reference
    try:
        return _read_documents(file, _Loader(text), None)
    except RecursionError as exc:
        raise ConfigError(file=file, reason="invalid YAML: nested too deeply") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise ConfigError(file=file, line=line, reason=f"invalid YAML: {reason}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(file=file, reason=f"invalid YAML: {exc}") from exc


def _read_documents(file: str, loader: _Loader | yaml.CSafeLoader, stream: _Stream | None) -> list[Document]:
    """The non-empty documents; each keeps its node tree, or with a `stream` composes it again
    from there when asked (libyaml's trees are dropped: see the module docstring)."""
    documents = []
    try:
        index = 0
        while loader.check_node() and (node := loader.get_node()) is not None:
            data = loader.construct_document(node)
            if data is not None:
                line = int(node.start_mark.line) + 1
                documents.append(
                    Document(file, index, data, node)
                    if stream is None
                    else Document(file, index, data, line=line, stream=stream)
                )
            index += 1
    finally:
        loader.dispose()
    return documents


def read_yaml_text(path: Path, *, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The file's text, read as UTF-8. A file over `max_bytes` is refused without reading past
    the limit: ConfigError naming the file and the limit. OSError and UnicodeDecodeError pass."""
    with path.open("rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfigError(
            file=str(path),
            reason=f"file is larger than {_size(max_bytes)}, the most a YAML file may hold: split it",
        )
    return data.decode("utf-8")


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n} bytes"


class SafeDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Writes YAML that `load_documents` reads back: never an anchor or alias (values that are one
    object twice are written twice). libyaml's emitter when the wheel has it (~3x faster)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def read_config_files(path: str | Path) -> list[tuple[str, str]]:
    """(file name, text) of a YAML file, or of every `*.yaml`/`*.yml` in a directory, sorted.

    Hidden entries are skipped, which also skips Kubernetes ConfigMap mounts' `..data` links.
    Raises ConfigErrors if the path is missing, a file cannot be read or is too big."""
    root = Path(path)
    if root.is_dir():
        files = sorted(
            p
            for p in root.iterdir()
            if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
        )
    elif root.is_file():
        files = [root]
    else:
        raise ConfigErrors([ConfigError(file=str(root), reason="no such file or directory")])
    texts = []
    for file in files:
        try:
            texts.append((str(file), read_yaml_text(file)))
        except ConfigError as exc:
            raise ConfigErrors([exc]) from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigErrors([ConfigError(file=str(file), reason=f"cannot read: {exc}")]) from exc
    return texts
