"""Legation installs one import name: `legation`. Generic names such as `controller` or `services`
would collide with other distributions in site-packages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _imports(module: str, cwd: Path) -> bool:
    code = f"import importlib; importlib.import_module({module!r})"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True).returncode == 0


@pytest.mark.parametrize("module", ["controller", "services", "authz", "ratelimit", "core", "api"])
def test_no_generic_top_level_package(module: str, tmp_path: Path) -> None:
    assert not _imports(module, tmp_path)


@pytest.mark.parametrize(
    "module",
    ["legation.controller", "legation.authz", "legation.ratelimit", "legation.core", "legation.api.v1alpha1"],
)
def test_every_part_lives_under_legation(module: str, tmp_path: Path) -> None:
    assert _imports(module, tmp_path)
