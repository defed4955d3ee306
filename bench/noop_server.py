"""A no-op Envoy RLS (or ext_authz) server: the ceiling for a grpcio (asyncio) service here.

It registers ``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`` the same way the
real service does (a generic handler over raw bytes: no request deserializer, no response
serializer) and answers every call with a pre-serialized ``RateLimitResponse(overall_code=OK)``
without looking at the request. With ``--service authz`` it registers
``envoy.service.auth.v3.Authorization/Check`` instead and answers a pre-serialized OK
``CheckResponse`` (status OK, an empty ``ok_response``).

    python -m bench.noop_server --listen 127.0.0.1:PORT [--service ratelimit|authz] [--no-uvloop]

The event loop is uvloop unless ``--no-uvloop`` is given; the loop class actually running is
printed on stderr at start (grpc.aio runs on uvloop since grpcio 1.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

import grpc
from envoy.service.ratelimit.v3 import rls_pb2

SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
METHOD = "ShouldRateLimit"
AUTHZ_SERVICE = "envoy.service.auth.v3.Authorization"
AUTHZ_METHOD = "Check"

_OK: bytes = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK).SerializeToString()


def _authz_ok() -> bytes:
    from envoy.service.auth.v3 import external_auth_pb2
    from google.rpc import status_pb2

    response = external_auth_pb2.CheckResponse(status=status_pb2.Status(code=0))
    response.ok_response.SetInParent()
    return bytes(response.SerializeToString())


async def _should_rate_limit(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return _OK


def _answer(payload: bytes) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return payload

    return handle


async def serve(listen: str, service: str = "ratelimit") -> None:
    loop = asyncio.get_running_loop()
    server = grpc.aio.server()
    if service == "authz":
        name, method, behaviour = AUTHZ_SERVICE, AUTHZ_METHOD, _answer(_authz_ok())
    else:
        name, method, behaviour = SERVICE, METHOD, _should_rate_limit
    handler = grpc.method_handlers_generic_handler(
        name,
        {
            method: grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=None, response_serializer=None
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"noop {'ext_authz' if service == 'authz' else 'RLS'} server listening on {listen} (loop={type(loop).__module__}.{type(loop).__name__})",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8081")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    parser.add_argument(
        "--service",
        choices=["ratelimit", "authz"],
        default="ratelimit",
        help="ratelimit: RateLimitService/ShouldRateLimit (default); authz: Authorization/Check",
    )
    args = parser.parse_args(argv)
    loop_factory = None
    if not args.no_uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.listen, args.service))


if __name__ == "__main__":
    main()
