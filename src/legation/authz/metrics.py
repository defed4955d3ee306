"""Prometheus metrics of the authz service. Labels are bounded: policy names come from the
config, reasons are fixed strings; token values and subjects never become labels."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from legation.authz.authorizer import Authorizer, Verdict
from legation.authz.server import DecisionRecorder
from legation.authz.tokens import TokenCache

__all__ = ["CONFIG_INFO", "CONFIG_LOADS", "REJECTED", "DecisionMetrics", "register_cache", "set_rejected"]

DECISIONS = Counter(
    "legation_authz_decisions_total",
    "Authorization decisions by policy, result (allow or deny), HTTP status and reason.",
    ["policy", "result", "status", "reason"],
)
CONFIG_LOADS = Counter(
    "legation_authz_config_loads_total", "Policy loads and reloads, by result.", ["result"]
)
CONFIG_INFO = Gauge(
    "legation_authz_config_info", "The policy config version in force (value 1).", ["version"]
)

REJECTED = Gauge(
    "legation_authz_policy_rejected",
    "Policies of the config in force that could not be loaded (value 1); requests naming one are denied.",
    ["policy"],
)


def set_rejected(keys: Iterable[str]) -> None:
    """The rejected policies of the config just applied (the previous ones' series removed)."""
    REJECTED.clear()
    for key in keys:
        REJECTED.labels(key).set(1)


class DecisionMetrics(DecisionRecorder):
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer  # its policies bound the `policy` label
        self._children: dict[tuple[str, bool, int, str], Counter] = {}

    def record(self, verdict: Verdict) -> None:
        known = verdict.policy in self._authorizer.policies or verdict.policy in self._authorizer.rejected
        policy = verdict.policy if known else "-"
        key = (policy, verdict.allow, verdict.status, verdict.reason)
        child = self._children.get(key)
        if child is None:
            result = "allow" if verdict.allow else "deny"
            child = self._children[key] = DECISIONS.labels(
                policy, result, str(verdict.status), verdict.reason
            )
        child.inc()


class _CacheCollector(Collector):
    def __init__(self, cache: TokenCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "legation_authz_token_cache", "Verified-token cache lookups, by result.", labels=["result"]
        )
        family.add_metric(["hit"], self.cache.hits)
        family.add_metric(["miss"], self.cache.misses)
        yield family


def register_cache(cache: TokenCache) -> None:
    REGISTRY.register(_CacheCollector(cache))
