"""The keys a pydantic model accepts at a field path, for "did you mean" hints on unknown keys.

A typo such as `prefx` is reported by pydantic as an extra key at `("spec", "prefx")`; the keys
that were possible there are the field aliases of the model(s) found by walking the path
through the field annotations (optional values, lists, dicts and unions are looked through).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

__all__ = ["did_you_mean", "keys_at"]


def did_you_mean(model: type[BaseModel], path: Sequence[str | int]) -> str:
    """` (did you mean 'x'?)` for the unknown key at the end of `path`, or ""."""
    if not path or not isinstance(path[-1], str):
        return ""
    close = difflib.get_close_matches(path[-1], sorted(keys_at(model, path[:-1])), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def keys_at(model: type[BaseModel], path: Sequence[str | int]) -> set[str]:
    """Every key (alias, else field name) a mapping at `path` inside `model` may hold."""
    types_here: list[Any] = [model]
    for part in path:
        types_here = [t for current in types_here for t in _step(current, part)]
    return {key for t in types_here for key in _keys(t)}


def _keys(annotation: Any) -> set[str]:
    models = [o for o in _options(annotation) if _is_model(o)]
    return {f.alias or name for model in models for name, f in model.model_fields.items()}


def _step(annotation: Any, part: str | int) -> list[Any]:
    """The types a value of `annotation` holds under `part` (a key, or a list index)."""
    found: list[Any] = []
    for option in _options(annotation):
        if _is_model(option) and isinstance(part, str):
            found += [f.annotation for n, f in option.model_fields.items() if part in (n, f.alias)]
        elif typing.get_origin(option) in (list, tuple, set, frozenset) and isinstance(part, int):
            found += list(typing.get_args(option)[:1])
        elif typing.get_origin(option) is dict and isinstance(part, str):
            found += list(typing.get_args(option)[1:2])
    return found


def _options(annotation: Any) -> list[Any]:
    """`annotation` with Annotated, Optional and unions looked through."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _options(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [o for arg in typing.get_args(annotation) for o in _options(arg)]
    return [annotation]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
