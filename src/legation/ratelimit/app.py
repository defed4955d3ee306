"""`legation ratelimit`: settings, wiring, config reload. The one place a backend is chosen."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from legation.core.feed_auth import FeedAuth
from legation.core.grpc_runtime import Health, ServerSettings, run_server
from legation.core.logs import setup_logging
from legation.core.reload import ConfigVersion
from legation.core.service_main import (
    add_common_arguments,
    add_config_arguments,
    feed_auth,
    keep_config,
    run_service,
)
from legation.ratelimit.backends import CounterBackend
from legation.ratelimit.backends.memory import DEFAULT_MAX_KEYS
from legation.ratelimit.config import LoadedConfig, compile_rules, load_config, load_config_texts
from legation.ratelimit.limiter import FailureMode, Limiter
from legation.ratelimit.metrics import CONFIG_INFO, CONFIG_LOADS, MEMORY_EVICTIONS, MEMORY_KEYS, Metrics
from legation.ratelimit.server import SERVICE, RateLimitServicer

__all__ = ["Settings", "add_arguments", "run"]


CONFIG_COMPONENT = "legation.ratelimit.config"
BACKEND_COMPONENT = "legation.ratelimit.backend"


@dataclass(frozen=True, kw_only=True)
class Settings:
    config: str | None = None
    """Config file, or directory of *.yaml / *.yml files (one domain each)."""
    config_url: str | None = None
    """The controller's rate-limit feed, followed instead of `config`."""
    feed_auth: FeedAuth = field(default_factory=FeedAuth)
    """Credentials for the feed: its token, the CA of an https controller."""
    listen: str = "127.0.0.1:8081"
    """gRPC address."""
    metrics_listen: str | None = None
    """Operations HTTP address: /metrics, /healthz, /readyz."""
    redis_url: str | None = None
    """Redis for shared counters; None = in-memory (one process only)."""
    failure_mode: FailureMode = "unavailable"
    """When the backend cannot decide: gRPC UNAVAILABLE (Envoy's failure_mode_deny decides), allow or deny."""
    backend_timeout: float = 0.05
    """Seconds one decision may wait for the backend."""
    response_headers: bool = False
    """Add RateLimit-Limit/Remaining/Reset to response_headers_to_add."""
    grace: float = 10.0
    """Seconds in-flight calls get to finish on SIGTERM."""
    memory_max_keys: int = DEFAULT_MAX_KEYS
    """In-memory backend: most counters held; past it, expired then soonest-expiring ones go."""
    quota_mode: bool = False
    """Every limit in quota mode (the reference's QUOTA_MODE)."""
    response_dynamic_metadata: bool = False
    """Return request and matched metadata as dynamic metadata (RESPONSE_DYNAMIC_METADATA)."""
    merge_domains: bool = False
    """Join files that name the same domain (MERGE_DOMAIN_CONFIG)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    add_config_arguments(
        parser,
        file_help="config file or directory of *.yaml files (envoyproxy/ratelimit format)",
        feed="ratelimit",
    )
    add_common_arguments(parser, listen=d.listen, grace=d.grace, what="config")
    parser.add_argument(
        "--redis-url",
        metavar="URL",
        type=_redis_url,
        help="redis://, rediss://, unix://, redis+sentinel://h1,h2/master, redis+cluster://h1,h2; "
        "none = in-memory",
    )
    parser.add_argument(
        "--failure-mode",
        choices=["unavailable", "allow", "deny"],
        default=d.failure_mode,
        help="answer when the backend fails: gRPC UNAVAILABLE (default; Envoy's failure_mode_deny "
        "decides), OK, or OVER_LIMIT",
    )
    parser.add_argument(
        "--backend-timeout",
        type=_positive(float),
        default=d.backend_timeout,
        metavar="SECONDS",
        help="longest wait for the backend per decision (default %(default)s)",
    )
    parser.add_argument(
        "--response-headers",
        action="store_true",
        help="add RateLimit-Limit/-Remaining/-Reset headers to responses",
    )
    parser.add_argument(
        "--memory-max-keys",
        type=_positive(int),
        default=d.memory_max_keys,
        metavar="N",
        help="in-memory backend: most counters held (default %(default)s); at the cap, expired "
        "counters go first, then those expiring soonest",
    )
    parser.add_argument(
        "--quota-mode", action="store_true", help="every limit in quota mode (the reference's QUOTA_MODE)"
    )
    parser.add_argument(
        "--response-dynamic-metadata",
        action="store_true",
        help="return the request and the matched descriptors' metadata as dynamic metadata",
    )
    parser.add_argument(
        "--merge-domain-config",
        action="store_true",
        help="join config files that name the same domain (the reference's MERGE_DOMAIN_CONFIG)",
    )
    _one_line_errors(parser)


def run(args: argparse.Namespace) -> int:
    setup_logging("ratelimit", args.log_level)
    settings = Settings(
        config=args.config,
        config_url=args.config_url,
        feed_auth=feed_auth(args),
        listen=args.listen,
        metrics_listen=args.metrics_listen,
        redis_url=args.redis_url,
        failure_mode=args.failure_mode,
        backend_timeout=args.backend_timeout,
        response_headers=args.response_headers,
        grace=args.shutdown_grace,
        memory_max_keys=args.memory_max_keys,
        quota_mode=args.quota_mode,
        response_dynamic_metadata=args.response_dynamic_metadata,
        merge_domains=args.merge_domain_config,
    )
    problem = _check_addresses(args)
    if args.check and args.config is None:
        problem = "--check validates a --config file or directory, not a feed"
    if problem:
        print(f"legation ratelimit: {problem}", file=sys.stderr)
        return 1
    return run_service(
        args,
        load=functools.partial(load_config, merge_domains=settings.merge_domains),
        summary=lambda loaded: (
            f"{len(loaded.domains)} domain(s) in {len(loaded.files)} file(s), version {loaded.version}"
        ),
        serve=functools.partial(serve, settings),
    )


def make_backend(settings: Settings) -> CounterBackend:
    if settings.redis_url:
        from legation.ratelimit.backends.redis import connect

        return connect(settings.redis_url)
    from legation.ratelimit.backends.memory import MemoryBackend

    backend = MemoryBackend(
        max_keys=settings.memory_max_keys,
        on_evict=lambda reason, n: MEMORY_EVICTIONS.labels(reason).inc(n),
    )
    MEMORY_KEYS.set_function(lambda: len(backend))
    return backend


def feed_config(source: str, version: str, content: str, *, merge_domains: bool = False) -> LoadedConfig:
    """The config in one version of the rate-limit feed; its version is the feed's, so that the
    service reports the version the controller published."""
    loaded = load_config_texts([(f"{source}@{version}", content)], merge_domains=merge_domains)
    return dataclasses.replace(loaded, version=version)


def _redis_url(value: str) -> str:
    from legation.ratelimit.backends.redis_url import parse_redis_url

    try:
        parse_redis_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _positive(kind: type[float] | type[int]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{value}' is not a {kind.__name__}") from None
        if number <= 0:
            raise argparse.ArgumentTypeError(f"'{value}' must be above 0")
        return number

    parse.__name__ = kind.__name__
    return parse


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """A bad flag ends in one line on stderr and exit 1, not argparse's usage block and exit 2."""

    def error(message: str) -> NoReturn:
        print(f"legation ratelimit: {message} (see legation ratelimit --help)", file=sys.stderr)
        sys.exit(1)

    parser.error = error  # type: ignore[method-assign]


