"""YAML documents that remember where each value came from.

Config errors must name the file and line of the offending field. PyYAML's composed node tree
keeps those marks; the plain data is built from the same tree, so both always agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from legation.errors import ConfigError, ConfigErrors

__all__ = ["Document", "content_version", "load_documents", "read_config_files"]


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of silently keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


@dataclass(frozen=True)
class Document:
    """One YAML document: its data, and its node tree for locating fields."""

    file: str
    index: int
    data: Any
    node: yaml.Node

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
                errors.append(self.error(_clean_loc(err["loc"]), _message(err)))
            return None


M = TypeVar("M", bound=BaseModel)


def _clean_loc(loc: Sequence[Any]) -> tuple[str | int, ...]:
    # pydantic adds pseudo-segments for unions, tagged models and validators: not YAML keys.
    return tuple(
        p for p in loc if isinstance(p, int) or not str(p).startswith(("function-", "union", "tagged-union"))
    )


def _message(err: Any) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
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
    """Parse every document in `text`; a syntax error becomes a ConfigError with its line."""
    try:
        return list(_documents(text, file))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        reason = " ".join(str(p) for p in (exc.context, exc.problem) if p) or "invalid YAML"
        raise ConfigError(file=file, line=line, reason=f"invalid YAML: {reason}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(file=file, reason=f"invalid YAML: {exc}") from exc


def _documents(text: str, file: str) -> Iterator[Document]:
    loader = _Loader(text)
    try:
        index = 0
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                break
            data = loader.construct_document(node)
            if data is not None:
                yield Document(file=file, index=index, data=data, node=node)
            index += 1
    finally:
        loader.dispose()


def read_config_files(path: str | Path) -> list[tuple[str, str]]:
    """(file name, text) of a YAML file, or of every `*.yaml`/`*.yml` in a directory, sorted.

    Hidden entries are skipped, which also skips Kubernetes ConfigMap mounts' `..data` links.
    Raises ConfigErrors if the path is missing or a file cannot be read."""
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
            texts.append((str(file), file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigErrors([ConfigError(file=str(file), reason=f"cannot read: {exc}")]) from exc
    return texts


def content_version(texts: Sequence[tuple[str, str]]) -> str:
    """A short digest of (file, text) pairs: equal inputs, equal version, on every replica."""
    digest = hashlib.sha256()
    for file, text in sorted(texts):
        digest.update(f"{len(file)}:{file}{len(text)}:{text}".encode())
    return digest.hexdigest()[:12]
