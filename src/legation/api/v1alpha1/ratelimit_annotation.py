"""The `legation.dev/rate-limit` annotation of a Mapping: parsed into typed rules.

The grammar, the window units, the keys and the examples are the constants below (GRAMMAR,
WINDOW_UNITS, KEY_FORMS, EXAMPLES); the reference (docs/reference.md, `make docs`) is generated
from them, and the examples are parsed when it is, so the documentation cannot drift from the
parser. `100/m per ip; 1000/h per claim:sub; 20/s` is three rules: 100 requests a minute per
client address, 1000 an hour per JWT `sub`, and 20 a second shared by every caller of the Mapping.

Pure: no Envoy or rate-limit-service knowledge; the compiler turns rules into both.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from legation.api.v1alpha1.fields import HEADER_NAME

__all__ = [
    "ANNOTATION",
    "EXAMPLES",
    "GRAMMAR",
    "KEY_FORMS",
    "MAX_MULTIPLIER",
    "MAX_REQUESTS",
    "WINDOW_UNITS",
    "KeyKind",
    "RateKey",
    "RateLimitAnnotationError",
    "RateLimitProblem",
    "RateLimitRule",
    "Unit",
    "parse_rate_limit",
]

ANNOTATION = "legation.dev/rate-limit"
MAX_REQUESTS = 2**32 - 1  # the rate limit service's requests_per_unit is a uint32
MAX_MULTIPLIER = 10_000  # as the rate limit config's unit_multiplier

Unit = Literal["second", "minute", "hour", "day"]
KeyKind = Literal["ip", "header", "claim", "path", "method"]

_Fail = Callable[[str, str], None]  # reports (part, reason) for the rule being parsed
GRAMMAR = """\
value   := rule (";" rule)*
rule    := REQUESTS "/" WINDOW ["per" key ("," key)*]
WINDOW  := [MULTIPLE] ("s" | "m" | "h" | "d")          e.g. s, 15m, 2h
key     := "ip" | "header:" NAME | "claim:" NAME | "path" | "method"
"""
"""The annotation's syntax; whitespace around tokens is free."""

WINDOW_UNITS: dict[str, Unit] = {"s": "second", "m": "minute", "h": "hour", "d": "day"}
"""The window letters; a window may also be a multiple of one, such as 15m (up to MAX_MULTIPLIER)."""

KEY_FORMS: dict[str, str] = {
    "ip": "the client address (Envoy's remote address)",
    "header:NAME": "the value of the request header NAME; requests without it share one bucket of the rule "
    "(leaving the header out never escapes the limit)",
    "claim:NAME": "a claim of the caller's JWT, passed from the authz service to Envoy as dynamic metadata "
    "(`sub` and `iss` always; any other claim must be listed in the JWTPolicy's metadataClaims); "
    "requests without it (no token, or a token without that claim) share one bucket of the rule",
    "path": "the request path, query string included",
    "method": "the request method",
}
"""Each key a rule can count per, with its meaning. Several keys: one counter per combination."""

EXAMPLES: tuple[tuple[str, str], ...] = (
    ("100/m per ip", "100 requests a minute per client address"),
    ("1000/h per claim:sub", "1000 requests an hour per JWT subject"),
    ("20/s", "20 requests a second, one budget shared by every caller of the Mapping"),
    ("5000/15m per header:x-api-key", "5000 requests per 15 minutes per value of the x-api-key header"),
    ("10/s per ip,method", "10 requests a second per client address and method"),
    (
        "100/m per ip; 1000/h per claim:sub; 20/s",
        "all three rules at once: a request over any of them is refused (429)",
    ),
)
"""Annotation values and what they mean; the reference parses each one when it is generated."""

_BARE_KEYS: dict[str, KeyKind] = {"ip": "ip", "path": "path", "method": "method"}
_UNITS = WINDOW_UNITS
_UNIT_SECONDS: dict[Unit, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_WINDOW = re.compile(r"(\d*)([a-zA-Z]*)")
_CLAIM_NAME = re.compile(r"[^\s,;]+")  # namespaced claims may be URLs


@dataclass(frozen=True)
class RateKey:
    """One part of a rule's counter key."""

    kind: KeyKind
    """ip: client address; header: a request header; claim: a JWT claim (via ext_authz metadata);
    path: the request path; method: the request method."""
    name: str | None = None
    """The header name (lowercase) or claim name (dots for nested claims); None for the others."""

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}" if self.name is not None else self.kind


@dataclass(frozen=True)
class RateLimitRule:
    """`requests` per `multiplier` x `unit`, counted separately for each value of `keys`."""

    requests: int
    unit: Unit
    multiplier: int
    keys: tuple[RateKey, ...]
    """In the order written; empty = one budget shared by every request to the Mapping."""

    @property
    def window_seconds(self) -> int:
        return _UNIT_SECONDS[self.unit] * self.multiplier

    def __str__(self) -> str:
        window = f"{self.multiplier if self.multiplier != 1 else ''}{self.unit[0]}"
        keys = f" per {','.join(str(k) for k in self.keys)}" if self.keys else ""
        return f"{self.requests}/{window}{keys}"


