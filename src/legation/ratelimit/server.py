"""The gRPC adapter: RateLimitService/ShouldRateLimit bytes in, bytes out.

Requests arrive undecoded so that a malformed message becomes a precise INVALID_ARGUMENT here
rather than an opaque error inside grpcio. Everything else is the limiter's job.
"""

from __future__ import annotations

from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf.message import DecodeError

from legation.core.grpc_runtime import unary_handler
from legation.core.memo import Memo
from legation.ratelimit.limiter import Decision, DescriptorRequest, Limiter, LimiterUnavailable

__all__ = ["METHOD", "SERVICE", "RateLimitServicer"]


SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
METHOD = "ShouldRateLimit"

_OK = rls_pb2.RateLimitResponse.OK
_OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
_Request = rls_pb2.RateLimitRequest
_Response = rls_pb2.RateLimitResponse
_Header = base_pb2.HeaderValue
_Parsed = tuple[str, tuple[DescriptorRequest, ...], int]
_PARSED_MAX_BYTES = 1024  # larger requests are rare and not worth the memory
_UNITS = frozenset(v for v in rls_pb2.RateLimitResponse.RateLimit.Unit.values() if v != 0)


class RateLimitServicer:
    def __init__(
        self, limiter: Limiter, *, response_headers: bool = False, dynamic_metadata: bool = False
    ) -> None:
        self.limiter = limiter
        self._response_headers = response_headers
        self._dynamic_metadata = dynamic_metadata
        self._parsed: Memo[bytes, _Parsed] = Memo(10_000)  # remembered requests

    def handler(self) -> grpc.GenericRpcHandler:
        return unary_handler(SERVICE, METHOD, self.should_rate_limit)

    async def should_rate_limit(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        parsed = self._parsed.get(raw)
        if parsed is None:
            parsed = await self._parse(raw, context)
        domain, descriptors, hits_addend = parsed
        try:
            decision = await self.limiter.should_rate_limit(domain, descriptors, hits_addend)
        except LimiterUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"rate limit backend unavailable: {exc}")
        response = self._response(decision)
        if self._dynamic_metadata:
            _add_dynamic_metadata(response, raw, decision)
        body: bytes = response.SerializeToString()
        return body

    async def _parse(self, raw: bytes, context: grpc.aio.ServicerContext) -> _Parsed:
        """Decode and check a request. Valid ones are remembered by their bytes: Envoy sends the
        same few requests over and over (one per client and route), and decoding plus
        converting them was a visible share of the per-call time."""
        try:
            request = _Request.FromString(raw)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid RateLimitRequest")
        if not request.domain:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "rate limit domain must not be empty")
        if not request.descriptors:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "rate limit descriptor list must not be empty"
            )
        descriptors = tuple(_descriptor(d) for d in request.descriptors)
        if any(d.override is not None and d.override[1] not in _UNITS for d in descriptors):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "descriptor limit override has an unknown unit"
            )
        parsed = (request.domain, descriptors, request.hits_addend)
        if len(raw) <= _PARSED_MAX_BYTES:
            self._parsed.put(raw, parsed)
        return parsed

    def _response(self, decision: Decision) -> Any:
        response = _Response(overall_code=_OVER if decision.over else _OK)
        tightest = None
        for status in decision.statuses:
            item = response.statuses.add(code=_OVER if status.over else _OK)
            limit = status.limit
            if limit is None:
                continue
            item.current_limit.requests_per_unit = limit.requests
            item.current_limit.unit = limit.unit
            if limit.name:
                item.current_limit.name = limit.name
            item.limit_remaining = status.remaining
            reset = item.duration_until_reset  # set directly: Duration.FromMilliseconds is slow Python
            reset.seconds, reset.nanos = divmod(status.reset_ms, 1000)
            reset.nanos *= 1_000_000
            if tightest is None or status.remaining < tightest.remaining:
                tightest = status
        if self._response_headers and tightest is not None and tightest.limit is not None:
            response.response_headers_to_add.extend(
                (
                    _Header(key="RateLimit-Limit", value=str(tightest.limit.requests)),
                    _Header(key="RateLimit-Remaining", value=str(tightest.remaining)),
                    _Header(key="RateLimit-Reset", value=str(-(-tightest.reset_ms // 1000))),
                )
            )
        return response


def _add_dynamic_metadata(response: Any, raw: bytes, decision: Decision) -> None:
    """As the reference's RESPONSE_DYNAMIC_METADATA: the domain, each descriptor's entries (and
    override, hits_addend), the request's hits_addend, and the `metadata:` of the descriptors
    that passed, merged (first one wins a key; nested mappings merge)."""
    request = _Request.FromString(raw)  # only with the flag: the hot path never decodes twice
    fields: dict[str, Any] = {
        "domain": request.domain,
        "descriptors": [_describe(d) for d in request.descriptors],
    }
    if request.hits_addend:
        fields["hitsAddend"] = request.hits_addend
    merged: dict[str, Any] = {}
    for status in decision.statuses:
        if not status.over and status.metadata:
            _merge(merged, status.metadata)
    if merged:
        fields["metadata"] = merged
    response.dynamic_metadata.update(fields)


def _describe(d: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"entries": [f"{e.key}={e.value}" for e in d.entries]}
    if d.HasField("limit"):
        out["limit"] = str(d.limit)
    if d.HasField("hits_addend"):
        out["hitsAddend"] = d.hits_addend.value
    return out


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if key not in into:
            into[key] = value
        elif isinstance(into[key], dict) and isinstance(value, dict):
            merged = dict(into[key])
            _merge(merged, value)
            into[key] = merged


def _descriptor(d: Any) -> DescriptorRequest:
    return DescriptorRequest(
        tuple((e.key, e.value) for e in d.entries),
        d.hits_addend.value if d.HasField("hits_addend") else None,
        (d.limit.requests_per_unit, d.limit.unit) if d.HasField("limit") else None,
    )
