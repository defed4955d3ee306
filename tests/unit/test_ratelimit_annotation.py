"""The `legation.dev/rate-limit` annotation grammar: every form, every error, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import legation.api.v1alpha1.ratelimit_annotation as module
from legation.api.v1alpha1.ratelimit_annotation import (
    RateKey,
    RateLimitAnnotationError,
    RateLimitRule,
    parse_rate_limit,
)

IP, PATH, METHOD = RateKey("ip"), RateKey("path"), RateKey("method")


def test_design_example() -> None:
    assert parse_rate_limit("100/m per ip; 1000/h per claim:sub; 20/s") == (
        RateLimitRule(requests=100, unit="minute", multiplier=1, keys=(IP,)),
        RateLimitRule(requests=1000, unit="hour", multiplier=1, keys=(RateKey("claim", "sub"),)),
        RateLimitRule(requests=20, unit="second", multiplier=1, keys=()),
    )


def test_multiple_window_and_several_keys() -> None:
    (rule,) = parse_rate_limit("5/15m per header:x-api-key,method")
    assert rule == RateLimitRule(
        requests=5, unit="minute", multiplier=15, keys=(RateKey("header", "x-api-key"), METHOD)
    )
    assert rule.window_seconds == 900 and str(rule) == "5/15m per header:x-api-key,method"


@pytest.mark.parametrize(
    ("window", "unit", "multiplier", "seconds"),
    [
        ("s", "second", 1, 1),
        ("m", "minute", 1, 60),
        ("h", "hour", 1, 3600),
        ("d", "day", 1, 86400),
        ("1s", "second", 1, 1),
        ("30s", "second", 30, 30),
        ("15m", "minute", 15, 900),
        ("2h", "hour", 2, 7200),
        ("7d", "day", 7, 604800),
        ("10000s", "second", 10000, 10000),
    ],
)
def test_windows(window: str, unit: str, multiplier: int, seconds: int) -> None:
    (rule,) = parse_rate_limit(f"1/{window}")
    assert (rule.unit, rule.multiplier, rule.window_seconds) == (unit, multiplier, seconds)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("ip", IP),
        ("path", PATH),
        ("method", METHOD),
        ("header:X-Api-Key", RateKey("header", "x-api-key")),
        ("claim:sub", RateKey("claim", "sub")),
        ("claim:org.team", RateKey("claim", "org.team")),
        ("claim:https://example.com/plan", RateKey("claim", "https://example.com/plan")),
    ],
)
def test_keys(key: str, expected: RateKey) -> None:
    (rule,) = parse_rate_limit(f"10/s per {key}")
    assert rule.keys == (expected,)


def test_whitespace_is_free_and_order_is_kept() -> None:
    rules = parse_rate_limit("  100/m\tper   method , ip ,path  ;\n 20/s  ")
    assert [r.keys for r in rules] == [(METHOD, IP, PATH), ()]
    assert [str(r) for r in rules] == ["100/m per method,ip,path", "20/s"]


def test_limits_at_the_bounds() -> None:
    (rule,) = parse_rate_limit("4294967295/10000d")
    assert (rule.requests, rule.multiplier) == (2**32 - 1, 10_000)


@pytest.mark.parametrize(
    ("value", "problems"),
    [
        ("", ["rule 1 '': rule: empty annotation (expected e.g. '100/m per ip')"]),
        ("   ", ["rule 1 '': rule: empty annotation (expected e.g. '100/m per ip')"]),
        ("100/m;", ["rule 2 '': rule: empty rule (remove the extra ';')"]),
        ("100/m;;20/s", ["rule 2 '': rule: empty rule (remove the extra ';')"]),
        ("100", ["rule 1 '100': limit: expected REQUESTS/WINDOW such as 100/m, got '100'"]),
        ("100 / m", ["rule 1 '100 / m': limit: expected REQUESTS/WINDOW such as 100/m, got '100'"]),
        ("ten/m", ["rule 1 'ten/m': requests: 'ten' is not a whole number of requests"]),
        ("-1/m", ["rule 1 '-1/m': requests: '-1' is not a whole number of requests"]),
        ("1.5/m", ["rule 1 '1.5/m': requests: '1.5' is not a whole number of requests"]),
        ("/m", ["rule 1 '/m': requests: '' is not a whole number of requests"]),
        ("0/m", ["rule 1 '0/m': requests: must be between 1 and 4294967295"]),
        ("4294967296/m", ["rule 1 '4294967296/m': requests: must be between 1 and 4294967295"]),
        (
            "\u0661\u0660/m",
            ["rule 1 '\u0661\u0660/m': requests: '\u0661\u0660' is not a whole number of requests"],
        ),
        (
            "10/min",
            [
                "rule 1 '10/min': window: 'min' is not a window (expected s, m, h or d, optionally with a multiple: 15m)"
            ],
        ),
        (
            "10/",
            [
                "rule 1 '10/': window: '' is not a window (expected s, m, h or d, optionally with a multiple: 15m)"
            ],
        ),
        (
            "10/15",
            [
                "rule 1 '10/15': window: '15' is not a window (expected s, m, h or d, optionally with a multiple: 15m)"
            ],
        ),
        (
            "10/M",
            [
                "rule 1 '10/M': window: 'M' is not a window (expected s, m, h or d, optionally with a multiple: 15m)"
            ],
        ),
        ("10/0m", ["rule 1 '10/0m': window: the multiple in '0m' must be between 1 and 10000"]),
        ("10/10001s", ["rule 1 '10/10001s': window: the multiple in '10001s' must be between 1 and 10000"]),
        ("10/m by ip", ["rule 1 '10/m by ip': per: expected 'per' after the limit, got 'by'"]),
        ("10/m ip", ["rule 1 '10/m ip': per: expected 'per' after the limit, got 'ip'"]),
        (
            "10/m per",
            [
                "rule 1 '10/m per': keys: expected keys after 'per' (ip, header:NAME, claim:NAME, path, method)"
            ],
        ),
        ("10/m per ip,", ["rule 1 '10/m per ip,': keys: empty key (check the commas)"]),
        (
            "10/m per host",
            [
                "rule 1 '10/m per host': key 'host': unknown key (expected ip, header:NAME, claim:NAME, path or method)"
            ],
        ),
        (
            "10/m per IP",
            [
                "rule 1 '10/m per IP': key 'IP': unknown key (expected ip, header:NAME, claim:NAME, path or method)"
            ],
        ),
        ("10/m per ip:v4", ["rule 1 '10/m per ip:v4': key 'ip:v4': 'ip' takes no name"]),
        ("10/m per header", ["rule 1 '10/m per header': key 'header': needs a name, as in header:x-api-key"]),
        (
            "10/m per header:",
            ["rule 1 '10/m per header:': key 'header:': needs a name, as in header:x-api-key"],
        ),
        ("10/m per claim", ["rule 1 '10/m per claim': key 'claim': needs a name, as in claim:sub"]),
        (
            "10/m per header:x(y)",
            ["rule 1 '10/m per header:x(y)': key 'header:x(y)': 'x(y)' is not a valid header name"],
        ),
        ("10/m per ip,ip", ["rule 1 '10/m per ip,ip': key 'ip': listed twice"]),
        (
            "10/m per header:A,header:a",
            ["rule 1 '10/m per header:A,header:a': key 'header:a': listed twice"],
        ),
        (
            "100/m per ip; 5/x; 3/s per foo, claim:",
            [
                "rule 2 '5/x': window: 'x' is not a window (expected s, m, h or d, optionally with a multiple: 15m)",
                "rule 3 '3/s per foo, claim:': key 'foo': unknown key (expected ip, header:NAME, claim:NAME, path or method)",
                "rule 3 '3/s per foo, claim:': key 'claim:': needs a name, as in claim:sub",
            ],
        ),
        (
            "x/y per",
            [
                "rule 1 'x/y per': requests: 'x' is not a whole number of requests",
                "rule 1 'x/y per': window: 'y' is not a window (expected s, m, h or d, optionally with a multiple: 15m)",
                "rule 1 'x/y per': keys: expected keys after 'per' (ip, header:NAME, claim:NAME, path, method)",
            ],
        ),
    ],
)
def test_errors(value: str, problems: list[str]) -> None:
    with pytest.raises(RateLimitAnnotationError) as info:
        parse_rate_limit(value)
    assert [str(p) for p in info.value.problems] == problems
    assert str(info.value) == "; ".join(problems)
    assert isinstance(info.value, ValueError)


def test_problem_fields() -> None:
    with pytest.raises(RateLimitAnnotationError) as info:
        parse_rate_limit("1/s; 2/q")
    (problem,) = info.value.problems
    assert (problem.rule, problem.text, problem.part) == (2, "2/q", "window")


keys = st.one_of(
    st.sampled_from([IP, PATH, METHOD]),
    st.builds(RateKey, st.just("header"), st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True)),
    st.builds(RateKey, st.just("claim"), st.from_regex(r"[a-zA-Z0-9_.:/-]{1,16}", fullmatch=True)),
)
rules = st.builds(
    RateLimitRule,
    requests=st.integers(1, 2**32 - 1),
    unit=st.sampled_from(["second", "minute", "hour", "day"]),
    multiplier=st.integers(1, 10_000),
    keys=st.lists(keys, max_size=4, unique=True).map(tuple),
)


@given(st.lists(rules, min_size=1, max_size=4))
def test_round_trip(parsed: list[RateLimitRule]) -> None:
    text = "; ".join(str(r) for r in parsed)
    assert parse_rate_limit(text) == tuple(parsed)


def test_public_names() -> None:
    assert sorted(module.__all__) == [
        "ANNOTATION",
        "EXAMPLES",
        "GRAMMAR",
        "KEY_FORMS",
        "KeyKind",
        "MAX_MULTIPLIER",
        "MAX_REQUESTS",
        "RateKey",
        "RateLimitAnnotationError",
        "RateLimitProblem",
        "RateLimitRule",
        "Unit",
        "WINDOW_UNITS",
        "parse_rate_limit",
    ]
    assert module.ANNOTATION == "legation.dev/rate-limit"
