"""Conformance with envoyproxy/ratelimit's config loader: its own test configurations
(testdata/, see NOTICE) loaded by Legation's loader, with the loads, the failures and the
descriptor lookups its test/config/config_test.go asserts. Each test id is the reference test's
name (subtests as `Test/Subtest`).

What is compared: the limit found (requests_per_unit, unit, name, shadow/quota flags), its stats
key (in Legation the `rule` label of `legation_ratelimit_decisions_total` when the limit has no
`name`, see README "Operations"), which values share one counter, and the metadata. Failures:
the file named and the reason; where Legation words a reason differently, both are written down
below and Legation's is checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest

from legation.core.errors import ConfigErrors
from legation.ratelimit.config import LoadedConfig, load_config_texts
from legation.ratelimit.limiter import counter_key
from legation.ratelimit.rules import Match

DATA = Path(__file__).parent / "testdata" / "config"
SECOND, MINUTE, HOUR, DAY = 1, 2, 3, 4


def load(*names: str, merge: bool = False) -> LoadedConfig:
    return load_config_texts([(n, (DATA / n).read_text()) for n in names], merge_domains=merge)


class Expect(NamedTuple):
    entries: tuple[tuple[str, str], ...]
    requests: int | None  # None: no limit applies
    unit: int = 0
    stats: str = ""
    name: str = ""
    shadow: bool = False
    unlimited: bool = False
    shared: tuple[str | None, ...] = ()


def stats_key(found: Match) -> str:
    (limit,) = found.limits
    return found.stat_key or limit.path


def check(config: LoadedConfig, domain: str, expect: Expect) -> Match | None:
    found = config.rules.match(domain, expect.entries)
    if expect.requests is None:
        assert found is None, f"{expect.entries}: expected no limit, got {found}"
        return None
    assert found is not None, f"{expect.entries}: expected a limit"
    (limit,) = found.limits
    assert (limit.requests, limit.unit, limit.name) == (expect.requests, expect.unit, expect.name)
    assert (limit.shadow, limit.unlimited) == (expect.shadow, expect.unlimited)
    if expect.stats:
        assert stats_key(found) == expect.stats
    assert found.shared == expect.shared
    return found


def e(*pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple((pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2))


BASIC = [
    Expect(e("key1", "something"), None),
    Expect(e("key1", "value1"), None),
    Expect(e("key2", "value2", "subkey", "subvalue"), None),
    Expect(e("key5", "value5", "subkey5", "subvalue"), None),
    Expect(e("key1", "value1", "subkey1", "something"), 5, SECOND, "test-domain.key1_value1.subkey1"),
    Expect(
        e("key1", "value1", "subkey1", "subvalue1"), 10, SECOND, "test-domain.key1_value1.subkey1_subvalue1"
    ),
    Expect(e("key2", "something"), 20, MINUTE, "test-domain.key2"),
    Expect(e("key2", "value2"), 30, MINUTE, "test-domain.key2_value2"),
    Expect(e("key2", "value3"), None),
    Expect(e("key3", "foo"), 1, HOUR, "test-domain.key3"),
    Expect(e("key4", "foo"), 1, DAY, "test-domain.key4", name="key4_rate_limit"),
    Expect(e("key6", "foo"), 0, 0, "test-domain.key6", unlimited=True),
    Expect(e("key7", "unspecified_value"), 70, MINUTE, "test-domain.key7_unspecified_value"),
    Expect(e("key7", "another_value"), 70, MINUTE, "test-domain.key7_another_value"),
]


def test_TestBasicConfig() -> None:
    config = load("basic_config.yaml")
    assert config.rules.match("foo_domain", ()) is None  # unknown domain
    assert config.rules.match("test-domain", ()) is None  # no entries
    for expect in BASIC:
        check(config, "test-domain", expect)


def test_TestDomainMerge() -> None:
    config = load("merge_domain_key1.yaml", "merge_domain_key2.yaml", merge=True)
    check(config, "test-domain", Expect(e("key1", "value1"), 10, MINUTE))
    check(config, "test-domain", Expect(e("key2", "value2"), 20, MINUTE))


def test_TestShadowModeConfig() -> None:
    config = load("shadowmode_config.yaml")
    for expect in [
        Expect(e("key1", "value1", "subkey1", "something"), 5, SECOND, "test-domain.key1_value1.subkey1"),
        Expect(
            e("key1", "value1", "subkey1", "subvalue1"),
            10,
            SECOND,
            "test-domain.key1_value1.subkey1_subvalue1",
            shadow=True,
        ),
        Expect(e("key2", "something"), 20, MINUTE, "test-domain.key2", shadow=True),
        Expect(e("key2", "value2"), 30, MINUTE, "test-domain.key2_value2"),
    ]:
        check(config, "test-domain", expect)


def test_TestWildcardConfig() -> None:
    config = load("wildcard.yaml")
    for expect in [
        Expect(e("noVal", "foo1"), 20, MINUTE, "test-domain.noVal"),
        Expect(e("noVal", "foo2"), 20, MINUTE, "test-domain.noVal"),
        Expect(e("wild", "foo1"), 20, MINUTE, "test-domain.wild_foo*"),
        Expect(e("wild", "foo2"), 20, MINUTE, "test-domain.wild_foo*"),
        Expect(e("nestedWild", "val1", "wild", "goo2"), 20, MINUTE, "test-domain.nestedWild_val1.wild_goo*"),
        Expect(e("wild", "bar"), None),
        Expect(e("noWild", "foo1"), None),
        Expect(e("midWild", "barab"), 20, MINUTE, "test-domain.midWild_bar*b"),
        Expect(e("midWild", "bar123b"), 20, MINUTE, "test-domain.midWild_bar*b"),
        Expect(e("midWild", "barb"), 20, MINUTE),
        Expect(e("midWild", "bara"), None),
        Expect(e("midWild", "xbarb"), None),
        Expect(e("multiWild", "foo123bar456baz"), 10, MINUTE, "test-domain.multiWild_foo*bar*baz"),
        Expect(e("multiWild", "foobarbaz"), 10, MINUTE, "test-domain.multiWild_foo*bar*baz"),
        Expect(e("multiWild", "foo123baz"), None),
        Expect(e("multiWild", "bar456baz"), None),
    ]:
        check(config, "test-domain", expect)


def test_TestMetadata() -> None:
    config = load("metadata.yaml")
    assert config.rules.match("test-domain", ()) is None
    found = check(
        config,
        "test-domain",
        Expect(e("key1", "value1", "subkey1", "something"), 5, SECOND, "test-domain.key1_value1.subkey1"),
    )
    assert found is not None and found.metadata == {"name": "service_1"}
    found = check(config, "test-domain", Expect(e("key2", "something"), 20, MINUTE, "test-domain.key2"))
    assert found is not None and found.metadata == {"service_with_quota": {"name": "service_2"}}


def shares_one_counter(config: LoadedConfig, *entry_sets: tuple[tuple[str, str], ...]) -> bool:
    keys = set()
    for entries in entry_sets:
        found = config.rules.match("test-domain", entries)
        assert found is not None
        keys.add(counter_key("test-domain", found.limits[0], entries, found.shared))
    return len(keys) == 1


SHARE_CASES: dict[str, list[Expect]] = {
    "Basic_share_threshold": [
        Expect(e("files", v), 100, MINUTE, "test-domain.files_files/*", shared=("files/*",))
        for v in ("files/a.pdf", "files/b.csv", "files/c.txt")
    ],
    "share_threshold_with_metrics": [
        Expect(
            e("route", "api/v1", "method", "GET"),
            60,
            MINUTE,
            "test-domain.route_api/*.method",
            shared=("api/*", None),
        ),
        Expect(
            e("service", "svc/user", "endpoint", "get"),
            80,
            MINUTE,
            "test-domain.service_svc/*.endpoint_get",
            shared=("svc/*", None),
        ),
    ],
    "Nested_wildcards": [
        Expect(
            e("nested", "parent", "files", "nested/file1.txt"),
            200,
            MINUTE,
            "test-domain.nested_parent.files_nested/*",
            shared=(None, "nested/*"),
        ),
        Expect(
            e("files", "top/file1.txt", "files", "nested/file1.txt"),
            300,
            MINUTE,
            "test-domain.files_top/*.files_nested/*",
            shared=("top/*", "nested/*"),
        ),
        Expect(
            e("path", "path/foo", "file", "file/doc1", "type", "pdf"),
            120,
            MINUTE,
            "test-domain.path_path/*.file_file/*.type",
            shared=("path/*", None, None),
        ),
        Expect(
            e("user", "user/alice", "resource", "res/file1", "action", "read"),
            150,
            MINUTE,
            "test-domain.user_user/*.resource_res/*.action",
            shared=("user/*", "res/*", None),
        ),
    ],
    "Explicit_value_precedence_over_wildcard": [
        Expect(e("file", "test1"), 50, MINUTE, "test-domain.file_test1"),
        *[
            Expect(e("file", v), 100, MINUTE, "test-domain.file_test*", shared=("test*",))
            for v in ("test2", "test23", "test123")
        ],
    ],
    "share_threshold_with_middle_wildcard": [
        *[
            Expect(e("midpath", v), 100, MINUTE, shared=("/api*v1",))
            for v in ("/api/v1", "/api-beta-v1", "/apiXYZv1")
        ],
        Expect(e("midpath", "/api/v2"), None),
    ],
    "share_threshold_with_multi-wildcard": [
        *[
            Expect(e("multiroute", v), 50, MINUTE, shared=("svc*ep*rpc",))
            for v in ("svcAepBrpc", "svcXXXepYYYrpc", "svceprpc")
        ],
        Expect(e("multiroute", "svcABCrpc"), None),
    ],
    "share_threshold_priority_over_value_to_metric_with_middle_wildcard": [
        Expect(e("midroute", v), 80, MINUTE, "test-domain.midroute_/api*v2", shared=("/api*v2",))
        for v in ("/api/v2", "/api-beta-v2")
    ],
    "share_threshold_with_nested_middle_wildcards": [
        Expect(e("tenant", t, "resource", r), 60, MINUTE, shared=("t*prod", "res*v2"))
        for t, r in (("t1prod", "resAv2"), ("t99prod", "resBBBv2"))
    ],
}


@pytest.mark.parametrize("subtest", list(SHARE_CASES), ids=[f"TestShareThreshold/{k}" for k in SHARE_CASES])
def test_TestShareThreshold(subtest: str) -> None:
    config = load("share_threshold.yaml")
    limited = [x for x in SHARE_CASES[subtest] if x.requests is not None]
    for expect in SHARE_CASES[subtest]:
        check(config, "test-domain", expect)
    groups: dict[tuple[object, ...], list[tuple[tuple[str, str], ...]]] = {}
    for x in limited:
        if x.shared:
            groups.setdefault((x.requests, x.shared), []).append(x.entries)
    for same_rule in groups.values():  # every value matching one rule counts on one counter
        assert shares_one_counter(config, *same_rule)
    if subtest == "Nested_wildcards":  # shared below a shared parent; the unshared level is not
        assert shares_one_counter(
            config,
            e("path", "path/a", "file", "file/x", "type", "pdf"),
            e("path", "path/b", "file", "file/x", "type", "pdf"),
        )
        assert not shares_one_counter(
            config,
            e("path", "path/a", "file", "file/x", "type", "pdf"),
            e("path", "path/a", "file", "file/y", "type", "pdf"),
        )
    if subtest == "Explicit_value_precedence_over_wildcard":
        assert not shares_one_counter(config, e("file", "test1"), e("file", "test2"))


class Failure(NamedTuple):
    files: tuple[str, ...]
    reference: str  # the reference's message, after "<file>: "
    legation: str  # what Legation's error says (the same reason unless noted)
    merge: bool = False


FAILURES: dict[str, Failure] = {
    "TestEmptyDomain": Failure(
        ("empty_domain.yaml",), "config file cannot have empty domain", "config file cannot have empty domain"
    ),
    "TestDuplicateDomain": Failure(
        ("basic_config.yaml", "duplicate_domain.yaml"),
        "duplicate domain 'test-domain' in config file",
        "duplicate domain 'test-domain' in config file (also in basic_config.yaml)",
    ),
    "TestEmptyKey": Failure(("empty_key.yaml",), "descriptor has empty key", "descriptor has empty key"),
    "TestDuplicateKey": Failure(
        ("duplicate_key.yaml",),
        "duplicate descriptor composite key 'test-domain.key1_value1'",
        "duplicate descriptor composite key 'test-domain.key1_value1'",
    ),
    "TestDuplicateKeyDomainMerge": Failure(
        ("merge_domain_key1.yaml", "merge_domain_key1.yaml"),
        "duplicate descriptor composite key 'test-domain.key1_value1'",
        "duplicate descriptor composite key 'test-domain.key1_value1' (also in merge_domain_key1.yaml",
        merge=True,
    ),
    "TestBadLimitUnit": Failure(
        ("bad_limit_unit.yaml",), "invalid rate limit unit 'foo'", "invalid rate limit unit 'foo'"
    ),
    "TestReplacesSelf": Failure(
        ("replaces_self.yaml",),
        "replaces should not contain name of same descriptor",
        "replaces should not contain name of same descriptor",
    ),
    "TestReplacesEmpty": Failure(
        ("replaces_empty.yaml",),
        "should not have an empty replaces entry",
        "should not have an empty replaces entry",
    ),
    # Wording differs: Legation names the YAML parser's own reason and line.
    "TestBadYaml": Failure(
        ("bad_yaml.yaml",),
        "error loading config file: yaml: line 2: found unexpected end of stream",
        "invalid YAML: while scanning a quoted scalar found unexpected end of stream",
    ),
    # Wording differs: Legation names the field path and suggests the close key.
    "TestMisspelledKey[misspelled_key]": Failure(
        ("misspelled_key.yaml",), "config error, unknown key 'ratelimit'", "ratelimit: unknown key"
    ),
    "TestMisspelledKey[misspelled_key2]": Failure(
        ("misspelled_key2.yaml",),
        "config error, unknown key 'requestsperunit'",
        "requestsperunit: unknown key",
    ),
    "TestNonStringKey": Failure(
        ("non_string_key.yaml",),
        "config error, key is not of type string: 0.25",
        "0.25: Keys should be strings",
    ),
    "TestNonMapList": Failure(
        ("non_map_list.yaml",),
        "config error, yaml file contains list of type other than map: a",
        "descriptors[0]: Input should be a valid dictionary",
    ),
    "TestUnlimitedWithRateLimitUnit": Failure(
        ("unlimited_with_unit.yaml",),
        "should not specify rate limit unit when unlimited",
        "should not specify rate limit unit when unlimited",
    ),
}


@pytest.mark.parametrize("case", list(FAILURES), ids=list(FAILURES))
def test_failures(case: str) -> None:
    failure = FAILURES[case]
    with pytest.raises(ConfigErrors) as info:
        load(*failure.files, merge=failure.merge)
    messages = [str(err) for err in info.value.errors]
    culprit = failure.files[-1]
    assert any(m.startswith(f"{culprit}:") and failure.legation in m for m in messages), messages


def test_null_descriptors_load() -> None:
    """duplicate_domain.yaml alone (`descriptors:` is null) loads, as in the reference: so
    TestDuplicateDomain fails for the duplicate domain, not for the null list."""
    config = load("duplicate_domain.yaml")
    assert config.rules.match("test-domain", e("key1", "value1")) is None


def _override_request(requests: int, unit: int, value: str) -> Any:
    from legation.ratelimit.limiter import DescriptorRequest

    return DescriptorRequest(e("key1", "value1", "subkey1", value), override=(requests, unit))


async def test_TestConfigLimitOverride() -> None:
    """Envoy's per-descriptor override applies in known domains only, per distinct entries.
    The reference names its stats after the entries; Legation counts overrides under rule
    `override` (bounded labels)."""
    from legation.ratelimit.backends.memory import MemoryBackend
    from legation.ratelimit.limiter import Limiter

    limiter = Limiter(rules=load("basic_config.yaml").rules, backend=MemoryBackend())
    unknown = await limiter.should_rate_limit("foo_domain", [_override_request(10, DAY, "something")])
    assert unknown.statuses[0].limit is None
    day = await limiter.should_rate_limit("test-domain", [_override_request(10, DAY, "something")])
    hour = await limiter.should_rate_limit("test-domain", [_override_request(42, HOUR, "something")])
    other = await limiter.should_rate_limit("test-domain", [_override_request(42, HOUR, "something_else")])
    assert day.statuses[0].limit is not None and (
        day.statuses[0].limit.requests,
        day.statuses[0].limit.unit,
    ) == (10, DAY)
    assert hour.statuses[0].limit is not None and (
        hour.statuses[0].limit.requests,
        hour.statuses[0].limit.unit,
    ) == (42, HOUR)
    assert (day.statuses[0].remaining, hour.statuses[0].remaining, other.statuses[0].remaining) == (9, 41, 41)
    await limiter._backend.close()
