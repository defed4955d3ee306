"""Key material never leaves the controller's HTTP API or page.

Two layers:

1. Structural: the places that hold keys are redacted where they are turned into JSON: a JWKS's
   private members (`d`, `p`, `q`, `dp`, `dq`, `qi`, `oth`) and an HMAC key's `k` (public RSA
   and EC members — `n`, `e`, `x`, `y` — stay: they are public and help to match a `kid`), a
   JWKS that is not JSON as a whole, Secret values, TLS private keys.
2. A net under it: every secret value the stages hold (Secret values, raw and base64, and the
   JWKS members above) is replaced wherever it still occurs in a response body, e.g. quoted in a
   problem's reason. Values shorter than `MIN_SCRUB_CHARS` are left to the first layer: a short
   value could match ordinary text, and a key that short is refused anyway.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic import BaseModel

from legation.api.v1alpha1 import JWTPolicy, Secret

__all__ = [
    "JWK_SECRET_MEMBERS",
    "MIN_SCRUB_CHARS",
    "REDACTED",
    "ScrubMiddleware",
    "Scrubber",
    "redact_jwks_text",
    "redact_policy_dump",
    "secret_values",
]

REDACTED = "[redacted]"
JWK_SECRET_MEMBERS = frozenset({"k", "d", "p", "q", "dp", "dq", "qi", "oth"})
"""JWK members that are secret: the HMAC key and every private part of an RSA/EC/OKP key."""
MIN_SCRUB_CHARS = 12
_PEM_LINE = re.compile(rf"[A-Za-z0-9+/=]{{{MIN_SCRUB_CHARS},}}")
_PUBLIC_TLS_KEYS = frozenset({"tls.crt", "ca.crt"})
"""Keys of a kubernetes.io/tls Secret that are certificates: public, and shown in /api/envoy."""


def _jwk_list(data: Any) -> list[Any]:
    if isinstance(data, dict) and isinstance(data.get("keys"), list):
        return list(data["keys"])
    return [data]


def redact_jwks_text(text: str) -> str:
    """A JWKS (or one JWK) as JSON text, its secret members replaced; REDACTED as a whole when
    it is not JSON (it might be anything, a PEM key say)."""
    try:
        data = json.loads(text)
    except ValueError:
        return REDACTED
    for jwk in _jwk_list(data):
        if isinstance(jwk, dict):
            for member in JWK_SECRET_MEMBERS & jwk.keys():
                jwk[member] = REDACTED
    if not isinstance(data, dict):
        return REDACTED
    return json.dumps(data, sort_keys=True)


def redact_policy_dump(data: dict[str, Any]) -> dict[str, Any]:
    """A JWTPolicy's JSON dump (CRD form) with each provider's inline JWKS redacted, in place."""
    spec = data.get("spec")
    for provider in (spec or {}).get("providers") or ():
        jwks = provider.get("jwks") if isinstance(provider, dict) else None
        if isinstance(jwks, dict) and isinstance(jwks.get("inline"), str):
            jwks["inline"] = redact_jwks_text(jwks["inline"])
    return data


def _jwk_secrets(text: str) -> Iterator[str]:
    try:
        data = json.loads(text)
    except ValueError:
        yield text
        return
    for jwk in _jwk_list(data):
        if isinstance(jwk, dict):
            for member in JWK_SECRET_MEMBERS & jwk.keys():
                value = jwk[member]
                yield value if isinstance(value, str) else json.dumps(value)


def secret_values(resources: Iterable[BaseModel], extra: Iterable[str] = ()) -> set[str]:
    """Every secret string in `resources`: Secret values (decoded, and as given) and the secret
    members of inline JWKS; plus `extra` (e.g. TLS private keys)."""
    found: set[str] = set(extra)
    for resource in resources:
        if isinstance(resource, Secret):
            public = _PUBLIC_TLS_KEYS if resource.type == "kubernetes.io/tls" else frozenset()
            for key in {*resource.data, *resource.string_data} - public:
                found.add(resource.data.get(key, ""))
                found.add(resource.string_data.get(key, ""))
                raw = resource.value(key) or b""
                found.add(raw.decode("utf-8", "replace"))
                found.add(base64.b64encode(raw).decode())
                if raw.strip().startswith(b"{"):
                    found.update(_jwk_secrets(raw.decode("utf-8", "replace")))
        elif isinstance(resource, JWTPolicy):
            for provider in resource.spec.providers:
                if provider.jwks.inline is not None:
                    found.update(_jwk_secrets(provider.jwks.inline))
    return {v for v in found if len(v) >= MIN_SCRUB_CHARS}


class Scrubber:
    """Replaces known secret values in response bodies (the second layer; see the module)."""

    def __init__(self, values: Iterable[str]) -> None:
        forms: set[bytes] = set()
        for value in values:
            forms.add(value.encode())
            forms.add(json.dumps(value, ensure_ascii=False)[1:-1].encode())  # as inside a JSON string
            for line in value.splitlines():  # a PEM key shown line by line
                if _PEM_LINE.fullmatch(line.strip()):
                    forms.add(line.strip().encode())
        self._forms = sorted(forms, key=len, reverse=True)  # longest first: no partial leftovers

    def __call__(self, body: bytes) -> bytes:
        for form in self._forms:
            if form in body:
                body = body.replace(form, REDACTED.encode())
        return body


class ScrubMiddleware:
    """ASGI middleware: the body of every answer but a feed's (the feeds are for the services,
    and carry keys by design) goes through the current stages' `Scrubber`."""

    def __init__(self, app: Any, scrubber: Callable[[], Scrubber | None]) -> None:
        self.app = app
        self.scrubber = scrubber

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        scrub = self.scrubber() if scope["type"] == "http" else None
        if scrub is None or str(scope.get("path", "")).startswith("/feed/"):
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def buffered(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = scrub(b"".join(chunks))
            headers = [(k, v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, buffered)
