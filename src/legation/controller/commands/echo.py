"""`legation echo`: a demo upstream that answers every request with what it received, as JSON.

The upstream of `legation up` and of the end-to-end tests. Every request gets 200 and::

    {"name": "<--name>", "method": "GET", "path": "/raw/path", "query": {"a": "1"},
     "headers": {"host": "...", ...}, "identity": {"x-user-id": "alice", "x-team": "orders"}}

- `path` is the path exactly as received (still percent-encoded), without the query string;
  `query` holds the decoded parameters (the first value of a repeated name).
- `headers`: every request header, names lowercased, repeated headers joined with ",".
- `identity`: the headers whose name starts with `x-user` or `x-team` (what the authz service
  sets from `claimsToHeaders` in the examples), so a demo shows who the gateway said called.
- `name` tells which backend answered (canary splits are counted by it); it is also sent as
  the response header `x-echo-name`.

Two request headers change the answer, for timeout and error demos: `x-echo-status: NNN`
(answer with that status) and `x-echo-delay-ms: N` (wait first, at most 10 s).

A websocket upgrade (`Upgrade: websocket`) is accepted and every message is sent back as is.
SIGTERM or SIGINT stops the server (open connections are closed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from aiohttp import WSMsgType, web

from legation.core.logs import setup_logging

__all__ = ["IDENTITY_PREFIXES", "MAX_DELAY_MS", "add_arguments", "describe", "run"]

log = logging.getLogger("legation.controller.commands.echo")

IDENTITY_PREFIXES = ("x-user", "x-team")
MAX_DELAY_MS = 10_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", default="127.0.0.1:8000", metavar="HOST:PORT", help="HTTP address (default %(default)s)"
    )
    parser.add_argument("--name", default="echo", help="reported in every answer (default %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    setup_logging("echo", args.log_level)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        log.error("invalid --listen, expected HOST:PORT", extra={"listen": args.listen})
        return 2
    try:
        asyncio.run(_serve(host.strip("[]"), int(port), args.name))
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 1
    return 0


def describe(request: web.Request, name: str) -> dict[str, Any]:
    """The JSON answer for `request`."""
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        key = key.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    query: dict[str, str] = {}
    for key, value in request.query.items():
        query.setdefault(key, value)
    return {
        "name": name,
        "method": request.method,
        "path": request.raw_path.partition("?")[0],
        "query": query,
        "headers": headers,
        "identity": {k: v for k, v in headers.items() if k.startswith(IDENTITY_PREFIXES)},
    }


def _app(name: str) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.headers.get("upgrade", "").lower() == "websocket":
            return await _websocket(request)
        delay = request.headers.get("x-echo-delay-ms", "")
        if delay.isdigit():
            await asyncio.sleep(min(int(delay), MAX_DELAY_MS) / 1000)
        wanted = request.headers.get("x-echo-status", "")
        status = int(wanted) if wanted.isdigit() and 200 <= int(wanted) <= 599 else 200
        response = web.json_response(describe(request, name), status=status)
        response.headers["x-echo-name"] = name
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            await ws.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


async def _serve(host: str, port: int, name: str) -> None:
    runner = web.AppRunner(_app(name), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        log.info("echo listening", extra={"listen": f"{host}:{port}", "upstream_name": name})
        await stop.wait()
        log.info("echo stopping", extra={"upstream_name": name})
    finally:
        await runner.cleanup()
