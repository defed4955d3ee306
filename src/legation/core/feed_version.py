"""What the controller's config feeds and their followers agree on: how a feed's content is
versioned and the header that carries the version. Kept apart from `feed_client` so that the
controller, which only publishes, does not import the HTTP client (aiohttp) to use them."""

from __future__ import annotations

from legation.core.digest import content_version

__all__ = ["VERSION_HEADER", "feed_version"]

VERSION_HEADER = "X-Legation-Version"


def feed_version(content: str | bytes) -> str:
    """The version of a feed's content: equal content, equal version, on every replica."""
    return content_version([("", content)])
