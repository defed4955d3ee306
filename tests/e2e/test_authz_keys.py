"""JWKS behaviour seen from outside: key rotation, unknown-kid refetch storms, a JWKS endpoint down.

One service, three policies (tests/fixtures/authz_keys.yaml), each with its own local JWKS server
so that the servers' request counts tell exactly how often the service fetched. The unknown-kid
refetch cooldown counts from the last fetch an unknown kid triggered (fetches at start-up or by
the refresher do not count), so a key rotated right after start-up is picked up at once; keys/rot
sets it to 3 s (`jwks.refetchCooldown`), keys/storm keeps the 30 s default. The tests run in file
order.
"""

from __future__ import annotations

import string
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures.authz_stack import AuthzClient, Decision, b64url
from fixtures.jwks_server import JwksServer, Signer, make_rsa_key, mint
from fixtures.probes import metric_sum
from fixtures.processes import AuthzProcess, Launcher, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ISSUER = "https://idp.keys.example/"
TEMPLATE = Path(__file__).parents[1] / "fixtures" / "authz_keys.yaml"
COOLDOWN = 30.0  # the service's default unknown-kid refetch cooldown (keys/storm)
ROT_COOLDOWN = 3.0  # keys/rot's refetchCooldown
STORM = 1000
FETCHES = "legation_authz_jwks_fetches_total"


@dataclass
class Keys:
    service: AuthzProcess
    client: AuthzClient
    rot: JwksServer
    storm: JwksServer
    down: JwksServer
    k1: Signer
    k2: Signer

    def check(self, policy: str, token: str) -> Decision:
        return self.client.check("/api/x", token=token, policy=policy)


def token(signer: Signer, **claims: object) -> str:
    return mint(signer, {"iss": ISSUER, "aud": "api", "sub": "u", "jti": uuid.uuid4().hex, **claims})


@pytest.fixture(scope="module")
def keys(module_launcher: Launcher) -> Iterator[Keys]:
    k1, k2 = make_rsa_key("k1"), make_rsa_key("k2")
    with JwksServer(keys=[k1]) as rot, JwksServer(keys=[k1]) as storm, JwksServer(keys=[k1]) as down:
        config = module_launcher.log_dir / "keys.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        urls = {"JWKS_ROT": rot.url, "JWKS_STORM": storm.url, "JWKS_DOWN": down.url}
        config.write_text(string.Template(TEMPLATE.read_text()).substitute(urls))
        service = module_launcher.authz(config)
        client = AuthzClient(service.address)
        wait_for(
            lambda: min(s.requests for s in (rot, storm, down)) >= 1, timeout=10, what="first JWKS fetches"
        )
        try:
            yield Keys(service, client, rot, storm, down, k1, k2)
        finally:
            client.close()


def _fetches(keys: Keys, policy: str, result: str) -> float:
    return metric_sum(keys.service.metrics_text(), FETCHES, source=f"{policy}/corp", result=result)


def test_fetched_once_at_start(keys: Keys) -> None:
    assert (keys.rot.requests, keys.storm.requests) == (1, 1)
    for policy in ("keys/rot", "keys/storm", "keys/down"):
        assert keys.check(policy, token(keys.k1)).allowed
    assert _fetches(keys, "keys/rot", "ok") == 1


def test_rotation_right_after_start_is_picked_up_by_the_first_unknown_kid(keys: Keys) -> None:
    keys.rot.set_keys([keys.k2])  # the IdP rotates just after our start-up fetch: k1 gone, k2 new
    d = keys.check("keys/rot", token(keys.k2, sub="rotated"))
    assert d.allowed, d
    assert d.metadata.get("sub") == "rotated"
    assert keys.rot.requests == 2
    # k1 is gone from the new keys; within the cooldown nothing more is fetched.
    d = keys.check("keys/rot", token(keys.k1))
    assert (d.status, d.json()["reason"]) == (401, "unknown signing key")
    for _ in range(5):
        assert keys.check("keys/rot", token(keys.k2)).allowed
    assert keys.rot.requests == 2


def test_jwks_down_cached_keys_keep_working(keys: Keys) -> None:
    keys.down.status = 503
    # cacheDuration 2s: the background refresh (at 80%) fails while we wait.
    wait_for(lambda: _fetches(keys, "keys/down", "error") >= 1, timeout=10, what="a failed JWKS refresh")
    time.sleep(0.5)  # now past cacheDuration too: the keys are stale, not gone
    for _ in range(5):
        d = keys.check("keys/down", token(keys.k1))
        assert d.allowed, d
    keys.down.stop()  # connection refused from now on
    for _ in range(3):
        assert keys.check("keys/down", token(keys.k1)).allowed
    assert keys.service.health() == "SERVING"


def test_unknown_kids_refetch_at_most_once_per_cooldown(keys: Keys) -> None:
    time.sleep(ROT_COOLDOWN + 0.2)  # past the previous test's unknown-kid fetch
    k3, k4 = make_rsa_key("k3"), make_rsa_key("k4")
    before = keys.rot.requests
    keys.rot.set_keys([k3])
    assert keys.check("keys/rot", token(k3)).allowed
    assert keys.rot.requests == before + 1
    keys.rot.set_keys([k3, k4])  # rotated again within the 3 s cooldown of that fetch: not seen yet
    d = keys.check("keys/rot", token(k4))
    assert (d.status, d.json()["reason"]) == (401, "unknown signing key")
    assert keys.rot.requests == before + 1
    time.sleep(ROT_COOLDOWN + 0.2)
    assert keys.check("keys/rot", token(k4)).allowed
    assert keys.rot.requests == before + 2


def _random_kid_token(n: int) -> str:
    # The kid is looked up before any signature check: the signature need not be real.
    header = b64url({"alg": "RS256", "kid": f"storm-{n}-{uuid.uuid4().hex}"})
    claims = b64url({"iss": ISSUER, "aud": "api", "sub": "u", "exp": int(time.time()) + 300})
    return f"{header}.{claims}.{b64url(b'not-a-signature' * 16)}"


def test_refetch_storm_of_unknown_kids_fetches_at_most_once(keys: Keys) -> None:
    before = keys.storm.requests
    tokens = [_random_kid_token(n) for n in range(STORM)]
    keys.storm.delay = 0.3  # a slow IdP: many requests wait on the same fetch

    def one(t: str) -> tuple[int, str]:
        d = keys.check("keys/storm", t)
        return d.status, d.json()["reason"]

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(one, tokens))
    elapsed = time.monotonic() - started
    keys.storm.delay = 0.0
    assert elapsed < COOLDOWN / 3, elapsed
    assert set(results) == {(401, "unknown signing key")}
    # No unknown kid had fetched yet: the first one fetches once, every other request shares that
    # fetch or hits the cooldown / negative cache. (Zero would mean no refetch on unknown kids.)
    assert keys.storm.requests - before == 1, keys.storm.requests - before
    assert _fetches(keys, "keys/storm", "ok") + _fetches(keys, "keys/storm", "error") == before + 1
    # The real key still works after the storm.
    assert keys.check("keys/storm", token(keys.k1)).allowed
    assert keys.storm.requests - before <= 1
