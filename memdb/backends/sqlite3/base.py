"""``ENGINE: "memdb.backends.sqlite3"``: Django's SQLite backend on a shared memory database.

What it adds to Django's backend:

- a keeper connection holds the named shared-cache database open, so closing a
  connection (Django does at the end of every request) really closes it and the data
  stays;
- the first connection builds the schema and restores the snapshots (``memdb.store``);
- ``atomic()`` starts ``BEGIN IMMEDIATE`` and statements that meet another thread's
  table lock are retried for up to ``MEMDB["LOCK_TIMEOUT"]`` seconds, so concurrent
  threads wait their turn instead of seeing "database table is locked";
- writes to tables with the ``commit`` policy are spooled when they commit.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.sqlite3 import base as sqlite_base
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper

from memdb import store


class MemDBCursorWrapper(sqlite_base.SQLiteCursorWrapper):
    #: The store's gate: a statement that starts a transaction waits at it while a
    #: spool or restore waits for its locks (see ``memdb.store.Gate``).
    memdb_gate: store.Gate | None = None

    def execute(self, query: str, params: Any = None) -> Any:
        if self.memdb_gate is not None and not self.connection.in_transaction:
            self.memdb_gate.wait()
        return store.retry_locked(lambda: super(MemDBCursorWrapper, self).execute(query, params))

    def executemany(self, query: str, param_list: Any) -> Any:
        if self.memdb_gate is not None and not self.connection.in_transaction:
            self.memdb_gate.wait()
        param_list = list(param_list)
        return store.retry_locked(
            lambda: super(MemDBCursorWrapper, self).executemany(query, param_list)
        )


class DatabaseWrapper(sqlite_base.DatabaseWrapper):
    display_name = "SQLite (memdb in-memory)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._memdb_changes_seen = 0
        self._memdb_spool_on_close = False
        self.execute_wrappers.append(_track_writes)

    def get_connection_params(self) -> dict[str, Any]:
        params = super().get_connection_params()
        if self.transaction_mode is None:
            self.transaction_mode: str | None = "IMMEDIATE"
        # A host store's file has one writer at a time for all its processes. SQLite's
        # busy wait sleeps longer and longer (up to 100 ms a try), so a worker could
        # wait seconds while the others write back to back; retry_locked tries every
        # few milliseconds instead. (A shared-cache memory database never waits.)
        params.setdefault("timeout", 0)
        return params

    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        store.keep_alive(conn_params["database"])
        return super().get_new_connection(conn_params)

    def connect(self) -> None:
        super().connect()
        try:
            store.bootstrap(self)
        except BaseException:
            self.close()
            raise
        self._memdb_changes_seen = self.connection.total_changes

    def make_cursor(self, cursor: Any) -> CursorWrapper:
        return MemDBCursor(cursor, self)

    def make_debug_cursor(self, cursor: Any) -> CursorDebugWrapper:
        return MemDBDebugCursor(cursor, self)

    def create_cursor(self, name: str | None = None) -> Any:
        cursor = self.connection.cursor(factory=MemDBCursorWrapper)
        cursor.memdb_gate = store.state_for(self.settings_dict["NAME"]).gate
        return cursor

    def close(self) -> None:
        """Really close: the keeper connection, not this one, keeps the data alive."""
        self.validate_thread_sharing()
        BaseDatabaseWrapper.close(self)

    def _commit(self) -> None:
        if self.connection is not None:
            with self.wrap_database_errors:
                store.retry_locked(self.connection.commit)


class _SpoolOnClose:
    """A statement with RETURNING holds its table locks until its cursor is done with it,
    so a ``commit``-policy spool it asked for waits for the cursor to close."""

    db: Any
    cursor: Any

    def close(self) -> None:
        self.cursor.close()  # type: ignore[attr-defined]
        if self.db.connection is not None:
            # SQLite counts the trigger writes of a RETURNING statement only once its
            # cursor is done; without this the next statement, even a read, looks like
            # a write and spools again.
            self.db._memdb_changes_seen = self.db.connection.total_changes
        if self.db._memdb_spool_on_close and not self.db.in_atomic_block:
            self.db._memdb_spool_on_close = False
            from memdb import policies

            policies.spool_committed()


class MemDBCursor(_SpoolOnClose, CursorWrapper):
    pass


class MemDBDebugCursor(_SpoolOnClose, CursorDebugWrapper):
    pass


def _track_writes(execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    """After a statement that changed rows, spool ``commit``-policy tables once committed.

    Any statement that changed a row counts (SQLite counts the rows its triggers
    changed too), but one that names the table it writes (as Django's do), a table
    whose writes cannot change a ``commit`` table (``policies.may_reach_commit``), asks
    nothing more: the check of the ``commit`` tables cost more than the write itself.
    """
    result = execute(sql, params, many, context)
    wrapper = context["connection"]
    changes = wrapper.connection.total_changes
    if changes != wrapper._memdb_changes_seen:
        wrapper._memdb_changes_seen = changes
        from memdb import policies

        if not policies.tables_with_policy("commit"):
            pass
        elif (table := policies.written_table(sql)) is not None and not (
            policies.may_reach_commit(table)
        ):
            pass
        elif wrapper.in_atomic_block:
            policies.spool_on_commit(wrapper)
        elif context["cursor"].cursor.description is not None:
            wrapper._memdb_spool_on_close = True
        else:
            policies.spool_committed()
    return result
