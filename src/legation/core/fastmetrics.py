"""Hot-path metrics: plain counters and histograms exported to Prometheus at scrape time.

prometheus_client takes a lock and walks label maps on every `inc()`/`observe()`; at thousands of
calls per second on one core that showed up in the gRPC services' profiles. Every Legation
service updates its metrics from one asyncio thread, and scrapes are served on the same loop, so
plain dict and list updates are safe here and cost a fraction of that. Only for single-threaded
use: anything touched from other threads keeps using prometheus_client directly.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

__all__ = ["FastCounter", "FastHistogram", "HistogramChild"]


class FastCounter(Collector):
    """A labelled counter: `inc(("a", "b"))`. Registered with the default registry."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labels = tuple(labels)
        self.values: dict[tuple[str, ...], float] = {}
        REGISTRY.register(self)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.values
        values[labels] = values.get(labels, 0.0) + amount

    def get(self, labels: tuple[str, ...]) -> float:
        return self.values.get(labels, 0.0)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in list(self.values.items()):
            family.add_metric(labels, value)
        yield family


class FastHistogram(Collector):
    """A histogram with fixed upper bounds; `child(label_values)` gives the object to observe."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = tuple(sorted(buckets))
        self.labels = tuple(labels)
        self.children: dict[tuple[str, ...], HistogramChild] = {}
        REGISTRY.register(self)

    def child(self, labels: tuple[str, ...] = ()) -> HistogramChild:
        found = self.children.get(labels)
        if found is None:
            found = self.children[labels] = HistogramChild(self.bounds)
        return found

    def observe(self, value: float) -> None:
        self.child().observe(value)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, child in list(self.children.items()):
            cumulative, total = [], 0
            for bound, count in zip((*self.bounds, float("inf")), child.counts, strict=True):
                total += count
                cumulative.append((_bound(bound), total))
            family.add_metric(labels, cumulative, sum_value=child.sum)
        yield family


class HistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)
