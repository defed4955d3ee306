"""The native enforcement bench's pure parts: judging one wrk run by the Envoys' counters, the
median of the repetitions, the ratios and goals of issue 13, the table.

A run with any non-2xx answer, socket error, answer that did not come from the upstream, or the
wrong auth path taken (ext_authz called on the native route, jwt_authn not verifying every request
on a route that requires it, or verifying a token on one that does not) is a failed measurement: its target gets no number.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bench.harness.report import markdown_table
from bench.harness.wrk import WrkResult

__all__ = [
    "GOALS",
    "NAMES",
    "TAGS",
    "Goal",
    "GoalResult",
    "Sample",
    "Summary",
    "goal_results",
    "jwt_verified",
    "results_table",
    "run_problems",
    "summarize",
]

TAGS = ("open", "native", "service", "jwt_authn", "jwt_rbac")
NAMES = {
    "open": "Legation route, no auth",
    "native": "Legation route, native policy (enforcement: auto)",
    "service": "Legation route, same policy, enforcement: service",
    "jwt_authn": "hand-written jwt_authn (static Envoy, same keys)",
    "jwt_rbac": "hand-written jwt_authn + RBAC for the claim rules",
}
_AUTH_PATH = {  # tag -> (jwt_authn verifies every request, ext_authz is called for every request)
    "open": (False, False),
    "native": (True, False),
    "service": (False, True),
    "jwt_authn": (True, False),
    "jwt_rbac": (True, False),
}
_NON_2XX = ("1xx", "3xx", "4xx", "5xx")
AUTHZ_CALLS = "envoy:cluster.legation_authz.upstream_rq_total"


@dataclass(frozen=True)
class Goal:
    """The native route's req/s must be at least ``minimum`` times the ``baseline``'s (None: a
    ratio shown for context, no goal)."""

    baseline: str
    minimum: float | None


GOALS = (Goal("jwt_authn", 0.8), Goal("open", 0.6), Goal("service", 3.0), Goal("jwt_rbac", None))
"""Issue 13's three goals; then native against the claim rules written by hand, which says how
much of the gap to bare jwt_authn is Envoy's own price for claim rules."""


def stat_prefix(tag: str) -> str:
    """The HTTP connection manager's stats: Legation's listener is ``http``, the static ``front``."""
    return "http.front." if tag.startswith("jwt_") else "http.http."


def jwt_verified(delta: Mapping[str, float], tag: str) -> float:
    """Tokens jwt_authn verified: its ``jwt_cache_miss`` + ``jwt_cache_hit`` (``allowed`` also
    counts the requests of routes that require nothing)."""
    pre = f"envoy:{stat_prefix(tag)}jwt_authn."
    return delta.get(f"{pre}jwt_cache_miss", 0.0) + delta.get(f"{pre}jwt_cache_hit", 0.0)


def run_problems(
    tag: str, wrk: WrkResult, gateway: Mapping[str, float], upstream: Mapping[str, float]
) -> dict[str, float]:
    """What went wrong in one run (empty: a valid number), from wrk and the deltas of the gateway
    Envoy's and the upstream Envoy's counters over the run."""
    pre = f"envoy:{stat_prefix(tag)}"
    jwt_expected, authz_expected = _AUTH_PATH[tag]
    found = {
        "wrk non-2xx": float(wrk.non_2xx),
        "wrk socket errors": float(wrk.socket_errors),
        "Envoy non-2xx": sum(gateway.get(f"{pre}downstream_rq_{c}", 0.0) for c in _NON_2XX),
        "answers not from the upstream": wrk.requests
        - upstream.get("envoy:http.front.downstream_rq_2xx", 0.0),
    }
    jwt, authz = jwt_verified(gateway, tag), gateway.get(AUTHZ_CALLS, 0.0)
    found["jwt_authn verified fewer than the requests" if jwt_expected else "jwt_authn verified tokens"] = (
        wrk.requests - jwt if jwt_expected else jwt
    )
    found["ext_authz.ok short of requests" if authz_expected else "ext_authz called"] = (
        wrk.requests - gateway.get(f"{pre}ext_authz.ok", 0.0) if authz_expected else authz
    )
    if wrk.requests == 0:
        found["no requests"] = 1.0
    return {k: v for k, v in found.items() if v > 0}


