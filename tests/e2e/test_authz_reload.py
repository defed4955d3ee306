"""Policy hot reload without restart; broken policies at reload (that policy alone fails closed;
an unparsable file keeps the old version) and at start (exit 1).

The policy's keys come from `jwks: {file: keys/jwks.json}`, a path relative to the policy file,
which also checks that relative key files resolve against the policy file's directory.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.authz_stack import AuthzClient, Decision
from fixtures.jwks_server import Signer, jwks_json, make_rsa_key, mint
from fixtures.probes import json_log_lines, metric_samples, metric_sum
from fixtures.processes import AuthzProcess, Launcher, free_port, legation_binary, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

RELOAD_WITHIN = 3.0
ISSUER = "https://idp.reload.example/"
POLICY = "reload/app"


def policy_text(
    scope: str = "read",
    *,
    name: str = "app",
    prefix_key: str = "pathPrefix",
    jwks: str = "{file: keys/jwks.json}",
    requires: str = "corp",
) -> str:
    # Line numbers matter (asserted below): jwks on line 8, the public rule's match on line 10,
    # the protected rule's requires on line 13.
    return (
        "apiVersion: legation.dev/v1alpha1\n"
        "kind: JWTPolicy\n"
        f"metadata: {{name: {name}, namespace: reload}}\n"
        "spec:\n"
        "  providers:\n"
        "    - name: corp\n"
        f"      issuer: {ISSUER}\n"
        f"      jwks: {jwks}\n"
        "  rules:\n"
        f"    - match: {{{prefix_key}: /open}}\n"
        "      public: true\n"
        "    - match: {pathPrefix: /}\n"
        f"      requires: {{anyOf: [{requires}]}}\n"
        f"      claims: {{scope: [{scope}]}}\n"
    )


BROKEN = {
    # name: (text, line the error must name; None when only the file name can be asserted)
    "unknown-field": (policy_text(prefix_key="pathPrefx"), 10),
    "unknown-provider": (policy_text(requires="nope"), 13),
    "two-key-sources": (policy_text(jwks='{file: keys/jwks.json, uri: "https://idp.example/jwks"}'), 8),
    "yaml-syntax": ("apiVersion: legation.dev/v1alpha1\nkind: JWTPolicy\nspec: [\n  rules: {\n", None),
}


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def key() -> Signer:
    return make_rsa_key("r1")


@pytest.fixture
def config(tmp_path: Path, key: Signer) -> Path:
    conf = tmp_path / "conf"
    (conf / "keys").mkdir(parents=True)
    (conf / "keys" / "jwks.json").write_text(jwks_json([key]))
    path = conf / "policies.yaml"
    path.write_text(policy_text("read"))
    return path


@pytest.fixture
def running(launch: Launcher, config: Path) -> Iterator[tuple[AuthzProcess, AuthzClient]]:
    # Started from another directory: relative key files must not depend on the working directory.
    service = launch.authz(config, jwks_allow_insecure=False)
    client = AuthzClient(service.address)
    try:
        yield service, client
    finally:
        client.close()


def token(key: Signer, scope: str) -> str:
    return mint(key, {"iss": ISSUER, "sub": "u", "scope": scope, "jti": uuid.uuid4().hex})


def decide(client: AuthzClient, key: Signer, scope: str, policy: str = POLICY) -> Decision:
    return client.check("/items", token=token(key, scope), policy=policy)


def wait_status(client: AuthzClient, key: Signer, scope: str, status: int, policy: str = POLICY) -> None:
    wait_for(
        lambda: decide(client, key, scope, policy).status == status,
        timeout=RELOAD_WITHIN,
        interval=0.1,
        what=f"scope {scope!r} on {policy} to get {status}",
    )


def _loads(service: AuthzProcess, result: str) -> float:
    return metric_sum(service.metrics_text(), "legation_authz_config_loads_total", result=result)


def _versions(service: AuthzProcess) -> set[str]:
    samples = metric_samples(service.metrics_text(), "legation_authz_config_info")
    return {labels.get("version", "") for labels, value in samples if value == 1}


def test_changes_apply_without_restart(
    running: tuple[AuthzProcess, AuthzClient], config: Path, key: Signer
) -> None:
    service, client = running
    pid = service.proc.pid
    assert decide(client, key, "read").allowed
    assert decide(client, key, "write").status == 403
    before = _versions(service)

    _write_atomic(config, policy_text("write"))  # rename over the file
    wait_status(client, key, "read", 403)
    assert decide(client, key, "write").allowed
    after = _versions(service)
    assert len(after) == 1 and after != before, (before, after)

    with open(config, "r+") as f:  # in place, same inode; and a second policy in the same file
        f.truncate(0)
        f.write(policy_text("read") + "---\n" + policy_text("admin", name="admin"))
    wait_status(client, key, "read", 200)
    assert decide(client, key, "admin", "reload/admin").allowed
    assert decide(client, key, "read", "reload/admin").status == 403

    _write_atomic(config, policy_text("read"))  # the second policy goes away: unknown, fail closed
    wait_status(client, key, "admin", 403, "reload/admin")
    assert decide(client, key, "admin", "reload/admin").json()["reason"] == "unknown policy"
    assert service.proc.pid == pid and service.process.running
    assert _loads(service, "error") == 0
    assert _loads(service, "ok") >= 4
    assert _versions(service) == before  # the same text again: the same version


@pytest.mark.parametrize("case", ["yaml-syntax"])
def test_broken_reload_keeps_the_old_policies(
    running: tuple[AuthzProcess, AuthzClient], config: Path, key: Signer, case: str
) -> None:
    """A file that names no policy (it does not parse) keeps the running version."""
    service, client = running
    assert decide(client, key, "read").allowed
    errors_before = _loads(service, "error")
    text, line = BROKEN[case]

    _write_atomic(config, text)
    wait_for(
        lambda: _loads(service, "error") > errors_before,
        timeout=RELOAD_WITHIN,
        interval=0.1,
        what="config error counted",
    )
    assert decide(client, key, "read").allowed
    assert decide(client, key, "write").status == 403
    _assert_logged(service, config, line)
    assert service.health() == "SERVING"

    _write_atomic(config, policy_text("write"))  # a later good version applies
    wait_status(client, key, "read", 403)


@pytest.mark.parametrize("case", ["unknown-field", "unknown-provider", "two-key-sources"])
def test_broken_policy_at_reload_fails_closed_alone(
    running: tuple[AuthzProcess, AuthzClient], config: Path, key: Signer, case: str
) -> None:
    """A reload where one policy is broken rejects that policy (503 for requests naming it, on
    /readyz, in the log and metrics) and applies the others."""
    service, client = running
    assert decide(client, key, "read").allowed
    text, line = BROKEN[case]

    _write_atomic(config, text + "---\n" + policy_text("read", name="other"))
    wait_status(client, key, "read", 200, policy="reload/other")
    refused = decide(client, key, "read")
    assert (refused.status, refused.json()["reason"]) == (503, "policy rejected"), refused
    _assert_logged(service, config, line)
    status, body = service.readyz()
    assert status == 200 and "legation.authz.policies: 1 loaded; rejected: reload/app (" in body, body
    rejected = metric_samples(service.metrics_text(), "legation_authz_policy_rejected")
    assert [labels["policy"] for labels, value in rejected if value == 1] == [POLICY]

    _write_atomic(config, policy_text("write"))  # fixed: it applies, and is no longer reported
    wait_status(client, key, "read", 403)
    assert "legation.authz.policies: 1 loaded\n" in service.readyz()[1]


def _assert_logged(service: AuthzProcess, config: Path, line: int | None) -> None:
    records = json_log_lines(service.process.stderr_text())
    needle = f"{config.name}:{line}:" if line else config.name
    matching = [r for r in records if r.get("level") == "error" and needle in str(r.get("msg", ""))]
    assert matching, f"no error log line names {needle!r}:\n{service.process.stderr_text()[-3000:]}"


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_policies_at_start_exit_1(tmp_path: Path, case: str) -> None:
    text, line = BROKEN[case]
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "jwks.json").write_text(jwks_json([make_rsa_key("r1")]))
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    proc = subprocess.run(
        [legation_binary(), "authz", "--config", str(path), "--listen", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    needle = f"{path.name}:{line}:" if line else f"{path.name}:"
    assert needle in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def _cache_policy(*, audience: str, issuer: str = ISSUER) -> str:
    return (
        "apiVersion: legation.dev/v1alpha1\n"
        "kind: JWTPolicy\n"
        "metadata: {name: app, namespace: reload}\n"
        "spec:\n"
        "  providers:\n"
        f"    - {{name: corp, issuer: '{issuer}', audiences: [{audience}], jwks: {{file: keys/jwks.json}}}}\n"
        "  rules:\n"
        "    - requires: {anyOf: [corp]}\n"
    )


@pytest.mark.parametrize("change", ["audience", "issuer"])
def test_reload_that_narrows_the_provider_applies_to_already_verified_tokens(
    launch: Launcher, config: Path, key: Signer, change: str
) -> None:
    """A token verified (and cached) under the old policy must be judged by the new one: the
    verified-token cache must not outlive a change of the provider's audiences or issuer."""
    config.write_text(_cache_policy(audience="old"))
    service = launch.authz(config, jwks_allow_insecure=False)
    client = AuthzClient(service.address)
    try:
        cached = mint(key, {"iss": ISSUER, "aud": "old", "sub": "u"})
        assert client.check("/x", token=cached, policy=POLICY).allowed  # verified, now cached
        new = (
            _cache_policy(audience="new")
            if change == "audience"
            else _cache_policy(audience="old", issuer="https://other.example/")
        )
        _write_atomic(config, new)

        def fresh_denied() -> bool:  # a new token each time: never in the cache
            fresh = mint(key, {"iss": ISSUER, "aud": "old", "sub": "u", "jti": uuid.uuid4().hex})
            return client.check("/x", token=fresh, policy=POLICY).status in (401, 403)

        wait_for(
            fresh_denied,
            timeout=RELOAD_WITHIN,
            interval=0.1,
            what="the new policy to apply to fresh tokens",
        )
        d = client.check("/x", token=cached, policy=POLICY)
        assert d.status in (401, 403), f"a token cached under the old policy is still allowed: {d}"
    finally:
        client.close()
