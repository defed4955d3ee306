"""`update_golden`: true with `pytest --update-golden` (see tests/conftest.py) or
LEGATION_UPDATE_GOLDEN=1; the golden tests then rewrite `out/` instead of comparing."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return (
        bool(request.config.getoption("--update-golden")) or os.environ.get("LEGATION_UPDATE_GOLDEN") == "1"
    )
