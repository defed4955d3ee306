"""Benchmark of the controller's pure pipeline: manifests → typed resources → IR → Envoy snapshot.

    .venv/bin/python bench/controller_bench.py [--sizes 1000,10000] [--runs 5] [--json PATH]

For each N, Mappings in realistic variety are generated as YAML files in a temporary directory
(see `generate`): several namespaces and files, prefixes, exact paths, RE2 regexes, header and
method constraints, canaries with weights, rewrites, retries, CORS, rate-limit annotations keyed
on ip, headers and JWT claims, JWTPolicies (namespace defaults, named ones, one with a
Secret-backed JWKS), an AuthService, and a Host with its kubernetes.io/tls Secret. Every resource
is valid, and the bench checks that the compiler accepted all of them.

Each N runs in fresh subprocesses: one runs the stages once, for the peak RSS of one pipeline run
(`ru_maxrss` of that child, from `os.wait4`); another times, `--runs` times each, keeping medians:

- load: `DirectorySource(dir).load()` with empty caches: reading every file and
  `legation.core.yamlfile.load_documents` (measured apart: a running controller re-reads only changed
  files);
- parse: `Origin.of` and `legation.api.v1alpha1.parse_resource` on every document (pydantic
  validation), as `legation.controller.serving.pipeline.build` does;
- compile: `legation.controller.compiler.compile.compile`;
- translate: `legation.controller.translate.envoy.translate(ir, EnvoyOptions())`, if that module exists;
- snapshot: `legation.controller.xds.snapshot.Snapshot.build` of the translation (serialization, version);
- feeds: the authz and rate-limit feed texts (`legation.controller.translate.feeds`), if that module exists;
- pipeline.build: `legation.controller.serving.pipeline.build` (all of the above but load), if it exists;
- 1 file changed: one Mapping file rewritten, then the whole reaction to it with the caches of a
  running controller: the directory source re-reads (and re-parses only that file), and
  `pipeline.build` validates only its documents again (`legation.controller.compiler.parse_cache.ParseCache`; every
  document without it).

Targets of issue 4 (10k Mappings): parse + compile + translate + snapshot ≤ 2 s, peak RSS
≤ 250 MB; and a file change handled well within the 250 ms (p50, with 1k Mappings) in which Envoy
must be serving it. Exit status 2 if one is missed.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

API = "legation.dev/v1alpha1"
PER_FILE = 50
"""Mappings per generated file (teams keep a few dozen routes per file)."""
TARGET_SECONDS = 2.0
TARGET_RSS_MB = 250.0
TARGET_CHANGE_MS = 250.0
SERVICES = ("orders", "catalog", "payments", "users", "search", "carts", "reviews", "shipping")
LIMITS = (
    "{n}/m per ip",
    "{n}/h per claim:sub; 20/s",
    "{n}/s per header:x-api-key",
    "10/s per ip,header:x-tenant; {n}/d per claim:org.team",
    "{n}/15m per claim:sub",
    "{n}/m per ip; 1000/h per claim:sub; 20/s",
)


# --- manifests ---------------------------------------------------------------------------------


def generate(n: int, root: Path) -> dict[str, int]:
    """Write about `n` Mappings (canaries included) and their surroundings under `root`."""
    namespaces = [f"team-{i:02d}" for i in range(min(50, max(5, n // 100)))]
    per_ns = -(-n // len(namespaces))
    counts = {"Mapping": 0, "JWTPolicy": 0, "Secret": 0, "Host": 0, "AuthService": 0, "files": 0}
    gateway = [
        _obj("AuthService", "default", "legation-system", {"service": "legation-authz.legation-system:9001"}),
        _obj("Host", "api", "team-00", {"hostname": "api.example.com", "tlsSecret": {"name": "api-tls"}}),
        _tls_secret("api-tls", "team-00"),
    ]
    _write(root / "gateway.yaml", gateway)
    counts.update(AuthService=1, Host=1, Secret=1, files=1)
    made = 0
    for k, ns in enumerate(namespaces):
        policies = [_policy(f"{ns}-admin", ns, default=False)]
        if k % 3 != 2:
            policies.append(_policy(f"{ns}-default", ns, default=True))
        if k % 5 == 0:
            jwks = '{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1"}]}'
            policies.append(_policy(f"{ns}-partner", ns, default=False, secret=True))
            policies.append(_obj("Secret", f"{ns}-jwks", ns, None, stringData={"jwks.json": jwks}))
            counts["Secret"] += 1
        counts["JWTPolicy"] += sum(1 for p in policies if p["kind"] == "JWTPolicy")
        _write(root / ns / "policies.yaml", policies)
        counts["files"] += 1
        docs: list[dict[str, Any]] = []
        j = 0
        while j < per_ns and made < n:
            for doc in _mappings(ns, j, canary=made + 1 < n):
                docs.append(doc)
                made += 1
            j += 1
            if len(docs) >= PER_FILE or j >= per_ns or made >= n:
                _write(root / ns / f"mappings-{counts['files']:04d}.yaml", docs)
                counts["files"] += 1
                docs = []
    counts["Mapping"] = made
    return counts


def _mappings(ns: str, j: int, *, canary: bool) -> list[dict[str, Any]]:
    svc = SERVICES[j % len(SERVICES)]
    base = f"/{ns.removeprefix('team-')}/{svc}"  # teams own their path space
    spec: dict[str, Any] = {"service": f"{svc}.{ns}:8080"}
    kind = j % 10
    if kind == 7:
        spec["path"] = f"{base}/exact/{j}"
    elif kind == 8:
        spec["regex"] = f"{base}/items/[0-9]+/v{j}(/.*)?"
    else:
        spec["prefix"] = f"{base}/v{j}/"
        if j % 5 == 1:
            spec["rewrite"] = "/"
    if kind == 9:
        spec["headers"] = {"x-canary": "true"} if j % 20 == 9 else {"x-tenant": "*"}
    if j % 3 == 0:
        spec["methods"] = ["GET", "POST"]
    spec["hostname"] = {0: "api.example.com", 1: "*.shop.example.com"}.get(j % 13, "*")
    if j % 4 == 0:
        spec["timeout"] = "3s"
    if j % 5 == 2:
        spec["retries"] = {"attempts": 2, "on": "5xx,reset", "perTryTimeout": "1s"}
    if j % 20 == 3:
        spec["cors"] = {"origins": ["https://shop.example.com"], "methods": ["GET"], "maxAge": "10m"}
    if j % 10 == 4:
        spec["addRequestHeaders"] = {"x-client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}
    if j % 17 == 5:
        spec["service"] = f"https://{svc}.{ns}"
    if j % 11 == 6:
        spec["http2"] = True
    if j % 10 == 5:
        spec["auth"] = {"policy": f"{ns}-admin"}
    elif j % 20 == 6:
        spec["auth"] = {"disabled": True}
    annotations = {}
    if j % 3 == 1:
        template = LIMITS[(j // 3) % len(LIMITS)]
        annotations["legation.dev/rate-limit"] = template.format(n=100 * (1 + j % 7))
    name = f"{svc}-{j}"
    stamp = f"2026-0{1 + j % 9}-1{j % 10}T08:{j % 60:02d}:00Z" if j % 2 else None
    primary = _obj("Mapping", name, ns, spec, annotations=annotations, stamp=stamp)
    if not canary or j % 10 != 1:
        return [primary]
    # A canary: the same match, 10% of the traffic, route settings left to the primary.
    primary["spec"]["weight"] = 90
    match_keys = ("hostname", "prefix", "path", "regex", "methods", "headers")
    canary_spec = {k: v for k, v in spec.items() if k in match_keys}
    canary_spec.update(service=f"{svc}-next.{ns}:8080", weight=10)
    return [primary, _obj("Mapping", f"{name}-canary", ns, canary_spec, stamp=stamp)]


def _policy(name: str, ns: str, *, default: bool, secret: bool = False) -> dict[str, Any]:
    jwks = (
        {"secretRef": {"name": f"{ns}-jwks", "key": "jwks.json"}}
        if secret
        else {
            "uri": "https://idp.example.com/jwks.json",
            "cacheDuration": "10m",
        }
    )
    provider = {
        "name": "corp",
        "issuer": "https://idp.example.com/",
        "audiences": [ns],
        "jwks": jwks,
        "algorithms": ["HS256"] if secret else ["RS256", "ES256"],
    }
    rules = [
        {"match": {"pathPrefix": "/public"}, "public": True},
        {"match": {"methods": ["GET"]}, "requires": {"anyOf": ["corp"]}, "claims": {"scope": ["read"]}},
        {"requires": {"anyOf": ["corp"]}, "claims": {"scope": ["write"], "org.team": [ns]}},
    ]
    spec = {
        "namespaceDefault": default,
        "providers": [provider],
        "rules": rules,
        "claimsToHeaders": {"sub": "x-user-id"},
        "metadataClaims": ["sub", "org.team"],
    }
    return _obj("JWTPolicy", name, ns, spec)


def _obj(
    kind: str,
    name: str,
    ns: str,
    spec: dict[str, Any] | None,
    *,
    annotations: dict[str, str] | None = None,
    stamp: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": ns}
    if stamp is not None:
        metadata["creationTimestamp"] = stamp
    if annotations:
        metadata["annotations"] = annotations
    doc: dict[str, Any] = {
        "apiVersion": "v1" if kind == "Secret" else API,
        "kind": kind,
        "metadata": metadata,
    }
    if spec is not None:
        doc["spec"] = spec
    doc.update(extra)
    return doc


def _tls_secret(name: str, ns: str) -> dict[str, Any]:
    from legation.controller.commands.demo import self_signed

    certificate, pem_key = self_signed("api.example.com")
    return _obj(
        "Secret",
        name,
        ns,
        None,
        type="kubernetes.io/tls",
        stringData={
            "tls.crt": certificate,
            "tls.key": pem_key,
        },
    )


def _write(path: Path, docs: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=1000))


# --- the measured child ------------------------------------------------------------------------

STAGES = ("load", "parse", "compile", "translate", "snapshot", "feeds")
PIPELINE = ("parse", "compile", "translate", "snapshot")
"""The stages that make up "compile" in the targets: from the source snapshot's documents to the
Envoy snapshot (the YAML loading is measured apart, the feeds' texts are shown apart)."""


def child(root: Path, runs: int, expected_mappings: int, *, once: bool = False) -> dict[str, Any]:
    """Run the pipeline `runs` times on `root`; medians per stage (in this process). `once`: the
    stages alone (no pipeline.build, no file change), for the peak RSS of one pipeline run."""
    import resource

    from legation.controller.sources.directory import DirectorySource

    optional = _optional_stages()
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times: dict[str, list[float]] = {s: [] for s in (*STAGES, "build", "change")}
    info: dict[str, Any] = {}
    for run in range(runs):
        source = DirectorySource(root)
        snapshot, described = _stages(source, optional, times)
        info = info or described
        assert info["mappings"] == expected_mappings, info
        gc.collect()
        if once:
            continue
        if "build" in optional:
            # The controller's own pipeline (all of the above, feeds included), cold: every
            # document validated.
            _timed(times, "build", optional["build"], snapshot, None)
            gc.collect()
        times["change"].append(_one_change(root, source, snapshot, optional, run))
        gc.collect()
    return {
        "stages": {s: statistics.median(v) if v else None for s, v in times.items()},
        "samples": times,
        "rss_imports_mb": rss_imports,
        "rss_peak_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "optional": sorted(optional),
        **info,
    }


def _timed(times: dict[str, list[float]], stage: str, fn: Callable[..., Any], *args: Any) -> Any:
    start = time.perf_counter()
    value = fn(*args)
    times[stage].append(time.perf_counter() - start)
    return value


def _stages(
    source: Any, optional: dict[str, Any], times: dict[str, list[float]]
) -> tuple[Any, dict[str, Any]]:
    """One run of every stage, timed; the source snapshot and a description of the outcome."""
    from legation.api.v1alpha1 import parse_resource
    from legation.controller.compiler.compile import compile
    from legation.controller.compiler.ir import Origin
    from legation.controller.xds.snapshot import Snapshot

    snapshot = _timed(times, "load", source.load)
    assert not snapshot.errors, snapshot.errors[:3]

    def parse() -> list[Any]:  # as legation.controller.serving.pipeline.build does it
        return [(Origin.of(d), parse_resource(d)) for d in snapshot.documents]

    parsed = _timed(times, "parse", parse)
    bad = [r for _, r in parsed if isinstance(r, list)]
    assert not bad, bad[:3]
    result = _timed(times, "compile", compile, parsed)
    assert not result.rejected, result.rejected[:3]
    built = None
    if "translate" in optional:
        envoy = _timed(times, "translate", optional["translate"], result.ir)
        built = _timed(times, "snapshot", Snapshot.build, envoy)
    if "feeds" in optional:
        _timed(times, "feeds", optional["feeds"], result)
    return snapshot, _describe(snapshot, result, built)


def _describe(snapshot: Any, result: Any, built: Any) -> dict[str, Any]:
    return {
        "documents": len(snapshot.documents),
        "mappings": sum(1 for d in snapshot.documents if d.data.get("kind") == "Mapping"),
        "routes": len(result.ir.routes),
        "clusters": len(result.ir.clusters),
        "envoy_resources": (
            {t.rsplit(".", 1)[-1]: len(v) for t, v in built.resources.items()} if built else None
        ),
        "snapshot_bytes": sum(len(b) for v in built.encoded.values() for b in v.values()) if built else None,
    }


def _one_change(root: Path, source: Any, snapshot: Any, optional: dict[str, Any], run: int) -> float:
    """Seconds from "one Mapping file was rewritten" to the new Envoy snapshot, with the caches a
    running controller has: the directory source's (files by content) and, if this checkout has
    it, a ParseCache (without one, every document is validated again)."""
    from legation.api.v1alpha1 import parse_resource
    from legation.controller.compiler.compile import compile
    from legation.controller.compiler.ir import Origin
    from legation.controller.xds.snapshot import Snapshot

    cache = optional["cache"]() if "cache" in optional else None
    parse = cache.parse if cache is not None else parse_resource
    for doc in snapshot.documents:  # the state before the change: everything parsed once
        parse(doc)
    target = sorted(root.glob("*/mappings-*.yaml"))[0]
    original = target.read_text()
    # A real edit: one route's timeout changes (a different value every run, so nothing is stale).
    edited = original.replace("timeout: 3s", f"timeout: {4 + run}s", 1)
    assert edited != original
    target.write_text(edited)
    try:
        start = time.perf_counter()
        new = source.load()
        if "build" in optional:
            rejected = optional["build"](new, parse)
        else:
            result = compile([(Origin.of(d), parse(d)) for d in new.documents])
            if "translate" in optional:
                Snapshot.build(optional["translate"](result.ir))
            rejected = result.rejected
        seconds = time.perf_counter() - start
        assert not rejected and not new.errors
        if cache is not None:  # only the changed file's documents were validated again
            changed = sum(1 for d in new.documents if d.file == str(target))
            assert cache.misses == len(snapshot.documents) + changed
    finally:
        target.write_text(original)
    return seconds


def _optional_stages() -> dict[str, Any]:
    """The later stages that exist in this checkout (they were written alongside this bench)."""
    found: dict[str, Any] = {}
    if importlib.util.find_spec("legation.controller.translate.envoy") is not None:
        from legation.controller.translate.envoy import EnvoyOptions, translate

        found["translate"] = lambda ir: translate(ir, EnvoyOptions())
        if importlib.util.find_spec("legation.controller.serving.pipeline") is not None:
            from legation.controller.serving import pipeline

            def build(snapshot: Any, parse: Any) -> Any:
                kwargs = {"parse": parse} if parse is not None else {}
                return pipeline.build(snapshot, EnvoyOptions(), **kwargs).rejected

            found["build"] = build
    if importlib.util.find_spec("legation.controller.translate.feeds") is not None:
        from legation.controller.translate.feeds import authz_feed_text, ratelimit_feed_text

        found["feeds"] = lambda result: (authz_feed_text(result), ratelimit_feed_text(result))
    if importlib.util.find_spec("legation.controller.compiler.parse_cache") is not None:
        from legation.controller.compiler.parse_cache import ParseCache

        found["cache"] = ParseCache
    return found


# --- the parent --------------------------------------------------------------------------------


def measure(n: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"legation-bench-{n}-") as tmp:
        root = Path(tmp)
        counts = generate(n, root)
        # Peak RSS of one run of the pipeline, in a process that does nothing else.
        once, once_rss = _run_child(root, n, ["--runs", "1", "--once"])
        result, rss = _run_child(root, n, ["--runs", str(runs)])
        result["rss_peak_mb"] = once_rss
        result["rss_all_runs_mb"] = rss
        result["once"] = once["stages"]
        result["counts"] = counts
        result["yaml_bytes"] = sum(p.stat().st_size for p in root.rglob("*.yaml"))
        return result


def _run_child(root: Path, n: int, args: list[str]) -> tuple[dict[str, Any], float]:
    """The child's JSON result and its peak RSS in MB (`ru_maxrss` of that child alone)."""
    cmd = [sys.executable, __file__, "--child", str(root), "--expect", str(n), *args]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"child for N={n} failed ({proc.returncode})")
    return json.loads(text), usage.ru_maxrss / 1024  # Linux: kilobytes


