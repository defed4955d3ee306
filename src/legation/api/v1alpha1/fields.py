"""Field types and checks shared by the controller's resources: hostnames, paths, RE2 regexes
(within Envoy's program-size limit), header names and values, methods, origins, retry
conditions, error statuses, and upstream service addresses.

Each check rejects what Envoy would reject, so a bad field fails here, with its path, rather
than as a NACK later.
"""

from __future__ import annotations

import functools
import http
import ipaddress
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import re2
from pydantic import AfterValidator, Field

from legation.core.names import DEFAULT_GATEWAY, DNS_NAME, LABEL_PATTERN, dns_label

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT")
MAX_REGEX_PROGRAM_SIZE = 100
"""Envoy's default `re2.max_program_size.error_level`: a bigger regex is NACKed."""

_RE2_QUIET = re2.Options()
_RE2_QUIET.log_errors = False
_LABEL = LABEL_PATTERN
_HOSTNAME = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")
HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP header name (RFC 9110 token)
_SERVICE = re.compile(
    r"(?:(?P<scheme>[a-z]+)://)?(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\[\]]+)(?::(?P<port>[^/]*))?"
)
_ORIGIN = re.compile(rf"https?://(\*\.)?{_LABEL}(\.{_LABEL})*(:\d{{1,5}})?")
# \s in a str pattern is exactly str.isspace(); one search instead of a generator per character
# (the generator was 10% of parsing 10k Mappings).
_PATH_FORBIDDEN = re.compile(r"[\s?#]")
_FORMATTER = re.compile(r"%%|%[A-Z0-9_]+(\([^)]*\))?(:\d+)?%")  # Envoy header-value commands
_RETRY_ON = frozenset((
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
    "unavailable",
))  # fmt: skip
# Envoy's type.v3.StatusCode enum (a status outside it is NACKed): Python's list minus three.
ERROR_STATUSES = frozenset(s.value for s in http.HTTPStatus if 400 <= s.value <= 599) - {418, 425, 451}


# --- field types -------------------------------------------------------------------------------


def check_hostname(value: str) -> str:
    """An exact host name, `*.example.com` or `*`, lowercased."""
    host = value.lower()
    if host != "*" and (len(host) > 253 or not _HOSTNAME.fullmatch(host)):
        raise ValueError(f"invalid hostname {value!r} (expected an exact name, *.example.com or *)")
    return host


def _path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must start with /")
    if _PATH_FORBIDDEN.search(value):
        raise ValueError("must not contain whitespace, ? or #")
    return value


def check_regex(value: str) -> str:
    # Compiled with RE2, the engine Envoy uses: what passes here compiles there too.
    try:
        size = int(re2.compile(value, options=_RE2_QUIET).programsize)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"invalid RE2 regex: {detail}") from None
    if size > MAX_REGEX_PROGRAM_SIZE:
        raise ValueError(f"regex too complex for Envoy (RE2 program size {size} > {MAX_REGEX_PROGRAM_SIZE})")
    return value


def _header_name(value: str) -> str:
    if not HEADER_NAME.fullmatch(value):
        raise ValueError(f"invalid header name {value!r}")
    return value.lower()


def _mutable_header(value: str) -> str:
    name = _header_name(value)
    if name == "host":
        raise ValueError("the host header cannot be added or removed (Envoy refuses it)")
    return name


HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade")
)
"""RFC 9110 §7.6.1 connection-specific fields (plus the widespread keep-alive and
proxy-connection): they describe one hop, never a request's content."""
_FRAMING = frozenset(("host", "content-length", "transfer-encoding"))
"""Fields that route or frame the request: set after the authorization decision, they would change
which request the upstream sees."""


def check_identity_header(value: str) -> str:
    """A header the gateway may set from a claim: a plain RFC 9110 field name, lowercased, and
    none that would change the request's routing, framing or connection, or Envoy's handling."""
    if not HEADER_NAME.fullmatch(value):
        raise ValueError(
            f"invalid header name {value!r} (letters, digits and !#$%&'*+.^_`|~- only; no pseudo-headers)"
        )
    name = value.lower()
    if name in HOP_BY_HOP or name.startswith("proxy-"):
        raise ValueError(f"{name} is a hop-by-hop header; it cannot carry a claim")
    if name in _FRAMING:
        raise ValueError(f"{name} routes or frames the request; it cannot carry a claim")
    if name.startswith("x-envoy-"):
        raise ValueError(f"{name}: x-envoy-* headers control Envoy; they cannot carry a claim")
    return name


