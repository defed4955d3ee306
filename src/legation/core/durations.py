"""Durations as Kubernetes and Envoy users write them: `200ms`, `60s`, `10m`, `1h30m`, `2d`."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

__all__ = ["Duration", "parse_duration"]

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds in a duration string; a bare number is seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 200ms, 60s or 10m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value and _PART.sub("", value.strip()) == "":
        seconds = sum(float(n) * _SECONDS[unit] for n, unit in _PART.findall(value.strip()))
    else:
        raise ValueError(f"invalid duration {value!r} (expected e.g. 200ms, 60s, 10m, 1h30m)")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A pydantic field type: accepts `10m` (or a number of seconds), holds seconds as a float."""
