"""The processes of the native enforcement bench, started and checked before any load.

- the upstream: an Envoy answering every request itself (client CPU: it is not what is measured);
- the Legation gateway, the real thing: ``legation controller --source DIR`` on the bench's
  manifests, ``legation authz`` following the controller's authz feed, and Envoy bootstrapped
  from ``legation.controller.commands.bootstrap`` (ADS): the routes without auth, with the
  native policy, and with the ``enforcement: service`` copy are all served by this one Envoy;
- the hand-written Envoys (static bootstraps, no Legation): ``jwt_authn`` alone, and ``jwt_authn``
  with the policy's claim rules as RBAC.

The gateway Envoys (``--concurrency 1``) and the authz service run on the server CPU; the
controller (idle once Envoy has its config), the upstream and wrk on the client CPU.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.harness.cpu import CpuPlan, pinned
from bench.harness.metrics import parse_envoy_stats
from bench.harness.processes import (
    Proc,
    envoy_command,
    free_port,
    http_status,
    started,
    wait_for,
)
from bench.native_fixtures import (
    HOSTS,
    REQUEST_PATH,
    UPSTREAM_BODY,
    handwritten_claims_envoy_config,
    handwritten_envoy_config,
    manifests,
    upstream_envoy_config,
)
from legation.controller.commands.bootstrap import bootstrap

__all__ = ["Gateways", "Tools", "envoy_stats", "get", "started_gateways"]

HOST = "127.0.0.1"
AUTHZ_CLUSTER = "legation_authz"
"""The cluster of the ext_authz service in Legation's Envoy config."""


@dataclass(frozen=True)
class Tools:
    legation: str
    envoy: str
    cpus: CpuPlan
    log_dir: Path


@dataclass(frozen=True)
class Gateways:
    """Everything running: ports and processes."""

    upstream_port: int
    upstream_admin: int
    legation_port: int
    legation_admin: int
    handwritten: Mapping[str, tuple[int, int]]
    """Tag of a hand-written target -> (port, admin port) of its static Envoy."""
    api_port: int
    server_procs: tuple[Proc, ...]
    """Gateway Envoy, authz service, hand-written Envoys: the server side (CPU time per request)."""
    all_procs: tuple[Proc, ...]

    def port(self, tag: str) -> int:
        return self.handwritten[tag][0] if tag in self.handwritten else self.legation_port

    def admin(self, tag: str) -> int:
        return self.handwritten[tag][1] if tag in self.handwritten else self.legation_admin

    def require_alive(self, what: str) -> None:
        for proc in self.all_procs:
            proc.require_alive(what)


