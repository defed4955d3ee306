"""Controller pipeline, in-process: manifests -> typed resources -> IR -> Envoy snapshot.

For each N, Mappings in realistic variety are generated as YAML files (``bench.controller_manifests``);
each N then runs in fresh subprocesses (``bench.controller_pipeline``): one runs the stages once,
for the peak RSS of one pipeline run (``ru_maxrss`` from ``os.wait4``); another times every stage
``--runs`` times, keeping medians (load, parse, compile, translate, snapshot, feeds,
pipeline.build cold, and one file changed with a running controller's caches).

Targets of issue 4 (10k Mappings): parse + compile + translate + snapshot <= 2 s, peak RSS
<= 250 MB; one file changed <= 250 ms at 1k Mappings. Exit status 2 if one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.controller_manifests import generate
from bench.controller_results import PIPELINE, ChildResult, Description
from bench.harness.options import add_common
from bench.harness.processes import ROOT
from bench.harness.report import markdown_table, write_results
from bench.harness.scenario import Scenario

__all__ = ["SCENARIO", "ControllerRow", "Settings", "run"]

TARGET_SECONDS = 2.0
TARGET_RSS_MB = 250.0
TARGET_CHANGE_MS = 250.0


@dataclass(frozen=True)
class Settings:
    """One run of the controller bench."""

    sizes: tuple[int, ...]
    """Mapping counts."""
    runs: int
    """Timed runs per size; medians are reported."""


@dataclass(frozen=True)
class ControllerRow:
    """One size: medians of the timed runs, and the memory of the single-run child."""

    mappings: int
    counts: dict[str, int]
    yaml_bytes: int
    result: ChildResult
    rss_peak_mb: float
    """Peak RSS of a child that ran the pipeline once."""
    rss_all_runs_mb: float
    once: dict[str, float | None]

    def stage(self, name: str) -> float | None:
        return self.result.stages.get(name)

    @property
    def pipeline_s(self) -> float:
        return sum(s for k in PIPELINE if (s := self.stage(k)) is not None)

    @property
    def change_target(self) -> bool:
        """The change target is stated for 1k Mappings: checked at that size and below."""
        return self.mappings <= 1000 and self.stage("change") is not None

    @property
    def passed(self) -> bool:
        change = self.stage("change")
        change_ok = not self.change_target or (change is not None and change * 1000 <= TARGET_CHANGE_MS)
        return self.pipeline_s <= TARGET_SECONDS and self.rss_peak_mb <= TARGET_RSS_MB and change_ok


def _child_result(data: dict[str, object]) -> ChildResult:
    desc = data["description"]
    assert isinstance(desc, dict)
    fields = {k: v for k, v in data.items() if k != "description"}
    return ChildResult(description=Description(**desc), **fields)  # type: ignore[arg-type]


def _run_child(root: Path, n: int, args: list[str]) -> tuple[ChildResult, float]:
    """The child's result and its peak RSS in MB (``ru_maxrss`` of that child alone)."""
    cmd = [sys.executable, "-m", "bench.controller_pipeline", str(root), "--expect", str(n), *args]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"child for N={n} failed ({proc.returncode})")
    return _child_result(json.loads(text)), usage.ru_maxrss / 1024  # Linux: kilobytes


def measure(n: int, runs: int) -> ControllerRow:
    """Generate N Mappings, then the single-run child and the timed child."""
    with tempfile.TemporaryDirectory(prefix=f"legation-bench-{n}-") as tmp:
        root = Path(tmp)
        counts = generate(n, root)
        once, once_rss = _run_child(root, n, ["--runs", "1", "--once"])
        result, rss = _run_child(root, n, ["--runs", str(runs)])
        yaml_bytes = sum(p.stat().st_size for p in root.rglob("*.yaml"))
    return ControllerRow(n, counts, yaml_bytes, result, once_rss, rss, once.stages)


def run(settings: Settings) -> list[ControllerRow]:
    return [measure(n, settings.runs) for n in settings.sizes]


def _fmt(seconds: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "n/a" if seconds is None else f"{seconds * scale:.{digits}f}"


def _cells(r: ControllerRow) -> list[str]:
    change = _fmt(r.stage("change"), 1000, 0) + (f" (≤ {TARGET_CHANGE_MS:g})" if r.change_target else "")
    return [
        f"{r.mappings:,}", f"{r.counts['files']} ({r.yaml_bytes / 1e6:.1f})",
        *(_fmt(r.stage(k)) for k in ("load", *PIPELINE)),
        f"**{r.pipeline_s:.3f}** (≤ {TARGET_SECONDS:g})", _fmt(r.stage("feeds")), _fmt(r.stage("build")), change,
        f"**{r.rss_peak_mb:.0f}** (≤ {TARGET_RSS_MB:g})", f"{r.result.rss_imports_mb:.0f}",
        f"{r.rss_all_runs_mb:.0f}" + ("" if r.passed else " **FAIL**"),
    ]  # fmt: skip


def table(rows: Sequence[ControllerRow]) -> str:
    headers = ["N Mappings", "files (MB)", "load s", "parse s", "compile s", "translate s", "snapshot s",
               "**pipeline s** (target)", "feeds s", "pipeline.build s", "1 file changed ms (target)",
               "**peak RSS MB** (target)", "of which imports MB", "max RSS, all runs MB"]  # fmt: skip
    return markdown_table(headers, [_cells(r) for r in rows], [True] * len(headers))


def describe(r: ControllerRow) -> str:
    d, pipeline = r.result.description, r.pipeline_s
    shares = ", ".join(f"{k} {s / pipeline:.0%}" for k in PIPELINE if (s := r.stage(k)) is not None)
    return (f"N={r.mappings:,}: {d.documents} documents, {d.routes} routes, {d.clusters} clusters; Envoy resources "
            f"{d.envoy_resources}, {d.snapshot_bytes / 1e6:.1f} MB serialized; pipeline shares: {shares}")  # fmt: skip


def configure(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--sizes", default="1000,10000", help="Mapping counts, comma-separated")
    parser.add_argument("--runs", type=int, default=5, help="runs per size; medians are printed")
    parser.add_argument("--quick", action="store_true", help="1,000 Mappings, 1 run (smoke test)")


def main(args: argparse.Namespace) -> int:
    quick: bool = args.quick
    settings = Settings(sizes=(1000,) if quick else tuple(int(x) for x in args.sizes.split(",")),
                        runs=1 if quick else args.runs)  # fmt: skip
    print(f"# controller bench: {platform.node()} {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"{settings.runs} runs per size (medians)", flush=True)  # fmt: skip
    rows = run(settings)
    print(table(rows))
    print("\n".join(describe(r) for r in rows))
    write_results("controller", {"settings": settings, "sizes": rows}, args.json)
    return 0 if all(r.passed for r in rows) else 2


SCENARIO = Scenario(
    "controller",
    __doc__ or "",
    configure,
    main,
)