def _fmt(seconds: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "n/a" if seconds is None else f"{seconds * scale:.{digits}f}"


def report(results: dict[int, dict[str, Any]]) -> bool:
    head = (
        "| N Mappings | files (MB) | load s | parse s | compile s | translate s | snapshot s "
        "| **pipeline s** (target) | feeds s | pipeline.build s | 1 file changed ms (target) "
        "| **peak RSS MB** (target) | of which imports MB | max RSS, all runs MB |"
    )
    print(head)
    print("|" + "---:|" * (head.count("|") - 1))
    ok = True
    for n, r in results.items():
        s = r["stages"]
        pipeline = sum(s[k] for k in PIPELINE if s[k] is not None)
        # The targets are stated for 10k Mappings; smaller runs are held to the same bound, and
        # the change target (stated for 1k Mappings) is checked at 1k only.
        passed = pipeline <= TARGET_SECONDS and r["rss_peak_mb"] <= TARGET_RSS_MB
        change_target = n <= 1000 and s["change"] is not None
        if change_target:
            passed = passed and s["change"] * 1000 <= TARGET_CHANGE_MS
        ok = ok and passed
        print(
            f"| {n:,} | {r['counts']['files']} ({r['yaml_bytes'] / 1e6:.1f}) | "
            + " | ".join(_fmt(s[k]) for k in ("load", *PIPELINE))
            + f" | **{pipeline:.3f}** (≤ {TARGET_SECONDS:g}) | {_fmt(s['feeds'])} | {_fmt(s['build'])} | "
            + _fmt(s["change"], 1000, 0)
            + (f" (≤ {TARGET_CHANGE_MS:g})" if change_target else "")
            + f" | **{r['rss_peak_mb']:.0f}** (≤ {TARGET_RSS_MB:g}) | {r['rss_imports_mb']:.0f} "
            + f"| {r['rss_all_runs_mb']:.0f} |"
            + ("" if passed else " **FAIL**")
        )
    for n, r in results.items():
        s = r["stages"]
        present = [k for k in PIPELINE if s[k] is not None]
        pipeline = sum(s[k] for k in present)
        shares = ", ".join(f"{k} {s[k] / pipeline:.0%}" for k in present)
        print(
            f"N={n:,}: {r['documents']} documents, {r['routes']} routes, {r['clusters']} clusters; "
            f"Envoy resources {r['envoy_resources'] or 'n/a (no src/legation/controller/translate/envoy.py)'}"
            + (f", {r['snapshot_bytes'] / 1e6:.1f} MB serialized" if r["snapshot_bytes"] else "")
            + f"; pipeline shares: {shares}; stages present: {', '.join(r['optional']) or 'none'}"
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Controller parse + compile benchmark")
    parser.add_argument("--sizes", default="1000,10000", help="Mapping counts, comma-separated")
    parser.add_argument("--runs", type=int, default=5, help="runs per size; medians are printed")
    parser.add_argument("--json", metavar="PATH", help="also write the raw results here")
    parser.add_argument("--child", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(Path(args.child), args.runs, args.expect, once=args.once)))
        return 0
    print(
        f"# controller bench: {platform.node()} {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"{args.runs} runs per size (medians)"
    )
    results = {n: measure(n, args.runs) for n in (int(x) for x in args.sizes.split(","))}
    ok = report(results)
    if args.json:
        Path(args.json).write_text(json.dumps({str(n): r for n, r in results.items()}, indent=2))
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
