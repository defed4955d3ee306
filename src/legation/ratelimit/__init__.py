"""Global rate limit service for Envoy (envoy.service.ratelimit.v3), sliding windows in Redis.

Modules, from the outside in: `server` (gRPC adapter), `limiter` (decisions), `rules` (the
compiled descriptor tree), `config` (the YAML format and its loader), `backends` (counters).
"""
