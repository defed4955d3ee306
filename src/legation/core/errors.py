"""Errors shared by every Legation component.

LegationError
 └── ConfigError        a config document is wrong: file, line, field path and reason
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["ConfigError", "ConfigErrors", "FieldPath", "LegationError", "format_path"]

FieldPath = tuple[str | int, ...]
"""Where in a document a value sits: keys and list indexes from the top (`spec.providers[0]`)."""


class LegationError(Exception):
    """Base of every error Legation raises on purpose."""


def format_path(path: Sequence[str | int]) -> str:
    """`("descriptors", 0, "rate_limit")` → `descriptors[0].rate_limit`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True)
class ConfigError(LegationError):
    """One problem in one config document, precise enough to fix without guessing."""

    file: str
    reason: str
    line: int | None = None
    path: FieldPath = field(default=())

    @property
    def where(self) -> str:
        """`file:line`, or the file alone when the line is unknown."""
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def __str__(self) -> str:
        field_path = format_path(self.path)
        return f"{self.where}: {field_path}: {self.reason}" if field_path else f"{self.where}: {self.reason}"


class ConfigErrors(LegationError):
    """Every problem found while loading a config; loading never stops at the first one."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))
