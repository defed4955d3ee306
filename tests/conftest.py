"""Shared fixtures: real Redis, Envoy and rate limit service processes on loopback ports.

Factories (call them in a test; every process is stopped at teardown, even on failure):

- ``redis_server()`` -> RedisProcess (.port, .url, .stop(), .start(), .kill(), .pause())
- ``envoy(bootstrap, values=..., extra_ports=...)`` -> EnvoyProcess (.port, .admin_port, .stats())
- ``ratelimit_service(config, redis_url=..., extra_args=...)`` -> RateLimitProcess
  (.port, .metrics_port, .address, .proc, .metrics_text())
- ``authz_service(config, extra_args=..., jwks_allow_insecure=True)`` -> AuthzProcess (same handles)

``module_launcher`` gives the same for module-scoped fixtures (``.redis()``, ``.envoy()``,
``.ratelimit()``, ``.authz()``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# tests/ on sys.path whatever the import mode, so that `fixtures` is importable everywhere.
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from fixtures.processes import (
    AuthzProcess,
    EnvoyProcess,
    Launcher,
    RateLimitProcess,
    RedisProcess,
    launcher,
)

FIXTURES_DIR = Path(__file__).parent / "fixtures"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        item.stash[_FAILED] = True
        module = item.getparent(pytest.Module)
        if module is not None:
            module.stash[_FAILED] = True


_FAILED = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", help="tests/golden: rewrite out/ instead of comparing"
    )


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES_DIR


@pytest.fixture
def launch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Launcher]:
    """A per-test Launcher; dumps every process log tail if the test failed."""
    with launcher(tmp_path / "procs", lambda: request.node.stash.get(_FAILED, False)) as owner:
        yield owner


@pytest.fixture(scope="module")
def module_launcher(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Launcher]:
    """A per-module Launcher for expensive shared setups."""
    log_dir = tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2])
    with launcher(log_dir, lambda: request.node.stash.get(_FAILED, False)) as owner:
        yield owner


@pytest.fixture
def redis_server(launch: Launcher) -> Callable[..., RedisProcess]:
    return launch.redis


@pytest.fixture
def envoy(launch: Launcher) -> Callable[..., EnvoyProcess]:
    return launch.envoy


@pytest.fixture
def ratelimit_service(launch: Launcher) -> Callable[..., RateLimitProcess]:
    return launch.ratelimit


@pytest.fixture
def authz_service(launch: Launcher) -> Callable[..., AuthzProcess]:
    return launch.authz


def pytest_collection_modifyitems(config: pytest.Config, items: list[Any]) -> None:
    # Everything under tests/e2e drives real processes.
    for item in items:
        if "/e2e/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)
