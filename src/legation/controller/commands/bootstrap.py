"""`legation envoy-bootstrap`: the Envoy bootstrap that points Envoy at a controller.

Everything but the ADS connection itself comes over ADS (listeners, routes, clusters, secrets),
so the bootstrap is small: the node identity, the admin interface, and one static cluster to the
controller's `--xds-listen` address (HTTP/2, DNS-resolved when it is a name, as a Kubernetes
Service is). `legation up` and the Helm chart use the same function.

With `tls` the connection is mTLS: Envoy presents `tls.crt`/`tls.key` from a certificate directory
(a Kubernetes TLS Secret's layout, `ca.crt` beside them) and accepts only a controller certificate
that chains to `ca.crt` and names `server_name`. The certificate and CA reach the cluster through
two small SDS files (`sds_files`), the way Envoy rotates xDS certificates without a restart: Envoy
watches the certificate directory and re-reads the files when they change (a Secret volume swaps
them atomically).

Keepalive: Envoy pings the controller every `keepalive` seconds on the xDS connection, to notice a
controller that vanished without closing it. The controller accepts pings that often
(`legation controller --xds-keepalive-min-interval`, which must stay below this interval; gRPC
servers otherwise answer frequent pings on a quiet stream with GOAWAY, and Envoy reconnects).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from legation.api.v1alpha1.fields import is_ip_literal
from legation.core.grpc_runtime import split_host_port

__all__ = ["KEEPALIVE_SECONDS", "XdsTls", "add_arguments", "bootstrap", "run", "sds_files"]

XDS_CLUSTER = "legation-xds"
KEEPALIVE_SECONDS = 30
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3"
CLIENT_CERTIFICATE_SDS = "xds-client-certificate.yaml"
TRUSTED_CA_SDS = "xds-trusted-ca.yaml"


@dataclass(frozen=True, kw_only=True)
class XdsTls:
    """mTLS to the controller."""

    cert_dir: str
    """Directory with Envoy's client certificate `tls.crt`, its key `tls.key` and the CA `ca.crt`
    that signed the controller's certificate."""
    sds_dir: str
    """Directory of the two SDS files (`sds_files`) that point Envoy at those files."""
    server_name: str
    """A name (DNS or IP address) the controller's certificate must carry; also the SNI."""


def sds_files(tls: XdsTls) -> dict[str, dict[str, Any]]:
    """File name → content of the SDS files `bootstrap(tls=...)` refers to."""
    watched = {"path": tls.cert_dir}
    san_type = "IP_ADDRESS" if is_ip_literal(tls.server_name) else "DNS"
    certificate = {
        "@type": f"{_TLS}.Secret",
        "name": "xds-client-certificate",
        "tls_certificate": {
            "certificate_chain": {"filename": f"{tls.cert_dir}/tls.crt"},
            "private_key": {"filename": f"{tls.cert_dir}/tls.key"},
            "watched_directory": watched,
        },
    }
    trusted = {
        "@type": f"{_TLS}.Secret",
        "name": "xds-trusted-ca",
        "validation_context": {
            "trusted_ca": {"filename": f"{tls.cert_dir}/ca.crt"},
            "watched_directory": watched,
            "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": tls.server_name}}],
        },
    }
    return {
        CLIENT_CERTIFICATE_SDS: {"resources": [certificate]},
        TRUSTED_CA_SDS: {"resources": [trusted]},
    }


