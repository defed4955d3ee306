"""Remote JWKS of native policies → jwt_authn `remote_jwks`.

- `http_uri`: the policy's URI through the origin's cluster, 2 s per attempt (the service's fetch
  timeout); `retry_policy`: one retry after a jittered backoff (0.5 s base, 2 s cap), so a fetch
  takes at most about 4.5 s whatever the endpoint does.
- `cache_duration`: `jwks.cacheDuration` in whole seconds (at least 1). With `async_fetch`, Envoy
  refetches on the main thread 5 s before it runs out (at its end when it is 5 s or less), keeps the
  last keys for as long as fetches fail (they never expire), and retries a failed fetch every
  `jwks.refetchCooldown` (the service's retry interval).
- `async_fetch.fast_listener: false`, deliberately: a listener (at start-up, and at every listener
  update, which builds jwt_authn anew) warms until each remote JWKS is fetched or its fetch failed,
  while the previous listener keeps serving. So no request meets a provider without keys; with
  `fast_listener: true` the first requests would each start their own blocking fetch on a worker.
  The price: a listener update waits for the slowest JWKS endpoint, at most one fetch (~4.5 s).

The cluster of each origin: translate/jwks_clusters.py.
"""

from __future__ import annotations

from envoy.config.core.v3 import http_uri_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt

from legation.controller.compiler.remote_jwks import RemoteKeys
from legation.controller.translate.options import duration

__all__ = ["FETCH_TIMEOUT", "remote_jwks"]

FETCH_TIMEOUT = 2.0
"""Seconds per fetch attempt, as the authz service's JWKS fetch."""
_RETRIES = 1
_BACKOFF = (0.5, 2.0)


def remote_jwks(keys: RemoteKeys) -> jwt.RemoteJwks:
    """jwt_authn's `remote_jwks` for one provider."""
    remote = jwt.RemoteJwks()
    remote.http_uri.CopyFrom(
        http_uri_pb2.HttpUri(uri=keys.uri, cluster=keys.cluster, timeout=duration(FETCH_TIMEOUT))
    )
    remote.cache_duration.CopyFrom(duration(keys.cache_duration))
    remote.async_fetch.fast_listener = False
    remote.async_fetch.failed_refetch_duration.CopyFrom(duration(keys.refetch_cooldown))
    remote.retry_policy.num_retries.value = _RETRIES
    remote.retry_policy.retry_back_off.base_interval.CopyFrom(duration(_BACKOFF[0]))
    remote.retry_policy.retry_back_off.max_interval.CopyFrom(duration(_BACKOFF[1]))
    return remote
