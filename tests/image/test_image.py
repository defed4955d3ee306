"""The container image, built for real (`image/build.sh`, as `make image`) and run as the chart runs
it: read-only root filesystem, uid/gid 10001, no capabilities (`image/run.sh`).

Needs root, buildah and mmdebstrap (`.ci/run` installs them). Never skipped in CI: with ``CI`` set,
a missing tool fails the tests; elsewhere they are skipped with the reason. The first build takes
a few minutes (Debian base, wheels); later ones reuse build/image/ and buildah's layer cache.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from legation.controller.commands.demo import DemoFiles

REPO = Path(__file__).resolve().parents[2]
IMAGE = "localhost/legation:dev"
"""The tag `make image` gives it too: the test and `make image` share one image and one cache."""
STORAGE_DRIVER = "vfs"
TOOLS = ("buildah", "mmdebstrap", "unshare", "setpriv")
UID = "10001"

pytestmark = pytest.mark.timeout(900)


def _missing() -> list[str]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return missing + ([] if os.geteuid() == 0 else ["root (mount namespaces, buildah's storage)"])


@pytest.fixture(scope="session")
def image() -> str:
    if missing := _missing():
        reason = f"the image tests need {', '.join(missing)}: apt-get install buildah mmdebstrap"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: these tests never skip there; .ci/run installs them)")
        pytest.skip(f"{reason} (skipped because CI is unset)")
    env = {**os.environ, "VENV": sys.prefix, "IMAGE": IMAGE, "STORAGE_DRIVER": STORAGE_DRIVER}
    result = subprocess.run(
        [REPO / "image" / "build.sh", "image"], env=env, capture_output=True, text=True, timeout=850
    )
    assert result.returncode == 0, f"image/build.sh failed:\n{result.stderr[-4000:]}"
    return IMAGE


@pytest.fixture(scope="session")
def container(image: str) -> Iterator[str]:
    """One buildah container of the image for every run (each run mounts its root read-only)."""
    name = buildah("from", "--quiet", "--pull=false", image).stdout.strip()
    yield name
    buildah("rm", name)


def buildah(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["buildah", "--storage-driver", STORAGE_DRIVER, *args], capture_output=True, text=True, check=True
    )


def run(
    container: str, *args: str, entrypoint: str | None = None, volumes: dict[Path, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`image/run.sh`: the image's ENTRYPOINT (or `entrypoint`) with `args`, volumes read-only."""
    options = ["--entrypoint", entrypoint] if entrypoint else []
    for source, target in (volumes or {}).items():
        options += ["-v", f"{source}:{target}"]
    return subprocess.run(
        [REPO / "image" / "run.sh", *options, container, *args],
        env={**os.environ, "STORAGE_DRIVER": STORAGE_DRIVER},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_config_declares_a_numeric_non_root_user_and_the_entrypoint(image: str) -> None:
    inspect = buildah("inspect", "--type", "image", "--format",
                      "{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}}", image)  # fmt: skip
    assert inspect.stdout.split() == [f"{UID}:{UID}", "[legation]"]


def test_help(container: str) -> None:
    result = run(container, "--help")
    assert result.returncode == 0, result.stderr
    for command in ("controller", "authz", "ratelimit", "validate"):
        assert command in result.stdout


def test_runs_as_uid_10001_without_privileges(container: str) -> None:
    result = run(container, "-c", "id -u; id -g; id -G; grep -E '^(CapEff|NoNewPrivs):' /proc/self/status",
                 entrypoint="sh")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [UID, UID, UID, "CapEff:", "0000000000000000", "NoNewPrivs:", "1"]


WRITE_PROBE = """
import os, sysconfig
for path in ["/", "/etc", "/opt/legation", sysconfig.get_path("purelib"), "/tmp"]:
    try:
        with open(os.path.join(path, "probe"), "w") as f:
            f.write("x")
        print(path, "written")
    except OSError as exc:
        print(path, exc.errno)
"""


def test_root_filesystem_is_read_only_and_tmp_is_writable(container: str) -> None:
    """EROFS, not EACCES: the file system refuses the write, whoever the user is."""
    result = run(container, "-c", WRITE_PROBE, entrypoint="/opt/legation/bin/python")
    assert result.returncode == 0, result.stderr
    outcomes = dict(line.rsplit(" ", 1) for line in result.stdout.splitlines())
    assert outcomes.pop("/tmp") == "written"
    assert len(outcomes) == 4
    assert set(outcomes.values()) == {str(errno.EROFS)}, outcomes


def test_ratelimit_check_accepts_the_standalone_config(container: str) -> None:
    result = run(container, "ratelimit", "--config", "/mnt/ratelimit.yaml", "--check",
                 volumes={REPO / "standalone": "/mnt"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 1 domain(s) in 1 file(s)")


def test_ratelimit_check_refuses_a_bad_config(container: str) -> None:
    bad = REPO / "tests" / "unit" / "ratelimit_config_errors"
    result = run(
        container, "ratelimit", "--config", "/mnt/empty_domain.yaml", "--check", volumes={bad: "/mnt"}
    )
    assert result.returncode == 1
    assert result.stderr.startswith("/mnt/empty_domain.yaml:2: domain: config file cannot have empty domain")


def test_validate_the_examples(container: str, tmp_path: Path) -> None:
    """The examples with the Secrets `legation up` generates for them; without them, exactly
    the two missing Secrets are reported."""
    demo = DemoFiles(tmp_path / "demo")
    demo.ensure()
    for path in (demo.root, demo.manifests, *demo.manifests.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)  # readable by uid 10001
    examples = {REPO / "examples": "/tmp/examples"}

    # The examples' upstreams are loopback demo services: allowed as `legation up` allows them.
    result = run(container, "validate", "--allow-loopback-upstreams", "/tmp/examples", "/tmp/demo",
                 volumes={**examples, demo.manifests: "/tmp/demo"})  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout

    result = run(container, "validate", "--allow-loopback-upstreams", "/tmp/examples", volumes=examples)
    assert result.returncode == 1
    assert "no Secret 'demo-tls' in namespace team-catalog" in result.stderr + result.stdout
    assert "no Secret 'demo-issuer-jwks' in namespace team-orders" in result.stderr + result.stdout
