"""Every bad `legation ratelimit` flag, URL or file: one line naming the value and what is
expected, exit 1, never a traceback (the real CLI, nothing started)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

EXPECTED_URL = "expected redis://[user:password@]host[:port][/db]"


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "ok.yaml"
    path.write_text("domain: d\ndescriptors:\n")
    return path


CASES = {
    "cluster-bad-port": (
        ["--redis-url", "redis+cluster://h1:7001,h2:x"],
        ["port 'x' is not a number", EXPECTED_URL],
    ),
    "several-hosts-plain": (
        ["--redis-url", "redis://h1:1,h2:2"],
        ["'redis://h1:1,h2:2'", "several hosts", EXPECTED_URL],
    ),
    "unknown-scheme": (["--redis-url", "memcache://h"], ["unsupported scheme 'memcache'", EXPECTED_URL]),
    "no-scheme": (["--redis-url", "localhost:6379"], ["'localhost:6379'", EXPECTED_URL]),
    "password-masked": (["--redis-url", "redis://u:hunter2@h:1/x"], ["'redis://u:***@h:1/x'", "db 'x'"]),
    "sentinel-no-master": (["--redis-url", "redis+sentinel://h:26379"], ["master name", EXPECTED_URL]),
    "timeout-negative": (["--backend-timeout", "-1"], ["--backend-timeout", "'-1' must be above 0"]),
    "timeout-text": (["--backend-timeout", "soon"], ["--backend-timeout", "'soon' is not a float"]),
    "max-keys-zero": (["--memory-max-keys", "0"], ["--memory-max-keys", "'0' must be above 0"]),
    "failure-mode": (
        ["--failure-mode", "maybe"],
        ["--failure-mode", "'maybe'", "'unavailable', 'allow', 'deny'"],
    ),
    "listen": (["--listen", "nonsense"], ["--listen 'nonsense'", "expected HOST:PORT"]),
    "metrics-listen": (
        ["--metrics-listen", "127.0.0.1:99999"],
        ["--metrics-listen '127.0.0.1:99999'", "HOST:PORT"],
    ),
}


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legation", "ratelimit", *args], capture_output=True, text=True, timeout=30
    )


def human_lines(stderr: str) -> list[str]:
    """stderr without the JSON log lines."""
    return [line for line in stderr.splitlines() if line and not line.startswith("{")]


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_flag_is_one_line_and_exit_1(case: str, good: Path) -> None:
    args, fragments = CASES[case]
    result = run(["--config", str(good), *args])
    lines = human_lines(result.stderr)
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert all(f in lines[0] for f in fragments), lines[0]
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("missing.yaml", None, "no such file or directory"),
        ("null.yaml", "domain:\ndescriptors:\n", "config file cannot have empty domain"),
        (
            "share.yaml",
            "domain: d\ndescriptors:\n  - key: k\n    share_threshold: true\n",
            "share_threshold can only",
        ),
        ("meta.yaml", "domain: d\ndescriptors:\n  - key: k\n    metadata: [1]\n", "metadata"),
    ],
)
def test_bad_file_is_one_line_naming_it_and_exit_1(
    tmp_path: Path, name: str, text: str | None, fragment: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    result = run(["--config", str(path)])
    lines = human_lines(result.stderr)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith(str(path)) and fragment in lines[0], result.stderr
