"""What the controller bench's child reports (kept apart: the parent imports no controller code)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PIPELINE", "STAGES", "ChildResult", "Description"]

STAGES = ("load", "parse", "compile", "translate", "snapshot", "feeds", "build", "change")
PIPELINE = ("parse", "compile", "translate", "snapshot")
"""The stages that make up "compile" in the targets: from the source snapshot's documents to the
Envoy snapshot (the YAML loading is measured apart, the feeds' texts are shown apart)."""


@dataclass(frozen=True)
class Description:
    """What one pipeline run produced."""

    documents: int
    mappings: int
    routes: int
    clusters: int
    envoy_resources: dict[str, int]
    snapshot_bytes: int


@dataclass(frozen=True)
class ChildResult:
    stages: dict[str, float | None]
    """Median seconds per stage (None: not run)."""
    samples: dict[str, list[float]]
    rss_imports_mb: float
    rss_peak_self_mb: float
    description: Description
