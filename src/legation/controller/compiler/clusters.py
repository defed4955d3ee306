"""Upstream clusters: one per distinct upstream (address, HTTP/2, circuit breakers), with a
stable name derived from it."""

from __future__ import annotations

import hashlib
import re

from legation.api.v1alpha1 import (
    CircuitBreakers,
)
from legation.api.v1alpha1.fields import Upstream
from legation.controller.compiler.ir import (
    Cluster,
)

__all__ = ["cluster_name", "upstream_cluster"]


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def cluster_name(upstream: Upstream, http2: bool = False, breakers: CircuitBreakers | None = None) -> str:
    """A stable cluster name from the service address: `svc_<host, dots as _>_<port>`, with
    `_tls` for https, `_h2` for HTTP/2, and `_cb<hash>` when circuit breakers are set (so that
    Mappings with different settings for the same service get different clusters)."""
    name = f"svc_{_UNSAFE.sub('_', upstream.host.replace('.', '_'))}_{upstream.port}"
    if upstream.tls:
        name += "_tls"
    if http2:
        name += "_h2"
    if breakers is not None:
        digest = hashlib.sha256(breakers.model_dump_json().encode()).hexdigest()[:8]
        name += f"_cb{digest}"
    return name


def upstream_cluster(upstream: Upstream, http2: bool, breakers: CircuitBreakers | None) -> Cluster:
    b = breakers or CircuitBreakers()
    return Cluster(
        name=cluster_name(upstream, http2, breakers),
        host=upstream.host,
        port=upstream.port,
        tls=upstream.tls,
        http2=http2,
        max_connections=b.max_connections,
        max_pending_requests=b.max_pending_requests,
        max_requests=b.max_requests,
        max_retries=b.max_retries,
    )
