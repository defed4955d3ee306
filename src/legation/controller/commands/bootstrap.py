"""`legation envoy-bootstrap`: the Envoy bootstrap that points Envoy at a controller.

Everything but the ADS connection itself comes over ADS (listeners, routes, clusters, secrets),
so the bootstrap is small: the node identity, the admin interface, and one static cluster to the
controller's `--xds-listen` address (HTTP/2, DNS-resolved when it is a name, as a Kubernetes
Service is). `legation up` and the Helm chart use the same function.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import yaml

from legation.api.v1alpha1.fields import is_ip_literal
from legation.core.grpc_runtime import split_host_port

__all__ = ["add_arguments", "bootstrap", "run"]

XDS_CLUSTER = "legation-xds"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def bootstrap(
    *,
    xds: str = "127.0.0.1:18000",
    node_id: str = "envoy",
    node_cluster: str = "legation",
    admin: str | None = "127.0.0.1:9901",
    delta: bool = False,
) -> dict[str, Any]:
    """The bootstrap as plain data (dump it as YAML or JSON). `delta`: incremental xDS
    (DELTA_GRPC) instead of state of the world; the controller serves both."""
    host, port = split_host_port(xds)
    config: dict[str, Any] = {
        "node": {"id": node_id, "cluster": node_cluster},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STATIC" if is_ip_literal(host) else "STRICT_DNS",
                    "connect_timeout": "1s",
                    # Keepalive notices a controller that vanished without closing the stream
                    # (a node lost), so Envoy reconnects instead of waiting on a dead connection.
                    "typed_extension_protocol_options": {
                        _HTTP_OPTIONS: {
                            "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    "connection_keepalive": {"interval": "30s", "timeout": "5s"}
                                }
                            },
                        }
                    },
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": {"socket_address": _address(host, port)}}}
                                ]
                            }
                        ],
                    },
                }
            ]
        },
        "layered_runtime": {
            "layers": [
                # Envoy warns about (and caps) downstream connections when no limit is set.
                {
                    "name": "static",
                    "static_layer": {"overload": {"global_downstream_max_connections": 50000}},
                }
            ]
        },
    }
    if admin is not None:
        admin_host, admin_port = split_host_port(admin)
        config["admin"] = {"address": {"socket_address": _address(admin_host, admin_port)}}
    return config


def _address(host: str, port: int) -> dict[str, Any]:
    return {"address": host, "port_value": port}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--xds", default="127.0.0.1:18000", metavar="HOST:PORT", help="the controller's --xds-listen"
    )
    parser.add_argument("--node-id", default="envoy", help="Envoy's node id (default %(default)s)")
    parser.add_argument("--node-cluster", default="legation", help="Envoy's node cluster")
    parser.add_argument(
        "--admin",
        default="127.0.0.1:9901",
        metavar="HOST:PORT",
        help="Envoy's admin interface; 'none' for no admin listener",
    )
    parser.add_argument(
        "--delta",
        action="store_true",
        help="incremental (delta) xDS: only changed resources are sent (default: state of the world)",
    )
    parser.add_argument("--format", choices=["yaml", "json"], default="yaml")


def run(args: argparse.Namespace) -> int:
    try:
        config = bootstrap(
            xds=args.xds,
            node_id=args.node_id,
            node_cluster=args.node_cluster,
            admin=None if args.admin == "none" else args.admin,
            delta=args.delta,
        )
    except ValueError as exc:
        print(f"legation envoy-bootstrap: {exc}")
        return 2
    if args.format == "json":
        print(json.dumps(config, indent=2))
    else:
        print(yaml.safe_dump(config, sort_keys=False), end="")
    return 0
