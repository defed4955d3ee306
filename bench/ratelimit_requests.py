"""What the rate limit bench sends: its config, RateLimitRequests, and the checks of answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from bench.harness.processes import CheckFailed

__all__ = [
    "CONFIG_YAML",
    "LIMIT",
    "RLS_PATH",
    "check_response",
    "drive_distinct",
    "make_mem_request",
    "make_request",
]

RLS_PATH = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
LIMIT = 1_000_000_000
DOMAIN = "bench"
OK = rls_pb2.RateLimitResponse.OK

CONFIG_YAML = f"""\
# written by python -m bench ratelimit: limits high enough that every request is admitted
domain: {DOMAIN}
descriptors:
  - key: remote_address
    rate_limit: {{unit: second, requests_per_unit: {LIMIT}}}
  - key: path
    rate_limit: {{unit: second, requests_per_unit: {LIMIT}}}
  - key: generic_key
    value: bench
    rate_limit: {{unit: second, requests_per_unit: {LIMIT}}}
  - key: user
    descriptors:
      - key: method
        rate_limit: {{unit: second, requests_per_unit: {LIMIT}}}
  - key: mem_key
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}}}
"""


def _entry(key: str, value: str) -> ratelimit_pb2.RateLimitDescriptor.Entry:
    return ratelimit_pb2.RateLimitDescriptor.Entry(key=key, value=value)


def _ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def make_request(i: int, n_descriptors: int) -> bytes:
    """A serialized RateLimitRequest with 1 or 4 descriptors; ``i`` picks distinct values."""
    descs = [ratelimit_pb2.RateLimitDescriptor(entries=[_entry("remote_address", _ip(i))])]
    if n_descriptors >= 4:
        descs += [
            ratelimit_pb2.RateLimitDescriptor(entries=[_entry("path", f"/api/items/{i}")]),
            ratelimit_pb2.RateLimitDescriptor(entries=[_entry("generic_key", "bench")]),
            ratelimit_pb2.RateLimitDescriptor(entries=[_entry("user", f"user-{i}"), _entry("method", "GET")]),
        ]
    request = rls_pb2.RateLimitRequest(domain=DOMAIN, descriptors=descs[:n_descriptors], hits_addend=1)
    return bytes(request.SerializeToString())


def make_mem_request(i: int) -> bytes:
    """One descriptor limited per hour (nothing expires during the memory phase)."""
    desc = ratelimit_pb2.RateLimitDescriptor(entries=[_entry("mem_key", f"client-{i:08d}")])
    return bytes(
        rls_pb2.RateLimitRequest(domain=DOMAIN, descriptors=[desc], hits_addend=1).SerializeToString()
    )


def check_response(raw: bytes, n_descriptors: int | None, what: str) -> None:
    """``overall_code=OK`` and (``n_descriptors`` given: the service) one OK status per
    descriptor carrying the bench limit: the request matched a rule and reached the backend."""
    resp = rls_pb2.RateLimitResponse.FromString(raw)
    if resp.overall_code != OK:
        raise CheckFailed(f"{what}: overall_code={resp.overall_code}, expected OK\n{resp}")
    if n_descriptors is None:  # the no-op server answers without statuses
        return
    if len(resp.statuses) != n_descriptors:
        raise CheckFailed(f"{what}: {len(resp.statuses)} statuses for {n_descriptors} descriptors\n{resp}")
    for st in resp.statuses:
        if st.code != OK or st.current_limit.requests_per_unit != LIMIT:
            raise CheckFailed(f"{what}: descriptor status not OK with the bench limit\n{resp}")


async def drive_distinct(
    port: int, messages: Sequence[bytes], n_descriptors: int, concurrency: int = 32
) -> float:
    """Send each message once with grpc.aio; every answer must be OK. Returns elapsed seconds."""
    sem = asyncio.Semaphore(concurrency)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(RLS_PATH, request_serializer=None, response_deserializer=None)

        async def one(msg: bytes) -> None:
            async with sem:
                raw = await call(msg, timeout=10)
            check_response(raw, n_descriptors, "drive")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(m) for m in messages))
        return time.perf_counter() - t0