def _check_addresses(args: argparse.Namespace) -> str | None:
    for flag, value in (("--listen", args.listen), ("--metrics-listen", args.metrics_listen)):
        if value is None:
            continue
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            return f"{flag} '{value}': expected HOST:PORT, e.g. 127.0.0.1:8081"
    return None


async def serve(settings: Settings, loaded: LoadedConfig | None) -> None:
    """Serve `loaded`, following `settings.config`; or, with `loaded` None, start with no limits
    (not ready) and follow `settings.config_url`."""
    backend = make_backend(settings)
    limiter = Limiter(
        rules=loaded.rules if loaded is not None else compile_rules(()),
        backend=backend,
        timeout=settings.backend_timeout,
        failure_mode=settings.failure_mode,
        observer=Metrics(),
        quota_mode=settings.quota_mode,
    )
    servicer = RateLimitServicer(
        limiter,
        response_headers=settings.response_headers,
        dynamic_metadata=settings.response_dynamic_metadata,
    )
    health = Health([SERVICE])
    await health.set_component(CONFIG_COMPONENT, loaded is not None)
    source = {"files": list(loaded.files)} if loaded is not None else {"url": settings.config_url}
    version = ConfigVersion(
        what="config",
        version=loaded.version if loaded is not None else None,
        loads=CONFIG_LOADS,
        info=CONFIG_INFO,
        **source,
    )

    async def apply(new: LoadedConfig) -> None:
        limiter.rules = new.rules

    async def report_backend() -> None:
        while True:
            available = bool(getattr(backend, "available", True))
            await health.set_component(BACKEND_COMPONENT, available, required=False)
            await asyncio.sleep(1.0)

    await run_server(
        settings=ServerSettings(
            listen=settings.listen, metrics_listen=settings.metrics_listen, grace=settings.grace
        ),
        handlers=[servicer.handler()],
        health=health,
        reflect=[SERVICE],
        background=[
            keep_config(
                version,
                health=health,
                component=CONFIG_COMPONENT,
                path=settings.config,
                url=settings.config_url,
                load_file=lambda: load_config(settings.config or "", merge_domains=settings.merge_domains),
                load_feed=lambda v, content: feed_config(
                    settings.config_url or "", v, content, merge_domains=settings.merge_domains
                ),
                apply=apply,
                auth=settings.feed_auth,
            ),
            report_backend(),
        ],
        on_stop=backend.close,
    )
