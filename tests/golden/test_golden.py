"""Golden tests: `in/<case>.yaml` → `out/<case>/*` (xDS resources, feeds, statuses).

Any change to what Envoy or the services receive shows up here as a diff of a committed file.
When the change is intended, regenerate with `make golden` and review the diff like code."""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest

from golden.render import IN, OUT, case_names, render

ROOT = OUT.parent.parent.parent
REGENERATE = (
    "if the change is intended, regenerate with `make golden` "
    "(or `pytest tests/golden --update-golden`, or LEGATION_UPDATE_GOLDEN=1) and review the diff"
)


@pytest.mark.parametrize("case", case_names())
def test_translation_matches_golden(case: str, update_golden: bool) -> None:
    actual = render(case)
    out = OUT / case
    shown = out.relative_to(ROOT)
    if update_golden:
        _write(out, actual)
        return
    expected = _read(out)
    diffs = [
        _diff(shown / name, expected.get(name), actual.get(name))
        for name in sorted(expected.keys() | actual.keys())
    ]
    diffs = [d for d in diffs if d]
    if diffs:
        pytest.fail(
            f"{case}: output differs from {shown}; {REGENERATE}\n\n" + "\n".join(diffs), pytrace=False
        )


def test_every_output_has_an_input(update_golden: bool) -> None:
    stale = sorted(p for p in OUT.iterdir() if p.is_dir() and not (IN / f"{p.name}.yaml").exists())
    if update_golden:
        for path in stale:
            shutil.rmtree(path)
        return
    if stale:
        pytest.fail(
            f"output directories without an input in {IN}: {[p.name for p in stale]}; {REGENERATE}",
            pytrace=False,
        )


def test_there_are_cases() -> None:
    assert case_names(), f"no inputs in {IN}"


def _write(out: Path, files: dict[str, str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        if path.name not in files:
            path.unlink()
    for name, text in files.items():
        path = out / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")


def _read(out: Path) -> dict[str, str]:
    if not out.is_dir():
        return {}
    return {p.name: p.read_text(encoding="utf-8") for p in out.iterdir() if p.is_file()}


def _diff(path: Path, expected: str | None, actual: str | None) -> str:
    if expected == actual:
        return ""
    lines = difflib.unified_diff(
        (expected or "").splitlines(keepends=True),
        (actual or "").splitlines(keepends=True),
        fromfile=f"{path} (golden{'' if expected is not None else ', missing'})",
        tofile=f"{path} (now{'' if actual is not None else ', not produced'})",
    )
    return "".join(lines)
