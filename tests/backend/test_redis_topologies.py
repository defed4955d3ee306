"""Every way to reach Redis that the issue names: unix socket, TLS, Sentinel and Cluster.

Each starts real redis-server processes (Debian's binary; Cluster uses CLUSTER ADDSLOTSRANGE
and CLUSTER MEET directly, so no redis-cli is needed) and makes real decisions through them.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import time
from pathlib import Path

import pytest
import redis as redis_sync
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fixtures.processes import HOST, Launcher, free_port, redis_binary, wait_for
from fixtures.redis_cluster import cluster_ports

from legation.ratelimit.backends.redis import connect
from legation.ratelimit.config import load_config_texts
from legation.ratelimit.limiter import DescriptorRequest, Limiter

RULES = load_config_texts(
    [
        (
            "c.yaml",
            "domain: topo\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 3}\n",
        )
    ]
).rules

BASE = ["--save", "", "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"]


async def three_then_denied(url: str, value: str, descriptors: int = 1) -> None:
    backend = connect(url)
    lim = Limiter(rules=RULES, backend=backend, timeout=2.0)
    descs = [DescriptorRequest(entries=(("k", f"{value}-{i}"),)) for i in range(descriptors)]
    try:
        results = [(await lim.should_rate_limit("topo", descs)).over for _ in range(4)]
    finally:
        await backend.close()
    assert results == [False, False, False, True]


def ping_until_ready(client: redis_sync.Redis, what: str) -> None:
    def ok() -> bool:
        try:
            return bool(client.ping())
        except redis_sync.RedisError:
            return False

    wait_for(ok, timeout=10, what=what)


async def test_unix_socket(launch: Launcher, tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    launch.spawn("redis-unix", [redis_binary(), "--port", "0", "--unixsocket", str(sock), *BASE])
    ping_until_ready(redis_sync.Redis(unix_socket_path=str(sock)), "redis on a unix socket")
    await three_then_denied(f"unix://{sock}", "unix")


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        san = [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signer, hashes.SHA256())


def make_tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("legation-test-ca", ca_key, "legation-test-ca", ca_key, ca=True)
    server = _cert("redis", server_key, "legation-test-ca", ca_key, ca=False)
    files = directory / "redis.crt", directory / "redis.key", directory / "ca.crt"
    files[0].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    files[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return files


async def test_tls(launch: Launcher, tmp_path: Path) -> None:
    cert, key, ca = make_tls_files(tmp_path)
    port = free_port()
    launch.spawn(
        "redis-tls",
        [redis_binary(), "--port", "0", "--tls-port", str(port), "--bind", HOST, "--tls-cert-file", str(cert),
         "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", *BASE],
    )  # fmt: skip
    ping_until_ready(redis_sync.Redis(host=HOST, port=port, ssl=True, ssl_ca_certs=str(ca)), "redis over TLS")
    await three_then_denied(f"rediss://{HOST}:{port}/0?ssl_ca_certs={ca}", "tls")


async def test_sentinel(launch: Launcher, tmp_path: Path) -> None:
    master_port, sentinel_port = free_port(), free_port()
    launch.spawn("redis-master", [redis_binary(), "--port", str(master_port), "--bind", HOST, *BASE])
    ping_until_ready(redis_sync.Redis(port=master_port), "sentinel's master")
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind {HOST}\nsentinel monitor main {HOST} {master_port} 1\n"
        "sentinel down-after-milliseconds main 5000\n"
    )
    launch.spawn("redis-sentinel", [redis_binary(), str(conf), "--sentinel"])
    sentinel = redis_sync.Redis(port=sentinel_port)
    wait_for(lambda: _master_known(sentinel), timeout=10, what="sentinel knows the master")
    await three_then_denied(f"redis+sentinel://{HOST}:{sentinel_port}/main", "sentinel")
    keys = redis_sync.Redis(port=master_port).keys("lg:*")
    assert keys, "the decisions were counted on the master that Sentinel named"


def _master_known(sentinel: redis_sync.Redis) -> bool:
    try:
        return sentinel.execute_command("SENTINEL", "get-master-addr-by-name", "main") is not None
    except redis_sync.RedisError:
        return False


async def test_cluster_without_crossslot(launch: Launcher, tmp_path: Path) -> None:
    ports = cluster_ports(3)
    for i, port in enumerate(ports):
        node_dir = tmp_path / f"node{i}"
        node_dir.mkdir()
        launch.spawn(
            f"redis-cluster-{i}",
            [redis_binary(), "--port", str(port), "--bind", HOST, "--cluster-enabled", "yes",
             "--cluster-config-file", str(node_dir / "nodes.conf"), "--dir", str(node_dir), *BASE],
        )  # fmt: skip
    clients = [redis_sync.Redis(port=p) for p in ports]
    for client in clients:
        ping_until_ready(client, "cluster node")
    ranges = [(0, 5460), (5461, 10922), (10923, 16383)]
    for client, (lo, hi) in zip(clients, ranges, strict=True):
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
    for port in ports[1:]:
        clients[0].execute_command("CLUSTER", "MEET", HOST, port)
    wait_for(lambda: all(_cluster_ok(c) for c in clients), timeout=20, what="cluster state ok")
    # four descriptors with different values: four keys over the slots, one script call per slot group
    await three_then_denied(f"redis+cluster://{HOST}:{ports[0]}", "cluster", descriptors=4)
    # several requests of two descriptors each, spread over the nodes, never CROSSSLOT
    for value in ("a", "b", "c"):
        await three_then_denied(f"redis+cluster://{HOST}:{ports[1]}", value, descriptors=2)
    assert sum(len(c.keys("lg:*")) for c in clients) == 4 + 3 * 2


def _cluster_ok(client: redis_sync.Redis) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text and "cluster_known_nodes:3" in text


def test_unsupported_scheme_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unsupported scheme 'memcached'"):
        connect("memcached://127.0.0.1:11211")
    with pytest.raises(ValueError, match="master name"):
        connect("redis+sentinel://127.0.0.1:26379")


async def test_service_side_starts_before_redis_exists() -> None:
    # connect() must not touch the network: the service starts while Redis is down.
    start = time.perf_counter()
    backend = connect(f"redis://{HOST}:{free_port()}/0")
    assert time.perf_counter() - start < 0.1
    await asyncio.sleep(0)
    await backend.close()
