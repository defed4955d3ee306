"""Which parts of the URL space two claims share: hostnames, paths and regexes, decided as Envoy
selects virtual hosts and routes. Pure: plain values in, booleans out.

A claim is a hostname pattern and a set of paths (`PathSpace`). Header, query-parameter and
method conditions are left out on purpose: they only narrow a match, so two claims whose
hostnames and paths overlap can serve the same request whatever their conditions.

- Hostnames (`covers`, `hostnames_overlap`): `*` is every host; `*.example.com` is every name
  under example.com at any depth (never example.com itself), as Envoy's virtual host domains and
  SNI names are; an exact name is itself. Two patterns overlap when one covers the other.
- Prefixes match whole path segments (`prefix_covers`): `/orders` covers `/orders` and
  `/orders/…`, never `/ordersX`. A trailing `/` is not significant (`/orders/` is `/orders`), as
  in Gateway API's PathPrefix and Kubernetes Ingress' Prefix; `/` covers every path.
- Regexes (RE2, matched against the whole path as Envoy's `safe_regex` is) are bounded by RE2's
  possible match range [lo, hi]: every string a regex matches lies in it, so a regex and a prefix,
  path or regex whose paths lie outside it are disjoint. A regex against an exact path is decided
  exactly (`fullmatch`). What cannot be shown disjoint overlaps: the answer errs towards a
  conflict, never towards letting two namespaces share a request.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import re2

__all__ = [
    "ClaimIndex",
    "PathSpace",
    "covers",
    "hostnames_overlap",
    "normalize_prefix",
    "path_space",
    "path_within",
    "paths_overlap",
    "prefix_covers",
]

PathKind = Literal["prefix", "path", "regex"]

_TOP = b"\xff" * 8
"""Above every UTF-8 string: the upper bound of a regex whose range RE2 cannot compute."""
_RANGE_LENGTH = 64
_QUIET = re2.Options()
_QUIET.log_errors = False


# --- hostnames ---------------------------------------------------------------------------------


def covers(pattern: str, hostname: str) -> bool:
    """Whether every request for `hostname` (a pattern itself: exact, `*.domain` or `*`) is also a
    request for `pattern`."""
    if pattern == "*" or pattern == hostname:
        return True
    if hostname == "*" or not pattern.startswith("*."):
        return False
    return hostname.endswith(pattern[1:])  # `.example.com`; a `*.x.example.com` ends so too


def hostnames_overlap(a: str, b: str) -> bool:
    """Whether some request's Host could be served under both patterns."""
    return covers(a, b) or covers(b, a)


# --- paths -------------------------------------------------------------------------------------


def normalize_prefix(prefix: str) -> str:
    """The prefix as segments see it: without trailing slashes, `/` for the root."""
    return prefix.rstrip("/") or "/"


def prefix_covers(prefix: str, path: str) -> bool:
    """Whether the (normalised) segment prefix matches `path` (or every path of a longer prefix)."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True)
class PathSpace:
    """The paths one match can serve."""

    kind: PathKind
    value: str
    """A prefix normalised (`normalize_prefix`); a path or a regex as written."""
    lo: bytes = b""
    hi: bytes = _TOP
    """Every path served lies in [lo, hi] (UTF-8, byte order)."""
    segments: tuple[str, ...] = ()
    """Leading path segments every path served has (an index key: two spaces can overlap only
    when one's segments start with the other's)."""
    regex: re2._Regexp | None = field(default=None, compare=False, repr=False)


def path_space(kind: PathKind, value: str) -> PathSpace:
    if kind == "prefix":
        prefix = normalize_prefix(value)
        lo, hi = prefix.encode(), (prefix.encode() + b"0" if prefix != "/" else b"0")
        return PathSpace(kind, prefix, lo, hi, _segments(prefix) if prefix != "/" else ())
    if kind == "path":
        return PathSpace(kind, value, value.encode(), value.encode(), _segments(value))
    compiled = re2.compile(value, options=_QUIET)
    try:
        lo, hi = compiled.possiblematchrange(_RANGE_LENGTH)
    except re2.error:  # e.g. `\C*`: no bound, so it overlaps everything
        lo, hi = b"", _TOP
    certain = _common_prefix(lo, hi)
    cut = certain.rfind(b"/")
    leading = certain[:cut].decode(errors="replace") if cut > 0 and certain.startswith(b"/") else ""
    return PathSpace(kind, value, lo, hi, _segments(leading) if leading else (), compiled)


def _common_prefix(a: bytes, b: bytes) -> bytes:
    """What every string in [a, b] starts with (byte order keeps a shared prefix)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.split("/")[1:])


def paths_overlap(a: PathSpace, b: PathSpace) -> bool:
    """Whether some path could be served by both (conservative for regexes)."""
    if a.kind == "regex" and b.kind != "regex":
        a, b = b, a
    if a.kind == "prefix" and b.kind == "prefix":
        return prefix_covers(a.value, b.value) or prefix_covers(b.value, a.value)
    if a.kind == "prefix" and b.kind == "path":
        return prefix_covers(a.value, b.value)
    if a.kind == "path" and b.kind == "prefix":
        return prefix_covers(b.value, a.value)
    if a.kind == "path" and b.kind == "path":
        return a.value == b.value
    if b.regex is not None and a.kind == "path":
        return b.regex.fullmatch(a.value) is not None
    if b.regex is not None and a.kind == "prefix" and b.regex.fullmatch(a.value) is not None:
        return True
    return _ranges_meet(a, b)


def _ranges_meet(a: PathSpace, b: PathSpace) -> bool:
    if a.kind == "prefix" and a.value != "/":
        # Beyond the prefix itself (tested exactly above) its paths are `P/…`: [P/, P0).
        low, high = a.value.encode() + b"/", a.value.encode() + b"0"
        return b.lo < high and b.hi >= low
    return a.lo <= b.hi and b.lo <= a.hi


def path_within(space: PathSpace, prefix: str) -> bool:
    """Whether every path `space` can serve lies under the (normalised) segment `prefix`."""
    if prefix == "/":
        return True
    if space.kind != "regex":
        return prefix_covers(prefix, space.value)
    whole = prefix.encode()
    exactly = space.lo == space.hi == whole
    return exactly or (space.lo >= whole + b"/" and space.hi < whole + b"0")


# --- an index of claims ------------------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class Claim(Generic[T]):
    """A hostname and paths, held by `owner` (whatever the caller keeps there)."""

    hostname: str
    space: PathSpace
    owner: T


class ClaimIndex(Generic[T]):
    """Claims by leading path segments, so that finding the ones a claim overlaps looks at the
    claims on its own branch of the path tree only (10k disjoint Mappings: a few each)."""

    def __init__(self) -> None:
        self._at: dict[tuple[str, ...], list[Claim[T]]] = defaultdict(list)
        self._below: dict[tuple[str, ...], list[Claim[T]]] = defaultdict(list)

    def add(self, claim: Claim[T]) -> None:
        key = claim.space.segments
        self._at[key].append(claim)
        for depth in range(len(key)):
            self._below[key[:depth]].append(claim)

    def overlapping(self, hostname: str, space: PathSpace) -> Iterator[Claim[T]]:
        """The claims that share some request with (hostname, space), in insertion order within
        each branch."""
        key = space.segments
        candidates = [c for depth in range(len(key) + 1) for c in self._at.get(key[:depth], ())]
        candidates += self._below.get(key, ())
        for claim in candidates:
            if hostnames_overlap(claim.hostname, hostname) and paths_overlap(claim.space, space):
                yield claim
