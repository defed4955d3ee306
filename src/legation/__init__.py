"""Legation: API gateway services around Envoy.

The `legation` package holds what every process shares: the CLI, the gRPC server runtime,
metrics and health endpoints, logging, and config-file helpers. The services live in
`services/`, the route controller in `controller/`.
"""

__version__ = "0.1.0"
