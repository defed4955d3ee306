"""Config parsing: every field of the envoyproxy/ratelimit format and our extensions, every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from legation.core.errors import ConfigErrors
from legation.ratelimit.config import load_config, load_config_texts
from legation.ratelimit.rules import BUCKETS_PER_WINDOW

ERRORS_DIR = Path(__file__).parent / "ratelimit_config_errors"
ERROR_CASES = sorted(ERRORS_DIR.glob("*.yaml"))


def load(text: str, name: str = "c.yaml"):  # type: ignore[no-untyped-def]
    return load_config_texts([(name, text)])


@pytest.mark.parametrize("path", ERROR_CASES, ids=[p.stem for p in ERROR_CASES])
def test_each_error_has_its_exact_message(path: Path) -> None:
    text = path.read_text()
    expected = text.splitlines()[0].removeprefix("# expect: ") if text else ""
    assert expected, f"{path.name} must start with '# expect: <message>'"
    with pytest.raises(ConfigErrors) as info:
        load(text, name=path.name)
    assert [str(e) for e in info.value.errors] == [expected]


def test_reference_format_loads_unchanged() -> None:
    config = load(
        """
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: second
      requests_per_unit: 500
  - key: database
    value: default
    rate_limit:
      unit: second
      requests_per_unit: 500
  - key: remote_address
    detailed_metric: true
    rate_limit:
      unit: Minute
      requests_per_unit: 10
      name: per-ip
    descriptors:
      - key: path
        value: /admin
        shadow_mode: true
        rate_limit:
          unit: hour
          requests_per_unit: 1
          replaces:
            - name: per-ip
  - key: client_id
    value: trusted
    rate_limit:
      unlimited: true
"""
    )
    rules = config.rules
    users = rules.lookup("mongo_cps", [("database", "users")])
    assert users is not None and users[0].requests == 500 and users[0].window_ms == 1000
    ip = rules.lookup("mongo_cps", [("remote_address", "10.0.0.1")])
    assert ip is not None
    assert (ip[0].name, ip[0].rule, ip[0].detailed, ip[0].unit) == ("per-ip", "per-ip", True, 2)
    admin = rules.lookup("mongo_cps", [("remote_address", "10.0.0.1"), ("path", "/admin")])
    assert admin is not None
    assert admin[0].shadow and admin[0].replaces == frozenset({"per-ip"}) and admin[0].window_ms == 3_600_000
    trusted = rules.lookup("mongo_cps", [("client_id", "trusted")])
    assert trusted is not None and trusted[0].unlimited
    assert rules.has_replaces


@pytest.mark.parametrize(
    ("unit", "seconds", "enum"),
    [
        ("second", 1, 1),
        ("minute", 60, 2),
        ("hour", 3600, 3),
        ("day", 86400, 4),
        ("week", 604800, 7),
        ("month", 2592000, 5),
        ("year", 31536000, 6),
        ("HOUR", 3600, 3),
    ],
)
def test_units(unit: str, seconds: int, enum: int) -> None:
    config = load(
        f"domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: {unit}, requests_per_unit: 3}}\n"
    )
    (limit,) = config.rules.lookup("d", [("k", "v")]) or ()
    assert limit.window_ms == seconds * 1000
    assert limit.unit == enum
    assert limit.bucket_ms * BUCKETS_PER_WINDOW == limit.window_ms


def test_extensions_multiplier_rate_limits_and_algorithms() -> None:
    config = load(
        """
domain: d
algorithm: fixed_window
descriptors:
  - key: api_key
    rate_limits:
      - {unit: minute, unit_multiplier: 15, requests_per_unit: 100, algorithm: sliding_window}
      - {unit: hour, requests_per_unit: 1000}
"""
    )
    sliding, fixed = config.rules.lookup("d", [("api_key", "abc")]) or ()
    assert sliding.window_ms == 15 * 60_000 and sliding.span == BUCKETS_PER_WINDOW
    assert sliding.key_tag == "s900000"
    assert fixed.window_ms == 3_600_000 and fixed.span == 0 and fixed.bucket_ms == 3_600_000
    assert fixed.key_tag == "f3600000"


def test_default_algorithm_is_sliding() -> None:
    config = load("domain: d\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 1}}]\n")
    (limit,) = config.rules.lookup("d", [("k", "v")]) or ()
    assert limit.span == BUCKETS_PER_WINDOW and limit.key_tag.startswith("s")


def test_numeric_values_are_strings() -> None:
    config = load(
        "domain: d\ndescriptors: [{key: code, value: 200, rate_limit: {unit: second, requests_per_unit: 1}}]\n"
    )
    assert config.rules.lookup("d", [("code", "200")]) is not None


def test_every_error_is_reported_not_just_the_first() -> None:
    with pytest.raises(ConfigErrors) as info:
        load(
            """domain: d
descriptors:
  - key: a
    rate_limit: {unit: fortnight, requests_per_unit: 1}
  - key: b
    colour: blue
"""
        )
    assert [str(e) for e in info.value.errors] == [
        "c.yaml:4: descriptors[0].rate_limit.unit: invalid rate limit unit 'fortnight' "
        "(expected one of second, minute, hour, day, week, month, year)",
        "c.yaml:6: descriptors[1].colour: unknown key",
    ]


def test_directory_with_several_domains(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "domain: a\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 1}}]\n"
    )
    (tmp_path / "b.yml").write_text(
        "domain: b\ndescriptors: [{key: k, rate_limit: {unit: second, requests_per_unit: 2}}]\n"
    )
    (tmp_path / "notes.txt").write_text("not yaml at all: [")
    (tmp_path / ".hidden.yaml").write_text("broken: [")
    config = load_config(tmp_path)
    assert set(config.rules.domains) == {"a", "b"}
    assert len(config.files) == 2


def test_duplicate_domain_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("domain: same\n")
    (tmp_path / "b.yaml").write_text("\ndomain: same\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(tmp_path)
    assert [str(e) for e in info.value.errors] == [
        f"{tmp_path / 'b.yaml'}:2: domain: duplicate domain 'same' in config file (also in {tmp_path / 'a.yaml'})"
    ]


def test_missing_path() -> None:
    with pytest.raises(ConfigErrors, match="no such file or directory"):
        load_config("/nonexistent/ratelimit.yaml")


def test_version_changes_with_content_only() -> None:
    a = load("domain: d\n")
    b = load("domain: d\n")
    c = load("domain: e\n")
    assert a.version == b.version != c.version


def test_example_config_is_valid() -> None:
    config = load_config(Path(__file__).parents[2] / "standalone" / "ratelimit.yaml")
    assert "edge" in config.rules.domains
