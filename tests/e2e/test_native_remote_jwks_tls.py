"""Remote JWKS over https under native enforcement, through a real Envoy: `legation controller
--native-remote-jwks --envoy-jwks-trusted-ca CA` and Envoy over ADS, with three JWKS servers on
loopback, each serving the same keys over TLS.

Envoy fetches the keys itself, so its TLS to the IdP is the whole of the trust in them: a server
whose certificate the platform's CA issued for its address gives keys; one whose certificate
that CA issued for another name, or that another CA issued for its address (what anyone on the
path can present), gives none, and its policy answers 503 `signing keys unavailable`, as the
service does when it cannot fetch keys. Envoy's TLS counters say why.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fixtures.jwks_server import JwksServer, make_rsa_key, mint
from fixtures.managed import HOST, free_port, http_get, legation_binary, tcp_open, wait_for
from fixtures.probes import HttpResponse, http_request
from fixtures.processes import EnvoyProcess, Launcher, controller_bootstrap

from legation.controller.commands.demo import LocalCa

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ISSUER = "https://idp.tls.example/"
KEY = make_rsa_key("tls-1")
SERVERS = ("trusted", "wrong-name", "other-ca")


@dataclass
class Gateway:
    envoy: EnvoyProcess
    http: int
    idps: dict[str, JwksServer]

    def get(self, name: str, token: str | None) -> HttpResponse:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return http_request(self.http, f"/{name}/x", headers)

    def tls_stat(self, name: str, stat: str) -> int:
        """An ssl counter of the cluster Envoy fetches `name`'s keys with."""
        cluster = f"jwks_https_{HOST}_{self.idps[name].port}"
        return self.envoy.stat(f"cluster.{cluster}.ssl.{stat}")


def manifests(idps: dict[str, JwksServer], upstream: int) -> str:
    docs: list[dict[str, Any]] = []
    for name, idp in idps.items():
        provider = {
            "name": "corp",
            "issuer": ISSUER,
            "audiences": ["orders"],
            "jwks": {"uri": idp.url, "cacheDuration": "60s"},
            "algorithms": ["RS256"],
        }
        spec = {"providers": [provider], "rules": [{"requires": {"anyOf": ["corp"]}}]}
        docs.append(_resource("JWTPolicy", f"{name}-jwt", {**spec, "claimsToHeaders": {"sub": "x-user-id"}}))
        route = {"prefix": f"/{name}", "service": f"{HOST}:{upstream}", "auth": {"policy": f"{name}-jwt"}}
        docs.append(_resource("Mapping", name, route))
    return yaml.safe_dump_all(docs, sort_keys=False)


def _resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    meta = {"name": name, "namespace": "team-orders"}
    return {"apiVersion": "legation.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}


def token() -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": "orders", "sub": "alice", "iat": now, "exp": now + 600}
    return mint(KEY, {**claims, "jti": uuid.uuid4().hex})


@pytest.fixture
def gateway(launch: Launcher, tmp_path: Path) -> Iterator[Gateway]:
    ca, stranger = LocalCa.create("platform CA"), LocalCa.create("someone else's CA")
    (tmp_path / "ca.crt").write_text(ca.certificate)
    certificates = {
        "trusted": ca.issue(HOST),
        "wrong-name": ca.issue("idp.example.com"),
        "other-ca": stranger.issue(HOST),
    }
    upstream = free_port()
    launch.spawn("echo", [legation_binary(), "echo", "--listen", f"{HOST}:{upstream}", "--name", "up"])
    wait_for(lambda: tcp_open(HOST, upstream), timeout=20, what="echo upstream")
    idps = {name: JwksServer(keys=[KEY], tls=certificates[name]) for name in SERVERS}
    try:
        source = tmp_path / "manifests"
        source.mkdir()
        (source / "policies.yaml").write_text(manifests(idps, upstream))
        xds, api, http = free_port(), free_port(), free_port()
        launch.spawn(
            "controller",
            [
                legation_binary(), "controller", "--source", str(source),
                "--allow-loopback-upstreams", "--native-remote-jwks",
                "--envoy-jwks-trusted-ca", str(tmp_path / "ca.crt"),
                "--xds-listen", f"{HOST}:{xds}", "--http-listen", f"{HOST}:{api}",
                "--envoy-http-port", str(http), "--envoy-https-port", str(free_port()),
                "--authz-service", f"{HOST}:{free_port()}",  # never called: every policy is native
                "--ratelimit-service", "none",
            ],
        )  # fmt: skip
        wait_for(lambda: http_get(f"http://{HOST}:{api}/readyz")[0] == 200, timeout=30, what="controller")
        envoy = launch.envoy(controller_bootstrap(xds, "tls-test"), wait=False)
        gw = Gateway(envoy=envoy, http=http, idps=idps)
        wait_for(lambda: _served(gw), timeout=60, what="keys fetched over https")
        yield gw
    finally:
        for idp in idps.values():
            idp.stop()


def _served(gw: Gateway) -> bool:
    try:
        return gw.get("trusted", token()).status == 200
    except OSError:
        return False


def test_envoy_takes_keys_only_from_a_server_the_platform_ca_issued_for_its_address(gateway: Gateway) -> None:
    trusted = gateway.get("trusted", token())
    assert trusted.status == 200
    assert json.loads(trusted.body)["headers"]["x-user-id"] == "alice"
    assert gateway.tls_stat("trusted", "handshake") >= 1
    assert gateway.idps["trusted"].requests >= 1

    for name in ("wrong-name", "other-ca"):
        refused = gateway.get(name, token())
        assert refused.status == 503, (name, refused.status, refused.body)
        assert json.loads(refused.body)["reason"] == "signing keys unavailable"
        assert refused.header("www-authenticate") == f'Bearer realm="team-orders/{name}-jwt"'
        assert gateway.idps[name].requests == 0, name  # no request: the handshake failed first
    # Why, by Envoy's own counters: the name is not in the certificate; the CA is not trusted.
    assert gateway.tls_stat("wrong-name", "fail_verify_san") >= 1
    assert gateway.tls_stat("other-ca", "fail_verify_error") >= 1
    assert gateway.tls_stat("wrong-name", "handshake") == 0
    assert gateway.tls_stat("other-ca", "handshake") == 0
