"""The ``server`` store: the memory tables on the PostgreSQL server everyone shares.

``MEMDB["STORE"] = "server"`` puts the memory tables in the default database's own
PostgreSQL server, as ``UNLOGGED`` tables: no write-ahead log, so writes cost about
what an in-memory table's do there, and the server empties them after a crash. Every
process of every host that uses the server sees one copy.

What the SQLite stores do in SQLite, this module does on the server:

- **Schema and change tracking.** Tables are made from the models, ``UNLOGGED``; a
  trigger per table counts its writes in ``memdb_changes_<table>`` and records the
  written keys in ``memdb_journal_<table>``, as the SQLite triggers do.
- **Snapshots.** A spool reads the table in one ``REPEATABLE READ`` transaction (a
  point-in-time read that never blocks writers) and writes it, converted by Django's
  own fields, into the same one-table SQLite image the other stores store; a delta
  holds the same payload. A snapshot is therefore restorable into any store.
- **Restore.** The image (and the deltas after it) is folded in a scratch file, then
  loaded into the server table in one transaction that holds writers back.
- **Leaders.** A PostgreSQL advisory lock per table picks the process that spools it,
  one per store the process that builds and restores it. The server drops a lock
  when its session ends, so a killed leader never blocks the others.
- **Shared state.** Each table's ``TableState`` lives in ``memdb_state`` on the server,
  an ``UNLOGGED`` table too: lost with the tables, never out of step with them.
- **A server that lost the tables.** ``memdb_store`` holds one row naming the store. A
  crash empties it with the rest; the first process that notices (at a new connection
  or at its next spool) builds the store again and restores it from storage, under the
  boot lock, and never spools the emptied tables over the stored snapshots.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connections
from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteWrapper

from . import store
from .conf import memdb_settings

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

    from .registry import ModelType

#: Rows read or written per statement while a snapshot is read or loaded.
BATCH = 5000


def state_name(settings_dict: dict[str, Any]) -> str:
    """The key of a server store among this process's stores (``store.state_for``)."""
    parts = [settings_dict.get(k) or "" for k in ("HOST", "PORT", "NAME")]
    return "server:" + "/".join(str(p) for p in parts)


# -- connections -----------------------------------------------------------------------

_local = threading.local()


def private() -> BaseDatabaseWrapper:
    """This thread's own connection to the server, apart from Django's.

    Spools, restores and the store's bookkeeping run on it, so they never join a
    transaction the caller has open, and the advisory locks a leader holds are tied to
    it: they last as long as its session, and end with the process.
    """
    wrappers: dict[str, BaseDatabaseWrapper] = _local.__dict__.setdefault("wrappers", {})
    alias = memdb_settings.ALIAS
    wrapper = wrappers.get(alias)
    if wrapper is not None and wrapper.connection is not None and not wrapper.is_usable():
        wrapper.close()
        wrapper = None
    if wrapper is None:
        wrapper = wrappers[alias] = connections.create_connection(alias)
        with _opened_lock:
            _opened.append(wrapper)
        wrapper.memdb_private = True  # type: ignore[attr-defined]
        wrapper.execute_wrappers.clear()  # its writes are memdb's, not the caller's
    wrapper.ensure_connection()
    return wrapper


#: Every private connection opened in this process (``close_all``).
_opened: list[BaseDatabaseWrapper] = []
_opened_lock = threading.Lock()


def forget_connections() -> None:
    """Drop this process's private connections (a forked child opens its own)."""
    global _local, _opened_lock
    _local = threading.local()
    _opened_lock = threading.Lock()
    _opened.clear()


def close_all() -> None:
    """Close the private connections of every thread (the test runner, before it drops
    its test database; their threads open new ones if they need them again)."""
    with _opened_lock:
        opened, _opened[:] = list(_opened), []
    for wrapper in opened:
        if wrapper.connection is not None:
            with contextlib.suppress(Exception):
                wrapper.connection.close()


class Conn:
    """The private connection with the ``execute(sql, params)`` of ``sqlite3``.

    The store's SQL that the SQLite stores and this one share (state rows, counters,
    journal keys) is written with ``?`` placeholders; they become ``%s`` here.
    """

    kind = "server"

    def __init__(self, wrapper: BaseDatabaseWrapper) -> None:
        self.wrapper = wrapper

    def execute(self, sql: str, params: Any = ()) -> Any:
        sql = sql.replace("?", "%s")
        if self.wrapper.vendor == "mysql":
            sql = _upsert_for_mysql(sql)
        cursor = self.wrapper.cursor()
        cursor.execute(sql, params)
        return cursor