def get(port: int, host: str, token: str | None) -> tuple[int, str]:
    """GET the bench path with this Host header (and the token): status and body."""
    headers = {"host": host} | ({"authorization": f"Bearer {token}"} if token else {})
    req = urllib.request.Request(f"http://{HOST}:{port}{REQUEST_PATH}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return -1, str(exc)


def envoy_stats(admin_port: int) -> dict[str, float]:
    """Every integer stat of an Envoy, as ``envoy:NAME``."""
    with urllib.request.urlopen(f"http://{HOST}:{admin_port}/stats", timeout=5) as resp:
        return parse_envoy_stats(resp.read().decode(), "")


def _write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _envoy(
    stack: contextlib.ExitStack, t: Tools, name: str, config: Path, *, cpu: int | None, base_id: int
) -> Proc:
    # stdout discarded: Legation's access log goes to /dev/stdout, one JSON line per request
    cmd = pinned(envoy_command(t.envoy, config, base_id=base_id), cpu)
    return stack.enter_context(started(name, cmd, t.log_dir, quiet_stdout=True))


def _wait_envoy(proc: Proc, admin: int, ready: Callable[[], bool] | None = None) -> None:
    wait_for(proc, lambda: http_status(f"http://{HOST}:{admin}/ready") == 200, timeout=60, what="Envoy ready")
    if ready is not None:
        wait_for(proc, ready, timeout=60, what="routes served")


def _controller_cmd(t: Tools, source: Path, feed_token: Path, p: Mapping[str, int]) -> list[str]:
    reserved = [f"--reserved-upstream={HOST}:{p[k]}" for k in ("xds", "api", "authz", "authz_ops", "admin")]
    return [t.legation, "controller", "--source", str(source), "--xds-listen", f"{HOST}:{p['xds']}",
            "--http-listen", f"{HOST}:{p['api']}", "--envoy-listen-address", HOST,
            "--envoy-http-port", str(p["http"]), "--envoy-https-port", str(p["https"]),
            "--authz-service", f"{HOST}:{p['authz']}", "--ratelimit-service", "none",
            "--feed-token-file", f"authz={feed_token}", "--allow-loopback-upstreams", *reserved,
            "--log-level", "warning"]  # fmt: skip


def _authz_cmd(t: Tools, feed_token: Path, p: Mapping[str, int]) -> list[str]:
    return [t.legation, "authz", "--config-url", f"http://{HOST}:{p['api']}/feed/authz",
            "--feed-token-file", str(feed_token), "--listen", f"{HOST}:{p['authz']}",
            "--metrics-listen", f"{HOST}:{p['authz_ops']}", "--log-level", "warning"]  # fmt: skip


def _legation(
    stack: contextlib.ExitStack, t: Tools, jwks: str, upstream_port: int, base_id: int
) -> dict[str, Any]:
    """Controller, authz, Envoy over ADS; the ports and processes once the routes are served."""
    p = {k: free_port() for k in ("xds", "api", "http", "https", "authz", "authz_ops", "admin")}
    source = t.log_dir / "manifests"
    source.mkdir()
    docs = manifests(jwks, upstream_port=upstream_port)
    (source / "bench.yaml").write_text(
        "# written by python -m bench native\n" + yaml.safe_dump_all(docs, sort_keys=False)
    )
    feed_token = t.log_dir / "authz-feed-token"
    feed_token.write_text(secrets.token_urlsafe(32) + "\n")
    ctl = stack.enter_context(
        started("controller", pinned(_controller_cmd(t, source, feed_token, p), t.cpus.client_cpu), t.log_dir)
    )
    wait_for(
        ctl,
        lambda: http_status(f"http://{HOST}:{p['api']}/readyz") == 200,
        timeout=120,
        what="controller ready",
    )
    authz = stack.enter_context(
        started("authz", pinned(_authz_cmd(t, feed_token, p), t.cpus.server_cpu), t.log_dir)
    )
    wait_for(
        authz,
        lambda: http_status(f"http://{HOST}:{p['authz_ops']}/readyz") == 200,
        timeout=60,
        what="authz ready",
    )
    config = _write_yaml(
        t.log_dir / "legation-envoy.yaml",
        bootstrap(xds=f"{HOST}:{p['xds']}", node_id="bench", admin=f"{HOST}:{p['admin']}", delta=True),
    )
    envoy = _envoy(stack, t, "legation-envoy", config, cpu=t.cpus.server_cpu, base_id=base_id)
    _wait_envoy(envoy, p["admin"], lambda: get(p["http"], HOSTS["open"], None)[0] == 200)
    return {"ports": p, "procs": (ctl, authz, envoy)}  # fmt: skip


_HANDWRITTEN = {"jwt_authn": handwritten_envoy_config, "jwt_rbac": handwritten_claims_envoy_config}


@contextlib.contextmanager
def started_gateways(t: Tools, jwks: str) -> Iterator[Gateways]:
    """Upstream, Legation gateway and hand-written gateways, all serving when entered."""
    base_id = os.getpid() % 10_000 * 100
    up, up_admin = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        config = _write_yaml(
            t.log_dir / "upstream-envoy.yaml", upstream_envoy_config(port=up, admin_port=up_admin)
        )
        upstream = _envoy(stack, t, "upstream-envoy", config, cpu=t.cpus.client_cpu, base_id=base_id)
        _wait_envoy(upstream, up_admin, lambda: get(up, "upstream", None) == (200, UPSTREAM_BODY))
        legation = _legation(stack, t, jwks, up, base_id + 1)
        ctl, authz, envoy = legation["procs"]
        handwritten: dict[str, tuple[int, int]] = {}
        static: list[Proc] = []
        for i, (tag, make) in enumerate(_HANDWRITTEN.items()):
            port, admin = handwritten[tag] = free_port(), free_port()
            config = _write_yaml(
                t.log_dir / f"handwritten-{tag}-envoy.yaml",
                make(port=port, admin_port=admin, upstream_port=up, jwks_json=jwks),
            )
            proc = _envoy(
                stack, t, f"handwritten-{tag}", config, cpu=t.cpus.server_cpu, base_id=base_id + 2 + i
            )
            _wait_envoy(proc, admin)
            static.append(proc)
        p = legation["ports"]
        yield Gateways(
            upstream_port=up, upstream_admin=up_admin, legation_port=p["http"], legation_admin=p["admin"],
            handwritten=handwritten, api_port=p["api"], server_procs=(envoy, authz, *static),
            all_procs=(upstream, ctl, authz, envoy, *static),
        )  # fmt: skip
