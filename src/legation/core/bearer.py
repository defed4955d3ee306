"""Bearer tokens kept in files: the shared secrets that authenticate the controller's config feeds.

A token file holds one token per line (blank lines and `#` comments ignored). The server side
(`TokenFile`) accepts any token of its file, so a token can be rotated without downtime: add the
new one, move the clients, remove the old one. The file is re-read when it changes (a mounted
Kubernetes Secret is updated in place), and a file that became unreadable or empty keeps the
tokens last read. The client side (`read_token`) sends the first token of its file, re-read for
every request.

Tokens are compared in constant time, and never logged or put in an error message.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

__all__ = ["MIN_TOKEN_CHARS", "TokenFile", "TokenFileError", "bearer_token", "read_token", "read_tokens"]

log = logging.getLogger("legation.auth")

MIN_TOKEN_CHARS = 32
"""Shorter tokens are refused: a shared secret must not be guessable."""


class TokenFileError(ValueError):
    """A token file that cannot be used (missing, unreadable, empty, a token too short)."""


def read_tokens(path: str | Path) -> tuple[str, ...]:
    """Every token in the file at `path`; TokenFileError if there is none or one is too short."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read token file {path}: {type(exc).__name__}") from None
    tokens = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )
    if not tokens:
        raise TokenFileError(f"token file {path} holds no token")
    if any(len(t) < MIN_TOKEN_CHARS or any(c.isspace() for c in t) for t in tokens):
        raise TokenFileError(
            f"token file {path}: every token must be at least {MIN_TOKEN_CHARS} characters without spaces"
        )
    return tokens


def read_token(path: str | Path) -> str:
    """The token a client sends: the first of the file."""
    return read_tokens(path)[0]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive,
    RFC 7235), or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class TokenFile:
    """The tokens a server accepts, from one file, kept current (see the module)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._stamp = self._stat()
        self._tokens = tuple(t.encode() for t in read_tokens(self.path))  # refuse a bad file at start

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)  # follows symlinks: a Secret volume swaps its ..data link
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _current(self) -> tuple[bytes, ...]:
        stamp = self._stat()
        if stamp is not None and stamp != self._stamp:
            try:
                self._tokens = tuple(t.encode() for t in read_tokens(self.path))
            except TokenFileError as exc:  # keep serving with the last good tokens
                log.warning("token file not usable; keeping the last tokens", extra={"error": str(exc)})
            self._stamp = stamp
        return self._tokens

    def accepts(self, presented: str | None) -> bool:
        """Whether `presented` is one of the file's tokens (constant time per token)."""
        if not presented:
            return False
        candidate = presented.encode()
        found = False
        for token in self._current():
            found |= hmac.compare_digest(candidate, token)
        return found
