"""A no-op Envoy RLS server: the ceiling for a grpcio (asyncio) service on this machine.

It registers ``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`` the same way the
real service does (a generic handler over raw bytes: no request deserializer, no response
serializer) and answers every call with a pre-serialized ``RateLimitResponse(overall_code=OK)``
without looking at the request.

    python bench/noop_server.py --listen 127.0.0.1:PORT [--no-uvloop]

The event loop is uvloop unless ``--no-uvloop`` is given; the loop class actually running is
printed on stderr at start (grpc.aio runs on uvloop since grpcio 1.5x).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc
from envoy.service.ratelimit.v3 import rls_pb2

SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
METHOD = "ShouldRateLimit"

_OK = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK).SerializeToString()


async def _should_rate_limit(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return _OK


async def serve(listen: str) -> None:
    loop = asyncio.get_running_loop()
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            METHOD: grpc.unary_unary_rpc_method_handler(
                _should_rate_limit, request_deserializer=None, response_serializer=None
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
        f"noop RLS server listening on {listen} (loop={type(loop).__module__}.{type(loop).__name__})",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    await server.stop(0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8081")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    args = parser.parse_args(argv)
    loop_factory = None
    if not args.no_uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.listen))


if __name__ == "__main__":
    main()