_UPSERT = re.compile(r"ON CONFLICT \([^)]*\) DO UPDATE SET (.*)$", re.DOTALL)


def _upsert_for_mysql(sql: str) -> str:
    """SQLite's and PostgreSQL's ``ON CONFLICT ... DO UPDATE SET a = excluded.a`` in
    MariaDB's words, ``ON DUPLICATE KEY UPDATE a = VALUES(a)``."""
    match = _UPSERT.search(sql)
    if match is None:
        return sql
    updates = re.sub(r"excluded\.(\w+)", r"VALUES(\1)", match.group(1))
    return sql[: match.start()] + "ON DUPLICATE KEY UPDATE " + updates


def conn() -> Conn:
    return Conn(private())


@contextmanager
def transaction(wrapper: BaseDatabaseWrapper, *, isolation: str = "") -> Iterator[Any]:
    """BEGIN ... COMMIT on the private connection (autocommit otherwise)."""
    cursor = wrapper.cursor()
    if wrapper.vendor == "mysql":
        cursor.execute("START TRANSACTION")
    else:
        cursor.execute(f"BEGIN{' ISOLATION LEVEL ' + isolation if isolation else ''}")
    try:
        yield cursor
    except BaseException:
        if wrapper.connection is not None:
            with contextlib.suppress(DatabaseError):
                cursor.execute("ROLLBACK")
        raise
    cursor.execute("COMMIT")


@contextmanager
def consistent_read(wrapper: BaseDatabaseWrapper, tables: list[str]) -> Iterator[Any]:
    """Reads of ``tables`` that see them at one instant.

    PostgreSQL: one ``REPEATABLE READ`` transaction, which never blocks writers.
    MariaDB's ``MEMORY`` tables have no transactions: the tables are locked for reading
    (writers wait) until the block ends.
    """
    if wrapper.vendor != "mysql":
        with transaction(wrapper, isolation="REPEATABLE READ, READ ONLY") as cursor:
            yield cursor
        return
    cursor = wrapper.cursor()
    cursor.execute("LOCK TABLES " + ", ".join(f"{_q(t)} READ" for t in tables))
    try:
        yield cursor
    finally:
        cursor.execute("UNLOCK TABLES")


