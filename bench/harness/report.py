"""The report: markdown tables on stdout, JSON results under ``bench/results/`` (gitignored)."""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness.load import LoadResult, pct
from bench.harness.processes import ROOT

__all__ = [
    "RESULTS",
    "Column",
    "Machine",
    "TargetRow",
    "error_summary",
    "errors_text",
    "load_table",
    "markdown_table",
    "ratio",
    "write_results",
]

RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Machine:
    """Where a run happened."""

    node: str
    cpus: int
    python: str
    grpcio: str

    @staticmethod
    def here(cpus: int) -> Machine:
        import grpc  # not at import time: the controller scenario's parent stays lean

        return Machine(platform.node(), cpus, platform.python_version(), grpc.__version__)


@dataclass(frozen=True)
class TargetRow:
    """One loaded target: its measurement, or why there is none."""

    name: str
    load: LoadResult | None = None
    error: str | None = None


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """A GitHub markdown table; ``right[i]``: column i is right-aligned (numbers)."""
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(out)


def ratio(value: float | None, reference: float | None) -> str:
    """``value / reference`` with two decimals, "n/a" when either is missing or zero."""
    return f"{value / reference:.2f}" if value and reference else "n/a"


def errors_text(errors: dict[str, float] | None) -> str:
    """``"3 gRPC UNKNOWN, 1 denied"``, "0" for none, "n/a" when not observable."""
    if errors is None:
        return "n/a"
    return ", ".join(f"{n:.0f} {k}" for k, n in errors.items()) or "0"


def error_summary(exc: BaseException) -> str:
    """A one-line cell for a target that could not be measured."""
    msg = str(exc).strip()
    lines = msg.splitlines() or [type(exc).__name__]
    short = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
    return short[:160].replace("|", "/")


@dataclass(frozen=True)
class Column:
    """An extra column of :func:`load_table`, shown before the errors column."""

    header: str
    cell: Callable[[TargetRow], str]
    right: bool = True


def _cpu_cell(load: LoadResult) -> str:
    sat = load.saturation
    by_proc = sat.cpu_us_per_req_by_process
    if len(by_proc) <= 1:
        return f"{sat.cpu_us_per_req:.0f}"
    split = " + ".join(f"{k.split(' ')[0]} {v:.0f}" for k, v in by_proc.items())
    return f"{sat.cpu_us_per_req:.0f} ({split})"


def _load_cells(row: TargetRow, ref: LoadResult | None, extra: Sequence[Column]) -> list[str]:
    load = row.load
    if load is None:
        return [row.name, "n/a", "", "", "", "", "", "", *("" for _ in extra), row.error or "", "", "", ""]
    sat, half = load.saturation, load.half
    ref_sat = ref.saturation if ref else None
    return [
        row.name, f"{sat.req_per_s:,.0f}", ratio(sat.req_per_s, ref_sat.req_per_s if ref_sat else None),
        f"{half.p50_ms:.2f} ms", f"{half.p99_ms:.2f} ms", f"{half.req_per_s:,.0f} req/s", _cpu_cell(load),
        ratio(ref_sat.cpu_us_per_req if ref_sat else None, sat.cpu_us_per_req),
        *(c.cell(row) for c in extra), errors_text(load.errors), sat.setting, f"{sat.server_cpu_pct:.0f}%",
        f"{pct(sat.other_load_on_server_cpu_pct)} / {pct(sat.other_load_on_client_cpu_pct)}",
    ]  # fmt: skip


def load_table(
    rows: Sequence[TargetRow],
    ref: LoadResult | None,
    *,
    ref_label: str,
    errors_header: str = "errors",
    extra: Sequence[Column] = (),
) -> str:
    """The table of loaded targets; ratios compare with ``ref`` (the ceiling of the same run)."""
    headers = [
        "target", "req/s at saturation", f"ratio to {ref_label}", "p50 (half sat.)", "p99 (half sat.)",
        "half-sat. rate", "server CPU µs/req", "CPU ratio", *(c.header for c in extra), errors_header,
        "best setting", "server CPU", "other load: server CPU / client CPU",
    ]  # fmt: skip
    right = [False, *([True] * 7), *(c.right for c in extra), True, False, True, True]
    return markdown_table(headers, [_load_cells(r, ref, extra) for r in rows], right)


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not serializable: {type(value).__name__}")


def write_results(scenario: str, results: object, also: Path | None = None) -> Path:
    """``results`` (dataclasses) as JSON in ``bench/results/SCENARIO-TIME.json`` and ``also``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{scenario}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    text = json.dumps(results, default=_jsonable, indent=2) + "\n"
    path.write_text(text)
    if also is not None:
        also.write_text(text)
    print(f"wrote {path}" + (f" and {also}" if also else ""))
    return path
