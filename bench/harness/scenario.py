"""What a scenario module offers ``python -m bench``: its name, options and entry point."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Scenario", "exit_on_sigterm"]


@dataclass(frozen=True)
class Scenario:
    """One benchmark: ``python -m bench NAME [options]``."""

    name: str
    description: str
    """The ``--help`` text of the scenario (its module docstring)."""
    configure: Callable[[argparse.ArgumentParser], None]
    """Adds the scenario's options."""
    main: Callable[[argparse.Namespace], int]
    """Runs it from the parsed options; the exit status."""


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so every ``with started(...)`` block stops its process."""

    def handler(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, handler)
