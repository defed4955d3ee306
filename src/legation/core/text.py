"""What the authz service will not forward as an identity, shared with the native translation
that must refuse the same tokens."""

from __future__ import annotations

import re

__all__ = ["has_control_characters"]

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def has_control_characters(text: str) -> bool:
    """Whether `text` holds a C0 or C1 control character or DEL (tab included): never part of an
    identity, and CR, LF or NUL in a header would be a way to inject another."""
    # isprintable() is the cheap common case (profiles showed a per-character scan).
    return not text.isprintable() and _CONTROL.search(text) is not None
