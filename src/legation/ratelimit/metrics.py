"""Prometheus metrics of the rate limit service.

Labels carry request values only where a rule asks for them (`detailed_metric`,
`value_to_metric`), and then at most `max_value_rules` distinct `rule` labels per process: past
that bound, a new one is counted under its limit's static rule name with `#other` appended, so a
client cycling through values cannot grow the metrics without bound. Per-decision metrics are
FastCounter/FastHistogram (see legation/fastmetrics).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from legation.core.fastmetrics import FastCounter, FastHistogram
from legation.ratelimit.rules import Limit

__all__ = ["CONFIG_INFO", "CONFIG_LOADS", "MEMORY_EVICTIONS", "MEMORY_KEYS", "Metrics"]

# Distinct value-bearing `rule` labels kept before new ones collapse into `<rule>#other`.
MAX_VALUE_RULES = 1000

DECISIONS = FastCounter(
    "legation_ratelimit_decisions_total",
    "Rate limit decisions per limit: code is ok, over_limit or shadow_over_limit.",
    ["domain", "rule", "code"],
)
BACKEND_SECONDS = FastHistogram(
    "legation_ratelimit_backend_latency_seconds",
    "Time for one backend round trip (one per ShouldRateLimit).",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
)
BACKEND_ERRORS = FastCounter(
    "legation_ratelimit_backend_errors_total",
    "Backend calls that gave no decision, by reason (timeout, connection, unavailable, error, overloaded).",
    ["reason"],
)
CONFIG_LOADS = Counter(
    "legation_ratelimit_config_loads_total", "Config loads and reloads, by result.", ["result"]
)
CONFIG_INFO = Gauge("legation_ratelimit_config_info", "The config version in force (value 1).", ["version"])
MEMORY_KEYS = Gauge("legation_ratelimit_memory_keys", "Counters held by the in-memory backend.")
MEMORY_EVICTIONS = Counter(
    "legation_ratelimit_memory_evictions_total",
    "In-memory counters dropped at the key cap: reason expired (window over) or capacity (still live).",
    ["reason"],
)


class Metrics:
    """The limiter's Observer: records decisions and backend calls."""

    def __init__(self, *, max_value_rules: int = MAX_VALUE_RULES) -> None:
        self._max_value_rules = max_value_rules
        self._value_rules: set[str] = set()

    def decided(self, domain: str, limit: Limit, code: str, stat_key: str | None) -> None:
        DECISIONS.inc((domain, self._rule(limit, stat_key), code))

    def _rule(self, limit: Limit, stat_key: str | None) -> str:
        """The reference's stats key where it names values (bounded), else the name or path."""
        if stat_key is None:
            return limit.rule
        if stat_key in self._value_rules:
            return stat_key
        if len(self._value_rules) < self._max_value_rules:
            self._value_rules.add(stat_key)
            return stat_key
        return f"{limit.rule}#other"

    def backend(self, seconds: float, error: str | None) -> None:
        if error is None:
            BACKEND_SECONDS.observe(seconds)
        else:
            BACKEND_ERRORS.inc((error,))
