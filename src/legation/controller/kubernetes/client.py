"""A small typed Kubernetes API client: JSON requests and watch streams, nothing more.

Credentials and TLS come from kr8s, which reads a kubeconfig (`--kubeconfig`, `KUBECONFIG` or
`~/.kube/config`) and falls back to the pod's service account (`KUBERNETES_SERVICE_HOST` and
`/var/run/secrets/kubernetes.io/serviceaccount`), and which re-reads credentials when the server
answers 401 (service account tokens are rotated by the kubelet). Everything above that is plain
JSON over kr8s's raw `call_api`: the informers need exact control of resourceVersion, bookmarks
and 410 handling, which an object-mapping layer would hide.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import kr8s
import kr8s.asyncio

from legation.api.v1alpha1.kinds import CUSTOM_KINDS, Kind
from legation.api.v1alpha1.kinds import KINDS as ALL_KINDS

__all__ = [
    "KINDS",
    "LEASES",
    "SECRETS",
    "ApiError",
    "KubeClient",
    "KubeError",
    "ResourceType",
    "resource_type",
]

log = logging.getLogger("legation.controller.kube")
# httpx logs every request at INFO: a line per watch, lease renewal and status write.
logging.getLogger("httpx").setLevel(logging.WARNING)

JSON = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    """A namespaced resource type of the API."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(
        self, namespace: str | None = None, name: str | None = None, subresource: str | None = None
    ) -> str:
        """The URL path of the collection (in `namespace`, or in all namespaces), an object, or
        one of its subresources."""
        parts = [f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"]
        if namespace is not None:
            parts += ["namespaces", namespace]
        parts.append(self.plural)
        if name is not None:
            parts.append(name)
            if subresource is not None:
                parts.append(subresource)
        return "/".join(parts)


def resource_type(kind: Kind) -> ResourceType:
    """The API type of one of the schema's kinds (names from the one registry of kinds)."""
    return ResourceType(kind.group, kind.version, kind.plural, kind.kind)


KINDS: dict[str, ResourceType] = {k.kind: resource_type(k) for k in CUSTOM_KINDS}
"""The Legation kinds, which carry status."""
SECRETS = resource_type(ALL_KINDS["Secret"])
LEASES = ResourceType("coordination.k8s.io", "v1", "leases", "Lease")


class KubeError(Exception):
    """The API could not be reached or did not answer (connection refused, timeout, reset)."""


class ApiError(KubeError):
    """The API answered with an error status (a `Status` object)."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message

    @classmethod
    def from_status(cls, status: Mapping[str, Any], default_code: int = 500) -> ApiError:
        code = status.get("code")
        return cls(
            code if isinstance(code, int) else default_code,
            str(status.get("reason") or ""),
            str(status.get("message") or ""),
        )


class KubeClient:
    """JSON requests to one API server with the credentials kr8s found."""

    def __init__(self, api: kr8s.asyncio.Api, *, user_agent: str | None = None) -> None:
        self._api = api
        self._headers = {"User-Agent": user_agent} if user_agent else {}

    @classmethod
    async def connect(
        cls,
        kubeconfig: str | None = None,
        *,
        serviceaccount: str | None = None,
        user_agent: str | None = None,
    ) -> KubeClient:
        """Load credentials (kubeconfig, else the pod's service account) and check the server
        answers. Raises KubeError when it cannot be reached or no credentials are found.
        `user_agent` names this client in the server's audit log (e.g. which replica wrote)."""
        try:
            # A client of our own, not kr8s's per-thread-and-loop cache: a cached one may belong
            # to a closed session or a finished event loop whose id a new loop reuses, and its
            # requests then never complete.
            api = await kr8s.asyncio.Api(
                kubeconfig=kubeconfig, serviceaccount=serviceaccount, bypass_factory=True
            )
        except (ValueError, KeyError, OSError) as exc:  # no kubeconfig and not in a pod, or a bad file
            raise KubeError(f"no usable Kubernetes credentials: {exc}") from exc
        except (httpx.HTTPError, kr8s.ServerError, kr8s.APITimeoutError) as exc:
            raise KubeError(f"the Kubernetes API did not answer: {exc}") from exc
        return cls(api, user_agent=user_agent)

    @property
    def server(self) -> str:
        """The API server's URL."""
        server: str = self._api.auth.server
        return server

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 10.0,
    ) -> JSON:
        """One request; the decoded JSON answer. Raises ApiError for error statuses, KubeError
        when the server cannot be reached."""
        kwargs: dict[str, Any] = {"timeout": timeout, "headers": dict(self._headers)}
        if params:
            kwargs["params"] = dict(params)
        if body is not None:
            kwargs["content"] = json.dumps(body).encode()
            kwargs["headers"]["Content-Type"] = content_type
        try:
            base, url = _split(path)
            async with self._api.call_api(method, version="", base=base, url=url, **kwargs) as response:
                return _json(response.content)
        except kr8s.ServerError as exc:
            raise _api_error(exc) from None
        except (httpx.HTTPError, kr8s.APITimeoutError, OSError) as exc:
            raise KubeError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc

    async def stream(self, path: str, *, params: Mapping[str, str], timeout: float) -> AsyncIterator[JSON]:
        """The JSON lines of a watch: one dict per event. `timeout` bounds connecting and the
        silence between two lines. Ends when the server ends the stream."""
        limits = httpx.Timeout(10.0, read=timeout)
        try:
            base, url = _split(path)
            async with self._api.call_api(
                "GET",
                version="",
                base=base,
                url=url,
                params=dict(params),
                headers=self._headers,
                stream=True,
                timeout=limits,
            ) as response:
                async for line in response.aiter_lines():
                    if line.strip():
                        yield _json(line.encode())
        except kr8s.ServerError as exc:
            raise _api_error(exc) from None
        except (httpx.HTTPError, kr8s.APITimeoutError, OSError) as exc:
            raise KubeError(f"watch {path}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        session = getattr(self._api, "_session", None)  # kr8s has no public close
        if isinstance(session, httpx.AsyncClient):
            with contextlib.suppress(TimeoutError):  # bounded: closing must never hang the caller
                await asyncio.wait_for(session.aclose(), 2)


def _split(path: str) -> tuple[str, str]:
    # kr8s joins base and url with "/"; split the path so that no trailing slash is added.
    base, _, last = path.rpartition("/")
    return base, last


def _json(raw: bytes) -> JSON:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise KubeError(f"the API answered something that is not JSON: {raw[:200]!r}") from exc
    if not isinstance(value, dict):
        raise KubeError(f"the API answered JSON that is not an object: {raw[:200]!r}")
    return value


def _api_error(exc: kr8s.ServerError) -> ApiError:
    code = exc.response.status_code if exc.response is not None else 500
    status: Any = exc.status
    if isinstance(status, dict):
        return ApiError.from_status(status, code)
    return ApiError(code, exc.response.reason_phrase if exc.response is not None else "", str(exc))
