"""Who may read what on the controller's HTTP port (`--http-listen`).

- `/healthz`, `/readyz`, `/metrics`: anyone (probes and Prometheus; nothing secret there).
- `/feed/NAME`: a bearer token from NAME's token file (`--feed-token-file NAME=PATH`), from any
  address, loopback included: the authz feed carries the policies' keys. A feed without a token
  file is read by no one.
- everything else (`/api/*`, the page `/`): a client on the loopback address (this machine, and
  `kubectl port-forward`, which connects inside the pod), or a bearer token from
  `--api-token-file`. These never show key material either, but they show every team's
  configuration.

Each feed has its own tokens, so a rate limit service (which needs no keys) cannot read the
authz feed. Deny by default: a path not listed above needs what `/api/*` needs.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from legation.core.bearer import TokenFile, bearer_token

__all__ = ["OPEN_PATHS", "ApiAccessMiddleware", "HttpAccess", "is_loopback", "unauthorized"]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
REALM = "legation-controller"


@dataclass(frozen=True)
class HttpAccess:
    """The credentials the controller accepts (see the module)."""

    feed_tokens: Mapping[str, TokenFile] = field(default_factory=dict)
    """Feed name → the tokens that may read it."""
    api_tokens: TokenFile | None = None
    """Tokens that may read /api/* and the page from other addresses than loopback."""

    def may_read_feed(self, name: str, authorization: str | None) -> bool:
        tokens = self.feed_tokens.get(name)
        return tokens is not None and tokens.accepts(bearer_token(authorization))

    def holds_a_feed_token(self, authorization: str | None) -> bool:
        """Whether the caller holds the token of some feed (it may learn which feeds exist)."""
        token = bearer_token(authorization)
        return any(tokens.accepts(token) for tokens in self.feed_tokens.values())

    def may_read_api(self, client_host: str | None, authorization: str | None) -> bool:
        if is_loopback(client_host):
            return True
        return self.api_tokens is not None and self.api_tokens.accepts(bearer_token(authorization))


def is_loopback(host: str | None) -> bool:
    """Whether `host` (a peer address) is this machine's loopback, IPv4-mapped forms included."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def unauthorized(reason: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) of a refusal: 401 with a Bearer challenge and a JSON reason."""
    body = json.dumps({"error": "unauthorized", "reason": reason}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"www-authenticate", f'Bearer realm="{REALM}"'.encode()),
        (b"cache-control", b"no-store"),
        (b"content-length", str(len(body)).encode()),
    ]
    return 401, headers, body


class ApiAccessMiddleware:
    """ASGI middleware: every HTTP request but the open paths and the feeds (which check their
    own tokens) must come from loopback or carry an API token."""

    def __init__(self, app: Any, access: HttpAccess) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if path in OPEN_PATHS or path.startswith("/feed/"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        authorization = _header(scope, b"authorization")
        if self.access.may_read_api(client[0] if client else None, authorization):
            await self.app(scope, receive, send)
            return
        status, headers, body = unauthorized(
            "the API and page answer loopback clients (e.g. kubectl port-forward) or a token of "
            "--api-token-file"
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
