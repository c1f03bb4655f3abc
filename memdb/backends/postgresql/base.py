"""``ENGINE: "memdb.backends.postgresql"``: the ``server`` store's memory alias.

Django's PostgreSQL backend, on the default database's server, with what the server
store adds (``memdb.server``):

- tables are made ``UNLOGGED`` (no write-ahead log; the server empties them after a
  crash, and memdb restores them from storage);
- the first connection of a process builds the schema and, first of all processes,
  restores the snapshots; every new connection checks that the server still has the
  store, and restores it if it lost it;
- writes to tables with the ``commit`` policy are spooled when they commit.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.postgresql import base as pg_base
from django.db.backends.postgresql.schema import DatabaseSchemaEditor as PGSchemaEditor

from memdb import server, store


class DatabaseSchemaEditor(PGSchemaEditor):
    sql_create_table = "CREATE UNLOGGED TABLE %(table)s (%(definition)s)"


class ServerStoreMixin:
    """What both server store backends add to Django's: the store's start-up and
    loss checks at each connection, and ``commit``-policy spools after writes."""

    #: memdb's own connection (``memdb.server.private``): no write tracking, no checks.
    memdb_private = False
    settings_dict: dict[str, Any]
    execute_wrappers: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.execute_wrappers.append(track_writes)

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        if self.memdb_private:
            return
        try:
            state = store.state_for(store.state_name(self.settings_dict))
            if state.ready and state.booting is None:
                # Lost, or being restored by another thread of this process: wait for it.
                if server.lost(state):
                    server.recover(state)
            else:
                store.bootstrap(self)  # type: ignore[arg-type]
        except BaseException:
            self.close()  # type: ignore[attr-defined]
            raise


class DatabaseWrapper(ServerStoreMixin, pg_base.DatabaseWrapper):
    display_name = "PostgreSQL (memdb server store, UNLOGGED tables)"
    SchemaEditorClass = DatabaseSchemaEditor


def track_writes(execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    """After a statement that changed rows, spool ``commit``-policy tables once committed.

    A statement that names the table it writes (as Django's do) and that table has no
    ``commit`` policy, nor a ``commit`` table pointing at it with a delete action the
    database runs (``policies.may_reach_commit``), costs nothing more: every check of
    the ``commit`` tables is a round trip to the server.
    """
    from memdb import policies

    result = execute(sql, params, many, context)
    table = policies.written_table(sql)
    if table is not None and context["cursor"].rowcount != 0:
        after_write(context["connection"], table)
    return result


def after_write(wrapper: Any, table: str) -> None:
    """Spool the ``commit``-policy tables after a write to ``table`` ("": unknown)."""
    from memdb import policies

    if not policies.tables_with_policy("commit") or not policies.may_reach_commit(table):
        pass
    elif wrapper.in_atomic_block:
        policies.spool_on_commit(wrapper)
    elif wrapper.get_autocommit():
        policies.spool_committed()
    # In a transaction managed by hand (set_autocommit(False)) the write is not
    # committed yet (and a spool's read would wait for it on MariaDB): the interval
    # spooler stores the table within INTERVAL seconds.
