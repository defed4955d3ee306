"""Counters of the servers under test: our services' Prometheus metrics, Envoy's admin stats.

They are read before and after every load run: h2load cannot see gRPC status codes or denies.
Counter names are flattened to strings (``grpc:OK``, ``decision:deny:expired``, ``envoy:...``).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Mapping

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Namer", "envoy_counters", "parse_envoy_stats", "prometheus_counters", "service_counters"]

Namer = Callable[[str, Mapping[str, str]], str | None]
"""(sample name, labels) -> the flat counter name, or None to skip the sample."""


def prometheus_counters(text: str, namer: Namer) -> dict[str, float]:
    """Samples of a Prometheus text, summed by the flat name ``namer`` gives them."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = namer(sample.name, sample.labels)
            if key is not None:
                out[key] = out.get(key, 0.0) + sample.value
    return out


def service_counters(metrics_port: int | None, namer: Namer) -> dict[str, float]:
    """The counters of a service's ``/metrics`` (empty if there is none or it does not answer)."""
    if metrics_port is None:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return prometheus_counters(text, namer)


def parse_envoy_stats(text: str, prefix: str) -> dict[str, float]:
    """Envoy's integer ``/stats`` lines under ``prefix``, as ``envoy:<rest of the name>``."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and name.startswith(prefix) and value.strip().isdigit():
            out["envoy:" + name.removeprefix(prefix)] = float(value)
    return out


def envoy_counters(admin_port: int, prefix: str = "http.front.") -> dict[str, float]:
    """Envoy's counters under ``prefix`` (default: the bench's ``front`` listener)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as resp:
        return parse_envoy_stats(resp.read().decode(), prefix)
