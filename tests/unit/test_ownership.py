"""The overlap geometry (legation.controller.compiler.ownership): hostnames as Envoy selects
virtual hosts, whole-segment prefixes, exact paths, and RE2 regexes bounded conservatively."""

from __future__ import annotations

import pytest
import re2

from legation.controller.compiler.ownership import (
    Claim,
    ClaimIndex,
    covers,
    hostnames_overlap,
    normalize_prefix,
    path_space,
    path_within,
    paths_overlap,
    prefix_covers,
)


def space(text: str):  # type: ignore[no-untyped-def]
    kind, _, value = text.partition(" ")
    return path_space(kind, value)  # type: ignore[arg-type]


# --- hostnames ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "hostname", "expected"),
    [
        ("*", "api.example.com", True),
        ("*", "*.example.com", True),
        ("*", "*", True),
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "a.b.example.com", True),  # any depth, as Envoy's domains
        ("*.example.com", "*.b.example.com", True),
        ("*.example.com", "example.com", False),  # never the parent itself
        ("*.example.com", "api.example.org", False),
        ("*.example.com", "*", False),
        ("api.example.com", "*.example.com", False),
        ("api.example.com", "api.example.com", True),
        ("api.example.com", "127.0.0.1", False),
        ("*.b.example.com", "*.example.com", False),
    ],
)
def test_covers(pattern: str, hostname: str, expected: bool) -> None:
    assert covers(pattern, hostname) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("*", "127.0.0.1", True),
        ("*.example", "orders.example", True),
        ("*.example", "*.a.example", True),
        ("*.a.example", "*.b.example", False),
        ("a.example", "b.example", False),
        ("*.example", "example", False),
    ],
)
def test_hostnames_overlap_both_ways(a: str, b: str, expected: bool) -> None:
    assert hostnames_overlap(a, b) is expected
    assert hostnames_overlap(b, a) is expected


# --- segment prefixes --------------------------------------------------------------------------


def test_prefixes_match_whole_segments_and_a_trailing_slash_is_not_significant() -> None:
    assert normalize_prefix("/orders/") == normalize_prefix("/orders") == "/orders"
    assert normalize_prefix("/") == normalize_prefix("//") == "/"
    assert prefix_covers("/orders/public", "/orders/public")
    assert prefix_covers("/orders/public", "/orders/public/menu")
    assert not prefix_covers("/orders/public", "/orders/publicity")
    assert prefix_covers("/orders", "/orders")  # `/orders/` covers `/orders` too (Gateway API)
    assert prefix_covers("/", "/anything/at/all")
    assert not prefix_covers("/orders/4", "/orders/42")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("prefix /orders/", "prefix /orders/4", True),  # a longer prefix inside
        ("prefix /orders/", "prefix /orders", True),
        ("prefix /orders/4", "prefix /orders/42", False),  # segments differ
        ("prefix /orders", "prefix /ordersx", False),
        ("prefix /", "prefix /anything", True),
        ("prefix /orders/", "path /orders/42", True),
        ("prefix /orders/", "path /orders", True),
        ("prefix /orders/4", "path /orders/42", False),
        ("path /orders/42", "path /orders/42", True),
        ("path /orders/42", "path /orders/43", False),
        ("path /", "prefix /a", False),
        ("path /", "prefix /", True),
    ],
)
def test_prefix_and_path_overlaps(a: str, b: str, expected: bool) -> None:
    assert paths_overlap(space(a), space(b)) is expected
    assert paths_overlap(space(b), space(a)) is expected


# --- regexes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("regex /orders/.*", "prefix /orders/", True),  # the attack: a regex over the prefix
        ("regex /orders/.*", "prefix /orders/4", True),
        ("regex /orders/.*", "prefix /catalog", False),  # outside its possible match range
        ("regex /orders/.*", "prefix /ordersx", False),
        ("regex /orders.*", "prefix /orders", True),  # may match /orders itself
        ("regex /ordersx.*", "prefix /orders", False),  # `/ordersx…` is not under the segment
        ("regex /orders/[0-9]+", "path /orders/42", True),  # decided exactly
        ("regex /orders/[0-9]+", "path /orders/abc", False),
        ("regex /orders", "prefix /orders", True),
        ("regex /a|/b", "prefix /b", True),
        ("regex /a|/c", "prefix /b", True),  # range [/a, /c] meets /b: conservative
        ("regex .*", "prefix /x", True),
        ("regex (?i)/ORDERS/.*", "prefix /orders", True),  # case folding widens the range
        ("regex /orders/.*", "regex /orders/4.*", True),
        ("regex /orders/.*", "regex /catalog/.*", False),
        ("regex \\C*", "prefix /x", True),  # no computable range: overlaps everything
        ("regex abc", "prefix /", False),  # no path without a leading / exists
    ],
)
def test_regex_overlaps_are_conservative(a: str, b: str, expected: bool) -> None:
    assert paths_overlap(space(a), space(b)) is expected
    assert paths_overlap(space(b), space(a)) is expected


@pytest.mark.parametrize(
    ("regex", "probe"),
    [
        ("/orders/.*", "/orders/x"),
        ("/o(rders|ther)/x", "/other/x"),
        ("/orders/4[0-9]+", "/orders/499"),
        ("(?i)/orders/.*", "/ORDERS/x"),
    ],
)
def test_a_regex_that_matches_a_path_under_a_prefix_always_overlaps_it(regex: str, probe: str) -> None:
    assert re2.fullmatch(regex, probe)
    prefix = probe.rsplit("/", 1)[0] or "/"
    assert paths_overlap(space(f"regex {regex}"), space(f"prefix {prefix}"))


# --- containment in a grant --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "grant", "expected"),
    [
        ("prefix /b/", "/b", True),
        ("prefix /b/x", "/b", True),
        ("prefix /bx", "/b", False),
        ("prefix /", "/b", False),
        ("path /b", "/b", True),
        ("path /b/1", "/b", True),
        ("path /c", "/b", False),
        ("regex /b/.*", "/b", True),
        ("regex /b.*", "/b", False),  # could match /bx
        ("regex /b", "/b", True),
        ("regex .*", "/b", False),
        ("regex .*", "/", True),
    ],
)
def test_path_within_a_grant(claim: str, grant: str, expected: bool) -> None:
    assert path_within(space(claim), grant) is expected


# --- the index ---------------------------------------------------------------------------------


def test_the_index_finds_every_overlap_on_a_branch_and_only_those() -> None:
    index: ClaimIndex[str] = ClaimIndex()
    for owner, hostname, claim in [
        ("root", "*", "prefix /"),
        ("orders", "*", "prefix /orders"),
        ("deep", "*", "path /orders/4/2"),
        ("rx", "*", "regex /orders/.*"),
        ("cat", "*", "prefix /catalog"),
        ("host", "api.example", "prefix /orders/4"),
        ("elsewhere", "other.example", "prefix /orders/4"),
    ]:
        index.add(Claim(hostname, space(claim), owner))
    found = {c.owner for c in index.overlapping("api.example", space("prefix /orders/4"))}
    assert found == {"root", "orders", "deep", "rx", "host"}
    assert {c.owner for c in index.overlapping("*", space("path /catalog/x"))} == {"root", "cat"}
    assert {c.owner for c in index.overlapping("x.example", space("path /nothing"))} == {"root"}
