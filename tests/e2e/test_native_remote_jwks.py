"""Remote JWKS under native enforcement, through a real Envoy (`legation up`): Envoy fetches the
keys itself (jwt_authn `remote_jwks`) from a JWKS server on loopback, and answers as the authz
service does; a key an IdP rotates in is accepted after at most `cacheDuration` natively (at once by
the service); keys stay while the endpoint is down; a provider whose keys were never fetched
answers 503 as the service does. The numbers printed here are the README's ("Native
enforcement").
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.gateway import Gateway, Response, start_gateway, stop_gateway
from fixtures.jwks_server import JwksServer, Signer, make_rsa_key, mint
from fixtures.managed import free_port
from fixtures.processes import Launcher

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ISSUER = "https://idp.remote.example/"
CACHE = 3  # seconds: Envoy refetches every 3 s (at cache_duration - 5 s when that is longer)
KEY, OTHER = make_rsa_key("r-1"), make_rsa_key("other-1")


@dataclass
class Stack:
    gateway: Gateway
    source: Path
    upstream: int
    idp: JwksServer
    down: JwksServer
    """Answers 503 from the start: its provider never gets keys."""

    def write(self, enforcement: str) -> None:
        (self.source / "policy.yaml").write_text(manifests(self, enforcement))

    def get(self, path: str, token: str | None) -> Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return self.gateway.request("GET", path, headers=headers)

    def stats(self, word: str) -> int:
        url = f"http://127.0.0.1:{self.gateway.admin_port}/stats?filter={word}&format=json"
        with urllib.request.urlopen(url, timeout=10) as response:
            stats = json.loads(response.read())["stats"]
        return sum(int(s.get("value", 0)) for s in stats if isinstance(s.get("value"), int))


def manifests(stack: Stack, enforcement: str) -> str:
    def policy(name: str, uri: str) -> dict[str, Any]:
        provider = {
            "name": "corp",
            "issuer": ISSUER,
            "audiences": ["orders"],
            "jwks": {"uri": uri, "cacheDuration": f"{CACHE}s", "refetchCooldown": "1s"},
            "algorithms": ["RS256"],
        }
        rules = [{"requires": {"anyOf": ["corp"]}, "claims": {"scope": ["orders:read"]}}]
        spec = {"enforcement": enforcement, "providers": [provider], "rules": rules}
        return {
            "apiVersion": "legation.dev/v1alpha1",
            "kind": "JWTPolicy",
            "metadata": {"name": name, "namespace": "team-orders"},
            "spec": {**spec, "claimsToHeaders": {"sub": "x-user-id"}},
        }

    def mapping(name: str, prefix: str) -> dict[str, Any]:
        service = f"127.0.0.1:{stack.upstream}"
        return {
            "apiVersion": "legation.dev/v1alpha1",
            "kind": "Mapping",
            "metadata": {"name": name, "namespace": "team-orders"},
            "spec": {"prefix": prefix, "service": service, "auth": {"policy": f"{name}-jwt"}},
        }

    docs = [
        policy("orders-jwt", stack.idp.url),
        policy("down-jwt", stack.down.url),
        mapping("orders", "/orders"),
        mapping("down", "/down"),
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)


def token(signer: Signer = KEY, *, alg: str | None = None, **extra: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "orders", "sub": "alice", "scope": "orders:read", "iat": now}
    claims |= {"exp": now + 600, "jti": uuid.uuid4().hex, **extra}
    return mint(signer, claims, alg=alg)


@pytest.fixture(scope="module")
def stack(module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("remote-jwks")
    source = root / "manifests"
    source.mkdir()
    with JwksServer() as idp, JwksServer() as down:
        idp.set_keys([KEY], with_alg=False)  # unbound keys: the provider's algorithms decide
        down.status = 503
        stack = Stack(gateway=None, source=source, upstream=free_port(), idp=idp, down=down)  # type: ignore[arg-type]
        stack.write("auto")
        stack.gateway = start_gateway(module_launcher, source, root / "state")
        try:
            stack.gateway.wait_until(
                lambda: stack.get("/orders/x", token()).status == 200, timeout=30, what="native keys"
            )
            yield stack
        finally:
            stop_gateway(stack.gateway)


def answers(stack: Stack) -> dict[str, tuple[int, str | None, str]]:
    cases: dict[str, tuple[str, str | None]] = {
        "valid": ("/orders/x", token()),
        "unknown-kid": ("/orders/x", token(OTHER)),
        "expired": ("/orders/x", token(exp=int(time.time()) - 3600)),
        "missing": ("/orders/x", None),
        "no-scope": ("/orders/x", token(scope="orders:write")),
        "alg-not-allowed": ("/orders/x", token(alg="RS512")),  # the IdP's key, an algorithm not allowed
        "keys-never-fetched": ("/down/x", token()),
    }
    out = {}
    for name, (path, value) in cases.items():
        r = stack.get(path, value)
        body = r.body.decode() if r.status != 200 else json.loads(r.body)["headers"].get("x-user-id", "")
        out[name] = (r.status, r.headers.get("www-authenticate"), body)
    return out


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str) -> float:
    """Seconds until `predicate` held (polled every 50 ms)."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - start


