"""``ENGINE: "memdb.backends.mysql"``: the ``server`` store's memory alias on MariaDB.

Django's MySQL backend, on the default database's server, with what the server store
adds (``memdb.server``):

- tables are made with the ``MEMORY`` engine (``default_storage_engine`` of its
  sessions): held in the server's RAM, emptied when it restarts, and restored by memdb
  from storage. They hold no ``TEXT``/``BLOB``/``JSON`` columns (a model that has one
  is kept in InnoDB: check ``memdb.W004`` names its fields) and at most
  ``max_heap_table_size`` bytes each;
- its sessions quote identifiers the standard way too (``ANSI_QUOTES``), so the SQL
  memdb shares between its stores runs here unchanged; Django's own backticks work as
  before, but a string literal in double quotes in raw SQL on this alias does not;
- its sessions are strict for every table (``STRICT_ALL_TABLES``): a value a column
  cannot hold is an error in any row of a statement. MariaDB's default,
  ``STRICT_TRANS_TABLES``, is strict only for tables with transactions: on a
  ``MEMORY`` table it cut such a value short, with a warning, in every row of a
  multi-row insert (``bulk_create``) but the first;
- the first connection of a process builds the schema and, first of all processes,
  restores the snapshots; every new connection checks that the server still has the
  store, and restores it if it lost it;
- writes to tables with the ``commit`` policy are spooled when they commit, and a
  ``TRUNCATE`` (which fires no trigger here) is counted as a write.
"""

from __future__ import annotations

import re
from typing import Any

from django.db.backends.mysql import base as mysql_base

from memdb.backends.postgresql.base import ServerStoreMixin, after_write


class DatabaseWrapper(ServerStoreMixin, mysql_base.DatabaseWrapper):
    display_name = "MariaDB (memdb server store, MEMORY tables)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.execute_wrappers.append(_track_truncate)

    def init_connection_state(self) -> None:
        super().init_connection_state()
        with self.cursor() as cursor:
            cursor.execute(
                "SET SESSION default_storage_engine = MEMORY, "
                "sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'ANSI_QUOTES', "
                "'STRICT_ALL_TABLES')"
            )


_TRUNCATE = re.compile(r"^\s*TRUNCATE\s+(?:TABLE\s+)?[`\"]?([^`\"\s;]+)", re.IGNORECASE)


def _track_truncate(
    execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    result = execute(sql, params, many, context)
    match = _TRUNCATE.match(sql)
    if match is not None:
        from memdb import server

        server.truncated(context["connection"], match.group(1))
        after_write(context["connection"], match.group(1))
    return result
