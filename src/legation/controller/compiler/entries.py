"""The compiler's working record of each resource (`Entry`: its problems, its key) and the
age order that settles conflicts (see `compile`'s docstring)."""

from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass, field

from pydantic import BaseModel

from legation.api.v1alpha1 import (
    Resource,
    ResourceId,
)
from legation.controller.compiler.ir import (
    FieldPath,
    Origin,
    Problem,
)

__all__ = ["Entry", "age", "why_rejected"]


@dataclass(eq=False)
class Entry:
    id: ResourceId
    origin: Origin
    resource: Resource | None
    """None for a stand-in of an input that was invalid on its own (see `_stand_ins`)."""
    problems: list[Problem] = field(default_factory=list)

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


def age(entry: Entry) -> tuple[int, float, str, str]:
    """Sort key: oldest first (see the module docstring)."""
    assert entry.resource is not None  # stand-ins are never sorted by age
    meta: BaseModel = entry.resource.metadata
    stamp = getattr(meta, "creation_timestamp", None) or (meta.model_extra or {}).get("creationTimestamp")
    seconds = _parse_timestamp(stamp) if isinstance(stamp, str) else None
    return (0 if seconds is not None else 1, seconds or 0.0, entry.id.namespace, entry.id.name)


def _parse_timestamp(text: str) -> float | None:
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def why_rejected(entry: Entry) -> str:
    """Why `entry` is rejected, each problem with its field path (for those that depend on it)."""
    return "; ".join(str(p) for p in entry.problems)
