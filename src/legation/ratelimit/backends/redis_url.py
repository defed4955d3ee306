"""`--redis-url`, parsed and checked before anything connects (no Redis client imported here).

A URL the service cannot use is refused with one line naming it (password masked) and the
forms it accepts, so a typo never ends in a traceback at the first decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["EXPECTED", "RedisUrl", "parse_redis_url"]

Kind = Literal["standalone", "unix", "sentinel", "cluster"]

EXPECTED = (
    "redis://[user:password@]host[:port][/db], rediss://… (TLS), unix:///path/redis.sock[?db=N], "
    "redis+sentinel://h1:26379[,h2:26379…]/master[/db], redis+cluster://h1:7000[,h2:7001…]"
)
_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "unix": ("unix", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORT = {"standalone": 6379, "sentinel": 26379, "cluster": 6379, "unix": 0}


@dataclass(frozen=True)
class RedisUrl:
    kind: Kind
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()  # one for standalone; the seeds for sentinel, cluster
    path: str = ""  # unix socket
    username: str | None = None
    password: str | None = None
    db: int = 0
    master: str = ""  # sentinel
    query: dict[str, str] = field(default_factory=dict)


def parse_redis_url(url: str) -> RedisUrl:
    """Raise ValueError with one line (the URL, what is wrong, the accepted forms)."""
    try:
        return _parse(url)
    except ValueError as exc:
        raise ValueError(f"{_masked(url)!r}: {exc}; expected {EXPECTED}") from None


def _parse(url: str) -> RedisUrl:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"unsupported scheme '{parts.scheme}'" if parts.scheme else "no scheme")
    kind, tls = _SCHEMES[scheme]
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    common = {
        "kind": kind,
        "tls": tls,
        "username": unquote(username) or None,
        "password": unquote(password) if password else query.get("password"),
        "query": query,
    }
    if kind == "unix":
        if not parts.path:
            raise ValueError("a unix socket URL needs a path")
        return RedisUrl(path=parts.path, db=_int(query.get("db", "0"), "db"), **common)  # type: ignore[arg-type]
    hosts = _hosts(hostlist, _DEFAULT_PORT[kind])
    path = [p for p in parts.path.split("/") if p]
    if kind == "sentinel":
        if not path:
            raise ValueError("a sentinel URL needs the master name after the hosts")
        db = _int(path[1], "db") if len(path) > 1 else 0
        return RedisUrl(hosts=hosts, master=path[0], db=db, **common)  # type: ignore[arg-type]
    if kind == "standalone" and len(hosts) > 1:
        raise ValueError("several hosts need redis+sentinel:// or redis+cluster://")
    if kind == "cluster" and path:
        raise ValueError("a cluster has no database number")
    db = _int(path[0], "db") if path else _int(query.get("db", "0"), "db")
    return RedisUrl(hosts=hosts, db=db, **common)  # type: ignore[arg-type]


def _hosts(hostlist: str, default_port: int) -> tuple[tuple[str, int], ...]:
    hosts = []
    for item in hostlist.split(","):
        if not item:
            raise ValueError("empty host")
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":") if rest.startswith(":") else ("" if not rest else "x")
        else:
            host, _, port_text = item.partition(":") if item.count(":") <= 1 else (item, "", "")
        port = _int(port_text, "port") if port_text else default_port
        if not host or not 0 < port < 65536:
            raise ValueError(f"bad host '{item}'")
        hosts.append((host, port))
    return tuple(hosts)


def _int(text: str, what: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{what} '{text}' is not a number")
    return int(text)


def _masked(url: str) -> str:
    """The URL as given, with its password (in the userinfo or ?password=) replaced by ***."""
    parts = urlsplit(url)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    has_query_password = "password" in parse_qs(parts.query)
    if ":" not in userinfo and not has_query_password:
        return url
    if ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    query = "&".join(
        f"{k}=***" if k == "password" else f"{k}={quote(v[-1])}" for k, v in parse_qs(parts.query).items()
    )
    netloc = f"{userinfo}{at}{hostlist}"
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
