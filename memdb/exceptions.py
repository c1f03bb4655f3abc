"""The exception tree. Every message names the table, and the codec or setting involved."""

from __future__ import annotations


class MemdbError(Exception):
    """Base class of every error django-memdb raises on purpose."""


class UnknownTableError(MemdbError, LookupError):
    """A label does not name a memory model (``app_label.ModelName``)."""


class NotPersistentError(MemdbError, ValueError):
    """A spool or restore was asked of a model that is memory-only (``InMemoryDB``)."""


class SpoolError(MemdbError):
    """A table could not be written to ``PersistentStorage``; the previous snapshot is intact."""


class RestoreError(MemdbError):
    """A snapshot could not be loaded; it is left untouched in storage."""


class CodecError(MemdbError):
    """A codec failed to encode or decode a snapshot, or is unknown."""


class ConflictError(SpoolError):
    """Another process wrote the table's snapshot since this process last read or wrote it."""
