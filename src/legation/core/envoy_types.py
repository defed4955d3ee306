"""Envoy's xDS resource types, as type URLs, and the order ADS pushes them in.

Facts of Envoy's API that the translator (which keys its output by type) and the ADS server (which
serves by type) must agree on; neither owns them, so they live here, below both.
"""

from __future__ import annotations

__all__ = ["ADS_ORDER", "CLUSTER", "ENDPOINT", "LISTENER", "ROUTE", "SECRET", "TYPE_PREFIX", "WILDCARD_TYPES"]

TYPE_PREFIX = "type.googleapis.com/"
CLUSTER = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET = TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

ADS_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET)
"""The order in which one snapshot change is pushed (Envoy's advice for ADS: clusters and their
endpoints before the listeners that use them, route configurations after their listeners)."""

WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
"""Types Envoy subscribes to as a whole; the others are sent only by requested name."""
