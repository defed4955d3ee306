"""An immutable, versioned set of Envoy resources: what the ADS server hands to Envoy.

A snapshot maps xDS type URLs to resources by name. Resources are protobuf messages built by
someone else (this module knows nothing about Mappings); each is serialized once, here, so that
change detection compares bytes and responses reuse them. `Snapshot.build` derives the version
from the content, so identical inputs give identical versions on every controller replica.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

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
    is known to be rejected *by that very node*, the newest one that node accepted, so that an
    Envoy reconnecting after its own NACK keeps what it had.

    NACKs are per node: one node's NACK never changes what any other node is served (a rogue or
    broken Envoy cannot roll the gateway back), and a node that connects for the first time always
    gets the newest snapshot. What is remembered per node is bounded (`remember_nodes`, least
    recently heard of forgotten first), so that clients inventing node ids cannot grow it."""

    def __init__(self, *, keep: int = 3, remember_rejected: int = 100, remember_nodes: int = 1000) -> None:
        self._default: Snapshot | None = None
        self._per_node: dict[str, Snapshot] = {}
        self._accepted: OrderedDict[str, list[Snapshot]] = OrderedDict()
        self._rejected: OrderedDict[str, dict[str, None]] = OrderedDict()
        self._keep = keep
        self._remember = remember_rejected
        self._remember_nodes = remember_nodes

    def set(self, snapshot: Snapshot, *, node_id: str | None = None) -> None:
        if node_id is None:
            self._default = snapshot
        else:
            self._per_node[node_id] = snapshot

    def clear(self, node_id: str) -> None:
        """`node_id` goes back to the default snapshot."""
        self._per_node.pop(node_id, None)

    def current(self, node_id: str | None) -> Snapshot | None:
        """The latest snapshot published for `node_id` (None: the default one)."""
        if node_id is not None and node_id in self._per_node:
            return self._per_node[node_id]
        return self._default

    def serve(self, node_id: str) -> Snapshot | None:
        """What to send `node_id` now: the current snapshot, unless this node rejected it."""
        current = self.current(node_id)
        rejected = self._rejected.get(node_id, {})
        if current is None or current.version not in rejected:
            return current
        good = [s for s in self._accepted.get(node_id, ()) if s.version not in rejected]
        return good[-1] if good else current

    def accepted(self, node_id: str, snapshot: Snapshot) -> None:
        """`node_id` accepted everything it was sent from `snapshot`."""
        history = _touch(self._accepted, node_id, list, self._remember_nodes)
        if snapshot.version in self._rejected.get(node_id, {}) or (history and history[-1] is snapshot):
            return
        history[:] = [*[s for s in history if s.version != snapshot.version][1 - self._keep :], snapshot]

    def rejected(self, node_id: str, version: str) -> None:
        """`node_id` rejected (part of) the snapshot with this version."""
        versions = _touch(self._rejected, node_id, dict, self._remember_nodes)
        versions.pop(version, None)
        versions[version] = None
        while len(versions) > self._remember:
            del versions[next(iter(versions))]

    def rejected_versions(self) -> dict[str, list[str]]:
        """Versions each node rejected, oldest first (the newest `remember_rejected` per node)."""
        return {node: list(versions) for node, versions in sorted(self._rejected.items())}

    def versions(self) -> dict[str, str]:
        """Current versions: "" for the default snapshot, then per node id."""
        found = {"": self._default.version} if self._default else {}
        return found | {node: s.version for node, s in sorted(self._per_node.items())}


_V = TypeVar("_V")


def _touch(table: OrderedDict[str, _V], node_id: str, new: Callable[[], _V], limit: int) -> _V:
    """`table[node_id]` (created if missing), now the most recent entry; the oldest beyond
    `limit` are forgotten."""
    value = table.pop(node_id) if node_id in table else new()
    table[node_id] = value
    while len(table) > limit:
        table.popitem(last=False)
    return value


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
