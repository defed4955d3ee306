"""Where the controller's resources come from: one narrow interface, several sources.

A source delivers *snapshots*: every raw document it currently holds, each with its origin, plus
the problems that kept some input from being read at all (a file with a YAML syntax error). An
input that stops parsing keeps its last good documents, if it had any (`kept`): a typo in one
file never takes away the routes it served, while its error is shown. It
neither validates nor compiles; `legation.api.v1alpha1.parse_resource` and the compiler do, the
same way for every source.

Implementations: `legation.controller.sources.directory.DirectorySource` (a directory of YAML files,
followed with watchfiles); the Kubernetes source implements the same Protocol, building one
`Document` per object (origin such as `kubernetes:Mapping/ns/name`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from legation.api.v1alpha1 import ResourceId
from legation.controller.compiler.ir import Programmed, ResourceStatus
from legation.core.errors import ConfigError
from legation.core.yamlfile import Document

__all__ = ["Source", "SourceSnapshot", "StatusSink"]


@dataclass(frozen=True, kw_only=True)
class SourceSnapshot:
    """Everything a source holds at one moment. Equal inputs give an equal snapshot."""

    documents: tuple[Document, ...]
    """Every document, in a stable order (by origin, then position). `Document.file` is the
    origin: a file path, or an object reference for sources without files."""
    errors: tuple[ConfigError, ...]
    """Inputs that could not be read or parsed now; one error per such input. The other inputs'
    documents are still in `documents`, and so are these inputs' last good ones (see `kept`)."""
    origins: tuple[str, ...]
    """Every input considered (files read, objects listed), including those with errors."""
    version: str
    """A digest of the inputs: changes exactly when some input's content changes."""
    kept: tuple[str, ...] = ()
    """Origins in `errors` whose documents are their last good version (read before the error);
    an input with an error and no last good version contributes no documents."""
    trusted_timestamps: bool = False
    """Whether the documents' `metadata.creationTimestamp` were set by an authority (the
    Kubernetes API server) rather than written by whoever wrote the manifest (a file): only
    then do they settle conflicts between namespaces."""
    ages: Mapping[ResourceId, float] | None = None
    """For sources whose documents carry no trustworthy creation time: when the source itself
    first saw each resource, as an API server stamps what it stores (0 for everything present at
    its first read, which therefore ties; a later addition gets the monotonic clock's reading)."""


class Source(Protocol):
    """A stream of snapshots: the first as soon as the initial load is done, then one after each
    change that alters the inputs (never two equal snapshots in a row). Iteration runs until
    the consumer stops (closing the iterator or cancelling its task releases everything)."""

    def snapshots(self) -> AsyncIterator[SourceSnapshot]: ...


@runtime_checkable
class StatusSink(Protocol):
    """A source that takes the verdicts back: after each pipeline run on one of its snapshots, the
    controller hands it every resource's status (the Kubernetes source writes them to the objects'
    `status`; a directory has nowhere to write them, so it is no sink)."""

    def report(self, statuses: tuple[ResourceStatus, ...], source: SourceSnapshot) -> None: ...

    def report_programmed(self, programmed: Mapping[ResourceId, Programmed]) -> None:
        """`Programmed` of the resources that reach Envoy, as of the latest ACKs: also between
        pipeline runs (Envoys ACK later). Cheap: called on every change of any of them."""
        ...
