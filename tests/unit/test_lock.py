"""The environment the suite runs in is exactly what uv.lock pins, and the lock matches pyproject.toml.

`make venv` installs with `uv sync --frozen`; these tests catch a venv that drifted from the lock
(a hand `pip install`, an old venv after `make lock`) and a Makefile whose uv differs from the lock's.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).parent / "uv"
# The venv's own installer, seeded by `python -m venv` before uv exists; the lock does not manage it.
SEED = {"pip"}


def locked_for_this_python() -> dict[str, str]:
    """Name -> version of every distribution `.[dev]` needs here, as the lock pins it."""
    out = subprocess.run(
        [
            str(UV),
            "export",
            "--frozen",
            "--extra",
            "dev",
            "--no-hashes",
            "--no-emit-project",
            "--no-header",
            "--no-annotate",
            "--format",
            "requirements-txt",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins: dict[str, str] = {}
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, _, marker = line.partition(";")
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==(\S+)", requirement.strip())
        assert match, f"uv export gave an unpinned line: {line!r}"
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def installed() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in metadata.distributions(path=[p for p in sys.path if p.startswith(sys.prefix)]):
        name = canonicalize_name(dist.metadata["Name"])
        if name not in SEED and name != "legation":
            found[name] = dist.version
    return found


def test_venv_holds_exactly_what_the_lock_pins() -> None:
    locked, have = locked_for_this_python(), installed()
    missing = {n: v for n, v in locked.items() if n not in have}
    extra = {n: v for n, v in have.items() if n not in locked}
    wrong = {n: (have[n], v) for n, v in locked.items() if n in have and have[n] != v}
    assert not missing and not extra and not wrong, (
        f"venv differs from uv.lock (run `make venv`): missing {missing}, not in the lock {extra}, "
        f"installed vs locked {wrong}"
    )


def test_lock_agrees_with_pyproject() -> None:
    result = subprocess.run([str(UV), "lock", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_locked_distribution_has_hashes() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    for package in lock["package"]:
        if package.get("source", {}).get("editable") or package.get("source", {}).get("virtual"):
            continue
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files and all(f.get("hash", "").startswith("sha256:") for f in files), package["name"]


def test_makefile_bootstraps_the_uv_the_lock_pins() -> None:
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(r"^UV_VERSION := (\S+)$", makefile, re.M)
    assert match, "Makefile has no UV_VERSION"
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (uv,) = [p for p in lock["package"] if p["name"] == "uv"]
    assert uv["version"] == match[1]
