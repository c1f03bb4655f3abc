"""The tags that put a model in memory: ``InMemoryDB`` and ``PersistentInMemoryDB``.

They work like the 0.0.6 mixins, as plain classes mixed into a model::

    class Score(models.Model, PersistentInMemoryDB):
        memdb_policy = "commit"      # optional, overrides MEMDB["POLICY"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

__all__ = ["InMemoryDB", "PersistentInMemoryDB", "PeristentInMemoryDB"]


class InMemoryDB:
    """The model's table lives in the memory database only; it starts empty in each process."""

    memdb_persistent: ClassVar[bool] = False
    #: "commit", "interval" or "manual"; None means ``MEMDB["POLICY"]``.
    memdb_policy: ClassVar[str | None] = None
    #: Codec names or import paths for this model's snapshots; None means ``MEMDB["CODECS"]``.
    memdb_codecs: ClassVar[Sequence[str] | None] = None


class PersistentInMemoryDB(InMemoryDB):
    """The model's table lives in memory and is spooled to ``PersistentStorage`` to survive restarts."""

    memdb_persistent: ClassVar[bool] = True


#: The 0.0.6 spelling, kept so its users can move over unchanged.
PeristentInMemoryDB = PersistentInMemoryDB
