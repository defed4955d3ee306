"""The compiler's working record of each resource (`Entry`: its problems, its key, its trusted
creation time) and the age order that settles conflicts (see `compile`'s docstring)."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from pydantic import BaseModel

from legation.api.v1alpha1 import (
    Resource,
    ResourceId,
)
from legation.controller.compiler.ir import (
    Origin,
    Problem,
)
from legation.core.errors import FieldPath

__all__ = ["AnyEntry", "Entry", "age", "creation_stamp", "of_kind", "why_rejected"]

R = TypeVar("R", bound=Resource)


@dataclass(eq=False)
class Entry(Generic[R]):
    """One resource being compiled: what it is, where it came from, and what is wrong with it."""

    id: ResourceId
    origin: Origin
    resource: R
    """None only in an `AnyEntry` stand-in for an input that was invalid on its own (see
    `compile._stand_ins`); `of_kind` never yields those."""
    problems: list[Problem] = field(default_factory=list)
    stamp: float | None = None
    """`metadata.creationTimestamp` in seconds when the source's timestamps are trusted (set by
    the API server), else None: a manifest file's timestamp is whatever its author wrote, so it
    never settles a conflict between namespaces."""

    @functools.cached_property
    def key(self) -> str:
        # Once per resource: the IR refers to it from several places (route, destination,
        # descriptor), and a new string per use was 2.3 MB at 10k Mappings.
        return f"{self.id.namespace}/{self.id.name}"

    @property
    def ok(self) -> bool:
        return not self.problems

    def reject(self, path: FieldPath, reason: str) -> None:
        self.problems.append(Problem(path, reason))


AnyEntry = Entry[Any]
"""An entry of any kind (or a stand-in), as in the compiler's index by resource id."""


def of_kind(entries: Iterable[AnyEntry], kind: type[R]) -> list[Entry[R]]:
    """The entries holding a `kind` resource, typed as such (stand-ins hold none)."""
    return [cast("Entry[R]", e) for e in entries if isinstance(e.resource, kind)]


def age(entry: Entry[R]) -> tuple[int, float, str, str]:
    """Sort key: oldest first (see `compile`'s docstring), by the resource's own timestamp even
    when the source's are not trusted: it orders resources of one namespace (canaries, default
    policies), whose author wrote them all. Between namespaces only `Entry.stamp` counts."""
    seconds = creation_stamp(entry.resource)
    return (0 if seconds is not None else 1, seconds or 0.0, entry.id.namespace, entry.id.name)


def creation_stamp(resource: Resource) -> float | None:
    """The resource's `metadata.creationTimestamp` in seconds, if it has a readable one."""
    meta: BaseModel = resource.metadata
    stamp = getattr(meta, "creation_timestamp", None) or (meta.model_extra or {}).get("creationTimestamp")
    return _parse_timestamp(stamp) if isinstance(stamp, str) else None


def _parse_timestamp(text: str) -> float | None:
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def why_rejected(entry: AnyEntry) -> str:
    """Why `entry` is rejected, each problem with its field path (for those that depend on it)."""
    return "; ".join(str(p) for p in entry.problems)
