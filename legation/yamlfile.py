"""YAML documents that remember where each value came from.

Config errors must name the file and line of the offending field. PyYAML's composed node tree
keeps those marks; the plain data is built from the same tree, so both always agree.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from legation.errors import ConfigError

__all__ = ["Document", "load_documents"]


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