def test_native_remote_jwks_answer_as_the_service_and_never_call_it(stack: Stack) -> None:
    status = stack.gateway.api_json("/api/resources?kind=JWTPolicy")
    shown = {r["name"]: r.get("enforcement") for r in status["resources"]}
    assert shown["orders-jwt"] == "native", shown
    calls = stack.stats("ext_authz")
    native = answers(stack)
    assert stack.stats("ext_authz") == calls, "native policies must not call ext_authz"
    assert native["valid"] == (200, None, "alice")
    assert native["unknown-kid"][0] == 401 and "unknown signing key" in native["unknown-kid"][2]
    assert native["keys-never-fetched"][0] == 503
    assert stack.stats("jwks_fetch_success") >= 1

    stack.write("service")
    wait_for(lambda: probe(stack), timeout=30, what="service")
    service = answers(stack)
    print("\nnative:", json.dumps(native, indent=1), "\nservice:", json.dumps(service, indent=1))
    # The one difference: jwt_authn puts a challenge on every denial and a local reply cannot
    # remove a header, so natively the 503 carries `Bearer realm="…"` (no error code), the
    # service's none (README, "Native enforcement").
    never = native.pop("keys-never-fetched"), service.pop("keys-never-fetched")
    assert never[0] == (503, 'Bearer realm="team-orders/down-jwt"', never[1][2])
    assert never[1][:2] == (503, None) and json.loads(never[1][2])["reason"] == "signing keys unavailable"
    assert native == service
    stack.write("auto")
    wait_for(lambda: not probe(stack), timeout=30, what="native again")


def probe(stack: Stack) -> bool:
    """Whether the policy runs on the service (ext_authz called for a request)."""
    before = stack.stats("ext_authz")
    stack.get("/orders/x", token())
    return stack.stats("ext_authz") > before


def test_a_rotated_key_is_accepted_within_cache_duration_natively_and_at_once_by_the_service(
    stack: Stack,
) -> None:
    # At a random phase of Envoy's refresh (each listener fetches on its own timer, and the
    # service fetches too, so the JWKS server cannot tell when Envoy's last fetch was): a kid the
    # keys lack is refused until the next scheduled fetch, at most cacheDuration later.
    samples = []
    for _ in range(3):
        time.sleep(random.uniform(0, CACHE))
        new = make_rsa_key(f"r-{uuid.uuid4().hex[:6]}")
        stack.idp.set_keys([KEY, new], with_alg=False)
        first = stack.get("/orders/x", token(new))
        samples.append(
            wait_for(
                lambda new=new: stack.get("/orders/x", token(new)).status == 200,
                timeout=CACHE + 10,
                what="native",
            )
        )
        if samples[-1] > 0.5:  # refused until then: no refetch on an unknown kid
            assert first.status == 401 and "unknown signing key" in first.body.decode()
    print(
        f"\nnative: new kid accepted after {', '.join(f'{x:.2f}' for x in samples)} s (cacheDuration {CACHE} s)"
    )
    assert max(samples) <= CACHE + 1.5

    stack.write("service")
    wait_for(lambda: probe(stack), timeout=30, what="service")
    newer = make_rsa_key(f"r-{uuid.uuid4().hex[:6]}")
    stack.idp.set_keys([KEY, newer], with_alg=False)
    service = wait_for(lambda: stack.get("/orders/x", token(newer)).status == 200, timeout=10, what="service")
    print(f"service: new kid accepted after {service:.2f} s")
    assert service < 1.0
    stack.write("auto")
    wait_for(lambda: not probe(stack), timeout=30, what="native again")


def test_keys_stay_while_the_endpoint_is_down(stack: Stack) -> None:
    failed = stack.stats("jwks_fetch_failed")
    stack.idp.status = 503
    try:
        wait_for(
            lambda: stack.stats("jwks_fetch_failed") > failed, timeout=CACHE + 10, what="a failed refetch"
        )
        time.sleep(CACHE)
        assert stack.get("/orders/x", token()).status == 200  # the last good keys serve
    finally:
        stack.idp.status = 200
