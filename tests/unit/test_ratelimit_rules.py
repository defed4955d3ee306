"""Descriptor matching, as in envoyproxy/ratelimit: exact value, then wildcard, then key only;
a limit applies only when every entry of the request descriptor is consumed."""

from __future__ import annotations

from legation.ratelimit.config import load_config_texts

CONFIG = """
domain: d
descriptors:
  - key: path
    value: /exact
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: path
    value: "/api/*/items"
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: path
    value: "/api/*"
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: path
    rate_limit: {unit: second, requests_per_unit: 4}
  - key: user
    descriptors:
      - key: plan
        value: gold
        rate_limit: {unit: second, requests_per_unit: 5}
  - key: tenant
    rate_limit: {unit: second, requests_per_unit: 6}
    descriptors:
      - key: method
        rate_limit: {unit: second, requests_per_unit: 7}
"""
RULES = load_config_texts([("c.yaml", CONFIG)]).rules


def requests_of(domain: str, *entries: tuple[str, str]) -> int | None:
    limits = RULES.lookup(domain, entries)
    return None if limits is None else limits[0].requests


def test_exact_value_beats_wildcard_beats_key_only() -> None:
    assert requests_of("d", ("path", "/exact")) == 1
    assert requests_of("d", ("path", "/api/v1/items")) == 2
    assert requests_of("d", ("path", "/api/v1/orders")) == 3
    assert requests_of("d", ("path", "/other")) == 4


def test_wildcard_matches_anywhere_and_whole_value_only() -> None:
    assert requests_of("d", ("path", "/api//items")) == 2
    assert requests_of("d", ("path", "/api/v1/items/extra")) == 3  # first wildcard must match it all
    assert requests_of("d", ("path", "x/api/v1")) == 4


def test_limit_needs_full_depth() -> None:
    assert requests_of("d", ("user", "alice")) is None  # node without a limit
    assert requests_of("d", ("user", "alice"), ("plan", "gold")) == 5
    assert requests_of("d", ("user", "alice"), ("plan", "silver")) is None
    assert requests_of("d", ("tenant", "t1")) == 6
    assert requests_of("d", ("tenant", "t1"), ("method", "GET")) == 7
    assert requests_of("d", ("tenant", "t1"), ("method", "GET"), ("extra", "x")) is None


def test_unknown_domain_key_or_empty_descriptor() -> None:
    assert requests_of("nope", ("path", "/exact")) is None
    assert requests_of("d", ("colour", "blue")) is None
    assert requests_of("d") is None


def test_rule_labels_are_paths_without_raw_values_for_key_only_nodes() -> None:
    (limit,) = RULES.lookup("d", [("path", "/anything")]) or ()
    assert limit.rule == "d.path"
    (limit,) = RULES.lookup("d", [("user", "bob"), ("plan", "gold")]) or ()
    assert limit.rule == "d.user.plan_gold"
