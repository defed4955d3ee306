"""The reference's newer keys and settings, without processes: quota_mode (per descriptor and
global), value_to_metric/detailed_metric names and their cardinality bound, share_threshold with
fixed windows, file merging, the memory key cap, and --redis-url parsing."""

from __future__ import annotations

import pytest

from legation.core.errors import ConfigErrors
from legation.ratelimit.backends.memory import MemoryBackend
from legation.ratelimit.backends.redis_url import parse_redis_url
from legation.ratelimit.config import load_config_texts
from legation.ratelimit.limiter import DescriptorRequest, Limiter
from legation.ratelimit.metrics import Metrics
from legation.ratelimit.rules import Limit

QUOTA = """
domain: q
descriptors:
  - key: plan_a
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1}
  - key: plan_b
    quota_mode: true
    rate_limit: {unit: minute, requests_per_unit: 2}
  - key: ip
    rate_limit: {unit: minute, requests_per_unit: 100}
"""


class Clock:
    now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def d(key: str, value: str = "x") -> DescriptorRequest:
    return DescriptorRequest(((key, value),))


async def test_quota_descriptors_deny_only_when_all_are_over() -> None:
    backend = MemoryBackend(clock=Clock())
    lim = Limiter(rules=load_config_texts([("q.yaml", QUOTA)]).rules, backend=backend)
    request = [d("plan_a"), d("plan_b"), d("ip")]
    first = await lim.should_rate_limit("q", request)
    assert not first.over
    second = await lim.should_rate_limit("q", request)  # plan_a over, plan_b still has one
    assert not second.over and second.statuses[0].over and not second.statuses[1].over
    third = await lim.should_rate_limit("q", request)  # both quota descriptors over
    assert third.over and third.statuses[0].over and third.statuses[1].over
    # plan_a counted only the hit it granted; ip counted the two admitted requests only
    assert third.statuses[0].remaining == 0 and third.statuses[2].remaining == 98


async def test_global_quota_mode_makes_every_limit_a_quota() -> None:
    lim = Limiter(
        rules=load_config_texts([("q.yaml", QUOTA)]).rules,
        backend=MemoryBackend(clock=Clock()),
        quota_mode=True,
    )
    assert not (await lim.should_rate_limit("q", [d("plan_a"), d("ip")])).over
    assert not (await lim.should_rate_limit("q", [d("plan_a"), d("ip")])).over  # ip still has room
    assert (await lim.should_rate_limit("q", [d("plan_a")])).over  # its only quota is over


METRICS = """
domain: example10
descriptors:
  - key: route
    value_to_metric: true
    descriptors:
      - key: http_method
        value_to_metric: true
        descriptors:
          - key: subject_id
            rate_limit: {unit: minute, requests_per_unit: 60}
  - key: user
    value_to_metric: true
    descriptors:
      - key: action
        value: read*
        value_to_metric: true
        descriptors:
          - key: resource
            rate_limit: {unit: minute, requests_per_unit: 100}
  - key: shared
    value: api/*
    share_threshold: true
    value_to_metric: true
    descriptors:
      - key: method
        rate_limit: {unit: minute, requests_per_unit: 60}
  - key: plain
    rate_limit: {unit: minute, requests_per_unit: 1}
"""


@pytest.mark.parametrize(
    ("entries", "stats"),
    [  # the reference README's examples 10 and 11
        (
            (("route", "api"), ("http_method", "GET"), ("subject_id", "123")),
            "example10.route_api.http_method_GET.subject_id",
        ),
        (
            (("route", "web"), ("http_method", "POST"), ("subject_id", "4")),
            "example10.route_web.http_method_POST.subject_id",
        ),
        (
            (("user", "alice"), ("action", "readfile"), ("resource", "documents")),
            "example10.user_alice.action_readfile.resource",
        ),
        # share_threshold wins over value_to_metric: the static name (the reference's tests say
        # `route_api/*.method`; its README's `route_api.method_GET` is not what its code does)
        ((("shared", "api/v1"), ("method", "GET")), None),
        ((("plain", "anything"),), None),
    ],
)
def test_value_to_metric_names_as_the_reference(
    entries: tuple[tuple[str, str], ...], stats: str | None
) -> None:
    found = load_config_texts([("m.yaml", METRICS)]).rules.match("example10", entries)
    assert found is not None and found.stat_key == stats


def test_value_bearing_metric_labels_are_bounded() -> None:
    limit = load_config_texts([("m.yaml", METRICS)]).rules.lookup("example10", [("plain", "x")])
    assert limit is not None
    metrics = Metrics(max_value_rules=2)
    labels = [metrics._rule(limit[0], f"example10.route_{i}") for i in range(4)]
    assert labels == [
        "example10.route_0",
        "example10.route_1",
        "example10.plain#other",
        "example10.plain#other",
    ]
    assert metrics._rule(limit[0], "example10.route_0") == "example10.route_0"  # known ones keep theirs