def _transport_socket(tls: XdsTls) -> dict[str, Any]:
    def sds(name: str, file: str) -> dict[str, Any]:
        source = {"path_config_source": {"path": f"{tls.sds_dir}/{file}"}, "resource_api_version": "V3"}
        return {"name": name, "sds_config": source}

    context: dict[str, Any] = {
        "@type": f"{_TLS}.UpstreamTlsContext",
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "tls_certificate_sds_secret_configs": [sds("xds-client-certificate", CLIENT_CERTIFICATE_SDS)],
            "validation_context_sds_secret_config": sds("xds-trusted-ca", TRUSTED_CA_SDS),
        },
    }
    if not is_ip_literal(tls.server_name):
        context["sni"] = tls.server_name
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def bootstrap(
    *,
    xds: str = "127.0.0.1:18000",
    node_id: str = "envoy",
    node_cluster: str = "legation",
    admin: str | None = "127.0.0.1:9901",
    delta: bool = False,
    tls: XdsTls | None = None,
    keepalive: float = KEEPALIVE_SECONDS,
) -> dict[str, Any]:
    """The bootstrap as plain data (dump it as YAML or JSON). `delta`: incremental xDS
    (DELTA_GRPC) instead of state of the world; the controller serves both. `tls`: mTLS to the
    controller (None: plaintext, for a controller on loopback)."""
    host, port = split_host_port(xds)
    xds_cluster = _xds_cluster(host, port, keepalive=keepalive)
    if tls is not None:
        xds_cluster["transport_socket"] = _transport_socket(tls)
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
        "static_resources": {"clusters": [xds_cluster]},
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


def _xds_cluster(host: str, port: int, *, keepalive: float) -> dict[str, Any]:
    endpoint = {"endpoint": {"address": {"socket_address": _address(host, port)}}}
    return {
        "name": XDS_CLUSTER,
        "type": "STATIC" if is_ip_literal(host) else "STRICT_DNS",
        "connect_timeout": "1s",
        # Keepalive notices a controller that vanished without closing the stream (a node
        # lost), so Envoy reconnects instead of waiting on a dead connection.
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": f"type.googleapis.com/{_HTTP_OPTIONS}",
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": _duration(keepalive), "timeout": "5s"}
                    }
                },
            }
        },
        "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [endpoint]}]},
    }


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


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
    parser.add_argument(
        "--xds-keepalive",
        type=float,
        default=KEEPALIVE_SECONDS,
        metavar="SECONDS",
        help="ping the controller this often (default %(default)s; above the controller's "
        "--xds-keepalive-min-interval)",
    )
    tls = parser.add_argument_group("mTLS to the controller")
    tls.add_argument(
        "--xds-tls-dir",
        metavar="DIR",
        help="Envoy's client certificate tls.crt, its key tls.key and the CA ca.crt (the controller's "
        "issuer), as a Kubernetes TLS Secret mounts them; without it the connection is plaintext",
    )
    tls.add_argument(
        "--xds-server-name",
        metavar="NAME",
        help="a DNS name or IP address the controller's certificate must carry (default: the --xds host)",
    )
    tls.add_argument(
        "--sds-dir",
        metavar="DIR",
        help="where to write the two SDS files the bootstrap refers to (default: the current directory)",
    )
    parser.add_argument("--format", choices=["yaml", "json"], default="yaml")


def run(args: argparse.Namespace) -> int:
    try:
        tls = _tls(args)
        config = bootstrap(
            xds=args.xds,
            node_id=args.node_id,
            node_cluster=args.node_cluster,
            admin=None if args.admin == "none" else args.admin,
            delta=args.delta,
            tls=tls,
            keepalive=args.xds_keepalive,
        )
    except ValueError as exc:
        print(f"legation envoy-bootstrap: {exc}")
        return 2
    if tls is not None:
        for name, content in sds_files(tls).items():
            (Path(tls.sds_dir) / name).write_text(yaml.safe_dump(content, sort_keys=False))
    if args.format == "json":
        print(json.dumps(config, indent=2))
    else:
        print(yaml.safe_dump(config, sort_keys=False), end="")
    return 0


def _tls(args: argparse.Namespace) -> XdsTls | None:
    if args.xds_tls_dir is None:
        if args.xds_server_name or args.sds_dir:
            raise ValueError("--xds-server-name and --sds-dir need --xds-tls-dir")
        return None
    return XdsTls(
        cert_dir=str(Path(args.xds_tls_dir).absolute()),
        sds_dir=str(Path(args.sds_dir or ".").absolute()),
        server_name=args.xds_server_name or split_host_port(args.xds)[0],
    )
