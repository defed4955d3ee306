"""hypothesis-generated CheckRequests against one running `legation authz`.

Odd headers, huge values, broken and half-valid tokens, missing fields, odd paths and
context_extensions: every call must end in a well-formed CheckResponse (allow, or deny with a
status in {400, 401, 403, 503} and the short JSON body), or INVALID_ARGUMENT for bytes that are
not a CheckRequest at all. The service must stay up and healthy afterwards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2
from fixtures.authz_stack import AuthzClient, Team, b64url, header_map_request, teams, write_policies
from fixtures.processes import AuthzProcess, Launcher
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
DENY_STATUSES = {400, 401, 403, 503}
POLICIES = ["team-a/orders", "team-b/billing", "team-a/equiv", "team-x/ghost", "", "/", "team-a/", "a/b/c"]


@pytest.fixture(scope="module")
def team_a(module_launcher: Launcher) -> Iterator[tuple[Team, AuthzProcess]]:
    with teams() as (a, b):
        service = module_launcher.authz(write_policies(module_launcher.log_dir / "policies", a, b))
        yield a, service


@pytest.fixture(scope="module")
def client(team_a: tuple[Team, AuthzProcess]) -> Iterator[AuthzClient]:
    client = AuthzClient(team_a[1].address)
    grpc.channel_ready_future(client.channel).result(timeout=10)
    yield client
    client.close()


@pytest.fixture(scope="module")
def valid_tokens(team_a: tuple[Team, AuthzProcess]) -> list[str]:
    a = team_a[0]
    return [a.token(sub=f"user-{i}", scope="orders:admin", org={"team": ["x", "y"]}) for i in range(4)]


# --------------------------------------------------------------------------- strategies

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def broken_tokens(draw: st.DrawFn, valid: list[str]) -> str:
    base = draw(st.sampled_from(valid))
    kind = draw(st.sampled_from(["valid"] * 3 + ["flip", "cut", "segments", "json", "dots", "huge", "text"]))
    if kind == "valid":
        return base
    if kind == "flip":
        i = draw(st.integers(0, len(base) - 1))
        replacement: str = draw(st.sampled_from([*B64, ".", "=", "%", " "]))
        return base[:i] + replacement + base[i + 1 :]
    if kind == "cut":
        return base[: draw(st.integers(0, len(base)))]
    if kind == "segments":
        parts = draw(st.lists(st.text(alphabet=B64 + "=+/", max_size=40), min_size=1, max_size=6))
        return ".".join(parts)
    if kind == "json":
        header = draw(
            st.dictionaries(st.sampled_from(["alg", "kid", "crit", "typ", "jku", "x5u", "enc"]), json_values)
        )
        claims = draw(
            st.dictionaries(st.sampled_from(["iss", "aud", "exp", "nbf", "iat", "sub", "scope"]), json_values)
        )
        return f"{b64url(json.dumps(header))}.{b64url(json.dumps(claims))}.{draw(st.text(alphabet=B64, max_size=30))}"
    if kind == "dots":
        return "." * draw(st.integers(0, 10))
    if kind == "huge":
        return base + "A" * draw(st.integers(8_000, 200_000))
    return draw(st.text(max_size=100))


header_names = st.sampled_from(
    [
        "authorization",
        "cookie",
        "x-user-id",
        "x-team",
        ":path",
        ":authority",
        ":method",
        "host",
        "content-type",
    ]
) | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30).map(
    str.lower
)


@st.composite
def check_requests(draw: st.DrawFn, valid: list[str]) -> Any:
    req = external_auth_pb2.CheckRequest()
    if draw(st.integers(0, 19)) == 0:
        return req  # no attributes at all
    http = req.attributes.request.http
    http.method = draw(st.sampled_from(["GET", "POST", "get", "", "BREW", "\u00e9"]) | st.text(max_size=10))
    http.path = draw(
        st.sampled_from(
            ["/a/items"] * 4 + ["/a/public/x", "/a/admin/", "/b/x", "/", "", "*", "/a/public/%2e%2e/admin"]
        )
        | st.sampled_from(["/a/items", "/a/public/x"])
        | st.text(max_size=60)
        | st.text(alphabet="/.%2eEfF5cC\\?#a", max_size=40)
    )
    http.host = draw(
        st.sampled_from(["api.example.test", "", "h:99999", "[::1]:8080", "x" * 300]) | st.text(max_size=30)
    )
    headers = draw(st.dictionaries(header_names, st.text(max_size=200), max_size=6))
    token = draw(broken_tokens(valid))
    placement = draw(st.sampled_from(["bearer", "raw", "cookie", "both", "none", "query"]))
    if placement == "bearer":
        headers["authorization"] = f"Bearer {token}"
    elif placement == "raw":
        headers["authorization"] = token
    elif placement == "cookie":
        headers["cookie"] = f"a=b; session={token}; session=other"
    elif placement == "both":
        headers["authorization"] = f"Bearer {token}"
        headers["cookie"] = f"session={draw(broken_tokens(valid))}"
    elif placement == "query":
        http.path = f"{http.path}?access_token={token}&access_token=x"
    if draw(st.booleans()):
        headers[draw(header_names)] = "v" * draw(st.integers(10_000, 300_000))
    http.headers.update(headers)
    extensions = draw(st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=3))
    if draw(st.integers(0, 4)):
        extensions["legation.policy"] = draw(
            st.sampled_from(["team-a/orders"] * 6 + POLICIES) | st.text(max_size=30)
        )
    req.attributes.context_extensions.update(extensions)
    return req


def assert_well_formed(resp: Any) -> None:
    if resp.status.code == 0:
        assert not resp.HasField("denied_response"), resp
        assert resp.HasField("ok_response")
        for option in resp.ok_response.headers:
            assert "\n" not in option.header.value and "\r" not in option.header.value, option
        return
    assert resp.HasField("denied_response"), resp
    status = int(resp.denied_response.status.code)
    assert status in DENY_STATUSES, resp
    body = json.loads(resp.denied_response.body)
    assert set(body) == {"error", "reason"}, body
    assert len(resp.denied_response.body) < 200


# --------------------------------------------------------------------------- the properties


def test_generated_check_requests(client: AuthzClient, valid_tokens: list[str]) -> None:
    outcomes: dict[str, int] = {}

    @FUZZ
    @given(req=check_requests(valid_tokens))
    def run(req: Any) -> None:
        resp = client.check_message(req, timeout=10)
        assert_well_formed(resp)
        key = "allow" if resp.status.code == 0 else str(resp.denied_response.status.code)
        outcomes[key] = outcomes.get(key, 0) + 1

    run()
    assert sum(outcomes.values()) >= MAX_EXAMPLES // 2, outcomes  # the property really ran
    assert len(outcomes) >= 2, outcomes  # and reached more than one kind of answer


def test_generated_header_map_requests(client: AuthzClient, valid_tokens: list[str]) -> None:
    raw_values = st.binary(max_size=100) | st.sampled_from([f"Bearer {t}".encode() for t in valid_tokens])
    pairs = st.lists(st.tuples(header_names, raw_values), max_size=6)

    @settings(FUZZ, max_examples=max(20, MAX_EXAMPLES // 4))
    @given(pairs=pairs, path=st.sampled_from(["/a/items", "/a/public/", "/"]))
    def run(pairs: list[tuple[str, bytes]], path: str) -> None:
        assert_well_formed(client.check_message(header_map_request(path, pairs), timeout=10))

    run()


def test_arbitrary_bytes(client: AuthzClient) -> None:
    @settings(FUZZ, max_examples=max(20, MAX_EXAMPLES // 2))
    @given(payload=st.binary(max_size=2000))
    def run(payload: bytes) -> None:
        try:
            body = client.call_raw(payload, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
            return
        assert_well_formed(external_auth_pb2.CheckResponse.FromString(body))

    run()


def test_service_healthy_after(
    team_a: tuple[Team, AuthzProcess], client: AuthzClient, valid_tokens: list[str]
) -> None:
    service = team_a[1]
    assert service.process.running
    assert service.health() == "SERVING"
    resp = client.check_message(_valid_check(valid_tokens[0]))
    assert resp.status.code == 0, resp
    stderr = service.process.stderr_text()
    assert "Traceback" not in stderr
    assert '"level": "error"' not in stderr, stderr[-3000:]


def _valid_check(token: str) -> Any:
    from fixtures.authz_stack import check_request

    return check_request("/a/items", token=token)
