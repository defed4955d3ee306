"""The gRPC adapter: envoy.service.auth.v3.Authorization/Check, bytes in, bytes out.

Requests arrive undecoded so a malformed message becomes a precise INVALID_ARGUMENT here. A
verdict becomes an OK response (headers to set and remove, dynamic metadata for the rate limit
filter) or a denied one (status, WWW-Authenticate, short JSON body). Nothing from an exception
ever reaches the response: reasons are fixed strings chosen by the authorizer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2

from legation.authz.authorizer import Authorizer, HttpRequest, Verdict
from legation.core.grpc_runtime import unary_handler
from legation.core.memo import Memo

__all__ = ["METHOD", "SERVICE", "AuthorizationServicer", "DecisionRecorder"]

log = logging.getLogger("legation.authz")

SERVICE = "envoy.service.auth.v3.Authorization"
METHOD = "Check"
POLICY_KEY = "legation.policy"
METHOD_OVERRIDE_KEY = "legation.methodOverride"  # "allow": the route passes method-override headers

_Request = external_auth_pb2.CheckRequest
_Response = external_auth_pb2.CheckResponse
_Option = base_pb2.HeaderValueOption
_Header = base_pb2.HeaderValue
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_GRPC_CODE = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED}


class DecisionRecorder:
    """Called once per decision (metrics); the default records nothing."""

    def record(self, verdict: Verdict) -> None:
        return None


class AuthorizationServicer:
    def __init__(self, authorizer: Authorizer, *, recorder: DecisionRecorder | None = None) -> None:
        self.authorizer = authorizer
        self._recorder = recorder or DecisionRecorder()
        self._responses: Memo[int, tuple[Verdict, bytes]] = Memo(10_000)

    def handler(self) -> grpc.GenericRpcHandler:
        return unary_handler(SERVICE, METHOD, self.check)

    async def check(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            request = _Request.FromString(raw)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid CheckRequest")
        http = request.attributes.request.http
        headers = _headers(http)
        extensions = request.attributes.context_extensions
        verdict = await self.authorizer.check(
            HttpRequest(
                method=http.method,
                host=http.host or headers.get(":authority", ""),
                path=http.path or headers.get(":path", ""),
                headers=headers,
                policy=extensions.get(POLICY_KEY),
                method_override=extensions.get(METHOD_OVERRIDE_KEY) == "allow",
            )
        )
        self._recorder.record(verdict)
        if not verdict.allow:
            log.info(
                "denied",
                extra={
                    "request_id": http.id or headers.get("x-request-id", ""),
                    "policy": verdict.policy,
                    "status": verdict.status,
                    "reason": verdict.reason,
                },
            )
        cached = self._responses.get(id(verdict))
        if cached is not None and cached[0] is verdict:  # allow verdicts are memoised: same bytes
            return cached[1]
        body: bytes = response_for(verdict).SerializeToString()
        if verdict.allow:
            self._responses.put(id(verdict), (verdict, body))
        return body


def _headers(http: Any) -> Mapping[str, str]:
    if http.headers or not http.HasField("header_map"):
        return http.headers  # type: ignore[no-any-return]
    merged: dict[str, str] = {}
    for h in http.header_map.headers:
        value = h.value or h.raw_value.decode("utf-8", "replace")
        key = h.key.lower()
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    return merged


def response_for(verdict: Verdict) -> Any:
    if verdict.allow:
        response = _Response(status=status_pb2.Status(code=code_pb2.OK))
        ok = response.ok_response
        ok.headers.extend(
            _Option(header=_Header(key=k, value=v), append_action=_OVERWRITE) for k, v in verdict.set_headers
        )
        ok.headers_to_remove.extend(verdict.remove_headers)
        ok.query_parameters_to_remove.extend(verdict.remove_query)
        if verdict.metadata:
            response.dynamic_metadata.update(dict(verdict.metadata))
        return response
    response = _Response(status=status_pb2.Status(code=_GRPC_CODE.get(verdict.status, code_pb2.UNAVAILABLE)))
    denied = response.denied_response
    denied.status.code = http_status_pb2.StatusCode.Value(_STATUS_NAME.get(verdict.status, "Forbidden"))
    denied.headers.append(
        _Option(header=_Header(key="content-type", value="application/json"), append_action=_OVERWRITE)
    )
    if verdict.www_authenticate:
        denied.headers.append(
            _Option(
                header=_Header(key="www-authenticate", value=verdict.www_authenticate),
                append_action=_OVERWRITE,
            )
        )
    denied.body = json.dumps({"error": verdict.error, "reason": verdict.reason})
    return response


_STATUS_NAME = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 503: "ServiceUnavailable"}
