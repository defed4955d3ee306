"""The operations port: `/metrics` (Prometheus), `/healthz` (alive) and `/readyz` (ready).

A few lines of asyncio instead of a web framework: three GET routes, served on the service's
own event loop, away from the gRPC port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

__all__ = ["serve_endpoints"]

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def serve_endpoints(
    host: str, port: int, *, ready: Callable[[], bool], detail: Callable[[], str] | None = None
) -> asyncio.Server:
    """`detail()` is appended to the /readyz body (after `ready` or `not ready`)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                request_line = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass
            status, ctype, body = _route(request_line, ready, detail)
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)


def _route(
    request_line: bytes, ready: Callable[[], bool], detail: Callable[[], str] | None = None
) -> tuple[int, str, bytes]:
    parts = request_line.decode("latin-1").split()
    if len(parts) < 2:
        return 404, "text/plain", b"not found\n"
    method, path = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return 405, "text/plain", b"method not allowed\n"
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
    if path == "/healthz":
        return 200, "text/plain", b"ok\n"
    if path == "/readyz":
        extra = detail().encode() if detail is not None else b""
        ok = ready()
        return (200 if ok else 503), "text/plain", (b"ready\n" if ok else b"not ready\n") + extra
    return 404, "text/plain", b"not found\n"
