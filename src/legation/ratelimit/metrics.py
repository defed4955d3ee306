"""Prometheus metrics of the rate limit service.

Labels never carry raw descriptor values (unbounded cardinality) unless the rule asked for
`detailed_metric`. Per-decision metrics are FastCounter/FastHistogram (see legation/fastmetrics).
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge

from legation.core.fastmetrics import FastCounter, FastHistogram
from legation.ratelimit.rules import Limit

__all__ = ["CONFIG_INFO", "CONFIG_LOADS", "Metrics"]

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


class Metrics:
    """The limiter's Observer: records decisions and backend calls."""

    def decided(self, domain: str, limit: Limit, code: str, values: Sequence[tuple[str, str]]) -> None:
        rule = limit.rule
        if limit.detailed:
            rule = rule + "".join(f".{k}_{v}" for k, v in values)
        DECISIONS.inc((domain, rule, code))

    def backend(self, seconds: float, error: str | None) -> None:
        if error is None:
            BACKEND_SECONDS.observe(seconds)
        else:
            BACKEND_ERRORS.inc((error,))
