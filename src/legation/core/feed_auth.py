"""How a service proves itself to the controller's config feed, and checks the controller: a
bearer token from a file (`--feed-token-file`) and, for https, the CA that signed the
controller's certificate (`--feed-ca`). Kept apart from the feed client so that the flags can be
checked without importing aiohttp."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass

from yarl import URL

from legation.core.bearer import TokenFileError, read_token

__all__ = ["FeedAuth"]


@dataclass(frozen=True)
class FeedAuth:
    """How a service proves itself to the controller's feed, and checks the controller."""

    token_file: str | None = None
    """A file whose first line is the feed's bearer token."""
    ca_file: str | None = None
    """CA certificates (PEM) for an https feed; None: the system's."""

    def check(self, url: URL) -> None:
        """ValueError when these credentials cannot be used with `url` (said before starting)."""
        if self.ca_file is not None and url.scheme != "https":
            raise ValueError("--feed-ca needs an https:// --config-url")
        if self.token_file is not None and url.scheme == "http" and not _loopback_host(url.host):
            raise ValueError("a feed token is sent only over https, or over http to a loopback address")
        if self.token_file is not None:
            try:
                read_token(self.token_file)
            except TokenFileError as exc:
                raise ValueError(str(exc)) from None

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        return ssl.create_default_context(cafile=self.ca_file)

    def headers(self) -> dict[str, str]:
        """The Authorization header, the token read now. Raises TokenFileError if it cannot be read."""
        if self.token_file is None:
            return {}
        return {"Authorization": f"Bearer {read_token(self.token_file)}"}


def _loopback_host(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False
