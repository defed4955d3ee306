"""Config reload without restart; broken configs (at reload and at start); directory configs."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.probes import json_log_lines, metric_samples, metric_sum
from fixtures.processes import Launcher, RateLimitProcess, free_port, legation_binary, wait_for
from fixtures.rls import OK, OVER_LIMIT, RlsClient

pytestmark = pytest.mark.e2e

RELOAD_WITHIN = 3.0  # seconds; the service promises "about a second"


def config_text(limit: int, unit: str = "minute", domain: str = "r") -> str:
    # Line numbers matter: `unit` is on line 5, `requests_per_unit` on line 6.
    return (
        f"domain: {domain}\n"
        "descriptors:\n"
        "  - key: k\n"
        "    rate_limit:\n"
        f"      unit: {unit}\n"
        f"      requests_per_unit: {limit}\n"
    )


BROKEN = {
    # name: (text, line the error must name or None when the parser decides)
    "bad-unit": (config_text(3, unit="fortnight"), 5),
    "unknown-key": (config_text(3).replace("requests_per_unit", "request_per_unit"), 6),
    "negative-limit": (config_text(-1), 6),
    "yaml-syntax": ("domain: r\ndescriptors:\n  - key: [k\n    rate_limit: {unit: minute\n", None),
    "no-domain": ("descriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 1}\n", None),
}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_in_place(path: Path, text: str) -> None:
    with open(path, "r+") as f:  # same inode: truncate and rewrite
        f.truncate(0)
        f.write(text)


def current_limit(client: RlsClient, domain: str = "r") -> int | None:
    """The limit that applies to a fresh value of key k (None: no rule applies)."""
    resp = client.should(domain, [[("k", f"probe-{time.time_ns()}")]])
    status = resp.statuses[0]
    return int(status.current_limit.requests_per_unit) if status.HasField("current_limit") else None


def wait_limit(client: RlsClient, expected: int | None, domain: str = "r") -> float:
    """Poll until the limit is ``expected``; return how long it took."""
    start = time.monotonic()
    wait_for(
        lambda: current_limit(client, domain) == expected,
        timeout=RELOAD_WITHIN,
        interval=0.1,
        what=f"limit {expected} on domain {domain!r} (now {current_limit(client, domain)})",
    )
    return time.monotonic() - start


def _enforced(client: RlsClient, limit: int, domain: str = "r") -> list[int]:
    value = f"enf-{time.time_ns()}"
    return [client.should(domain, [[("k", value)]]).overall_code for _ in range(limit + 1)]


def _config_loads(service: RateLimitProcess, result: str) -> float:
    return metric_sum(service.metrics_text(), "legation_ratelimit_config_loads_total", result=result)


def _config_versions(service: RateLimitProcess) -> set[str]:
    samples = metric_samples(service.metrics_text(), "legation_ratelimit_config_info")
    return {labels.get("version", "") for labels, value in samples if value == 1}


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "conf" / "ratelimit.yaml"
    path.parent.mkdir()
    path.write_text(config_text(2))
    return path


@pytest.fixture
def running(launch: Launcher, config_file: Path) -> Iterator[tuple[RateLimitProcess, RlsClient]]:
    service = launch.ratelimit(config_file)
    with RlsClient(service.address) as client:
        yield service, client


def test_changes_apply_without_restart(
    running: tuple[RateLimitProcess, RlsClient], config_file: Path
) -> None:
    service, client = running
    pid = service.proc.pid
    assert current_limit(client) == 2
    assert _enforced(client, 2) == [OK, OK, OVER_LIMIT]
    version_before = _config_versions(service)
    assert len(version_before) == 1, version_before

    _write_atomic(config_file, config_text(5))  # editors and ConfigMaps: rename over the file
    wait_limit(client, 5)
    assert _enforced(client, 5) == [OK] * 5 + [OVER_LIMIT]

    _write_in_place(config_file, config_text(7))  # same inode
    wait_limit(client, 7)
    assert _enforced(client, 7) == [OK] * 7 + [OVER_LIMIT]

    _write_atomic(config_file, config_text(9, unit="hour"))  # and once more after an in-place
    wait_limit(client, 9)

    assert service.proc.pid == pid and service.process.running
    assert _config_loads(service, "ok") >= 4
    assert _config_loads(service, "error") == 0
    versions = _config_versions(service)
    assert len(versions) == 1 and versions != version_before, (version_before, versions)


@pytest.mark.parametrize("case", ["bad-unit", "unknown-key", "yaml-syntax"])
def test_broken_reload_keeps_the_old_config(
    running: tuple[RateLimitProcess, RlsClient], config_file: Path, case: str
) -> None:
    service, client = running
    assert current_limit(client) == 2
    errors_before = _config_loads(service, "error")
    text, line = BROKEN[case]

    _write_atomic(config_file, text)
    wait_for(
        lambda: _config_loads(service, "error") > errors_before,
        timeout=RELOAD_WITHIN,
        interval=0.1,
        what="config error counter to increase",
    )
    assert current_limit(client) == 2
    assert _enforced(client, 2) == [OK, OK, OVER_LIMIT]

    # The error is logged as a JSON line naming the file (and the line).
    stderr = service.process.stderr_text()
    records = json_log_lines(stderr)
    needle = f"{config_file.name}:{line}" if line else config_file.name
    matching = [r for r in records if needle in str(r)]
    assert matching, f"no log record mentions {needle!r}:\n{stderr[-3000:]}"
    if line:
        assert f"{config_file.name}:{line}:" in str(matching[-1]), matching[-1]

    # Still serving, and a later good config applies again.
    assert service.health() == "SERVING"
    _write_in_place(config_file, config_text(4))
    wait_limit(client, 4)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_config_at_start_exits_nonzero(tmp_path: Path, case: str) -> None:
    text, line = BROKEN[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    proc = subprocess.run(
        [
            legation_binary(),
            "ratelimit",
            "--config",
            str(path),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--metrics-listen",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode in (1, 2), (proc.returncode, proc.stderr[-2000:])
    needle = f"{path.name}:{line}:" if line else path.name
    assert needle in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_missing_config_path_exits_nonzero(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    proc = subprocess.run(
        [legation_binary(), "ratelimit", "--config", str(path), "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode in (1, 2), proc.stderr[-2000:]
    assert "nope.yaml" in proc.stderr


def test_directory_of_files_several_domains(launch: Launcher, tmp_path: Path) -> None:
    conf = tmp_path / "conf.d"
    conf.mkdir()
    (conf / "alpha.yaml").write_text(config_text(1, domain="alpha"))
    (conf / "beta.yml").write_text(config_text(2, domain="beta"))
    (conf / "README.txt").write_text("not a config: [")
    service = launch.ratelimit(conf)
    with RlsClient(service.address) as client:
        assert current_limit(client, "alpha") == 1
        assert current_limit(client, "beta") == 2
        assert _enforced(client, 1, "alpha") == [OK, OVER_LIMIT]
        assert _enforced(client, 2, "beta") == [OK, OK, OVER_LIMIT]
        assert current_limit(client, "gamma") is None  # unknown domain: OK, no limit

        _write_atomic(conf / "gamma.yaml", config_text(6, domain="gamma"))  # a new file
        wait_limit(client, 6, "gamma")
        _write_in_place(conf / "alpha.yaml", config_text(3, domain="alpha"))  # a changed file
        wait_limit(client, 3, "alpha")
        (conf / "beta.yml").unlink()  # a removed file: its domain goes away
        wait_limit(client, None, "beta")
        assert current_limit(client, "gamma") == 6

        # One broken file keeps the whole previous config (all domains).
        (conf / "delta.yaml").write_text(BROKEN["bad-unit"][0].replace("domain: r", "domain: d"))
        wait_for(
            lambda: _config_loads(service, "error") >= 1,
            timeout=RELOAD_WITHIN,
            what="config error counted",
        )
        assert current_limit(client, "alpha") == 3
        assert current_limit(client, "gamma") == 6
        assert "delta.yaml:5:" in service.process.stderr_text()
