"""The controller's HTTP port against a hostile caller, with real processes: the feeds answer only
their own tokens (an HS256 key in the authz feed once let anyone mint tokens that passed a team's
policy), the API and page never show key material, and `legation authz` follows an https feed
with its token and CA, getting exactly the keys it needs.

The manifests hold every kind of secret the controller reads: an HMAC key inline in a JWTPolicy,
an RSA key pair inline in another, an RSA key pair in an Opaque Secret named by a third
(`secretRef`), a TLS Secret of a Host, and an Opaque Secret nobody names.
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from fixtures.authz_stack import AuthzClient
from fixtures.managed import HOST, free_port, http_get, legation_binary, wait_for
from fixtures.manifests import self_signed
from fixtures.processes import Launcher, ManagedProcess
from jwt.algorithms import RSAAlgorithm

pytestmark = pytest.mark.e2e

HMAC_KEY = secrets.token_bytes(48)
OPAQUE_VALUE = "opaque-" + secrets.token_hex(24)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _rsa_private_jwk(kid: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(key))
    # A whole key pair as a team might keep it (PyJWT marks a private JWK "sign" only).
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig", "key_ops": ["sign", "verify"]}


def _policy(name: str, jwks: dict[str, Any], algorithms: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "legation.dev/v1alpha1",
        "kind": "JWTPolicy",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {
            "providers": [{"name": "idp", "issuer": f"https://{name}.example/", "jwks": jwks,
                           "algorithms": algorithms}],
            "rules": [{"requires": {"anyOf": ["idp"]}}],
            "claimsToHeaders": {"sub": "x-user-id"},
        },
    }  # fmt: skip


class Secrets:
    """The manifests, and every secret string in them that must never be shown."""

    def __init__(self, directory: Path) -> None:
        inline_rsa, ref_rsa = _rsa_private_jwk("inline-rsa"), _rsa_private_jwk("ref-rsa")
        hmac_jwk = {"kty": "oct", "k": _b64url(HMAC_KEY), "kid": "hs", "alg": "HS256"}
        certificate, key = self_signed("api.example.test")
        self.tls_key = key
        ref_jwks = json.dumps({"keys": [ref_rsa]})
        docs = [
            _policy("hmac", {"inline": json.dumps({"keys": [hmac_jwk]})}, ["HS256"]),
            _policy("rsa-inline", {"inline": json.dumps({"keys": [inline_rsa]})}, ["RS256"]),
            _policy("rsa-ref", {"secretRef": {"name": "jwks", "key": "jwks.json"}}, ["RS256"]),
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "jwks", "namespace": "team-a"},
             "type": "Opaque", "data": {"jwks.json": base64.b64encode(ref_jwks.encode()).decode()}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api-tls", "namespace": "team-a"},
             "type": "kubernetes.io/tls", "stringData": {"tls.crt": certificate, "tls.key": key}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "unrelated", "namespace": "team-a"},
             "type": "Opaque", "stringData": {"password": OPAQUE_VALUE}},
            {"apiVersion": "legation.dev/v1alpha1", "kind": "Host",
             "metadata": {"name": "api", "namespace": "team-a"},
             "spec": {"hostname": "api.example.test", "tlsSecret": {"name": "api-tls"}}},
            {"apiVersion": "legation.dev/v1alpha1", "kind": "Mapping",
             "metadata": {"name": "orders", "namespace": "team-a"},
             "spec": {"prefix": "/orders/", "service": "127.0.0.1:9", "auth": {"policy": "hmac"}}},
        ]  # fmt: skip
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "team-a.yaml").write_text(yaml.safe_dump_all(docs))
        members = [jwk[m] for jwk in (inline_rsa, ref_rsa) for m in ("d", "p", "q", "dp", "dq", "qi")]
        self.values = {
            "hmac k": hmac_jwk["k"],
            "hmac raw b64": base64.b64encode(HMAC_KEY).decode(),
            "opaque": OPAQUE_VALUE,
            "opaque b64": base64.b64encode(OPAQUE_VALUE.encode()).decode(),
            "tls key b64": base64.b64encode(key.encode()).decode(),
            "secretRef jwks b64": base64.b64encode(ref_jwks.encode()).decode(),
            **{f"rsa private member {i}": v for i, v in enumerate(members)},
            **{f"tls key line {i}": line for i, line in enumerate(key.splitlines()) if "-----" not in line},
        }
        self.rsa_private_members = members

    def leaked(self, body: str) -> list[str]:
        return [name for name, value in self.values.items() if value in body]


def _tokens(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    tokens = {}
    for name in ("authz", "ratelimit", "api"):
        tokens[name] = directory / name
        tokens[name].write_text(secrets.token_urlsafe(32) + "\n")
    return tokens


def _controller(
    launch: Launcher, source: Path, tokens: dict[str, Path], *, api: int, tls: tuple[Path, Path] | None = None
) -> ManagedProcess:
    argv = [
        legation_binary(), "controller", "--allow-loopback-upstreams", "--source", str(source),
        "--xds-listen", f"{HOST}:{free_port()}", "--http-listen", f"{HOST}:{api}",
        "--envoy-http-port", str(free_port()), "--envoy-https-port", str(free_port()),
        "--feed-token-file", f"authz={tokens['authz']}",
        "--feed-token-file", f"ratelimit={tokens['ratelimit']}",
        "--api-token-file", str(tokens["api"]),
    ]  # fmt: skip
    if tls is not None:
        argv += ["--http-tls-cert", str(tls[0]), "--http-tls-key", str(tls[1])]
    return launch.spawn("controller", argv)


def _get(url: str, token: str | None = None, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _read(path: Path) -> str:
    return path.read_text().strip()


def test_feeds_refuse_callers_without_their_token_and_nothing_shows_a_secret(
    launch: Launcher, tmp_path: Path
) -> None:
    manifests = Secrets(tmp_path / "manifests")
    tokens = _tokens(tmp_path / "tokens")
    api = free_port()
    _controller(launch, tmp_path / "manifests", tokens, api=api)
    base = f"http://{HOST}:{api}"
    wait_for(lambda: http_get(f"{base}/readyz")[0] == 200, timeout=30, what="controller ready")

    # The feeds: no token, a wrong one, the other feed's, the API's: all 401, from loopback too.
    for token in (None, "x" * 40, _read(tokens["ratelimit"]), _read(tokens["api"])):
        status, body = _get(f"{base}/feed/authz", token)
        assert status == 401, (token, body)
        assert manifests.leaked(body) == []
    status, feed = _get(f"{base}/feed/authz", _read(tokens["authz"]))
    assert status == 200
    # The authz service needs the HMAC key (it verifies with it), never an RSA private part.
    assert manifests.values["hmac k"] in feed
    assert [m for m in manifests.rsa_private_members if m in feed] == []
    assert OPAQUE_VALUE not in feed and "unrelated" not in feed
    status, rl_feed = _get(f"{base}/feed/ratelimit", _read(tokens["ratelimit"]))
    assert status == 200 and manifests.leaked(rl_feed) == []

    # Every API endpoint and the page (from loopback: allowed), and each shows something.
    resources = json.loads(http_get(f"{base}/api/resources")[1])
    assert {r["name"] for r in resources["resources"]} >= {"hmac", "rsa-inline", "rsa-ref", "unrelated"}
    rejected = [(r["name"], r.get("problems")) for r in resources["resources"] if r["state"] != "Accepted"]
    assert rejected == []
    for path in (
        "/", "/api/status", "/api/resources", "/api/resources?kind=Secret", "/api/resources?kind=JWTPolicy",
        "/api/ir", "/api/envoy", "/api/feeds", "/api/envoys", "/api/upstreams",
    ):  # fmt: skip
        status, body = http_get(base + path)
        assert status == 200, path
        assert manifests.leaked(body) == [], f"{path} shows {manifests.leaked(body)}"
        assert '"k":"' not in body.replace(" ", "") or "[redacted]" in body
    public = json.loads(http_get(f"{base}/api/resources?kind=JWTPolicy")[1])["resources"]
    inline = {r["name"]: r["resource"]["spec"]["providers"][0]["jwks"].get("inline") for r in public}
    shown = json.loads(inline["rsa-inline"])["keys"][0]
    assert shown["d"] == "[redacted]" and len(shown["n"]) > 300, "public members stay, private are redacted"
    assert json.loads(inline["hmac"])["keys"][0]["k"] == "[redacted]"


def test_authz_follows_an_https_feed_with_its_token_and_ca(launch: Launcher, tmp_path: Path) -> None:
    manifests = Secrets(tmp_path / "manifests")
    tokens = _tokens(tmp_path / "tokens")
    certificate, key = self_signed("localhost")
    crt, pem = tmp_path / "http.crt", tmp_path / "http.key"
    crt.write_text(certificate)
    pem.write_text(key)
    api = free_port()
    _controller(launch, tmp_path / "manifests", tokens, api=api, tls=(crt, pem))
    base = f"https://localhost:{api}"
    context = ssl.create_default_context(cafile=str(crt))
    wait_for(lambda: _get(f"{base}/readyz", context=context)[0] == 200, timeout=30, what="controller")
    assert _get(f"{base}/feed/authz", context=context)[0] == 401

    # The wrong token: the service starts, is never ready, and says why.
    wrong = tmp_path / "wrong-token"
    wrong.write_text("w" * 40 + "\n")
    refused = launch.authz(
        config_url=f"{base}/feed/authz", feed_token_file=wrong,
        extra_args=["--feed-ca", str(crt)], wait=False,
    )  # fmt: skip
    authz = launch.authz(
        config_url=f"{base}/feed/authz", feed_token_file=tokens["authz"], extra_args=["--feed-ca", str(crt)]
    )
    status, ready = authz.readyz()
    assert status == 200, ready
    client = AuthzClient(authz.address)
    try:
        now = int(time.time())
        claims = {"iss": "https://hmac.example/", "sub": "alice", "exp": now + 60, "iat": now}
        token = jwt.encode(claims, HMAC_KEY, algorithm="HS256", headers={"kid": "hs"})
        decision = client.check("/orders/1", policy="team-a/hmac", token=token)
        assert decision.allowed and decision.headers["x-user-id"] == "alice"
        forged = jwt.encode({**claims, "sub": "mallory"}, b"guessed" * 8, algorithm="HS256")
        assert not client.check("/orders/1", policy="team-a/hmac", token=forged).allowed
    finally:
        client.close()

    def refusal() -> tuple[int, str] | None:  # started without waiting: it may not listen yet
        try:
            answer = refused.readyz()
        except OSError:
            return None
        return answer if "HTTP 401" in answer[1] else None

    status, why = wait_for(refusal, timeout=20, what="the wrong-token service says why it is not ready")
    assert status == 503 and "HTTP 401" in why, why
    assert manifests.values["hmac k"] not in why


def test_a_service_refuses_to_send_its_token_in_clear_to_another_machine(tmp_path: Path) -> None:
    import subprocess

    token = tmp_path / "token"
    token.write_text("t" * 40 + "\n")
    result = subprocess.run(
        [legation_binary(), "ratelimit", "--config-url", "http://controller.example:8877/feed/ratelimit",
         "--feed-token-file", str(token), "--listen", f"{HOST}:{free_port()}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "a feed token is sent only over https, or over http to a loopback address" in result.stderr
