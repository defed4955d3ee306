"""What every service's `run(args)` shares: the common flags, where the config comes from (a
watched file, or the controller's feed), reporting a config that will not load, and running the
server coroutine on uvloop until it stops."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from yarl import URL

from legation.core.errors import ConfigErrors
from legation.core.feed_auth import FeedAuth
from legation.core.grpc_runtime import Health
from legation.core.reload import ConfigVersion, Versioned
from legation.core.watch import watch_path

__all__ = [
    "add_common_arguments",
    "add_config_arguments",
    "feed_auth",
    "keep_config",
    "refuse_config",
    "run_service",
    "run_until_stopped",
]

log = logging.getLogger("legation")

C = TypeVar("C", bound=Versioned)


def add_config_arguments(parser: argparse.ArgumentParser, *, file_help: str, feed: str) -> None:
    """--config PATH or --config-url URL: exactly one."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--config", metavar="PATH", help=f"{file_help}; watched, changes apply live")
    group.add_argument(
        "--config-url",
        metavar="URL",
        type=_feed_url,
        help=f"follow the controller's config feed, e.g. https://CONTROLLER:8877/feed/{feed}; the "
        "service starts without it (not ready until the first config) and keeps the last good "
        "config while the controller is away",
    )
    parser.add_argument(
        "--feed-token-file",
        metavar="PATH",
        help="with --config-url: the feed's bearer token (first line), read again for every request",
    )
    parser.add_argument(
        "--feed-ca",
        metavar="PATH",
        help="with an https --config-url: CA certificates (PEM) the controller's certificate must chain to",
    )


def feed_auth(args: argparse.Namespace) -> FeedAuth:
    """The feed credentials the flags name."""
    return FeedAuth(token_file=args.feed_token_file, ca_file=args.feed_ca)


def _feed_url(value: str) -> str:
    from legation.core.feed_client import check_feed_url  # aiohttp only for services that follow a feed

    try:
        return check_feed_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def keep_config(
    version: ConfigVersion,
    *,
    health: Health,
    component: str,
    path: str | None,
    url: str | None,
    load_file: Callable[[], C],
    load_feed: Callable[[str, str], C],
    apply: Callable[[C], Awaitable[None]],
    auth: FeedAuth | None = None,
) -> None:
    """Keep the config current for the server's life, through `version` (so logs and metrics
    read the same either way): watch `path` and reload it with `load_file()`, or follow the
    feed at `url` and load each version with `load_feed(version, content)`.

    The caller reports `component` not ready before the server starts when nothing is loaded
    yet (feed mode); the first config applied from the feed makes it ready. /readyz shows the
    version in force and, for a feed, what is wrong with it."""
    if url is None:
        assert path is not None, "a config path or a feed URL"
        health.add_detail(component, lambda: f"version {version.current} from {path}")
        await watch_path(path, lambda: version.reload(load_file, apply))
        return

    from legation.core.feed_client import FeedFollower

    async def apply_feed(feed_version: str, content: str) -> None:
        await version.reload(lambda: load_feed(feed_version, content), apply, raise_errors=True)
        if not follower.loaded:  # the first good config: ready from now on
            await health.set_component(component, True)
            await health.publish()

    follower = FeedFollower(url, apply_feed, auth=auth)
    health.add_detail(component, follower.describe)
    await follower.run()


def add_common_arguments(parser: argparse.ArgumentParser, *, listen: str, grace: float, what: str) -> None:
    """--listen, --metrics-listen, --shutdown-grace, --check and --log-level."""
    parser.add_argument(
        "--listen", default=listen, metavar="HOST:PORT", help="gRPC address (default %(default)s)"
    )
    parser.add_argument(
        "--metrics-listen", metavar="HOST:PORT", help="serve /metrics, /healthz and /readyz here"
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=grace,
        metavar="SECONDS",
        help="drain time on SIGTERM (default %(default)s)",
    )
    parser.add_argument(
        "--check", action="store_true", help=f"validate the {what}, print problems, exit 1 if any"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def refuse_config(exc: ConfigErrors) -> int:
    """Print every problem (file:line: field: reason) on stderr, log them, return exit code 1."""
    for err in exc.errors:
        print(str(err), file=sys.stderr)
    log.error("invalid config, not starting", extra={"errors": [str(e) for e in exc.errors]})
    return 1


def run_service(
    args: argparse.Namespace,
    *,
    load: Callable[[str], C],
    summary: Callable[[C], str],
    serve: Callable[[C | None], Coroutine[Any, Any, None]],
) -> int:
    """A service's `run(args)` after its settings: with --config-url, serve nothing yet and follow
    the feed; with --config, `load(path)` first (exit 1 on problems), then with --check print
    "ok: `summary(loaded)`" and exit, else serve it."""
    if args.config is None:
        if args.check:
            print("--check validates a --config file or directory, not a feed", file=sys.stderr)
            return 2
        try:
            feed_auth(args).check(URL(args.config_url))
        except ValueError as exc:
            print(f"--config-url: {exc}", file=sys.stderr)
            return 2
        return run_until_stopped(serve(None))
    if args.feed_token_file or args.feed_ca:
        print("--feed-token-file and --feed-ca go with --config-url", file=sys.stderr)
        return 2
    try:
        loaded = load(args.config)
    except ConfigErrors as exc:
        return refuse_config(exc)
    if args.check:
        print(f"ok: {summary(loaded)}")
        return 0
    return run_until_stopped(serve(loaded))


def run_until_stopped(main: Coroutine[Any, Any, None]) -> int:
    """Run the server on uvloop; 1 if it could not start (e.g. its port is taken), else 0."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.Runner()
    with runner:
        try:
            runner.run(main)
        except OSError as exc:
            log.error("cannot start", extra={"error": str(exc)})
            return 1
    return 0
