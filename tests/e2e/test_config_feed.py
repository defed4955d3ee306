"""`legation authz --config-url` and `legation ratelimit --config-url`: real service processes
following legation.controller.serving.feed's router served over real HTTP (uvicorn on a loopback port).

The walk-through: the services start before the controller (not ready, empty config), take the
first version, follow a change, keep the last good config when the feed serves something
invalid and when the controller goes away, and resync when it comes back.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.authz_stack import AuthzClient, Decision
from fixtures.config_feed import FeedServer, compile_manifests, manifests
from fixtures.jwks_server import JwksServer, Signer, jwks_json, make_ec_key, make_rsa_key, mint
from fixtures.probes import json_log_lines, metric_samples, metric_sum
from fixtures.processes import Launcher, RateLimitProcess, free_port, legation_binary, wait_for
from fixtures.rls import OK, OVER_LIMIT, RlsClient

from legation.controller.compiler.ratelimits import DOMAIN, MAPPING_KEY
from legation.controller.translate.feeds import authz_feed_text, ratelimit_feed_text

pytestmark = pytest.mark.e2e

FOLLOW_WITHIN = 3.0  # seconds for a published change to be in force
RESYNC_WITHIN = 12.0  # the follower's backoff is capped at 5 s (±20%), then one more poll
ORDERS = "team-orders/orders"
ORDERS_POLICY = "team-orders/orders-jwt"
CATALOG_POLICY = "team-catalog/catalog-jwt"
ISSUER_1 = "https://idp.orders.example/"
ISSUER_2 = "https://idp2.orders.example/"

_ips = itertools.count(1)


def fresh_ip() -> str:
    n = next(_ips)
    return f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}"


def enforced(client: RlsClient, limit: int) -> list[int]:
    """Codes of limit+1 requests from one new client address to team-orders/orders."""
    descriptor = [(MAPPING_KEY, ORDERS), ("remote_address", fresh_ip())]
    return [client.should(DOMAIN, [descriptor]).overall_code for _ in range(limit + 1)]


def current_limit(client: RlsClient) -> int | None:
    resp = client.should(DOMAIN, [[(MAPPING_KEY, ORDERS), ("remote_address", fresh_ip())]])
    status = resp.statuses[0]
    return int(status.current_limit.requests_per_unit) if status.HasField("current_limit") else None


def orders_token(key: Signer, issuer: str) -> str:
    now = int(time.time())
    return mint(key, {"iss": issuer, "aud": "orders", "sub": "alice", "scope": "orders:read", "iat": now})


def check_orders(authz: AuthzClient, token: str | None) -> Decision:
    return authz.check("/orders/items", policy=ORDERS_POLICY, token=token)


def config_versions(service: RateLimitProcess, metric: str) -> set[str]:
    samples = metric_samples(service.metrics_text(), metric)
    return {labels["version"] for labels, value in samples if value == 1}


def log_records(service: RateLimitProcess, msg: str) -> list[dict[str, object]]:
    return [r for r in json_log_lines(service.process.stderr_text()) if r.get("msg") == msg]


class Controller:
    """The feed side of the test: what a controller would publish for a given set of resources."""

    def __init__(self, orders_key: Signer, catalog_key: Signer, partners: JwksServer) -> None:
        self.orders_key = orders_key
        self.catalog_key = catalog_key
        self.partners = partners

    def texts(self, *, limit: int, issuer: str) -> tuple[str, str]:
        result = compile_manifests(
            manifests(
                orders_jwks=jwks_json([self.orders_key]),
                catalog_jwks=jwks_json([self.catalog_key]),
                orders_limit=limit,
                orders_issuer=issuer,
                partners_uri=self.partners.url,
            )
        )
        return authz_feed_text(result), ratelimit_feed_text(result)

    def publish(self, server: FeedServer, *, limit: int, issuer: str) -> tuple[str, str]:
        authz_text, ratelimit_text = self.texts(limit=limit, issuer=issuer)
        return server.publish("authz", authz_text), server.publish("ratelimit", ratelimit_text)


@pytest.fixture
def controller() -> Iterator[Controller]:
    partners_key = make_ec_key("partners-1")
    with JwksServer(keys=[partners_key]) as partners:
        yield Controller(make_rsa_key("orders-1"), make_ec_key("catalog-1"), partners)


def test_services_follow_the_controller_feed(launch: Launcher, controller: Controller) -> None:
    server = FeedServer()  # not started: the services come up before the controller
    try:
        _walk_through(launch, controller, server)
    finally:
        server.stop()


def _walk_through(launch: Launcher, controller: Controller, server: FeedServer) -> None:
    ratelimit = launch.ratelimit(
        config_url=server.url("ratelimit"), feed_token_file=server.token_file("ratelimit"), wait=False
    )
    authz = launch.authz(
        config_url=server.url("authz"), feed_token_file=server.token_file("authz"), wait=False
    )
    services: list[RateLimitProcess] = [ratelimit, authz]

    # --- before any config: serving, but not ready, with the reason on /readyz.
    for service in services:
        status, body = wait_for(
            lambda s=service: (r := s.readyz())[0] == 503 and "feed unavailable" in r[1] and r,
            timeout=20,
            what=f"{service.label} /readyz not ready with a reason",
        )
        assert body.startswith("not ready\n"), body
        assert f"waiting for the first config from {service.config_url}" in body, body
        assert service.health() == "NOT_SERVING"
        assert service.process.running
    rls = RlsClient(ratelimit.address)
    checks = AuthzClient(authz.address)
    try:
        assert enforced(rls, 3) == [OK] * 4  # no limits yet
        token_1 = orders_token(controller.orders_key, ISSUER_1)
        denied = check_orders(checks, token_1)
        assert denied.status == 403, denied  # no policies yet: deny
        assert metric_sum(ratelimit.metrics_text(), "legation_ratelimit_config_loads_total") == 0

        # --- the controller comes up (nothing compiled yet: still not ready) and publishes.
        server.start()
        time.sleep(0.5)
        assert ratelimit.readyz()[0] == 503 and authz.readyz()[0] == 503
        authz_v1, rl_v1 = controller.publish(server, limit=3, issuer=ISSUER_1)
        start = time.monotonic()
        ratelimit.wait_serving(timeout=FOLLOW_WITHIN)
        authz.wait_serving(timeout=FOLLOW_WITHIN)
        assert time.monotonic() - start < FOLLOW_WITHIN
        assert enforced(rls, 3) == [OK, OK, OK, OVER_LIMIT]
        assert check_orders(checks, token_1).allowed
        assert check_orders(checks, None).status == 401
        catalog_token = mint(
            controller.catalog_key, {"iss": "https://idp.catalog.example/", "aud": "shop", "sub": "bob"}
        )
        catalog = checks.check(
            "/catalog/items", policy=CATALOG_POLICY, token=catalog_token, host="shop.example.com"
        )
        assert catalog.allowed and catalog.headers.get("x-user-id") == "bob", catalog
        assert checks.check("/catalog/health", policy=CATALOG_POLICY).allowed  # a public rule

        # The version they run: the feed's, on /readyz, in the metrics and in the logs.
        for service, version, metric in (
            (ratelimit, rl_v1, "legation_ratelimit_config_info"),
            (authz, authz_v1, "legation_authz_config_info"),
        ):
            status, body = service.readyz()
            assert status == 200 and body.startswith("ready\n"), body
            assert f"version {version} from {service.config_url}" in body, body
            assert "unavailable" not in body and "rejected" not in body, body
            assert config_versions(service, metric) == {version}
        assert [r["version"] for r in log_records(ratelimit, "config loaded")] == [rl_v1]
        assert [r["version"] for r in log_records(authz, "policies loaded")] == [authz_v1]

        # --- a change is followed within a couple of seconds.
        authz_v2, rl_v2 = controller.publish(server, limit=5, issuer=ISSUER_2)
        start = time.monotonic()
        wait_for(lambda: current_limit(rls) == 5, timeout=FOLLOW_WITHIN, what="limit 5")
        wait_for(
            lambda: check_orders(checks, token_1).status == 401,
            timeout=FOLLOW_WITHIN,
            what="issuer 1 refused",
        )
        assert time.monotonic() - start < FOLLOW_WITHIN
        token_2 = orders_token(controller.orders_key, ISSUER_2)
        assert check_orders(checks, token_2).allowed
        assert enforced(rls, 5) == [OK] * 5 + [OVER_LIMIT]
        assert config_versions(ratelimit, "legation_ratelimit_config_info") == {rl_v2}
        assert config_versions(authz, "legation_authz_config_info") == {authz_v2}
        reloaded = log_records(ratelimit, "config reloaded")
        assert [(r["version"], r["previous"]) for r in reloaded] == [(rl_v2, rl_v1)]

        # --- invalid content: the last good config stays, the rejection is reported.
        bad_rl = server.publish(
            "ratelimit",
            "domain: legation\ndescriptors:\n  - key: mapping\n    rate_limit:\n      unit: fortnight\n",
        )
        # (A feed that parses but holds a bad policy rejects that policy alone: test_feed_partial.)
        bad_authz = server.publish(
            "authz",
            "apiVersion: legation.dev/v1alpha1\nkind: JWTPolicy\nmetadata: {name: x, namespace: y}\n"
            "spec: [\n",
        )
        for service, bad, metric in (
            (ratelimit, bad_rl, "legation_ratelimit_config_loads_total"),
            (authz, bad_authz, "legation_authz_config_loads_total"),
        ):
            wait_for(
                lambda s=service, m=metric: metric_sum(s.metrics_text(), m, result="error") == 1,
                timeout=FOLLOW_WITHIN,
                what=f"{service.label} counts the rejected version",
            )
            status, body = service.readyz()
            assert status == 200, body  # still ready: it runs the last good config
            assert f"version {bad} rejected: {service.config_url}@{bad}:" in body, body
            assert service.health() == "SERVING"
        assert config_versions(ratelimit, "legation_ratelimit_config_info") == {rl_v2}
        assert config_versions(authz, "legation_authz_config_info") == {authz_v2}
        assert enforced(rls, 5) == [OK] * 5 + [OVER_LIMIT]
        assert check_orders(checks, token_2).allowed
        errors = [r for r in json_log_lines(ratelimit.process.stderr_text()) if r.get("level") == "error"]
        assert any(f"{ratelimit.config_url}@{bad_rl}:5:" in str(r["msg"]) for r in errors), errors
        time.sleep(1.0)  # polls go on; the rejected version is not fetched and logged again
        assert (
            metric_sum(ratelimit.metrics_text(), "legation_ratelimit_config_loads_total", result="error") == 1
        )
        rejections = [
            r
            for r in json_log_lines(ratelimit.process.stderr_text())
            if str(r.get("msg")).startswith(f"config feed version {bad_rl} rejected, keeping {rl_v2}")
        ]
        assert len(rejections) == 1, rejections

        # --- the controller goes away: everything keeps working on the last good config.
        server.stop()
        for service in services:
            wait_for(
                lambda s=service: "feed unavailable" in s.readyz()[1],
                timeout=FOLLOW_WITHIN,
                what=f"{service.label} reports the feed unavailable",
            )
            status, body = service.readyz()
            assert status == 200 and "version" in body, body
            assert service.health() == "SERVING"
        assert enforced(rls, 5) == [OK] * 5 + [OVER_LIMIT]
        assert check_orders(checks, token_2).allowed
        time.sleep(1.5)  # a few reconnect attempts
        assert ratelimit.process.running and authz.process.running

        # --- it comes back (a new controller on the same address) with a new config: resync.
        server = FeedServer(server.port)
        authz_v3, rl_v3 = controller.publish(server, limit=4, issuer=ISSUER_1)
        server.start()
        wait_for(lambda: current_limit(rls) == 4, timeout=RESYNC_WITHIN, what="limit 4 after the restart")
        wait_for(lambda: check_orders(checks, token_1).allowed, timeout=RESYNC_WITHIN, what="issuer 1 again")
        assert enforced(rls, 4) == [OK] * 4 + [OVER_LIMIT]
        for service, version in ((ratelimit, rl_v3), (authz, authz_v3)):
            wait_for(
                lambda s=service: "unavailable" not in s.readyz()[1],
                timeout=FOLLOW_WITHIN,
                what=f"{service.label} reports the feed healthy",
            )
            status, body = service.readyz()
            assert status == 200 and f"version {version} from" in body and "rejected" not in body, body
    finally:
        rls.close()
        checks.close()
        server.stop()


def test_a_restarted_controller_with_the_same_config_reloads_nothing(
    launch: Launcher, controller: Controller
) -> None:
    server = FeedServer().start()
    try:
        _, version = controller.publish(server, limit=2, issuer=ISSUER_1)
        ratelimit = launch.ratelimit(
            config_url=server.url("ratelimit"), feed_token_file=server.token_file("ratelimit")
        )
        server.stop()
        wait_for(
            lambda: "feed unavailable" in ratelimit.readyz()[1], timeout=FOLLOW_WITHIN, what="outage seen"
        )
        # Another replica (or the same one restarted) compiles the same resources: same version.
        server = FeedServer(server.port)
        _, again = controller.publish(server, limit=2, issuer=ISSUER_1)
        assert again == version
        server.start()
        wait_for(lambda: "unavailable" not in ratelimit.readyz()[1], timeout=RESYNC_WITHIN, what="feed back")
        assert metric_sum(ratelimit.metrics_text(), "legation_ratelimit_config_loads_total", result="ok") == 1
        assert log_records(ratelimit, "config reloaded") == []
        with RlsClient(ratelimit.address) as rls:
            assert enforced(rls, 2) == [OK, OK, OVER_LIMIT]
    finally:
        server.stop()


def test_file_config_reports_its_version_on_readyz(launch: Launcher, tmp_path: Path) -> None:
    path = tmp_path / "ratelimit.yaml"
    path.write_text(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n"
    )
    service = launch.ratelimit(path)
    status, body = service.readyz()
    (version,) = config_versions(service, "legation_ratelimit_config_info")
    assert status == 200 and body == f"ready\nlegation.ratelimit.config: version {version} from {path}\n"


@pytest.mark.parametrize("command", ["ratelimit", "authz"])
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "one of the arguments --config --config-url is required"),
        (["--config", "x.yaml", "--config-url", "http://127.0.0.1:1/feed/x"], "not allowed with argument"),
        (["--config-url", "ftp://127.0.0.1/feed/x"], "expected an http:// or https:// URL"),
        (["--config-url", "http://127.0.0.1:1/feed/x", "--check"], "--check validates a --config file"),
    ],
)
def test_config_flags(command: str, flags: list[str], message: str) -> None:
    proc = subprocess.run(
        [legation_binary(), command, *flags, "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    # ratelimit: every bad flag is one line and exit 1 (tests/e2e/test_ratelimit_cli_errors.py)
    assert proc.returncode == (1 if command == "ratelimit" else 2), (proc.returncode, proc.stderr[-2000:])
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
