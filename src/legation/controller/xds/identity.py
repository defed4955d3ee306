"""Who is on the other end of an ADS stream: the names of its client certificate, and which node
ids they allow it to claim.

Over mTLS an Envoy is identified by its certificate, not by the node id it sends: a certificate
named `NAME` (a SAN, or its CN when it has no SAN, as gRPC reports them) may claim the node id
`NAME` or any `NAME/…`. One certificate shared by the replicas of a Deployment (the Helm chart's)
thus covers node ids `legation-envoy/<pod name>`, and nothing another certificate owns: a DNS name
cannot contain `/`, so `a/…` never overlaps `a-b/…`. A stream claiming any other node id is
refused before anything is sent or recorded for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["NodeRefused", "PeerIdentity", "peer_identity"]


@dataclass(frozen=True)
class PeerIdentity:
    """The names on a client certificate the TLS handshake verified."""

    names: tuple[str, ...]

    def allows(self, node_id: str) -> bool:
        return any(node_id == name or node_id.startswith(name + "/") for name in self.names if name)

    def __str__(self) -> str:
        return ", ".join(self.names)


class NodeRefused(Exception):
    """A stream claimed a node id its certificate does not allow (or none was verified)."""

    def __init__(self, node_id: str, identity: PeerIdentity | None) -> None:
        self.node_id, self.identity = node_id, identity
        who = f"certificate {identity}" if identity is not None else "no verified certificate"
        super().__init__(f"node id {node_id!r} is not allowed for {who}")


def peer_identity(context: Any) -> PeerIdentity | None:
    """The verified certificate names of a grpc.aio call's peer; None without one (plaintext,
    or a test calling the servicer directly with no context)."""
    if context is None:
        return None
    names = context.peer_identities()
    if not names:
        return None
    return PeerIdentity(tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names))