def _header_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("a header value cannot contain CR, LF or NUL")
    if "%" in _FORMATTER.sub("", value):
        raise ValueError("a literal % must be written %% (Envoy reads %NAME% as a variable)")
    return value


def _method(value: str) -> str:
    if value.upper() not in HTTP_METHODS:
        raise ValueError(f"unknown HTTP method {value!r}")
    return value.upper()


def check_origin(value: str) -> str:
    if value != "*" and not _ORIGIN.fullmatch(value.lower()):
        raise ValueError(
            f"invalid origin {value!r} (expected *, or scheme://host[:port] like https://a.example.com)"
        )
    return value.lower()


def check_retry_on(value: str) -> str:
    conditions = [c.strip() for c in value.split(",")]
    unknown = [c for c in conditions if c not in _RETRY_ON]
    if unknown:
        raise ValueError(
            f"unknown retry condition {unknown[0]!r} (expected e.g. 5xx, reset, connect-failure)"
        )
    return ",".join(conditions)


def check_status(value: int) -> int:
    if value not in ERROR_STATUSES:
        raise ValueError("must be an HTTP error status (4xx or 5xx) that Envoy knows")
    return value


T = TypeVar("T")


def unique(values: list[T]) -> list[T]:
    for i, value in enumerate(values):
        if value in values[:i]:
            raise ValueError(f"{value!r} is listed twice")
    return values


def _service(value: str) -> str:
    parse_service(value)
    return value


Hostname = Annotated[str, AfterValidator(check_hostname)]
UrlPath = Annotated[str, AfterValidator(_path)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
MutableHeader = Annotated[str, AfterValidator(_mutable_header)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]
Method = Annotated[str, AfterValidator(_method)]
ServiceAddress = Annotated[str, AfterValidator(_service)]
IdentityHeader = Annotated[str, AfterValidator(check_identity_header)]


@dataclass(frozen=True)
class Upstream:
    """A parsed `service`: where Envoy connects, and whether with TLS."""

    scheme: Literal["http", "https"]
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"


@functools.lru_cache(maxsize=4096)
def parse_service(value: str) -> Upstream:
    """`host:port`, `http://host[:port]` or `https://host[:port]` (IPv6 in brackets).

    Without a port, http means 80 and https 443. Raises ValueError with the reason."""
    # Cached: every Mapping's service is parsed when validated and again when compiled, and
    # many Mappings name the same few services. An Upstream is immutable; errors are not cached.
    match = _SERVICE.fullmatch(value.strip())
    expected = "expected host:port, http://host:port or https://host:port"
    if match is None:
        raise ValueError(f"invalid service {value!r} ({expected})")
    scheme, host, port_text = match.group("scheme") or "http", match.group("host"), match.group("port")
    if scheme not in ("http", "https"):
        raise ValueError(f"invalid service {value!r}: scheme must be http or https")
    if not (_ipv6(host) if host.startswith("[") else DNS_NAME.fullmatch(host.lower())):
        raise ValueError(f"invalid service {value!r}: {host!r} is not a host name or address")
    if port_text is None:
        port = 443 if scheme == "https" else 80
    elif not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"invalid service {value!r}: port must be a number from 1 to 65535")
    else:
        port = int(port_text)
    return Upstream(scheme="https" if scheme == "https" else "http", host=host.lower().strip("[]"), port=port)


def is_ip_literal(host: str) -> bool:
    """An IPv4 or IPv6 address (no brackets), as opposed to a name to resolve."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _ipv6(bracketed: str) -> bool:
    try:
        ipaddress.IPv6Address(bracketed[1:-1])
    except ValueError:
        return False
    return True


# --- gateways ----------------------------------------------------------------------------------

ANY_GATEWAY = "*"


def _gateway_names(values: list[str]) -> list[str]:
    for value in values:
        if value != ANY_GATEWAY:
            dns_label(value)
    return unique(values)


GatewayNames = Annotated[list[str], AfterValidator(_gateway_names)]
"""`spec.gateways`: the gateways (`legation controller --gateway NAME`) that serve a resource."""


def gateways_field() -> Any:
    """The `gateways` field of the kinds a gateway serves (Mapping, Host, AuthService)."""
    return Field(
        default_factory=lambda: [DEFAULT_GATEWAY],
        min_length=1,
        description=f"The gateways that serve this resource (`legation controller --gateway NAME`); "
        f"absent = [{DEFAULT_GATEWAY}], `{ANY_GATEWAY}` = every gateway.",
    )