@contextmanager
def exclusive(wrapper: BaseDatabaseWrapper, tables: list[str]) -> Iterator[Any]:
    """Writes to ``tables`` that no other session's writes interleave with, tracking off.

    PostgreSQL: one transaction holding ``EXCLUSIVE`` locks (readers go on), the
    triggers told to stand aside for it alone (``memdb.restoring``). MariaDB: the
    tables write-locked until the block ends (``MEMORY`` tables have no transactions:
    an error half way leaves what was written so far).
    """
    if wrapper.vendor != "mysql":
        with transaction(wrapper) as cursor:
            cursor.execute("SET LOCAL memdb.restoring = 'on'")
            names = ", ".join(_q(t) for t in tables)
            cursor.execute(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
            yield cursor
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        return
    cursor = wrapper.cursor()
    cursor.execute("SET @memdb_restoring = 1")
    try:
        cursor.execute("LOCK TABLES " + ", ".join(f"{_q(t)} WRITE" for t in tables))
        try:
            yield cursor
        finally:
            cursor.execute("UNLOCK TABLES")
    finally:
        cursor.execute("SET @memdb_restoring = NULL")


# -- locks -----------------------------------------------------------------------------


def _key(state: store.StoreState, name: str) -> int:
    digest = hashlib.sha256(f"memdb|{state.name}|{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def advisory_lock(state: store.StoreState, name: str, *, wait: bool) -> Iterator[None]:
    """A session-level advisory lock on the private connection (``store.Busy`` if held
    and ``wait`` is false)."""
    key = _key(state, name)
    wrapper = private()
    cursor = wrapper.cursor()
    if wrapper.vendor == "mysql":
        # GET_LOCK names are strings of 64 characters at most; a year is "forever".
        lock, unlock = "SELECT GET_LOCK(%s, %s)", "SELECT RELEASE_LOCK(%s)"
        key_param: Any = f"memdb-{key & 0xFFFFFFFFFFFFFFFF:016x}"
        cursor.execute(lock, [key_param, 31536000 if wait else 0])
        if not cursor.fetchone()[0]:
            raise store.Busy(name)
    else:
        unlock, key_param = "SELECT pg_advisory_unlock(%s)", key
        if wait:
            cursor.execute("SELECT pg_advisory_lock(%s)", [key])
        else:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            if not cursor.fetchone()[0]:
                raise store.Busy(name)
    try:
        yield
    finally:
        if wrapper.connection is not None:
            with contextlib.suppress(DatabaseError):  # a lost session has dropped it
                wrapper.cursor().execute(unlock, [key_param])


# -- the store's own tables ------------------------------------------------------------

STORE_TABLE = "memdb_store"


def _q(name: str) -> str:
    return store.quote(name)


def prepare(state: store.StoreState) -> bool:
    """Make the store's own tables; True if the store is new (nothing restored yet).

    Runs under the boot lock. ``memdb_store`` names the store: a server crash empties
    it (an ``UNLOGGED`` table), so a store without its row is new, and the state of its
    tables (lost with them) starts clean.
    """
    cursor = private().cursor()
    # MEMORY tables hold no TEXT: bounded VARCHARs there (a state is a few hundred bytes).
    text, short, create = (
        ("varchar(8000)", "varchar(191)", "CREATE TABLE IF NOT EXISTS")
        if private().vendor == "mysql"
        else ("text", "text", "CREATE UNLOGGED TABLE IF NOT EXISTS")
    )
    for sql in (
        f"{create} {STORE_TABLE} (id {short} NOT NULL)",
        f'{create} {store.META_TABLE} ("key" {short} PRIMARY KEY, value {text} NOT NULL)',
        f"{create} {store.STATE_TABLE} (label {short} PRIMARY KEY, "
        f"spooled_seq bigint NOT NULL DEFAULT 0, data {text} NOT NULL DEFAULT '{{}}')",
    ):
        cursor.execute(sql)
    cursor.execute(f"SELECT id FROM {STORE_TABLE}")
    row = cursor.fetchone()
    if row is not None:
        state.store_id = row[0]
        return "restored" not in store.get_meta(state)
    store_id = uuid.uuid4().hex
    with transaction(private()) as cursor:
        cursor.execute(f"DELETE FROM {store.META_TABLE}")
        cursor.execute(f"DELETE FROM {store.STATE_TABLE}")
        cursor.execute(f"INSERT INTO {STORE_TABLE} (id) VALUES (%s)", [store_id])
    state.store_id = store_id
    return True


def current_id() -> str | None:
    cursor = private().cursor()
    try:
        cursor.execute(f"SELECT id FROM {STORE_TABLE}")
    except DatabaseError:
        return None  # the store's tables are gone too
    row = cursor.fetchone()
    return None if row is None else str(row[0])


def check(state: store.StoreState, label: str) -> None:
    """Raise ``store.StoreLost`` if the server lost the store since this process
    opened it (``claim`` calls it once it leads ``label``)."""
    if current_id() != state.store_id:
        raise store.StoreLost(
            f"{label}: the server lost the memory tables (a crash or a restart empties "
            f"UNLOGGED tables); they are restored before anything is spooled"
        )


def recover(state: store.StoreState) -> None:
    """Build the store again and restore it, if the server lost it (first one to notice);
    take the new store's name if another process did so first."""
    from .restore import restore_at_start

    with store.boot_lock(state):
        fresh = prepare(state)
        if not fresh:
            return
        create_schema(private())
        store.logger.warning("memdb: the server lost the memory tables; restoring them")
        state.tables.clear()
        if memdb_settings.RESTORE_ON_START and restore_at_start(state) is not None:
            store.set_meta(state, "restored", str(time.time()))


# -- schema ----------------------------------------------------------------------------


def create_schema(wrapper: BaseDatabaseWrapper) -> None:
    """Create the missing memory tables (``UNLOGGED``), counters, journals and triggers."""
    from .registry import memory_models

    models = memory_models()
    for round_models in ([m for m in models if not m._meta.auto_created], models):
        with wrapper.cursor() as cursor:
            existing = set(wrapper.introspection.table_names(cursor))
        missing = [m for m in round_models if m._meta.db_table not in existing]
        if missing:
            with wrapper.schema_editor() as editor:
                for model in missing:
                    if unfit_fields(model, wrapper):  # memdb.W004 names them
                        with _engine(wrapper, "InnoDB"):
                            editor.create_model(model)
                    else:
                        editor.create_model(model)
    # One transaction on PostgreSQL (its DDL is transactional): the writers of other
    # processes see the old tracking or the new, whole.
    with transaction(private()) as cursor:
        for model in models:
            for sql in _tracking_sql(wrapper, model):
                cursor.execute(sql)


#: Column types a MariaDB ``MEMORY`` table cannot hold.
_UNFIT = re.compile(r"text|blob|json", re.IGNORECASE)


def unfit_fields(model: ModelType, wrapper: BaseDatabaseWrapper) -> list[Any]:
    """The fields of ``model`` a MariaDB ``MEMORY`` table cannot hold (TEXT, BLOB,
    JSON columns); none on PostgreSQL."""
    if wrapper.vendor != "mysql":
        return []
    return [f for f in _fields(model) if _UNFIT.search(f.db_type(wrapper) or "")]


@contextmanager
def _engine(wrapper: BaseDatabaseWrapper, engine: str) -> Iterator[None]:
    """Make the tables created in the block with ``engine`` (MariaDB)."""
    with wrapper.cursor() as cursor:
        cursor.execute(f"SET SESSION default_storage_engine = {engine}")
    try:
        yield
    finally:
        with wrapper.cursor() as cursor:
            cursor.execute("SET SESSION default_storage_engine = MEMORY")


def _tracking_sql(wrapper: BaseDatabaseWrapper, model: ModelType) -> list[str]:
    if wrapper.vendor == "mysql":
        return _tracking_sql_mysql(wrapper, model)
    table = model._meta.db_table
    counter, column = _q(store.changes_table(table)), store.journal_column(model)
    journal = _q(store.journal_table(table))
    track, wipe = _q(f"memdb_track_{table}"), _q(f"memdb_wipe_{table}")
    statements = [
        f"CREATE UNLOGGED TABLE IF NOT EXISTS {counter} (seq bigint NOT NULL, "
        f'"rows" bigint NOT NULL DEFAULT 0, whole boolean NOT NULL DEFAULT false)',
        _seed_counter(counter, table),
    ]
    upsert = {"NEW": "", "OLD": ""}
    if column is not None:
        pk_type = model._meta.pk.rel_db_type(wrapper)
        statements.append(
            f"CREATE UNLOGGED TABLE IF NOT EXISTS {journal} "
            f"(pk {pk_type} PRIMARY KEY, seq bigint NOT NULL)"
        )
        for ref in upsert:
            upsert[ref] = (
                f"INSERT INTO {journal} (pk, seq) VALUES ({ref}.{_q(column)}, s) "
                f"ON CONFLICT (pk) DO UPDATE SET seq = EXCLUDED.seq;"
            )
    restoring = "IF current_setting('memdb.restoring', true) = 'on' THEN RETURN NULL; END IF;"
    statements += [
        f"CREATE OR REPLACE FUNCTION {track}() RETURNS trigger LANGUAGE plpgsql AS $memdb$ "
        f"DECLARE s bigint; BEGIN {restoring} "
        f"IF TG_OP = 'INSERT' THEN "
        f'UPDATE {counter} SET seq = seq + 1, "rows" = "rows" + 1 RETURNING seq INTO s; '
        f"{upsert['NEW']} "
        f"ELSIF TG_OP = 'UPDATE' THEN "
        f"UPDATE {counter} SET seq = seq + 1 RETURNING seq INTO s; {upsert['OLD']} "
        f"{upsert['NEW']} "
        f'ELSE UPDATE {counter} SET seq = seq + 1, "rows" = "rows" - 1 RETURNING seq INTO s; '
        f"{upsert['OLD']} END IF; RETURN NULL; END $memdb$",
        # TRUNCATE names no rows: the next spool stores the whole table.
        f"CREATE OR REPLACE FUNCTION {wipe}() RETURNS trigger LANGUAGE plpgsql AS $memdb$ "
        f'BEGIN {restoring} UPDATE {counter} SET seq = seq + 1, "rows" = 0, whole = true; '
        + (f"DELETE FROM {journal}; " if column is not None else "")
        + "RETURN NULL; END $memdb$",
        # Replaced in place: dropping and making it again would leave a moment in
        # which another process's writes went untracked (and so unspooled).
        f"CREATE OR REPLACE TRIGGER {track} AFTER INSERT OR UPDATE OR DELETE ON "
        f"{_q(table)} FOR EACH ROW EXECUTE FUNCTION {track}()",
        f"CREATE OR REPLACE TRIGGER {wipe} AFTER TRUNCATE ON {_q(table)} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {wipe}()",
    ]
    return statements


def _seed_counter(counter: str, table: str) -> str:
    return (
        f'INSERT INTO {counter} (seq, "rows") SELECT 0, (SELECT count(*) FROM {_q(table)}) '
        f"FROM (SELECT 1) AS one WHERE NOT EXISTS (SELECT 1 FROM {counter})"
    )


def _tracking_sql_mysql(wrapper: BaseDatabaseWrapper, model: ModelType) -> list[str]:
    """MariaDB: ``MEMORY`` counter and journal tables, one trigger per event.

    A session variable stands the triggers aside while a restore loads (MariaDB cannot
    switch triggers off); ``TRUNCATE`` fires no trigger there, so the backend marks
    the table for a whole snapshot itself (``memdb.backends.mysql``).
    """
    table = model._meta.db_table
    counter, column = _q(store.changes_table(table)), store.journal_column(model)
    journal = _q(store.journal_table(table))
    statements = [
        f"CREATE TABLE IF NOT EXISTS {counter} (seq bigint NOT NULL, "
        f'"rows" bigint NOT NULL DEFAULT 0, whole bool NOT NULL DEFAULT false)',
        _seed_counter(counter, table),
    ]
    if column is not None:
        pk_type = model._meta.pk.rel_db_type(wrapper)
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {journal} (pk {pk_type} PRIMARY KEY, seq bigint NOT NULL)"
        )
    for event in store.TRIGGER_EVENTS:
        rows = {"INSERT": ', "rows" = "rows" + 1', "DELETE": ', "rows" = "rows" - 1'}
        body = [f"UPDATE {counter} SET seq = seq + 1{rows.get(event, '')};"]
        if column is not None:
            refs = {"INSERT": ["NEW"], "UPDATE": ["OLD", "NEW"], "DELETE": ["OLD"]}[event]
            for ref in refs:
                body.append(
                    f"INSERT INTO {journal} (pk, seq) VALUES ({ref}.{_q(column)}, "
                    f"(SELECT seq FROM {counter})) ON DUPLICATE KEY UPDATE seq = VALUES(seq);"
                )
        name = _q(store.short_name(f"memdb_{table}_{event.lower()}"))
        # Replaced in place, under the table's metadata lock: no write goes untracked.
        statements.append(
            f"CREATE OR REPLACE TRIGGER {name} AFTER {event} ON {_q(table)} FOR EACH ROW "
            f"BEGIN IF @memdb_restoring IS NULL THEN {' '.join(body)} END IF; END"
        )
    return statements


def truncated(wrapper: BaseDatabaseWrapper, table: str) -> None:
    """After a ``TRUNCATE`` of ``table`` on MariaDB (which fires no trigger): count it as
    a write that empties the table and names no rows (the next spool stores it whole)."""
    from .registry import memory_models

    if not any(m._meta.db_table == table for m in memory_models()):
        return
    with wrapper.cursor() as cursor:
        cursor.execute(
            f'UPDATE {_q(store.changes_table(table))} SET seq = seq + 1, "rows" = 0, whole = true'
        )
        journal = store.journal_table(table)
        if journal in wrapper.introspection.table_names(cursor):
            cursor.execute(f"DELETE FROM {_q(journal)}")


# -- the SQLite image format -----------------------------------------------------------

_image: SQLiteWrapper | None = None
_image_lock = threading.Lock()


def image_connection() -> SQLiteWrapper:
    """A Django SQLite connection of no database: how SQLite stores each field's value.

    Snapshots are one-table SQLite images whatever the store, so a server store's
    rows are converted by the fields themselves (``get_db_prep_save`` on the way in,
    the SQLite backend's converters on the way out), as the other stores hold them.
    """
    global _image
    with _image_lock:
        if _image is None:
            settings_dict = {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": ":memory:",
                "ATOMIC_REQUESTS": False,
                "AUTOCOMMIT": True,
                "CONN_MAX_AGE": 0,
                "CONN_HEALTH_CHECKS": False,
                "OPTIONS": {},
                "TIME_ZONE": None,
                "USER": "",
                "PASSWORD": "",
                "HOST": "",
                "PORT": "",
                "TEST": {},
            }
            _image = SQLiteWrapper(settings_dict, alias="memdb-image")
        return _image


def _fields(model: ModelType) -> list[Any]:
    return [f for f in model._meta.local_concrete_fields if f.column]


def _image_rows(model: ModelType, wrapper: BaseDatabaseWrapper, **lookup: Any) -> Iterator[list]:
    """Rows of ``model``'s table on the server as SQLite stores them, by key."""
    fields, image = _fields(model), image_connection()
    queryset = model._base_manager.filter(**lookup).order_by("pk")
    if "pk__in" not in lookup:
        queryset = queryset[:BATCH]
    compiler = queryset.values_list(*[f.attname for f in fields]).query.get_compiler(
        connection=wrapper
    )
    for row in compiler.results_iter(tuple_expected=True):
        yield [f.get_db_prep_save(v, image) for f, v in zip(fields, row, strict=True)]


def _image_table_sql(model: ModelType) -> str:
    image = image_connection()
    columns = ", ".join(f"{_q(f.column)} {f.db_type(image) or ''}" for f in _fields(model))
    return f"CREATE TABLE {_q(model._meta.db_table)} ({columns})"


def read_image(model: ModelType, path: str) -> tuple[int, int]:
    """``(seq, rows)``: write the table as of one instant into ``path`` (a SQLite image).

    One ``REPEATABLE READ`` transaction reads the counter and the rows, ``BATCH`` keys
    at a time, so the image is the table at one instant and the memory held is one
    batch; writers go on meanwhile.
    """
    wrapper = private()
    table = _q(model._meta.db_table)
    index = next(i for i, f in enumerate(_fields(model)) if f.primary_key)
    tables = [model._meta.db_table, store.changes_table(model._meta.db_table)]
    with (
        consistent_read(wrapper, tables) as cursor,
        closing(sqlite3.connect(path, isolation_level=None)) as image,
    ):
        cursor.execute(f"SELECT seq FROM {_q(store.changes_table(model._meta.db_table))}")
        seq = int(cursor.fetchone()[0])
        image.execute("PRAGMA journal_mode = OFF")
        image.execute("PRAGMA synchronous = OFF")
        image.execute(f"DROP TABLE IF EXISTS {table}")
        image.execute(_image_table_sql(model))
        insert = f"INSERT INTO {table} VALUES ({', '.join('?' for _ in _fields(model))})"
        image.execute("BEGIN")
        rows, lookup = 0, dict[str, Any]()
        while batch := list(_image_rows(model, wrapper, **lookup)):
            image.executemany(insert, batch)
            rows += len(batch)
            last = model._meta.pk.to_python(batch[-1][index])
            lookup = {"pk__gt": last}
        image.execute("COMMIT")
    return seq, rows


def read_delta(model: ModelType) -> Any:
    """The changed rows of ``model``'s table as of one instant: ``journal.Delta``, or
    None when a whole snapshot is due (see ``journal.read_delta``)."""
    import json

    from .journal import DELTA_MAX_SHARE, Delta, _encode_value

    table = model._meta.db_table
    column = store.journal_column(model)
    assert column is not None
    wrapper = private()
    tables = [table, store.changes_table(table), store.journal_table(table)]
    with consistent_read(wrapper, tables) as cursor:
        cursor.execute(f'SELECT seq, "rows", whole FROM {_q(store.changes_table(table))}')
        seq, rows, whole = cursor.fetchone()
        if whole:
            return None
        cursor.execute(f"SELECT pk FROM {_q(store.journal_table(table))}")
        keys = [row[0] for row in cursor.fetchall()]
        if len(keys) > max(100, DELTA_MAX_SHARE * rows):
            return None
        found = list(_image_rows(model, wrapper, pk__in=keys)) if keys else []
    fields = _fields(model)
    index = next(i for i, f in enumerate(fields) if f.primary_key)
    image = image_connection()
    present = {row[index] for row in found}
    deleted = []
    for key in keys:
        stored = model._meta.pk.get_db_prep_save(model._meta.pk.to_python(key), image)
        if stored not in present:
            deleted.append(_encode_value(stored))
    payload = json.dumps(
        {
            "columns": [f.column for f in fields],
            "pk": column,
            "upsert": [[_encode_value(v) for v in row] for row in found],
            "delete": deleted,
        },
        separators=(",", ":"),
        allow_nan=True,
    ).encode()
    if len(payload) > memdb_settings.CHUNK_SIZE:
        return None
    return Delta(seq=int(seq), rows=int(rows), changed=len(keys), payload=payload)


def forget(model: ModelType, seq: int) -> None:
    """Drop the journal keys a spool read at counter ``seq`` stored; a ``TRUNCATE``
    before ``seq`` is stored too."""
    table = model._meta.db_table
    try:
        cursor = private().cursor()
        if store.journal_column(model):
            cursor.execute(f"DELETE FROM {_q(store.journal_table(table))} WHERE seq <= %s", [seq])
        cursor.execute(
            f"UPDATE {_q(store.changes_table(table))} SET whole = false WHERE whole AND seq <= %s",
            [seq],
        )
    except DatabaseError as exc:
        store.logger.warning(
            "memdb: %s: its journal keeps the keys just stored (%s); the next delta "
            "stores those rows again",
            model._meta.label,
            exc,
        )


# -- restore ---------------------------------------------------------------------------


def load(jobs: list[Any]) -> None:
    """Replace the tables of ``jobs`` (``restore._Job``) with their images and journals,
    in one transaction that holds the tables' writers back (readers go on)."""
    from django.core.management.color import no_style

    from .exceptions import RestoreError
    from .restore import fold_image

    wrapper = private()
    prepared = []
    for job in jobs:
        with closing(sqlite3.connect(job.path, isolation_level=None)) as image:
            columns = fold_image(image, job)
        prepared.append((job, columns))
    labels = ", ".join(job.model._meta.label for job in jobs)
    try:
        tables = []
        for job in jobs:
            table = job.model._meta.db_table
            tables += [table, store.changes_table(table)]
            if store.journal_column(job.model):
                tables.append(store.journal_table(table))
        with exclusive(wrapper, tables) as cursor:
            for job, _ in reversed(prepared):
                cursor.execute(f"DELETE FROM {_q(job.model._meta.db_table)}")
            for job, columns in prepared:
                job.rows = _insert_image(cursor, wrapper, job, columns)
                expected = job.deltas[-1][1] if job.deltas else job.snapshot.row_count
                if job.rows != expected:
                    what = "its journal" if job.deltas else "the snapshot"
                    raise RestoreError(
                        f"{job.model._meta.label}: {what} says {expected} rows but holds {job.rows}"
                    )
                table = job.model._meta.db_table
                if store.journal_column(job.model):
                    cursor.execute(f"DELETE FROM {_q(store.journal_table(table))}")
                counter = _q(store.changes_table(table))
                cursor.execute(f'UPDATE {counter} SET "rows" = %s, whole = false', [job.rows])
                cursor.execute(f"SELECT seq FROM {counter}")
                job.seq = int(cursor.fetchone()[0])
            for sql in wrapper.ops.sequence_reset_sql(no_style(), [j.model for j in jobs]):
                cursor.execute(sql)
    except RestoreError:
        raise
    except DatabaseError as exc:
        raise RestoreError(f"{labels}: {store.describe(exc)}") from exc


def _insert_image(cursor: Any, wrapper: BaseDatabaseWrapper, job: Any, columns: list[str]) -> int:
    """Copy the folded image's rows into the server table, converted field by field."""
    model = job.model
    image = image_connection()
    by_column = {f.column: f for f in _fields(model)}
    fields = [by_column[c] for c in columns]
    converters = []
    for f in fields:
        col = f.get_col(model._meta.db_table)
        converters.append(
            (f, col, [*image.ops.get_db_converters(col), *f.get_db_converters(image)])
        )
    table = _q(model._meta.db_table)
    insert = (
        f"INSERT INTO {table} ({', '.join(_q(c) for c in columns)}) "
        f"VALUES ({', '.join('%s' for _ in columns)})"
    )
    rows = 0
    with closing(sqlite3.connect(job.path, isolation_level=None)) as source:
        result = source.execute(f"SELECT {', '.join(_q(c) for c in columns)} FROM {table}")
        while batch := result.fetchmany(BATCH):
            values = []
            for raw in batch:
                row = []
                for value, (f, col, convert) in zip(raw, converters, strict=True):
                    for converter in convert:
                        value = converter(value, col, image)
                    row.append(f.get_db_prep_save(value, wrapper))
                values.append(row)
            cursor.executemany(insert, values)
            rows += len(values)
    return rows
