"""Token files (legation.core.bearer) and the feed credentials' checks (legation.core.feed_auth)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from yarl import URL

from legation.core.bearer import TokenFile, TokenFileError, bearer_token
from legation.core.feed_auth import FeedAuth

A, B = "a" * 40, "b" * 40


def test_a_token_file_is_followed_and_a_broken_change_keeps_the_last_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# the current one\n{A}\n")
    tokens = TokenFile(path)
    assert tokens.accepts(A) and not tokens.accepts(B) and not tokens.accepts(None)
    assert not tokens.accepts(A[:-1]) and not tokens.accepts(A + "x")

    path.write_text(f"{A}\n{B}\n")  # rotation: both for a while
    os.utime(path, ns=(1, 10**18))
    assert tokens.accepts(A) and tokens.accepts(B)

    path.write_text(f"{B}\n")
    os.utime(path, ns=(1, 2 * 10**18))
    assert tokens.accepts(B) and not tokens.accepts(A)

    path.write_text("short\n")  # unusable: the last good tokens stay
    os.utime(path, ns=(1, 3 * 10**18))
    assert tokens.accepts(B) and not tokens.accepts("short")
    path.unlink()
    assert tokens.accepts(B)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "too-short\n", f"{A[:20]} {A[:20]}\n"])
def test_unusable_token_files_are_refused_at_start(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(TokenFileError) as caught:
        TokenFile(path)
    assert A[:20] not in str(caught.value), "a token never appears in a message"
    with pytest.raises(TokenFileError):
        TokenFile(tmp_path / "missing")


def test_bearer_header_parsing() -> None:
    assert bearer_token(f"Bearer {A}") == A
    assert bearer_token(f"bearer   {A} ") == A
    assert bearer_token(f"Basic {A}") is None
    assert bearer_token("Bearer") is None and bearer_token(None) is None


def test_feed_credentials_are_checked_against_the_url(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(f"{A}\n{B}\n")
    auth = FeedAuth(token_file=str(token))
    assert auth.headers() == {"Authorization": f"Bearer {A}"}, "the first line is sent"
    auth.check(URL("https://controller.legation-system.svc:8877/feed/authz"))
    for loopback in ("http://127.0.0.1:8877/feed/authz", "http://localhost:1/feed/authz", "http://[::1]:1/f"):
        auth.check(URL(loopback))
    with pytest.raises(ValueError, match="only over https"):
        auth.check(URL("http://controller.legation-system.svc:8877/feed/authz"))
    with pytest.raises(ValueError, match="needs an https"):
        FeedAuth(ca_file=str(token)).check(URL("http://127.0.0.1:1/feed/authz"))
    with pytest.raises(ValueError, match="cannot read token file"):
        FeedAuth(token_file=str(tmp_path / "none")).check(URL("https://c/feed/authz"))