@dataclass(frozen=True)
class Sample:
    """One wrk run of one target."""

    tag: str
    round: int
    wrk: WrkResult
    cpu_us_per_req: float
    """CPU time of the server side (both gateway Envoys, the authz service) per request."""
    server_cpu_busy_pct: float | None
    """Busy time of the server CPU over the run (any process)."""
    client_cpu_busy_pct: float | None
    problems: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Summary:
    """A target over its repetitions: medians of the valid runs, or why there is no number."""

    tag: str
    name: str
    runs: list[float]
    """req/s of every run, in order (failed runs included)."""
    req_per_s: float | None
    p99_ms: float | None
    cpu_us_per_req: float | None
    server_cpu_busy_pct: float | None
    client_cpu_busy_pct: float | None
    problems: dict[str, float]
    """Summed over the runs; any entry makes the target a failed measurement."""

    @property
    def valid(self) -> bool:
        return self.req_per_s is not None and not self.problems


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(tag: str, samples: Sequence[Sample]) -> Summary:
    """Medians over the runs of ``tag``; no number at all when a run failed."""
    mine = [s for s in samples if s.tag == tag]
    problems: dict[str, float] = {}
    for s in mine:
        for k, v in s.problems.items():
            problems[k] = problems.get(k, 0.0) + v
    ok = mine if not problems else []
    return Summary(
        tag=tag, name=NAMES[tag], runs=[s.wrk.req_per_s for s in mine],
        req_per_s=_median([s.wrk.req_per_s for s in ok]), p99_ms=_median([s.wrk.p99_ms for s in ok]),
        cpu_us_per_req=_median([s.cpu_us_per_req for s in ok]),
        server_cpu_busy_pct=_median([s.server_cpu_busy_pct for s in ok]),
        client_cpu_busy_pct=_median([s.client_cpu_busy_pct for s in ok]),
        problems=problems if mine else {"not measured": 1.0},
    )  # fmt: skip


@dataclass(frozen=True)
class GoalResult:
    goal: Goal
    ratio: float | None
    """native req/s / baseline req/s; None when either is not a valid number."""
    cpu_ratio: float | None
    """baseline CPU µs per request / native's (the same ratio by CPU cost)."""

    @property
    def passed(self) -> bool:
        """The goal is met (always, for a ratio shown for context)."""
        if self.goal.minimum is None:
            return True
        return self.ratio is not None and self.ratio >= self.goal.minimum


def goal_results(summaries: Mapping[str, Summary], goals: Sequence[Goal] = GOALS) -> list[GoalResult]:
    native = summaries.get("native")
    out = []
    for goal in goals:
        base = summaries.get(goal.baseline)
        both = native is not None and base is not None and native.valid and base.valid
        ratio = cpu = None
        if both and native and base and native.req_per_s and base.req_per_s:
            ratio = native.req_per_s / base.req_per_s
            if native.cpu_us_per_req and base.cpu_us_per_req:
                cpu = base.cpu_us_per_req / native.cpu_us_per_req
        out.append(GoalResult(goal, ratio, cpu))
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}%"


def _row(s: Summary, goal: GoalResult | None) -> list[str]:
    runs = " / ".join(f"{r:,.0f}" for r in s.runs)
    number = f"**{s.req_per_s:,.0f}**" if s.valid and s.req_per_s else "failed"
    if goal is None:
        ratio_cells = ["1.00" if s.tag == "native" else "", "", "", ""]
    else:
        r, c, minimum = goal.ratio, goal.cpu_ratio, goal.goal.minimum
        verdict = "PASS" if goal.passed else ("**FAIL**" if r is not None else "n/a")
        ratio_cells = ["n/a" if r is None else f"{r:.2f}", "n/a" if c is None else f"{c:.2f}",
                       "—" if minimum is None else f"≥ {minimum:g}", "" if minimum is None else verdict]  # fmt: skip
    problems = ", ".join(f"{v:,.0f} {k}" for k, v in s.problems.items()) or "0"
    return [
        s.name, number, runs, "n/a" if s.p99_ms is None else f"{s.p99_ms:.2f} ms",
        "n/a" if s.cpu_us_per_req is None else f"{s.cpu_us_per_req:.0f}", *ratio_cells, problems,
        f"{_pct(s.server_cpu_busy_pct)} / {_pct(s.client_cpu_busy_pct)}",
    ]  # fmt: skip


def results_table(summaries: Mapping[str, Summary], goals: Sequence[GoalResult]) -> str:
    """One row per target; a baseline's row carries native ÷ it, its goal and the verdict."""
    by_baseline = {g.goal.baseline: g for g in goals}
    headers = ["target", "req/s (median)", "req/s of each run", "p99 (median)", "server CPU µs/req",
               "native ÷ this", "by CPU/req", "goal", "pass", "failed requests", "busy: server / client CPU"]  # fmt: skip
    right = [False, True, True, True, True, True, True, False, False, True, True]
    rows = [_row(summaries[t], by_baseline.get(t)) for t in TAGS if t in summaries]
    return markdown_table(headers, rows, right)