@dataclass(frozen=True)
class RateLimitProblem:
    """What is wrong, where: the 1-based rule number, the rule's text, the part and why."""

    rule: int
    text: str
    part: str
    reason: str

    def __str__(self) -> str:
        return f"rule {self.rule} '{self.text}': {self.part}: {self.reason}"


class RateLimitAnnotationError(ValueError):
    """Every problem in one annotation value (parsing does not stop at the first)."""

    def __init__(self, problems: list[RateLimitProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in problems))


@functools.lru_cache(maxsize=1024)
def parse_rate_limit(value: str) -> tuple[RateLimitRule, ...]:
    """The rules of an annotation value. Raises RateLimitAnnotationError listing every problem."""
    # Cached: a Mapping's annotation is parsed when it is validated and again when compiled, and
    # teams copy the same few values. The rules are immutable; errors are not cached.
    if not value.strip():
        problem = RateLimitProblem(1, "", "rule", "empty annotation (expected e.g. '100/m per ip')")
        raise RateLimitAnnotationError([problem])
    rules: list[RateLimitRule] = []
    problems: list[RateLimitProblem] = []
    for number, text in enumerate(value.split(";"), start=1):
        rule = _parse_rule(text.strip(), number, problems)
        if rule is not None:
            rules.append(rule)
    if problems:
        raise RateLimitAnnotationError(problems)
    return tuple(rules)


def _parse_rule(text: str, number: int, problems: list[RateLimitProblem]) -> RateLimitRule | None:
    def fail(part: str, reason: str) -> None:
        problems.append(RateLimitProblem(number, text, part, reason))

    if not text:
        fail("rule", "empty rule (remove the extra ';')")
        return None
    limit, rest = _first_word(text)
    requests_text, slash, window_text = limit.partition("/")
    if not slash:
        fail("limit", f"expected REQUESTS/WINDOW such as 100/m, got '{limit}'")
        return None
    requests = _requests(requests_text, fail)
    window = _window(window_text, fail)
    keys = _keys(rest.strip(), fail)
    if requests is None or window is None or keys is None:
        return None
    return RateLimitRule(requests=requests, unit=window[0], multiplier=window[1], keys=keys)


def _requests(text: str, fail: _Fail) -> int | None:
    if not text.isascii() or not text.isdigit():
        fail("requests", f"'{text}' is not a whole number of requests")
        return None
    requests = int(text)
    if not 1 <= requests <= MAX_REQUESTS:
        fail("requests", f"must be between 1 and {MAX_REQUESTS}")
        return None
    return requests


def _window(text: str, fail: _Fail) -> tuple[Unit, int] | None:
    match = _WINDOW.fullmatch(text)
    if match is None or match.group(2) not in _UNITS:
        fail("window", f"'{text}' is not a window (expected s, m, h or d, optionally with a multiple: 15m)")
        return None
    multiplier = int(match.group(1) or "1")
    if not 1 <= multiplier <= MAX_MULTIPLIER:
        fail("window", f"the multiple in '{text}' must be between 1 and {MAX_MULTIPLIER}")
        return None
    return _UNITS[match.group(2)], multiplier


def _keys(text: str, fail: _Fail) -> tuple[RateKey, ...] | None:
    if not text:
        return ()
    word, keys_text = _first_word(text)
    if word != "per":
        fail("per", f"expected 'per' after the limit, got '{word}'")
        return None
    if not keys_text.strip():
        fail("keys", "expected keys after 'per' (ip, header:NAME, claim:NAME, path, method)")
        return None
    keys: list[RateKey] = []
    ok = True
    for raw in keys_text.split(","):
        key = _key(raw.strip(), fail)
        if key is not None and key in keys:
            fail(f"key '{key}'", "listed twice")
            key = None
        if key is None:
            ok = False
        else:
            keys.append(key)
    return tuple(keys) if ok else None


def _first_word(text: str) -> tuple[str, str]:
    first, *rest = text.split(None, 1)
    return first, rest[0].strip() if rest else ""


def _key(text: str, fail: _Fail) -> RateKey | None:
    kind, colon, name = text.partition(":")
    if not text:
        fail("keys", "empty key (check the commas)")
    elif kind in _BARE_KEYS and not colon:
        return RateKey(_BARE_KEYS[kind])
    elif kind in _BARE_KEYS:
        fail(f"key '{text}'", f"'{kind}' takes no name")
    elif kind in ("header", "claim") and not name:
        fail(f"key '{text}'", f"needs a name, as in {kind}:{'x-api-key' if kind == 'header' else 'sub'}")
    elif kind == "header" and HEADER_NAME.fullmatch(name):
        return RateKey("header", name.lower())
    elif kind == "header":
        fail(f"key '{text}'", f"'{name}' is not a valid header name")
    elif kind == "claim" and _CLAIM_NAME.fullmatch(name):
        return RateKey("claim", name)
    elif kind == "claim":
        fail(f"key '{text}'", f"'{name}' is not a valid claim name")
    else:
        fail(f"key '{text}'", "unknown key (expected ip, header:NAME, claim:NAME, path or method)")
    return None
