"""hypothesis-generated RateLimitRequests against one running service (in-memory and on Redis).

Every call must end in a valid response (overall OK/OVER_LIMIT, one status per descriptor) or a
gRPC INVALID_ARGUMENT with a message; the service must stay up and healthy afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from fixtures.processes import Launcher, RateLimitProcess
from fixtures.rls import OK, OVER_LIMIT, RlsClient, Timed, descriptor, request
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.e2e

CONFIG = """\
domain: fuzz
descriptors:
  - key: a
    rate_limit: {unit: second, requests_per_unit: 5}
  - key: b
    value: x
    rate_limit: {unit: minute, requests_per_unit: 3, name: bx}
  - key: w
    value: "pre*"
    rate_limit: {unit: hour, requests_per_unit: 2}
  - key: u
    rate_limit: {unlimited: true}
  - key: s
    shadow_mode: true
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: n
    descriptors:
      - key: m
        rate_limits:
          - {unit: second, requests_per_unit: 3}
          - {unit: minute, requests_per_unit: 10, unit_multiplier: 15}
  - key: "ü"
    value: "☃"
    rate_limit: {unit: day, requests_per_unit: 1}
  - key: z
    rate_limit: {unit: minute, requests_per_unit: 3}
"""
KNOWN_DOMAINS = {"fuzz"}
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))

FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", params=["memory", "redis"])
def service(request: pytest.FixtureRequest, module_launcher: Launcher) -> RateLimitProcess:
    config = module_launcher.log_dir / "fuzz.yaml"
    config.write_text(CONFIG, encoding="utf-8")
    redis_url = None
    if request.param == "redis":
        redis_url = module_launcher.redis().url
    # Generous backend timeout: this is about input handling, not about Redis latency.
    return module_launcher.ratelimit(config, redis_url=redis_url, extra_args=["--backend-timeout", "2.0"])


@pytest.fixture(scope="module")
def client(service: RateLimitProcess) -> Iterator[RlsClient]:
    with RlsClient(service.address) as rls:
        rls.wait_ready()
        yield rls


# --------------------------------------------------------------------------- strategies

long_text = st.builds(
    lambda ch, n: ch * n,
    st.characters(codec="utf-8"),
    st.integers(min_value=1000, max_value=65536),
)
keys = st.one_of(
    st.sampled_from(["a", "b", "w", "u", "s", "n", "m", "ü", "z", "", " ", "a\x00b", "*"]),
    st.text(max_size=12),
    long_text,
)
values = st.one_of(
    st.sampled_from(["x", "pre", "prefix", "☃", "", "*", "v", "\x00", "💥" * 3]),
    st.text(max_size=40),
    long_text,
)
addends_64 = st.one_of(
    st.sampled_from([0, 1, 2, 5, 2**32 - 1, 2**32, 2**63, 2**64 - 1]),
    st.integers(min_value=0, max_value=2**64 - 1),
)
addends_32 = st.one_of(
    st.sampled_from([0, 1, 3, 2**31, 2**32 - 1]), st.integers(min_value=0, max_value=2**32 - 1)
)
overrides = st.one_of(
    st.none(),
    st.tuples(
        st.one_of(st.sampled_from([0, 1, 2**32 - 1]), st.integers(0, 2**32 - 1)),
        st.integers(min_value=0, max_value=12),  # 0 = UNKNOWN, > 6 = not a known unit
    ),
)


@st.composite
def descriptors(draw: st.DrawFn) -> Any:
    entries = draw(st.lists(st.tuples(keys, values), max_size=4))
    return descriptor(
        entries,
        hits_addend=draw(st.one_of(st.none(), addends_64)),
        limit=draw(overrides),
    )


domains = st.one_of(st.just("fuzz"), st.sampled_from(["", "unknown", "FUZZ", "fuzz "]), st.text(max_size=20))


@st.composite
def requests(draw: st.DrawFn) -> Any:
    descs = draw(st.lists(descriptors(), max_size=5))
    req = rls_pb2.RateLimitRequest(domain=draw(domains), hits_addend=draw(addends_32))
    req.descriptors.extend(descs)
    return req


# --------------------------------------------------------------------------- checks


def _check_outcome(req: Any, outcome: Timed) -> None:
    """The contract for any request."""
    where = f"domain={req.domain[:40]!r} descriptors={len(req.descriptors)}"
    if not req.domain or not req.descriptors:
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (outcome.code, where)
    if outcome.response is None:
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (
            f"unexpected {outcome.code}: {outcome.details!r} for {where}"
        )
        assert outcome.details.strip(), f"INVALID_ARGUMENT without a message for {where}"
        return
    resp = outcome.response
    assert resp.overall_code in (OK, OVER_LIMIT), (resp.overall_code, where)
    assert len(resp.statuses) == len(req.descriptors), (len(resp.statuses), where)
    for status in resp.statuses:
        assert status.code in (OK, OVER_LIMIT), (status, where)
        if status.HasField("current_limit"):
            assert status.limit_remaining <= status.current_limit.requests_per_unit, status
    if resp.overall_code == OVER_LIMIT:
        assert any(s.code == OVER_LIMIT for s in resp.statuses), where
    if req.domain not in KNOWN_DOMAINS:
        assert resp.overall_code == OK, f"unknown domain limited: {where}"


def _assert_healthy(service: RateLimitProcess, client: RlsClient) -> None:
    assert service.process.running, service.process.log_tail()
    assert service.health() == "SERVING"
    probe = client.timed("fuzz", [[("b", "x")]], timeout=5.0)
    assert probe.response is not None, (probe.code, probe.details)
    assert probe.response.statuses[0].current_limit.requests_per_unit == 3


@FUZZ_SETTINGS
@given(req=requests())
def test_generated_requests_get_valid_answers(service: RateLimitProcess, client: RlsClient, req: Any) -> None:
    outcome = client.call(req, timeout=10.0)
    event(outcome.code.name if outcome.response is None else f"overall={outcome.overall}")
    _check_outcome(req, outcome)


def test_service_healthy_after_fuzzing(service: RateLimitProcess, client: RlsClient) -> None:
    _assert_healthy(service, client)


@pytest.mark.parametrize(
    "req",
    [
        pytest.param(request("fuzz", []), id="no-descriptors"),
        pytest.param(request("", [[("a", "1")]]), id="empty-domain"),
        pytest.param(request("", []), id="empty-everything"),
    ],
)
def test_empty_domain_or_descriptor_list_is_invalid_argument(client: RlsClient, req: Any) -> None:
    outcome = client.call(req)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert outcome.details.strip()


def test_zero_hits_addend_checks_without_counting(client: RlsClient) -> None:
    # z: 3 per minute per value.  Per-descriptor hits_addend=0 must not consume anything.
    key = [("z", f"zero-{os.urandom(4).hex()}")]
    for _ in range(5):
        resp = client.should("fuzz", [descriptor(key, hits_addend=0)])
        assert resp.overall_code == OK
        assert resp.statuses[0].limit_remaining == 3
    resp = client.should("fuzz", [descriptor(key, hits_addend=3)])
    assert resp.overall_code == OK
    assert resp.statuses[0].limit_remaining == 0
    resp = client.should("fuzz", [descriptor(key, hits_addend=1)])
    assert resp.overall_code == OVER_LIMIT


def test_huge_hits_addend_is_over_limit_not_an_overflow(client: RlsClient) -> None:
    key = [("z", f"huge-{os.urandom(4).hex()}")]
    for addend in (2**32 - 1, 2**63, 2**64 - 1):
        outcome = client.call(request("fuzz", [descriptor(key, hits_addend=addend)]))
        if outcome.response is None:
            assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, outcome
            continue
        assert outcome.response.overall_code == OVER_LIMIT, (addend, outcome.response)
    # The denied huge requests consumed nothing (and did not wrap the counter around).
    resp = client.should("fuzz", [descriptor(key)])
    assert resp.overall_code == OK
    assert resp.statuses[0].limit_remaining == 2


# --------------------------------------------------------------------------- raw bytes

UNDECODABLE = [
    pytest.param(b"\xff", id="bad-tag"),
    pytest.param(b"\x0a\x05ab", id="truncated-length"),
    pytest.param(b"\x0a\x02\xff\xfe", id="invalid-utf8-domain"),
    pytest.param(b"\x12\x03\x0a\x01", id="truncated-nested"),
    pytest.param(b"\x0f", id="group-end-without-start"),
]


@pytest.mark.parametrize("payload", UNDECODABLE)
def test_undecodable_body_is_invalid_argument(
    service: RateLimitProcess, client: RlsClient, payload: bytes
) -> None:
    with pytest.raises(Exception):  # noqa: B017 - precondition: really undecodable
        rls_pb2.RateLimitRequest.FromString(payload)
    outcome = client.call_raw(payload)
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (outcome.code, outcome.details)
    assert outcome.details.strip()
    assert service.process.running


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=2048))
def test_random_bytes_never_crash(service: RateLimitProcess, client: RlsClient, payload: bytes) -> None:
    outcome = client.call_raw(payload, timeout=10.0)
    try:
        req = rls_pb2.RateLimitRequest.FromString(payload)
    except Exception:
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT, (outcome.code, outcome.details)
        assert outcome.details.strip()
        return
    _check_outcome(req, outcome)


def test_service_healthy_after_garbage(service: RateLimitProcess, client: RlsClient) -> None:
    _assert_healthy(service, client)


def test_descriptor_entry_messages_roundtrip() -> None:
    """Guard for the helpers above: descriptor() builds what the service will parse."""
    desc = descriptor([("k", "v")], hits_addend=0, limit=(7, 2))
    parsed = ratelimit_pb2.RateLimitDescriptor.FromString(desc.SerializeToString())
    assert parsed.HasField("hits_addend") and parsed.hits_addend.value == 0
    assert (parsed.limit.requests_per_unit, parsed.limit.unit) == (7, 2)
