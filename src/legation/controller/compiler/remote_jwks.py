"""Remote JWKS (`jwks.uri`) as Envoy fetches them: the origin of a URI and the fetch settings.

A native policy's remote keys are fetched by Envoy itself (jwt_authn `remote_jwks`), through one
cluster per JWKS origin (scheme, host, port); which URIs a team may name is `compiler.jwks_uris`.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from legation.api.v1alpha1.fields import Upstream, is_ip_literal

__all__ = ["RemoteKeys", "jwks_origin", "remote_keys"]

_PRINTABLE = re.compile(r"[\x21-\x7e]+")
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9.])?")


@dataclass(frozen=True)
class RemoteKeys:
    """A provider's remote JWKS as Envoy fetches it."""

    uri: str
    origin: Upstream
    """Scheme, host (IPv6 without brackets) and port: one cluster each."""
    cache_duration: int
    """Whole seconds (Envoy truncates to seconds; at least 1, so it never refetches in a loop)."""
    refetch_cooldown: int
    """Whole seconds between attempts after a failed fetch (the service's retry interval too)."""
    algorithms: tuple[str, ...]
    """The provider's algorithms: Envoy accepts any the fetched key fits, so RBAC checks them."""

    @property
    def cluster(self) -> str:
        """`jwks_<scheme>_<host>_<port>`: one per origin, and distinct origins never share one
        (hosts are lowercase names of [a-z0-9.-] or IP literals, kept as they are)."""
        return f"jwks_{self.origin.scheme}_{self.origin.host}_{self.origin.port}"


def jwks_origin(uri: str) -> Upstream:
    """The origin of a JWKS URI; ValueError (a reason) when it is not a plain http(s) URL."""
    if not _PRINTABLE.fullmatch(uri):
        raise ValueError("the JWKS uri holds spaces or characters that are not printable ASCII")
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("the JWKS uri must be an absolute https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("the JWKS uri may not carry user:password@")
    host = parts.hostname
    if not _HOST_NAME.fullmatch(host) and not is_ip_literal(host):
        raise ValueError(f"the JWKS uri's host {host!r} is neither a DNS name nor an IP address")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError("the JWKS uri's port is not a number from 1 to 65535") from None
    return Upstream("https" if parts.scheme == "https" else "http", host, port)


def remote_keys(
    uri: str, *, cache_duration: float, refetch_cooldown: float, algorithms: Iterable[str]
) -> RemoteKeys:
    """What Envoy needs to fetch a checked JWKS uri (`check_jwks_uris` accepted it)."""
    return RemoteKeys(
        uri=uri,
        origin=jwks_origin(uri),
        cache_duration=max(1, math.ceil(cache_duration)),
        refetch_cooldown=max(1, math.ceil(refetch_cooldown)),
        algorithms=tuple(algorithms),
    )
