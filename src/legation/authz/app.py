"""`legation authz`: settings, wiring, policy reload, key sources. The one place they are chosen."""

from __future__ import annotations

import argparse
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from legation.api.v1alpha1.jwtpolicy import Provider
from legation.authz.authorizer import Authorizer
from legation.authz.config import LoadedPolicies, load_policies, load_policy_texts
from legation.authz.jwks import JwksError, KeySource, StaticKeySource
from legation.authz.jwks_remote import RemoteJwks, RemoteSettings
from legation.authz.metrics import CONFIG_INFO, CONFIG_LOADS, DecisionMetrics, register_cache, set_rejected
from legation.authz.policy import CompiledPolicy, compile_policy
from legation.authz.server import SERVICE, AuthorizationServicer
from legation.authz.tokens import TokenCache
from legation.core.errors import ConfigError, ConfigErrors
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

__all__ = ["Settings", "add_arguments", "run"]


CONFIG_COMPONENT = "legation.authz.config"
POLICIES_DETAIL = "legation.authz.policies"

log = logging.getLogger("legation.authz")


@dataclass(frozen=True, kw_only=True)
class Settings:
    config: str | None = None
    """A file or directory of JWTPolicy documents."""
    config_url: str | None = None
    """The controller's authz feed, followed instead of `config`."""
    feed_auth: FeedAuth = field(default_factory=FeedAuth)
    """Credentials for the feed: its token, the CA of an https controller."""
    listen: str = "127.0.0.1:9001"
    """gRPC address."""
    metrics_listen: str | None = None
    """Operations HTTP address: /metrics, /healthz, /readyz."""
    default_policy: str | None = None
    """namespace/name used when a request names no policy; None = deny such requests."""
    jwks_allow_insecure: bool = False
    """Allow http:// and private or loopback JWKS addresses (local use and tests)."""
    cache_size: int = 10_000
    """Verified tokens kept (until their expiry) to skip repeated signature checks."""
    grace: float = 10.0
    """Seconds in-flight calls get to finish on SIGTERM."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    add_config_arguments(parser, file_help="JWTPolicy file or directory", feed="authz")
    add_common_arguments(parser, listen=d.listen, grace=d.grace, what="policies")
    parser.add_argument(
        "--default-policy", metavar="NAMESPACE/NAME", help="policy for requests that name none"
    )
    parser.add_argument(
        "--jwks-allow-insecure", action="store_true", help="permit http and private/loopback JWKS addresses"
    )
    parser.add_argument("--cache-size", type=int, default=d.cache_size, help="verified-token cache entries")


def run(args: argparse.Namespace) -> int:
    setup_logging("authz", args.log_level)
    settings = Settings(
        config=args.config,
        config_url=args.config_url,
        feed_auth=feed_auth(args),
        listen=args.listen,
        metrics_listen=args.metrics_listen,
        default_policy=args.default_policy,
        jwks_allow_insecure=args.jwks_allow_insecure,
        cache_size=args.cache_size,
        grace=args.shutdown_grace,
    )
    return run_service(
        args,
        load=_load_standalone,
        summary=lambda loaded: f"{len(loaded.policies)} JWTPolicy document(s), version {loaded.version}",
        serve=functools.partial(serve, settings),
    )


def _load_standalone(path: str) -> LoadedPolicies:
    """The policies in a file or directory, refusing what only the controller can resolve.
    Strict: the config a service starts with, and `--check`, must be entirely good."""
    loaded = load_policies(path)
    _refuse(_standalone_problems(loaded))
    return loaded


def _refuse(problems: dict[str, list[ConfigError]]) -> None:
    if problems:
        raise ConfigErrors([e for errors in problems.values() for e in errors])


def _standalone_problems(loaded: LoadedPolicies) -> dict[str, list[ConfigError]]:
    problems: dict[str, list[ConfigError]] = {}
    for policy in loaded.policies:
        for i, provider in enumerate(policy.spec.providers):
            if provider.jwks.secret_ref is not None:
                problems.setdefault(policy.key, []).append(
                    ConfigError(
                        file=loaded.origin.get(policy.key, "?"),
                        path=("spec", "providers", i, "jwks", "secretRef"),
                        reason="secretRef is resolved by the controller; standalone, use inline or file",
                    )
                )
    return problems


def _feed_problems(loaded: LoadedPolicies) -> dict[str, list[ConfigError]]:
    """A fed policy comes from resources that teams write: a `jwks.file` there would make the
    service read a file of its own machine (its feed token, say) as keys, on a team's say-so. It
    is refused, relative or absolute, for that policy alone: on a feed, keys come inline
    (secretRef is inlined by the controller) or from a uri."""
    problems = _standalone_problems(loaded)
    for policy in loaded.policies:
        for i, provider in enumerate(policy.spec.providers):
            if provider.jwks.file is not None:
                problems.setdefault(policy.key, []).append(
                    ConfigError(
                        file=loaded.origin.get(policy.key, "?"),
                        path=("spec", "providers", i, "jwks", "file"),
                        reason="jwks.file is refused in a policy from the config feed; use uri, inline or "
                        "secretRef",
                    )
                )
    return problems


class KeySources:
    """Key sources by provider, kept across reloads while their settings stay the same, so
    caches stay warm and background refreshes keep running."""

    def __init__(self, *, allow_insecure: bool) -> None:
        self._allow_insecure = allow_insecure
        self._sources: dict[tuple[str, str], KeySource] = {}
        self._used: set[tuple[str, str]] = set()

    def get(self, provider_id: str, provider: Provider, *, base: Path) -> KeySource:
        signature = provider.jwks.model_dump_json() + "|" + ",".join(provider.algorithms) + "|" + str(base)
        key = (provider_id, signature)
        self._used.add(key)
        source = self._sources.get(key)
        if source is None:
            try:
                source = self._make(provider_id, provider, base)
            except JwksError as exc:
                exc.provider_name = provider.name
                raise
            self._sources[key] = source
        return source

    def _make(self, provider_id: str, provider: Provider, base: Path) -> KeySource:
        jwks = provider.jwks
        if jwks.uri is not None:
            settings = RemoteSettings(
                uri=jwks.uri,
                cache_duration=jwks.cache_duration,
                refetch_cooldown=jwks.refetch_cooldown,
                allow_insecure=self._allow_insecure,
            )
            return RemoteJwks(settings, algorithms=provider.algorithms, source=provider_id)
        if jwks.file is not None:
            path = Path(jwks.file) if Path(jwks.file).is_absolute() else base / jwks.file
            return StaticKeySource(path=str(path), algorithms=provider.algorithms, source=provider_id)
        return StaticKeySource(data=jwks.inline, algorithms=provider.algorithms, source=provider_id)

    async def close_all(self) -> None:
        self._used = set()
        await self.begin()

    async def begin(self) -> list[KeySource]:
        """Start new sources; close those the last compile did not use. Returns the started."""
        for key in [k for k in self._sources if k not in self._used]:
            await self._sources.pop(key).close()
        self._used = set()
        for source in self._sources.values():
            await source.start()
        return list(self._sources.values())


class _Compiled(NamedTuple):
    version: str
    policies: dict[str, CompiledPolicy]
    rejected: dict[str, tuple[ConfigError, ...]]


def compile_all(loaded: LoadedPolicies, sources: KeySources, *, partial: bool = False) -> _Compiled:
    """Compile every policy; key material that cannot be used (a bad inline JWKS, a missing
    file, a refused URI) is a config error of that provider's `jwks` field: of the whole config
    (strict), or of that policy alone, which joins `loaded.rejected` (partial)."""
    compiled = {}
    problems: dict[str, list[ConfigError]] = {}
    for policy in loaded.policies:
        file = loaded.origin.get(policy.key, ".")
        base = Path(file).parent
        try:
            compiled[policy.key] = compile_policy(policy, functools.partial(sources.get, base=base))
        except JwksError as exc:
            index = next((i for i, p in enumerate(policy.spec.providers) if exc.provider_name == p.name), 0)
            problems[policy.key] = [
                ConfigError(
                    file=file, path=("spec", "providers", index, "jwks"), reason=f"unusable keys: {exc}"
                )
            ]
    if not partial:
        _refuse(problems)
    return _Compiled(loaded.version, compiled, dict(loaded.without(problems).rejected))


def _load_partial(
    loaded: LoadedPolicies, problems: dict[str, list[ConfigError]], sources: KeySources
) -> _Compiled:
    return compile_all(loaded.without(problems), sources, partial=True)


def _report_rejected(rejected: dict[str, tuple[ConfigError, ...]]) -> None:
    """Each policy not loaded, in the log (every problem, with file, line and field) and in
    `legation_authz_policy_rejected{policy}`."""
    for key, errors in sorted(rejected.items()):
        for error in errors:
            log.error(
                "policy %s rejected; requests naming it are denied: %s", key, error,
                extra={"policy": key, "file": error.file, "line": error.line, "reason": error.reason},
            )  # fmt: skip
    set_rejected(rejected)


def _describe_policies(authorizer: Authorizer) -> str:
    """The /readyz line: how many policies are loaded, and which are not, each with its first
    problem."""
    loaded = f"{len(authorizer.policies)} loaded"
    if not authorizer.rejected:
        return loaded
    return f"{loaded}; rejected: " + "; ".join(
        f"{k} ({why})" for k, why in sorted(authorizer.rejected.items())
    )


async def serve(settings: Settings, loaded: LoadedPolicies | None) -> None:
    """Serve `loaded`, following `settings.config`; or, with `loaded` None, start with no
    policies (every request denied, not ready) and follow `settings.config_url`."""
    sources = KeySources(allow_insecure=settings.jwks_allow_insecure)
    cache = TokenCache(settings.cache_size)
    register_cache(cache)
    compiled = compile_all(loaded, sources).policies if loaded is not None else {}
    authorizer = Authorizer(compiled, default_policy=settings.default_policy, cache=cache)
    await sources.begin()
    recorder = DecisionMetrics(authorizer)
    servicer = AuthorizationServicer(authorizer, recorder=recorder)
    health = Health([SERVICE])
    await health.set_component(CONFIG_COMPONENT, loaded is not None)
    if loaded is not None:
        version = ConfigVersion(
            what="policies", version=loaded.version, loads=CONFIG_LOADS, info=CONFIG_INFO,
            policies=sorted(authorizer.policies),
        )  # fmt: skip
    else:
        version = ConfigVersion(
            what="policies", version=None, loads=CONFIG_LOADS, info=CONFIG_INFO, url=settings.config_url
        )

    health.add_detail(POLICIES_DETAIL, lambda: _describe_policies(authorizer))

    def load_file() -> _Compiled:
        new = load_policies(settings.config or "", partial=True)
        return _load_partial(new, _standalone_problems(new), sources)

    def load_feed(feed_version: str, content: str) -> _Compiled:
        new = load_policy_texts([(f"{settings.config_url}@{feed_version}", content)], partial=True)
        # The version is the feed's, so that the service reports what the controller published.
        return _load_partial(new, _feed_problems(new), sources)._replace(version=feed_version)

    async def apply(new: _Compiled) -> None:
        authorizer.policies = new.policies
        authorizer.rejected = {key: str(errors[0]) for key, errors in new.rejected.items()}
        _report_rejected(new.rejected)
        await sources.begin()

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
                load_file=load_file,
                load_feed=load_feed,
                apply=apply,
                auth=settings.feed_auth,
            )
        ],
        on_stop=sources.close_all,
    )