async def test_share_threshold_with_fixed_windows_shares_one_counter() -> None:
    config = """
domain: s
algorithm: fixed_window
descriptors:
  - key: files
    value: "files/*/raw"
    share_threshold: true
    rate_limit: {unit: minute, requests_per_unit: 2}
"""
    lim = Limiter(rules=load_config_texts([("s.yaml", config)]).rules, backend=MemoryBackend(clock=Clock()))
    answers = [(await lim.should_rate_limit("s", [d("files", f"files/{n}/raw")])).over for n in "abc"]
    assert answers == [False, False, True]


def test_merge_domain_config_joins_files_and_reports_conflicts_with_both_names() -> None:
    a = "domain: m\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
    b = "domain: m\nalgorithm: fixed_window\ndescriptors:\n  - key: b\n    rate_limit: {unit: second, requests_per_unit: 2}\n"
    rules = load_config_texts([("a.yaml", a), ("b.yaml", b)], merge_domains=True).rules
    (la,) = rules.lookup("m", [("a", "1")]) or ()
    (lb,) = rules.lookup("m", [("b", "1")]) or ()
    assert (la.requests, la.span, lb.requests, lb.span) == (1, 20, 2, 0)  # each file's algorithm
    with pytest.raises(ConfigErrors) as info:
        load_config_texts([("a.yaml", a), ("c.yaml", a)], merge_domains=True)
    assert [str(e) for e in info.value.errors] == [
        "c.yaml:3: descriptors[0]: duplicate descriptor composite key 'm.a' (also in a.yaml; merged domain)"
    ]
    with pytest.raises(ConfigErrors):
        load_config_texts([("a.yaml", a), ("b.yaml", b)])  # without the option: duplicate domain


def test_share_threshold_needs_a_wildcard() -> None:
    with pytest.raises(ConfigErrors) as info:
        load_config_texts(
            [("s.yaml", "domain: s\ndescriptors:\n  - key: k\n    value: v\n    share_threshold: true\n")]
        )
    assert (
        "share_threshold can only be used with wildcard values (containing '*'), but found key 'k_v'"
        in str(info.value.errors[0])
    )


async def test_memory_cap_evicts_expired_first_then_soonest_expiring() -> None:
    clock = Clock()
    evictions: list[tuple[str, int]] = []
    backend = MemoryBackend(clock=clock, max_keys=3, on_evict=lambda r, n: evictions.append((r, n)))
    second, hour = (50, 20, 1), (180_000, 20, 1)  # bucket_ms, span, addend: 1 s and 1 h windows
    await backend.apply(["short"], second, [0, 10, 1])
    await backend.apply(["long1"], hour, [0, 10, 1])
    await backend.apply(["long2"], hour, [0, 10, 1])
    clock.now += 5  # "short" has expired
    await backend.apply(["long3"], hour, [0, 10, 1])
    assert len(backend) == 3 and evictions == [("expired", 1)]
    clock.now += 1
    await backend.apply(["long4"], hour, [0, 10, 1])  # at the cap with nothing expired
    assert len(backend) == 3 and evictions[-1] == ("capacity", 1)
    used = (await backend.apply(["long4"], hour, [0, 10, 1])).used
    assert used == [1]  # the newest key was kept
    await backend.close()


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("redis+cluster://h1:7001,h2:7002", None),
        ("rediss+cluster://[::1]:7001,h2", None),
        ("redis+sentinel://a:1,b:2/master/3", None),
        ("redis://a:1,b:2", "several hosts need redis+sentinel:// or redis+cluster://"),
        ("redis://h:99999", "bad host 'h:99999'"),
        ("http://h", "unsupported scheme 'http'"),
        ("h:6379", "unsupported scheme 'h'"),
        ("redis://h/abc", "db 'abc' is not a number"),
        ("redis+sentinel://h:1", "needs the master name"),
        ("redis://u:s3cret@h:1/x", "'redis://u:***@h:1/x'"),
    ],
)
def test_redis_urls_parse_or_fail_in_one_line(url: str, fragment: str | None) -> None:
    if fragment is None:
        assert parse_redis_url(url).hosts
        return
    with pytest.raises(ValueError) as info:
        parse_redis_url(url)
    message = str(info.value)
    assert fragment in message and "expected redis://" in message and "\n" not in message
    assert "s3cret" not in message


def test_limit_fields_default() -> None:
    assert Limit(requests=1, unit=1, window_ms=1000, bucket_ms=50, span=20, rule="r").quota is False
