"""The exception tree. Every message names the table, and the codec or setting involved."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class MemdbError(Exception):
    """Base class of every error django-memdb raises on purpose.

    An operation over several tables tries them all and then raises one error:
    ``results`` holds what succeeded, ``errors`` maps each failed label to its error.
    """

    def __init__(
        self,
        message: str,
        *,
        results: Sequence[Any] = (),
        errors: Mapping[str, MemdbError] | None = None,
    ) -> None:
        super().__init__(message)
        self.results = list(results)
        self.errors = dict(errors or {})


class UnknownTableError(MemdbError, LookupError):
    """A label does not name a memory model (``app_label.ModelName``)."""


class NotPersistentError(MemdbError, ValueError):
    """A spool or restore was asked of a model that is memory-only (``InMemoryDB``)."""


class SpoolError(MemdbError):
    """A table could not be written to ``PersistentStorage``; the previous snapshot is intact."""


class ProtectedTableError(SpoolError):
    """The table's stored snapshot failed to restore, so spools of it are refused."""


class RestoreError(MemdbError):
    """A snapshot could not be loaded; it is left untouched in storage."""


class CodecError(MemdbError):
    """A codec failed to encode or decode a snapshot, or is unknown."""


class ConflictError(SpoolError):
    """Another process wrote the table's snapshot since this process last read or wrote it."""
