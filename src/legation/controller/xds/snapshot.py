"""An immutable, versioned set of Envoy resources: what the ADS server hands to Envoy.

A snapshot maps xDS type URLs to resources by name. Resources are protobuf messages built by
someone else (this module knows nothing about Mappings); each is serialized once, here, so that
change detection compares bytes and responses reuse them. `Snapshot.build` derives the version
from the content, so identical inputs give identical versions on every controller replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from google.protobuf.message import Message

from legation.core.digest import content_version
from legation.core.envoy_types import (
    ADS_ORDER,
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    TYPE_PREFIX,
    WILDCARD_TYPES,
)

__all__ = [
    "ADS_ORDER",
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "SECRET",
    "WILDCARD_TYPES",
    "Snapshot",
    "SnapshotStore",
    "snapshot_version",
]

_NAME_FIELD = {ENDPOINT: "cluster_name"}

Encoded = Mapping[str, bytes]
"""Resources of one type, by name, serialized."""


def snapshot_version(encoded: Mapping[str, Encoded]) -> str:
    """The version of serialized resources: the same content always gives the same version."""
    return content_version(
        (f"{type_url}\0{name}", payload)
        for type_url, by_name in encoded.items()
        for name, payload in by_name.items()
    )


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Resources by type URL and name, with a version that changes only when content changes.

    Every message must be of the type its type URL names and carry its key as its name
    (`cluster_name` for endpoints); a mismatch is a caller's bug and raises ValueError."""

    version: str
    resources: Mapping[str, Mapping[str, Message]]
    encoded: Mapping[str, Encoded] = field(init=False, repr=False, compare=False)
    """The same resources serialized (deterministically), filled in at construction."""

    def __post_init__(self) -> None:
        frozen = {t: MappingProxyType(dict(by_name)) for t, by_name in self.resources.items()}
        object.__setattr__(self, "resources", MappingProxyType(frozen))
        object.__setattr__(self, "encoded", MappingProxyType(_encode_all(frozen)))

    @classmethod
    def build(cls, resources: Mapping[str, Mapping[str, Message]]) -> Snapshot:
        """A snapshot whose version is the digest of its content."""
        snapshot = cls("", resources)
        object.__setattr__(snapshot, "version", snapshot_version(snapshot.encoded))
        return snapshot

    def replaced(self, type_url: str, resources: Mapping[str, Message]) -> Snapshot:
        """A new snapshot (new content version) with the given resources of one type added or
        replaced by name. Also the test hook for forcing a NACK: replace one resource with one
        Envoy rejects."""
        merged = {t: dict(by_name) for t, by_name in self.resources.items()}
        merged.setdefault(type_url, {}).update(resources)
        return Snapshot.build(merged)

    def names(self, type_url: str) -> frozenset[str]:
        return frozenset(self.encoded.get(type_url, {}))

    def select(self, type_url: str, names: frozenset[str] | None) -> dict[str, bytes]:
        """Serialized resources of one type: all of them (names=None), or the named ones that
        exist."""
        present = self.encoded.get(type_url, {})
        if names is None:
            return dict(present)
        return {name: present[name] for name in sorted(names) if name in present}


class SnapshotStore:
    """Which snapshot each node gets: its own if it has one, else the default; but while that one
    is known to be rejected by Envoy, the newest one an Envoy accepted for the same key, so that
    an Envoy connecting after a NACK starts from the last good configuration, not a broken one."""

    def __init__(self, *, keep: int = 3, remember_rejected: int = 100) -> None:
        self._default: Snapshot | None = None
        self._per_node: dict[str, Snapshot] = {}
        self._accepted: dict[str | None, list[Snapshot]] = {}
        self._rejected: dict[str, None] = {}
        self._keep = keep
        self._remember = remember_rejected

    def set(self, snapshot: Snapshot, *, node_id: str | None = None) -> None:
        if node_id is None:
            self._default = snapshot
        else:
            self._per_node[node_id] = snapshot

    def current(self, node_id: str | None) -> Snapshot | None:
        """The latest snapshot published for `node_id` (None: the default one)."""
        if node_id is not None and node_id in self._per_node:
            return self._per_node[node_id]
        return self._default

    def serve(self, node_id: str) -> Snapshot | None:
        """What to send `node_id` now."""
        current = self.current(node_id)
        if current is None or current.version not in self._rejected:
            return current
        good = [s for s in self._accepted.get(self._key(node_id), ()) if s.version not in self._rejected]
        return good[-1] if good else current

    def accepted(self, node_id: str, snapshot: Snapshot) -> None:
        """An Envoy of `node_id` accepted everything it was sent from `snapshot`."""
        history = self._accepted.setdefault(self._key(node_id), [])
        if snapshot.version in self._rejected or (history and history[-1] is snapshot):
            return
        history[:] = [*[s for s in history if s.version != snapshot.version][1 - self._keep :], snapshot]

    def rejected(self, version: str) -> None:
        """An Envoy rejected (part of) the snapshot with this version."""
        self._rejected[version] = None
        while len(self._rejected) > self._remember:
            del self._rejected[next(iter(self._rejected))]

    def rejected_versions(self) -> list[str]:
        """Versions an Envoy rejected, oldest first (the newest `remember_rejected`)."""
        return list(self._rejected)

    def versions(self) -> dict[str, str]:
        """Current versions: "" for the default snapshot, then per node id."""
        found = {"": self._default.version} if self._default else {}
        return found | {node: s.version for node, s in sorted(self._per_node.items())}

    def _key(self, node_id: str) -> str | None:
        return node_id if node_id in self._per_node else None


def _encode_all(resources: Mapping[str, Mapping[str, Message]]) -> dict[str, dict[str, bytes]]:
    return {
        type_url: {name: _encode(type_url, name, message) for name, message in by_name.items()}
        for type_url, by_name in resources.items()
    }


def _encode(type_url: str, name: str, message: Message) -> bytes:
    full_name = message.DESCRIPTOR.full_name
    if type_url != TYPE_PREFIX + full_name:
        raise ValueError(f"resource {name!r} is a {full_name}, not a {type_url}")
    own = getattr(message, _NAME_FIELD.get(type_url, "name"), None)
    if own != name:
        raise ValueError(f"resource {name!r} of {type_url} carries the name {own!r}")
    return message.SerializeToString(deterministic=True)
