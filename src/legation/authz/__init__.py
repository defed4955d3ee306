"""External authorization for Envoy (envoy.service.auth.v3): per-team JWT policies."""
