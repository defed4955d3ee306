"""Black box: manifests → compile → translate → a real Envoy over ADS → real `legation echo`
upstreams (started through the CLI).

One Envoy and two echo upstreams (`blue`, `green`) for the module; each test publishes its own
manifests and waits until Envoy has acknowledged them (no NACK, nothing warming) before sending
requests. One test also starts the real authz and rate limit services (per-claim limits). The
ADS server runs in a background thread (tests/fixtures/ads_thread.py), so the tests use plain
blocking clients.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import json
import socket
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from fixtures.ads_thread import AdsThread
from fixtures.echo import EchoProcess, echo_body, start_echo
from fixtures.jwks_server import jwks_json, make_rsa_key, mint
from fixtures.manifests import compile_manifests, resource, self_signed, tls_secret
from fixtures.probes import HttpResponse, http_request, json_log_lines
from fixtures.processes import HOST, EnvoyProcess, Launcher, free_port, http_get, wait_for

from legation.controller.compiler.ir import CompileResult
from legation.controller.translate.envoy import HTTP_LISTENER, EnvoyOptions, translate
from legation.controller.xds.snapshot import CLUSTER, LISTENER, ROUTE, Snapshot

pytestmark = pytest.mark.e2e

BOOTSTRAP = Path(__file__).parent.parent / "fixtures" / "envoy_ads_bootstrap.yaml"
NODE = "routes-e2e"


@dataclass
class Gateway:
    ads: AdsThread
    envoy: EnvoyProcess
    options: EnvoyOptions
    blue: EchoProcess
    green: EchoProcess
    access_log: Path
    snapshot: Snapshot | None = None

    def apply(self, manifests: str) -> CompileResult:
        """Publish the manifests and wait until Envoy runs them."""
        result = compile_manifests(manifests, platform=frozenset({"demo", "legation-system"}))
        assert not result.rejected, [(str(s.id), s.reason) for s in result.rejected]
        self.snapshot = Snapshot.build(translate(result.ir, self.options))
        self.ads.publish(self.snapshot, NODE)
        self.ads.wait_synced(NODE, self.snapshot)
        wait_for(self._settled, timeout=10, what="listeners and clusters to finish warming")
        return result

    def _settled(self) -> bool:
        status, body = http_get(f"http://{HOST}:{self.envoy.admin_port}/config_dump", 2.0)
        assert status == 200
        for config in json.loads(body)["configs"]:
            if config.get("dynamic_warming_clusters"):
                return False
            if any("warming_state" in listener for listener in config.get("dynamic_listeners", ())):
                return False
        return True

    def get(
        self,
        path: str,
        headers: Mapping[str, str] | None = None,
        *,
        method: str = "GET",
        host: str | None = None,
    ) -> HttpResponse:
        wanted = dict(headers or {})
        if host is not None:
            wanted["Host"] = host
        return http_request(self.options.http_port, path, wanted, method=method)

    def echo(self, path: str, headers: Mapping[str, str] | None = None, **kwargs: Any) -> dict[str, Any]:
        response = self.get(path, headers, **kwargs)
        assert response.status == 200, (path, response.status, response.body)
        return echo_body(response.body)


@pytest.fixture(scope="module")
def gateway(module_launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    blue, green = start_echo(module_launcher, "blue"), start_echo(module_launcher, "green")
    access_log = tmp_path_factory.mktemp("envoy-routes") / "access.log"
    ads = AdsThread()
    try:
        envoy = module_launcher.envoy(BOOTSTRAP, values={"XDS_PORT": ads.port, "NODE_ID": NODE}, wait=False)
        options = EnvoyOptions(
            http_port=envoy.port,  # the port wait_ready probes
            https_port=free_port(),
            # nothing listens there: rate-limited routes must still be served (failure mode allow)
            ratelimit_service=f"{HOST}:{free_port()}",
            default_authz_service=None,
            access_log_path=str(access_log),
        )
        gw = Gateway(ads, envoy, options, blue, green, access_log)
        gw.apply("")
        envoy.wait_ready()
        yield gw
    finally:
        ads.close()


def mapping(name: str, echo: EchoProcess, limit: str | None = None, **spec: Any) -> str:
    spec["service"] = echo.service
    if not {"prefix", "path", "regex"} & spec.keys():
        spec["prefix"] = f"/{name}/"
    annotations = {"legation.dev/rate-limit": limit} if limit is not None else None
    return resource("Mapping", name, spec, annotations=annotations)


# --------------------------------------------------------------------------- tests


def test_matching_rewrite_and_headers(gateway: Gateway) -> None:
    blue, green = gateway.blue, gateway.green
    gateway.apply(
        mapping("exact", blue, path="/exact")
        + mapping("rx", green, regex="/items/[0-9]+")
        + mapping("get-only", blue, prefix="/m/", methods=["GET"])
        + mapping("post-only", green, prefix="/m/", methods=["POST", "PUT"])
        + mapping("canary-header", green, prefix="/h/", headers={"x-canary": "true"})
        + mapping("any-header", blue, prefix="/h/", headers={"x-flag": "*"})
        + mapping("h-default", blue, prefix="/h/", timeout="2s")
        + mapping("q", green, prefix="/q/", queryParameters={"v": "2"})
        + mapping("q-default", blue, prefix="/q/")
        + mapping("rewrite", blue, prefix="/old/", rewrite="/new/")
        + mapping("dns", green, prefix="/dns/", service=f"localhost:{green.port}")
        + mapping(
            "hdrs",
            blue,
            prefix="/hdrs/",
            addRequestHeaders={"x-env": "gateway"},
            removeRequestHeaders=["x-secret"],
            addResponseHeaders={"x-served-by": "legation"},
            removeResponseHeaders=["x-echo-name"],
        )
    )
    assert gateway.echo("/exact")["name"] == "blue"
    assert gateway.get("/exact/more").status == 404
    assert gateway.echo("/items/42")["name"] == "green"
    assert gateway.get("/items/4x2").status == 404
    assert gateway.echo("/m/x")["name"] == "blue"
    assert gateway.echo("/m/x", method="POST")["name"] == "green"
    assert gateway.get("/m/x", method="DELETE").status == 404
    assert gateway.echo("/h/x", {"x-canary": "true"})["name"] == "green"
    assert gateway.echo("/h/x", {"x-canary": "false"})["name"] == "blue"
    assert gateway.echo("/h/x", {"x-flag": ""})["name"] == "blue"
    assert gateway.echo("/q/x?v=2")["name"] == "green"
    assert gateway.echo("/q/x?v=3")["name"] == "blue"

    seen = gateway.echo("/old/a/b?k=1")
    assert (seen["path"], seen["query"]) == ("/new/a/b", {"k": "1"})
    assert gateway.echo("/dns/x")["name"] == "green"  # STRICT_DNS cluster, resolved to IPv4

    response = gateway.get("/hdrs/x", {"x-env": "client", "x-secret": "s3cr3t", "x-kept": "1"})
    assert response.status == 200
    headers = echo_body(response.body)["headers"]
    assert headers["x-env"] == "gateway"  # overwritten, not appended
    assert "x-secret" not in headers and headers["x-kept"] == "1"
    assert response.header("x-served-by") == "legation" and response.header("x-echo-name") is None
    assert gateway.get("/exact").header("x-echo-name") == "blue"  # present where not removed


def test_paths_are_normalized_before_routing_and_escaped_slashes_refused(gateway: Gateway) -> None:
    gateway.apply(
        mapping("pub", gateway.blue, prefix="/pub/") + mapping("admin", gateway.green, prefix="/admin/")
    )
    assert gateway.echo("/pub/../admin/x")["name"] == "green"  # what the upstream gets is what matched
    assert gateway.echo("/pub/../admin/x")["path"] == "/admin/x"
    assert gateway.echo("/pub/%2e%2e/admin/x")["path"] == "/admin/x"  # encoded dots too
    assert gateway.echo("//pub//a/./b")["path"] == "/pub/a/b"
    assert gateway.echo("/pub/a\\b")["path"] == "/pub/a/b"
    assert gateway.get("/pub/a%2F..%2F..%2Fadmin/x").status == 400
    assert gateway.get("/pub/a%5Cb").status == 400


def test_weighted_canary_split_and_zero_weight(gateway: Gateway) -> None:
    gateway.apply(
        mapping("main", gateway.blue, prefix="/shop/", weight=70)
        + mapping("canary", gateway.green, prefix="/shop/", weight=30)
        + mapping("dark", gateway.green, prefix="/dark/", weight=0)
    )
    counts = collections.Counter(gateway.echo("/shop/item")["name"] for _ in range(300))
    # binomial(300, 0.3): mean 90, sd 7.9; this window is about 4.4 sd wide on each side
    assert 55 <= counts["green"] <= 125 and counts["blue"] + counts["green"] == 300, counts
    response = gateway.get("/dark/x")
    assert response.status == 503 and "weight 0" in response.body


def test_cors_preflight_and_actual_request(gateway: Gateway) -> None:
    cors = {
        "origins": ["https://shop.example.com", "https://*.example.org"],
        "methods": ["GET", "POST"],
        "headers": ["authorization", "content-type"],
        "exposeHeaders": ["x-request-id"],
        "credentials": True,
        "maxAge": "10m",
    }
    gateway.apply(mapping("web", gateway.blue, prefix="/web/", cors=cors))
    preflight = {"Origin": "https://a.example.org", "Access-Control-Request-Method": "POST"}
    answer = gateway.get("/web/x", preflight, method="OPTIONS")
    assert answer.status == 200
    assert answer.header("access-control-allow-origin") == "https://a.example.org"
    assert answer.header("access-control-allow-methods") == "GET,POST"
    assert answer.header("access-control-allow-headers") == "authorization,content-type"
    assert answer.header("access-control-allow-credentials") == "true"
    assert answer.header("access-control-max-age") == "600"
    assert answer.header("x-echo-name") is None  # answered by Envoy, not the upstream

    refused = gateway.get("/web/x", {**preflight, "Origin": "https://evil.example.com"}, method="OPTIONS")
    assert refused.header("access-control-allow-origin") is None

    actual = gateway.get("/web/x", {"Origin": "https://shop.example.com"})
    assert actual.status == 200 and actual.header("access-control-allow-origin") == "https://shop.example.com"
    assert actual.header("access-control-expose-headers") == "x-request-id"


def test_websocket_upgrade_only_where_allowed_and_route_timeout(gateway: Gateway) -> None:
    gateway.apply(
        mapping("ws", gateway.blue, prefix="/ws/", allowUpgrade=["websocket"])
        + mapping("nows", gateway.blue, prefix="/nows/")
        + mapping("slow", gateway.blue, prefix="/slow/", timeout="300ms")
    )

    async def talk(path: str) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(
                f"http://{HOST}:{gateway.options.http_port}{path}",
                timeout=aiohttp.ClientWSTimeout(ws_close=3),
            ) as ws,
        ):
            await ws.send_str("hello through envoy")
            return str(await ws.receive_str(timeout=3))

    assert asyncio.run(talk("/ws/chat")) == "hello through envoy"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        asyncio.run(talk("/nows/chat"))
    assert refused.value.status == 403  # Envoy refuses the upgrade the route does not allow

    assert gateway.get("/slow/x", {"x-echo-delay-ms": "2000"}).status == 504
    assert gateway.echo("/slow/x")["name"] == "blue"


def test_http_redirect_reject_and_tls_listener_with_sni(gateway: Gateway) -> None:
    api_cert, api_key = self_signed("api.example.com")
    default_cert, default_key = self_signed("other.example.net")
    gateway.apply(
        tls_secret("api-tls", api_cert, api_key)
        + tls_secret("default-tls", default_cert, default_key)
        + resource("Host", "api", {"hostname": "api.example.com", "tlsSecret": {"name": "api-tls"}})
        + resource(
            "Host",
            "locked",
            {
                "hostname": "locked.example.com",
                "tlsSecret": {"name": "api-tls"},
                "insecure": {"action": "Reject"},
            },
        )
        + resource(
            "Host",
            "any",
            {"hostname": "*", "tlsSecret": {"name": "default-tls"}, "insecure": {"action": "Route"}},
        )
        + mapping("app", gateway.blue, prefix="/app/")
        + mapping("api", gateway.green, prefix="/v1/", hostname="api.example.com")
    )
    https_port = gateway.options.https_port
    redirect = gateway.get("/v1/x?q=1", host="api.example.com")
    assert redirect.status == 301
    assert redirect.header("location") == f"https://api.example.com:{https_port}/v1/x?q=1"
    assert gateway.get("/app/x", host="locked.example.com").status == 403
    plain = gateway.echo("/app/x", host="other.example.net")  # the `*` Host routes plain HTTP
    assert plain["name"] == "blue" and plain["headers"]["x-forwarded-proto"] == "http"

    status, body, presented = https_get(https_port, "api.example.com", "/v1/x", trust=api_cert)
    assert status == 200 and echo_body(body)["name"] == "green"
    assert echo_body(body)["headers"]["x-forwarded-proto"] == "https"
    assert presented == pem_der(api_cert)
    # the more specific host's routes first, then the `*` ones
    status, body, _ = https_get(https_port, "api.example.com", "/app/y", trust=api_cert)
    assert status == 200 and echo_body(body)["name"] == "blue"
    # another name, and no SNI at all: the `*` Host's certificate
    status, body, presented = https_get(https_port, "other.example.net", "/app/z", trust=default_cert)
    assert status == 200 and presented == pem_der(default_cert)
    _, _, presented = https_get(https_port, None, "/app/z", trust=default_cert)
    assert presented == pem_der(default_cert)


def test_authz_and_ratelimit_filters_are_accepted_and_fail_the_right_way(gateway: Gateway) -> None:
    authz_port = free_port()  # nothing listens: every check fails
    policy = resource(
        "JWTPolicy",
        "jwt",
        {
            "providers": [
                {
                    "name": "corp",
                    "issuer": "https://idp.example.com/",
                    "jwks": {"uri": "https://idp.example.com/jwks"},
                }
            ],
            "rules": [{"requires": {"anyOf": ["corp"]}}],
            "metadataClaims": ["org.team"],
            "enforcement": "service",  # what is tested here is ext_authz failing closed
        },
    )
    limit = "100/m per ip; 10/s per claim:org.team; 5/s per header:x-api-key,method,path"
    before = gateway.snapshot
    gateway.apply(
        resource(
            "AuthService",
            "default",
            {"service": f"{HOST}:{authz_port}", "timeout": "250ms", "includeBody": {"maxBytes": 1024}},
            namespace="legation-system",
        )
        + policy
        + mapping(
            "private",
            gateway.blue,
            prefix="/private/",
            auth={"policy": "jwt"},
            limit=limit,
            cors={"origins": ["https://app.example.com"], "methods": ["GET"]},
        )
        + mapping("public", gateway.green, prefix="/public/", limit=limit)
    )
    assert gateway.ads.nacks() == []
    assert before is not None and gateway.snapshot is not None
    assert gateway.snapshot.encoded[LISTENER][HTTP_LISTENER] != before.encoded[LISTENER][HTTP_LISTENER]
    # authz unreachable: closed, with statusOnError (503)
    private = gateway.get("/private/x", {"x-api-key": "k"})
    assert private.status == 503 and private.header("x-echo-name") is None
    # a CORS preflight carries no credentials: the CORS filter answers it before ext_authz
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"}
    answer = gateway.get("/private/x", preflight, method="OPTIONS")
    assert answer.status == 200 and answer.header("access-control-allow-origin") == "https://app.example.com"
    # no policy: served; the rate limit service is unreachable too, and fails open
    public = gateway.get("/public/x", {"x-api-key": "k"})
    assert public.status == 200 and echo_body(public.body)["name"] == "green"


def test_per_claim_rate_limit_through_the_real_authz_and_ratelimit_services(
    gateway: Gateway, launch: Launcher, tmp_path: Path
) -> None:
    """The claim travels as ext_authz dynamic metadata (a dotted name, `org.team`) into the
    descriptor Envoy sends, which must hit the tree the compiler wrote for the service."""
    key, partner_key = make_rsa_key("k1"), make_rsa_key("p1")
    policy = resource(
        "JWTPolicy",
        "jwt",
        {
            "providers": [
                {"name": "corp", "issuer": "https://idp/", "jwks": {"inline": jwks_json([key])}},
                {
                    "name": "partner",
                    "issuer": "https://partner/",
                    "jwks": {"inline": jwks_json([partner_key])},
                },
            ],
            "rules": [{"requires": {"anyOf": ["corp", "partner"]}}],
            "claimsToHeaders": {"sub": "x-user-id", "org.team": "x-team"},
            "metadataClaims": ["org.team"],
        },
    )
    (tmp_path / "policies.yaml").write_text(policy)
    authz = launch.authz(tmp_path / "policies.yaml")
    manifests = (
        resource("AuthService", "default", {"service": authz.address}, namespace="legation-system")
        + policy
        + mapping(
            "limited",
            gateway.blue,
            prefix="/limited/",
            auth={"policy": "jwt"},
            limit="2/m per claim:org.team",
        )
    )
    [domain] = compile_manifests(manifests).ratelimit
    config = tmp_path / "ratelimit.yaml"
    config.write_text(yaml.safe_dump(domain.model_dump(mode="json", exclude_defaults=True), sort_keys=False))
    assert gateway.options.ratelimit_service is not None
    launch.ratelimit(config, port=int(gateway.options.ratelimit_service.rpartition(":")[2]))
    gateway.apply(manifests)

    def call(sub: str, team: str, *, partner: bool = False) -> HttpResponse:
        claims = {"iss": "https://partner/" if partner else "https://idp/", "sub": sub, "org": {"team": team}}
        token = mint(partner_key if partner else key, claims)
        return gateway.get("/limited/x", {"Authorization": f"Bearer {token}"})

    first = call("alice", "orders")
    assert first.status == 200, first.body
    assert echo_body(first.body)["identity"] == {"x-user-id": "alice", "x-team": "orders"}
    assert call("bob", "orders", partner=True).status == 200  # the second provider's token counts too
    assert call("carol", "orders").status == 429  # the team's budget, whoever asks
    assert call("dave", "billing").status == 200  # another team, another counter
    assert gateway.get("/limited/x").status == 401  # no token: authz answers before any limit


def test_a_mapping_change_resends_only_route_configurations(gateway: Gateway) -> None:
    gateway.apply(
        mapping("one", gateway.blue, prefix="/one/") + mapping("two", gateway.green, prefix="/two/")
    )

    def sent() -> dict[str, str]:
        def read() -> dict[str, str]:
            [node] = [n for n in gateway.ads.xds.nodes() if n.node_id == NODE]
            return {t: s.sent_nonce for t, s in node.types.items()}

        return gateway.ads.call(read)

    first = sent()
    gateway.apply(
        mapping("one", gateway.blue, prefix="/one/", timeout="9s")
        + mapping("two", gateway.green, prefix="/uno/")
    )
    second = sent()
    assert second[LISTENER] == first[LISTENER] and second[CLUSTER] == first[CLUSTER]
    assert second[ROUTE] != first[ROUTE]
    assert gateway.echo("/uno/x")["name"] == "green" and gateway.get("/two/x").status == 404


def test_json_access_log(gateway: Gateway) -> None:
    gateway.apply(mapping("logged", gateway.green, prefix="/logged/"))
    response = gateway.get("/logged/path?x=1", {"x-request-id": "not-trusted", "user-agent": "e2e"})
    assert response.status == 200

    def entry() -> dict[str, object] | None:
        lines = json_log_lines(gateway.access_log.read_text()) if gateway.access_log.exists() else []
        return next((e for e in lines if e.get("path") == "/logged/path?x=1"), None)

    # Envoy writes access log files out every 10 s (bootstrap file_flush_interval_msec default)
    record = wait_for(entry, timeout=15, interval=0.2, what="the access log entry")
    assert record["method"] == "GET" and record["status"] == 200
    assert record["route"] == "demo/logged"
    assert record["upstream_cluster"] == f"svc_127_0_0_1_{gateway.green.port}"
    assert record["client"] == "127.0.0.1" and record["user_agent"] == "e2e"
    assert record["request_id"] and record["request_id"] != "not-trusted"  # Envoy is the edge
    assert isinstance(record["duration_ms"], int) and record["start_time"]


# --------------------------------------------------------------------------- TLS client


def https_get(port: int, sni: str | None, path: str, *, trust: str) -> tuple[int, str, bytes]:
    """GET over TLS to 127.0.0.1:`port` with SNI `sni` (None: no SNI), verifying the server
    against `trust` (PEM) and `sni`; (status, body, DER certificate the server presented)."""
    context = ssl.create_default_context(cadata=trust)
    if sni is None:
        context.check_hostname = False
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        presented = tls.getpeercert(binary_form=True)
        assert presented is not None
        conn = http.client.HTTPConnection(sni or "localhost", port, timeout=5)
        conn.sock = tls
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode(), presented


def pem_der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


def test_prefixes_match_whole_segments_and_rewrites_keep_one_slash(gateway: Gateway) -> None:
    gateway.apply(
        mapping("orders", gateway.blue, prefix="/orders/public")
        + mapping("root", gateway.green, prefix="/api/", rewrite="/")
        + mapping("v1", gateway.green, prefix="/old", rewrite="/new")
    )
    assert gateway.echo("/orders/public")["name"] == "blue"
    assert gateway.echo("/orders/public/menu")["name"] == "blue"
    assert gateway.get("/orders/publicity").status == 404  # another segment, not the prefix
    assert gateway.echo("/api/items")["path"] == "/items"  # not //items
    assert gateway.echo("/api")["path"] == "/"
    assert gateway.echo("/old/x?q=1")["path"] == "/new/x"  # the echo reports the query apart
    assert gateway.echo("/old")["path"] == "/new"
