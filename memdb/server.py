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
  point-in-time read that never blocks writers; on MariaDB, from a temporary copy the
  server makes under a short read lock) and writes it, converted by Django's
  own fields, into the same one-table SQLite image the other stores store; a delta
  holds the same payload. A snapshot is therefore restorable into any store.
- **Restore.** The image (and the deltas after it) is folded in a scratch file and
  loaded into a temporary copy of the server table (writers go on), which the server
  then copies into the table in one transaction that holds writers back (on MariaDB,
  whose ``MEMORY`` tables have no transactions, under write locks).
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
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed
from django.db import DatabaseError, connections
from django.db import Error as DriverError
from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteWrapper
from django.db.models import fields as builtin
from django.db.models.sql.datastructures import BaseTable
from django.dispatch import receiver

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
    # A search_path in the connection options is another store in the same database.
    options = (settings_dict.get("OPTIONS") or {}).get("options", "")
    return "server:" + "/".join(str(p) for p in parts) + (f"?{options}" if options else "")


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
    now = time.monotonic()
    if wrapper is not None and _dropped(wrapper, now - wrapper.memdb_used_at):  # type: ignore[attr-defined]
        # PyMySQL refuses a second close, and the connection is dropped either way.
        with contextlib.suppress(DriverError):
            wrapper.close()
        wrapper = None
    if wrapper is None:
        wrapper = wrappers[alias] = connections.create_connection(alias)
        # Closed when this thread ends (its thread-local data goes, and this with it).
        _local.__dict__.setdefault("closers", []).append(_Closer(wrapper))
        with _opened_lock:
            _opened.add(wrapper)
        wrapper.memdb_private = True  # type: ignore[attr-defined]
        wrapper.execute_wrappers.clear()  # its writes are memdb's, not the caller's
    wrapper.memdb_used_at = now  # type: ignore[attr-defined]
    wrapper.ensure_connection()
    return wrapper


#: Seconds a private connection may sit unused before its next use asks the server
#: whether it still answers.
IDLE_CHECK = 1.0


def _dropped(wrapper: BaseDatabaseWrapper, idle: float) -> bool:
    """Whether the private connection can no longer be used: closed under its wrapper
    (``close_all``), or the server no longer answers it. The server is asked
    (``is_usable``: a ``SELECT 1``) once a statement on it raised an error, as Django
    asks of its own connections, or when it sat unused for ``IDLE_CHECK`` seconds (a
    server closes idle sessions: a timeout, a restart).

    Asking at every use cost a round trip each: seven of the 28 statements of a
    ``commit``-policy write on PostgreSQL.
    """
    raw = wrapper.connection
    if raw is None:
        return False  # not opened yet: ``ensure_connection`` opens it
    if (not raw.open) if wrapper.vendor == "mysql" else raw.closed:
        return True
    if wrapper.errors_occurred or idle >= IDLE_CHECK:
        if not wrapper.is_usable():
            return True
        wrapper.errors_occurred = False
    return False


class _Closer:
    """Closes a thread's private connection when the thread's data is collected."""

    def __init__(self, wrapper: BaseDatabaseWrapper) -> None:
        self.wrapper = wrapper

    def __del__(self) -> None:
        # Not at interpreter shutdown: the process's end closes the sockets anyway, and a
        # driver's goodbye then may wait for a buffer a dead daemon thread holds.
        if self.wrapper.connection is not None and not sys.is_finalizing():
            with contextlib.suppress(Exception):
                self.wrapper.connection.close()


#: The private connections of this process's live threads (``close_all``); a thread's
#: goes with it (its connection is closed when it is collected).
_opened: weakref.WeakSet[BaseDatabaseWrapper] = weakref.WeakSet()
_opened_lock = threading.Lock()


def forget_connections() -> None:
    """Drop this process's private connections (a forked child opens its own), and
    make its locks anew (one a parent thread held at the fork would stay held)."""
    global _local, _opened_lock, _image_lock
    _local = threading.local()
    _opened_lock = threading.Lock()
    _image_lock = threading.Lock()
    _opened.clear()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    """The private connections read values for the time zone settings they opened with
    (as Django resets its own connections' on a change, in tests)."""
    if setting in ("USE_TZ", "TIME_ZONE"):
        close_all()


def close_all() -> None:
    """Close the private connections of every thread (the test runner, before it drops
    its test database; their threads open new ones if they need them again)."""
    with _opened_lock:
        opened = list(_opened)
        _opened.clear()
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

    @property
    def vendor(self) -> str:
        """The server's SQL dialect (``store.upsert_sql``): postgresql or mysql."""
        return str(self.wrapper.vendor)

    def execute(self, sql: str, params: Any = ()) -> Any:
        cursor = self.wrapper.cursor()
        cursor.execute(sql.replace("?", "%s"), params)
        return cursor


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
def exclusive(wrapper: BaseDatabaseWrapper, tables: list[str], tracked: list[str]) -> Iterator[Any]:
    """Writes to ``tables`` that no other session's writes interleave with, the change
    tracking of the ``tracked`` ones off.

    PostgreSQL: one transaction holding ``EXCLUSIVE`` locks (readers go on), in which
    the tracking triggers are disabled (for it alone: DDL is transactional). MariaDB: the
    tables write-locked until the block ends (``MEMORY`` tables have no transactions:
    an error half way leaves what was written so far).
    """
    if wrapper.vendor != "mysql":
        with transaction(wrapper) as cursor:
            names = ", ".join(_q(t) for t in tables)
            cursor.execute(f"LOCK TABLE {names} IN EXCLUSIVE MODE")
            for table in tracked:  # for this transaction only: DDL is transactional
                cursor.execute(f"ALTER TABLE {_q(table)} DISABLE TRIGGER USER")
            yield cursor
            # Foreign keys checked now (and no check left pending, which would keep the
            # triggers from being switched back on).
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for table in tracked:
                cursor.execute(f"ALTER TABLE {_q(table)} ENABLE TRIGGER USER")
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
    state.store_id, fresh = _ensure_store(state)
    return fresh


def _ensure_store(state: store.StoreState) -> tuple[str, bool]:
    """``prepare``'s work, leaving ``state`` as it is: the store's id, and whether it is
    new."""
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
        return str(row[0]), "restored" not in store.get_meta(state)
    store_id = uuid.uuid4().hex
    with transaction(private()) as cursor:
        cursor.execute(f"DELETE FROM {store.META_TABLE}")
        cursor.execute(f"DELETE FROM {store.STATE_TABLE}")
        cursor.execute(f"INSERT INTO {STORE_TABLE} (id) VALUES (%s)", [store_id])
    return store_id, True


def current_id() -> str | None:
    cursor = private().cursor()
    try:
        cursor.execute(f"SELECT id FROM {STORE_TABLE}")
    except DatabaseError:
        return None  # the store's tables are gone too
    row = cursor.fetchone()
    return None if row is None else str(row[0])


def lost(state: store.StoreState) -> bool:
    """Whether the server lost the store since this process opened it, or another
    thread of this process is restoring it (either way: wait for ``recover``).

    Read in this order: the id this process knows, the server's, then ``recovering``.
    A thread that rebuilds the store commits the new id, sets ``recovering``, then
    takes the new id, and clears ``recovering`` only once the tables are restored. So
    a known id equal to the server's new one was taken after ``recovering`` was set,
    and ``recovering`` read last is clear only if the restore has ended. (Read first,
    it could be clear before the rebuild began, and both ids new by the time they were
    read: the emptied tables looked like the store.)
    """
    known = state.store_id
    current = current_id()
    return current != known or state.recovering is not None


def check(state: store.StoreState, label: str) -> None:
    """Raise ``store.StoreLost`` if the server lost the store since this process
    opened it (``claim`` calls it once it leads ``label``)."""
    if state.recovering is threading.current_thread():
        return  # restoring it: its own claims
    if lost(state):
        raise store.StoreLost(
            f"{label}: the server lost the memory tables (a crash or a restart empties "
            f"UNLOGGED tables); they are restored before anything is spooled"
        )


def recover(state: store.StoreState) -> None:
    """Build the store again and restore it, if the server lost it (first one to notice);
    take the new store's name if another process did so first."""
    with store.boot_lock(state):
        store_id, fresh = _ensure_store(state)
        if not fresh:  # restored by another process (or thread) meanwhile
            state.store_id = store_id
            return
        # The other threads of this process wait (``check``) until the tables are back.
        state.recovering = threading.current_thread()
        state.store_id = store_id
        try:
            created = create_schema(private())
            store.logger.warning("memdb: the server lost the memory tables; restoring them")
            state.tables.clear()
            if memdb_settings.RESTORE_ON_START and restore_fresh(state, created) is not None:
                store.set_meta(state, "restored", str(time.time()))
        finally:
            state.recovering = None


def restore_fresh(state: store.StoreState, created: set[str]) -> set[str] | None:
    """Restore a new store (``restore_at_start``), the tables the server kept aside."""
    from .registry import persistent_models
    from .restore import restore_at_start

    kept = {m._meta.label for m in survivors(created)}
    return restore_at_start(
        state, [m._meta.label for m in persistent_models() if m._meta.label not in kept]
    )


# -- schema ----------------------------------------------------------------------------


def create_schema(wrapper: BaseDatabaseWrapper) -> set[str]:
    """Create the missing memory tables (``UNLOGGED``, ``MEMORY``), counters, journals
    and triggers; the tables it created."""
    from .registry import memory_models

    models = memory_models()
    _migrate_drifted(wrapper, models)
    # On MariaDB a table with a field MEMORY cannot hold is kept in InnoDB (memdb.W004).
    created = store.create_missing_tables(
        wrapper,
        models,
        lambda model: _engine(wrapper, "InnoDB" if unfit_fields(model, wrapper) else None),
    )
    _btree_keys(wrapper, models)
    _set_tracking_up(wrapper, models)
    return created


def _btree_keys(wrapper: BaseDatabaseWrapper, models: list[ModelType]) -> None:
    """MariaDB: make every ``HASH`` index of the ``MEMORY`` tables a ``BTREE``, rows kept.

    A ``MEMORY`` table's keys are ``HASH`` unless asked otherwise, and Django's schema
    editor cannot ask: such a key finds equal values only, so an ``ORDER BY`` (``first()``,
    a leaderboard's top ten, the admin's pages) or a range (``pk__gt``) scanned and sorted
    the whole table (30 ms for ``first()`` of a million rows here, 0.3 ms with a
    ``BTREE``, which serves those and equality alike). Altering a key copies the table,
    once (0.3 s for a million rows).
    """
    tables = {m._meta.db_table for m in models}
    if wrapper.vendor != "mysql" or not tables:
        return
    with wrapper.cursor() as cursor:
        # One query for every table: each process asks this at its start.
        cursor.execute(
            "SELECT table_name, index_name, non_unique, column_name, sub_part "
            "FROM information_schema.statistics WHERE table_schema = DATABASE() "
            f"AND table_name IN ({', '.join(['%s'] * len(tables))}) AND index_type = 'HASH' "
            "ORDER BY table_name, index_name, seq_in_index",
            sorted(tables),
        )
        hashed: dict[str, dict[str, tuple[bool, list[str]]]] = {}
        for table, name, non_unique, column, sub_part in cursor.fetchall():
            part = _q(column) + (f"({int(sub_part)})" if sub_part else "")
            indexes = hashed.setdefault(table, {})
            indexes.setdefault(name, (not int(non_unique), []))[1].append(part)
        for table, indexes in hashed.items():
            changes = []
            for name, (unique, parts) in indexes.items():
                key = f"USING BTREE ({', '.join(parts)})"
                if name == "PRIMARY":
                    changes += ["DROP PRIMARY KEY", f"ADD PRIMARY KEY {key}"]
                else:
                    kind = "UNIQUE INDEX" if unique else "INDEX"
                    changes += [f"DROP INDEX {_q(name)}", f"ADD {kind} {_q(name)} {key}"]
            try:  # the table is copied: "full" if this session's max_heap_table_size is less
                cursor.execute(f"ALTER TABLE {_q(table)} {', '.join(changes)}")
            except DatabaseError as exc:
                store.logger.warning(
                    "memdb: the HASH keys of the memory table %s were left as they are "
                    "(%s): ordered reads and ranges of them scan the whole table",
                    table,
                    exc,
                )


def _set_tracking_up(wrapper: BaseDatabaseWrapper, models: list[ModelType]) -> None:
    """Make each table's tracking as this code makes it, if it is not already.

    Making it takes locks on the table that every writer of it waits for (and each
    process runs this at its start), so a table whose tracking is as this code makes it
    (its SQL's digest in ``memdb_meta``) is left alone; another is made in a
    transaction of its own on PostgreSQL (DDL is transactional there: the writers of
    other processes see the old tracking or the new, whole).
    """
    state = store.current_state()
    made = store.get_meta(state)
    for model in models:
        statements = _tracking_sql(wrapper, model)
        digest = hashlib.sha256("\n".join(statements).encode()).hexdigest()
        key = f"tracking:{model._meta.db_table}"
        if made.get(key) == digest:
            continue
        with transaction(private()) as cursor:
            for sql in statements:
                cursor.execute(sql)
        store.set_meta(state, key, digest)


def survivors(created: set[str]) -> list[ModelType]:
    """The persistent models whose tables a server that lost the store kept: on MariaDB,
    the tables kept in InnoDB (memdb.W004) that this start did not create. Their rows
    are newer than (or as new as) storage's, so they are not restored; the state of
    each (lost with the store) is taken from storage, and its next spool stores it
    whole."""
    from .registry import persistent_models
    from .spooler import stored_rows

    wrapper = private()
    kept = [
        m
        for m in persistent_models()
        if m._meta.db_table not in created and unfit_fields(m, wrapper)
    ]
    state = store.current_state()
    for model in kept:
        latest = stored_rows(model).order_by("-generation").values_list("generation", flat=True)
        with store.claim(state, model._meta.label) as table_state:
            table_state.generation = latest.first() or 0
            table_state.base = None
            table_state.spooled_seq = -1  # dirty: spooled whole at its next spool
    return kept


def _migrate_drifted(wrapper: BaseDatabaseWrapper, models: list[ModelType]) -> None:
    """Bring tables an earlier deploy made up to their models, in place, rows kept.

    The tables outlive a deploy on the server. A column the model no longer has is
    dropped; a field the table lacks is added by Django's schema editor (its rows get
    the field's default); a column whose type or nullability differs from what the
    model makes now (compared, as the server describes them, with a temporary table
    made from the model) is altered, its values cast by the server. A change the rows
    do not allow (a new field with no default, a value the new type cannot hold) is not
    made: the table is left as it is, with an error in the log. The stored snapshot
    restores to the same rows (a restore maps columns by name and converts values by
    the model's fields), so it stays; the table's next spool after a write stores it
    whole, in its new columns.
    """
    with wrapper.cursor() as cursor:
        existing = set(wrapper.introspection.table_names(cursor))
    for model in models:
        table = model._meta.db_table
        if table not in existing or model._meta.auto_created:
            continue
        present = _columns(wrapper, table)
        fields = _fields(model)
        gone = sorted(set(present) - {f.column for f in fields})
        added = [f for f in fields if f.column not in present]
        wanted = _model_columns(wrapper, model) or present
        changed = [
            f
            for f in fields
            if f.column in present and present[f.column] != wanted.get(f.column, present[f.column])
        ]
        if not gone and not added and not changed:
            continue
        try:
            with wrapper.schema_editor() as editor:
                for column in gone:
                    editor.execute(f"ALTER TABLE {_q(table)} DROP COLUMN {_q(column)}")
                for f in added:
                    editor.add_field(model, f)
                for f in changed:
                    for sql in _alter_sql(wrapper, model, f):
                        editor.execute(sql)
        except DatabaseError as exc:
            store.logger.error(
                "memdb: the memory table %s is not as its model %s makes it now, and "
                "could not be brought up to it (%s); it is left as it is. Give new "
                "fields a default, or drop the table (spool it first) to have it made "
                "again and restored",
                table,
                model._meta.label,
                exc,
            )
            continue
        state = store.current_state()
        with store.claim(state, model._meta.label) as table_state:
            table_state.base = None  # the next spool stores the whole table
        store.logger.warning(
            "memdb: the memory table %s was not as its model %s makes it now; "
            "columns dropped: %s; added: %s; changed: %s; its rows kept",
            table,
            model._meta.label,
            ", ".join(gone) or "none",
            ", ".join(f.column for f in added) or "none",
            ", ".join(f.column for f in changed) or "none",
        )


def _columns(wrapper: BaseDatabaseWrapper, table: str) -> dict[str, tuple[Any, ...]]:
    """Each column of ``table`` (a temporary table too) as the server describes it:
    ``{name: (type, nullable)}``."""
    with wrapper.cursor() as cursor:
        if wrapper.vendor == "mysql":
            cursor.execute(f"SHOW COLUMNS FROM {_q(table)}")
            return {row[0]: (row[1].lower(), row[2]) for row in cursor.fetchall()}
        cursor.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            [_q(table)],
        )
        return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}


def _model_columns(
    wrapper: BaseDatabaseWrapper, model: ModelType
) -> dict[str, tuple[Any, ...]] | None:
    """The columns ``model``'s table has when made as the model is now (``_columns``):
    its CREATE TABLE run as a temporary table of this session, described, dropped.
    None, with a warning, if the server would not make it (no column is altered then).
    """
    with wrapper.schema_editor(collect_sql=True, atomic=False) as editor:
        editor.create_model(model)
    create = editor.collected_sql[0].rstrip(";")  # the table; indexes and keys follow
    scratch = store.short_name(f"memdb_shape_{model._meta.db_table}")
    head = re.match(r"CREATE (?:UNLOGGED )?TABLE ", create)
    name = editor.quote_name(model._meta.db_table)
    if head is None or not create[head.end() :].startswith(name):
        store.logger.warning(
            "memdb: %s: its CREATE TABLE is not as expected (%s); its columns' types are "
            "not compared",
            model._meta.label,
            create[:80],
        )
        return None
    copy = _temporary(wrapper, scratch)
    sql = f"CREATE TEMPORARY TABLE {copy}{create[head.end() + len(name) :]}"
    if wrapper.vendor == "mysql":
        sql += " ENGINE=InnoDB"  # the column types are the same; InnoDB takes them all
    try:
        with wrapper.cursor() as cursor:
            cursor.execute(sql)
            try:
                return _columns(wrapper, scratch)
            finally:
                cursor.execute(_drop_temporary(wrapper, copy))
    except DatabaseError as exc:
        store.logger.warning(
            "memdb: %s: its table could not be made for a comparison (%s); its columns' "
            "types are not compared",
            model._meta.label,
            exc,
        )
        return None


def _alter_sql(wrapper: BaseDatabaseWrapper, model: ModelType, field: Any) -> list[str]:
    """Change ``field``'s column (and, for the primary key, the journal's key column) to
    the type and nullability the model gives it now; the server casts the values."""
    table = model._meta.db_table
    targets = [(table, field.column, field.db_type(wrapper), field.null)]
    if field.primary_key and store.journal_column(model):
        targets.append((store.journal_table(table), "pk", field.rel_db_type(wrapper), False))
    statements = []
    for name, column, db_type, null in targets:
        t, c = _q(name), _q(column)
        if wrapper.vendor == "mysql":
            statements.append(
                f"ALTER TABLE {t} MODIFY COLUMN {c} {db_type} {'NULL' if null else 'NOT NULL'}"
            )
        else:
            statements.append(
                f"ALTER TABLE {t} ALTER COLUMN {c} TYPE {db_type} USING {c}::{db_type}, "
                f"ALTER COLUMN {c} {'DROP' if null else 'SET'} NOT NULL"
            )
    return statements


#: Column types a MariaDB ``MEMORY`` table cannot hold.
_UNFIT = re.compile(r"text|blob|json", re.IGNORECASE)


def unfit_fields(model: ModelType, wrapper: BaseDatabaseWrapper) -> list[Any]:
    """The fields of ``model`` a MariaDB ``MEMORY`` table cannot hold (TEXT, BLOB,
    JSON columns); none on PostgreSQL."""
    if wrapper.vendor != "mysql":
        return []
    return [f for f in _fields(model) if _UNFIT.search(f.db_type(wrapper) or "")]


@contextmanager
def _engine(wrapper: BaseDatabaseWrapper, engine: str | None) -> Iterator[None]:
    """Make the tables created in the block with ``engine`` (MariaDB; None: MEMORY)."""
    if engine is None:
        yield
        return
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
    statements = _bookkeeping_sql(wrapper, model, "UNLOGGED ", "")
    # Statement triggers over the statement's transition tables: one counter update per
    # statement, not per row (row triggers made a bulk insert quadratic: every update
    # of the one counter row in a transaction adds a version the next one steps over).
    events = {
        "INSERT": ("NEW TABLE AS memdb_new", ["memdb_new"], '"rows" + n'),
        "UPDATE": (
            "OLD TABLE AS memdb_old NEW TABLE AS memdb_new",
            ["memdb_old", "memdb_new"],
            '"rows"',
        ),
        "DELETE": ("OLD TABLE AS memdb_old", ["memdb_old"], '"rows" - n'),
    }
    for event, (referencing, sources, rows) in events.items():
        name = _q(store.short_name(f"memdb_{event.lower()}_{table}"))
        journal_sql = ""
        if column is not None:
            keys = " UNION ".join(f"SELECT {_q(column)} FROM {source}" for source in sources)
            journal_sql = (
                f"INSERT INTO {journal} (pk, seq) SELECT k.{_q(column)}, s FROM ({keys}) AS k "
                f"ON CONFLICT (pk) DO UPDATE SET seq = EXCLUDED.seq;"
            )
        statements += [
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$memdb$ DECLARE s bigint; n bigint; BEGIN "
            f"SELECT count(*) INTO n FROM {sources[-1]}; IF n = 0 THEN RETURN NULL; END IF; "
            f'UPDATE {counter} SET seq = seq + 1, "rows" = {rows} RETURNING seq INTO s; '
            f"{journal_sql} RETURN NULL; END $memdb$",
            # Replaced in place: dropping and making it again would leave a moment in
            # which another process's writes went untracked (and so unspooled).
            f"CREATE OR REPLACE TRIGGER {name} AFTER {event} ON {_q(table)} "
            f"REFERENCING {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {name}()",
        ]
    # The counter row first: a write statement locks it before any row of the table, so
    # two transactions writing rows of the table in opposite orders wait for each other
    # at their first statement, not halfway (the counter's update comes after the rows).
    lock = _q(store.short_name(f"memdb_lock_{table}"))
    statements += [
        f"CREATE OR REPLACE FUNCTION {lock}() RETURNS trigger LANGUAGE plpgsql AS $memdb$ "
        f"BEGIN PERFORM 1 FROM {counter} FOR UPDATE; RETURN NULL; END $memdb$",
        f"CREATE OR REPLACE TRIGGER {lock} BEFORE INSERT OR UPDATE OR DELETE ON {_q(table)} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {lock}()",
    ]
    # TRUNCATE names no rows: the next spool stores the whole table.
    wipe = _q(store.short_name(f"memdb_truncate_{table}"))
    statements += [
        f"CREATE OR REPLACE FUNCTION {wipe}() RETURNS trigger LANGUAGE plpgsql AS $memdb$ "
        f'BEGIN UPDATE {counter} SET seq = seq + 1, "rows" = 0, whole = true; '
        + (f"DELETE FROM {journal}; " if column is not None else "")
        + "RETURN NULL; END $memdb$",
        f"CREATE OR REPLACE TRIGGER {wipe} AFTER TRUNCATE ON {_q(table)} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {wipe}()",
    ]
    return statements


def _bookkeeping_sql(
    wrapper: BaseDatabaseWrapper, model: ModelType, kind: str, engine: str
) -> list[str]:
    """The table's change counter (seeded with its row count) and, if it has a journal,
    its journal of changed keys: ``CREATE {kind}TABLE ... {engine}``."""
    table = model._meta.db_table
    counter = _q(store.changes_table(table))
    statements = [
        f"CREATE {kind}TABLE IF NOT EXISTS {counter} (seq bigint NOT NULL, "
        f'"rows" bigint NOT NULL DEFAULT 0, whole boolean NOT NULL DEFAULT false){engine}',
        f'INSERT INTO {counter} (seq, "rows") SELECT 0, (SELECT count(*) FROM {_q(table)}) '
        f"FROM (SELECT 1) AS one WHERE NOT EXISTS (SELECT 1 FROM {counter})",
    ]
    if store.journal_column(model) is not None:
        pk_type = model._meta.pk.rel_db_type(wrapper)
        statements.append(
            f"CREATE {kind}TABLE IF NOT EXISTS {_q(store.journal_table(table))} "
            f"(pk {pk_type} PRIMARY KEY, seq bigint NOT NULL){engine}"
        )
    return statements


def _tracking_sql_mysql(wrapper: BaseDatabaseWrapper, model: ModelType) -> list[str]:
    """MariaDB: ``MEMORY`` counter and journal tables, one trigger per event.

    A session variable stands the triggers aside while a restore loads (MariaDB cannot
    switch triggers off); ``TRUNCATE`` fires no trigger there, so the backend marks
    the table for a whole snapshot itself (``memdb.backends.mysql``).
    """
    table = model._meta.db_table
    counter, column = _q(store.changes_table(table)), store.journal_column(model)
    journal = _q(store.journal_table(table))
    # A table kept in InnoDB keeps its counter and journal there too: a rollback then
    # undoes the counting of the writes it undoes, and they outlive a restart as it does.
    engine = " ENGINE=InnoDB" if unfit_fields(model, wrapper) else ""
    statements = _bookkeeping_sql(wrapper, model, "", engine)
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
        # Counted, not set to 0: another session may have written the table since.
        cursor.execute(
            f'UPDATE {_q(store.changes_table(table))} SET seq = seq + 1, "rows" = '
            f"(SELECT count(*) FROM {_q(table)}), whole = true"
        )
        journal = store.journal_table(table)
        if journal in wrapper.introspection.table_names(cursor):
            cursor.execute(f"DELETE FROM {_q(journal)}")


def empty(models: list[ModelType]) -> None:
    """Empty the tables of ``models`` at once, counted as writes (the tests' reset):
    ``TRUNCATE``, which fires the tracking's statement trigger on PostgreSQL and is
    counted by ``truncated`` on MariaDB."""
    wrapper = private()
    tables = [m._meta.db_table for m in models]
    with wrapper.cursor() as cursor:
        if wrapper.vendor == "mysql":
            for table in tables:
                cursor.execute(f"TRUNCATE TABLE {_q(table)}")
                truncated(wrapper, table)
        else:
            cursor.execute(f"TRUNCATE {', '.join(_q(t) for t in tables)}")


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


#: Django's own field classes whose values both drivers and SQLite hold alike (int,
#: str, float, bool): copied between the server and an image without conversion (a
#: subclass may convert, so it is not one of them).
_PLAIN = {
    builtin.AutoField,
    builtin.BigAutoField,
    builtin.SmallAutoField,
    builtin.IntegerField,
    builtin.BigIntegerField,
    builtin.SmallIntegerField,
    builtin.PositiveIntegerField,
    builtin.PositiveBigIntegerField,
    builtin.PositiveSmallIntegerField,
    builtin.CharField,
    builtin.TextField,
    builtin.SlugField,
    builtin.EmailField,
    builtin.URLField,
    builtin.BooleanField,
    builtin.FloatField,
}


def _image_rows(
    model: ModelType, wrapper: BaseDatabaseWrapper, source: str = "", **lookup: Any
) -> Iterator[list]:
    """Rows of ``model``'s table on the server (or of its copy ``source``) as SQLite
    stores them, by key."""
    fields, image = _fields(model), image_connection()
    prepare = [
        None if type(f) in _PLAIN else (lambda v, f=f: _bound(f.get_db_prep_save(v, image)))
        for f in fields
    ]
    queryset = model._base_manager.filter(**lookup).order_by("pk")
    if "pk__in" not in lookup:
        queryset = queryset[:BATCH]
    query = queryset.values_list(*[f.attname for f in fields]).query
    if source:
        # FROM the copy, under the table's name as its alias: the query, its column
        # references and Django's converters stay the model's own.
        alias = query.get_initial_alias()
        query.alias_map[alias] = BaseTable(source, alias)
    compiler = query.get_compiler(connection=wrapper)
    for row in compiler.results_iter(tuple_expected=True):
        yield [v if p is None else p(v) for p, v in zip(prepare, row, strict=True)]


def _bound(value: Any) -> Any:
    """A value as the ``sqlite3`` module binds it (its adapters: Django's for Decimal,
    and bytes for a memoryview), so a delta holds what the table would."""
    if isinstance(value, memoryview):
        return bytes(value)
    adapter = sqlite3.adapters.get((type(value), sqlite3.PrepareProtocol))
    return value if adapter is None else adapter(value)


def _image_table_sql(model: ModelType) -> str:
    image = image_connection()
    columns = ", ".join(f"{_q(f.column)} {f.db_type(image) or ''}" for f in _fields(model))
    return f"CREATE TABLE {_q(model._meta.db_table)} ({columns})"


def read_image(model: ModelType, path: str) -> tuple[int, int]:
    """``(seq, rows)``: write the table as of one instant into ``path`` (a SQLite image).

    The counter and the rows are read as of one instant, ``BATCH`` keys at a time, so
    the memory held is one batch (``_still``).
    """
    wrapper = private()
    table = _q(model._meta.db_table)
    index = next(i for i, f in enumerate(_fields(model)) if f.primary_key)
    with (
        _still(wrapper, model) as (seq, source),
        closing(sqlite3.connect(path, isolation_level=None)) as image,
    ):
        image.execute("PRAGMA journal_mode = OFF")
        image.execute("PRAGMA synchronous = OFF")
        image.execute(f"DROP TABLE IF EXISTS {table}")
        image.execute(_image_table_sql(model))
        insert = f"INSERT INTO {table} VALUES ({', '.join('?' for _ in _fields(model))})"
        image.execute("BEGIN")
        rows, lookup = 0, dict[str, Any]()
        while batch := list(_image_rows(model, wrapper, source, **lookup)):
            image.executemany(insert, batch)
            rows += len(batch)
            last = model._meta.pk.to_python(batch[-1][index])
            lookup = {"pk__gt": last}
        image.execute("COMMIT")
    return seq, rows


@contextmanager
def _still(wrapper: BaseDatabaseWrapper, model: ModelType) -> Iterator[tuple[int, str]]:
    """``(seq, source)``: the table's counter, and where to read its rows as of that
    count for the block (``source``: the table itself, or a copy of it).

    PostgreSQL: one ``REPEATABLE READ`` transaction, which never blocks writers.
    MariaDB (no transactions on ``MEMORY``): under a read lock only as long as the
    server takes to copy the table into a temporary table of this session (about
    0.5 s for a million rows here); writers go on while the copy is read, and it is
    dropped at the end.
    """
    table = model._meta.db_table
    counter = f"SELECT seq FROM {_q(store.changes_table(table))}"
    if wrapper.vendor != "mysql":
        with consistent_read(wrapper, [table, store.changes_table(table)]) as cursor:
            cursor.execute(counter)
            yield int(cursor.fetchone()[0]), ""
        return
    copy = store.short_name(f"memdb_read_{table}")
    cursor = wrapper.cursor()
    cursor.execute(_drop_temporary(wrapper, _q(copy)))
    try:
        with consistent_read(wrapper, [table, store.changes_table(table)]) as cursor:
            cursor.execute(counter)
            seq = int(cursor.fetchone()[0])
            # Keyed by a BTREE: the batches are ranges of keys, which the HASH key of a
            # MEMORY table cannot find (each would scan and sort the whole table).
            engine = "InnoDB" if unfit_fields(model, wrapper) else "MEMORY"
            cursor.execute(
                f"CREATE TEMPORARY TABLE {_q(copy)} "
                f"(PRIMARY KEY USING BTREE ({_q(str(model._meta.pk.column))})) ENGINE={engine} "
                f"SELECT * FROM {_q(table)}"
            )
        yield seq, copy
    finally:
        if wrapper.connection is not None:
            with contextlib.suppress(DatabaseError), wrapper.cursor() as cursor:
                cursor.execute(_drop_temporary(wrapper, _q(copy)))


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


def dirty_models(conn: Conn, models: tuple[ModelType, ...]) -> list[ModelType]:
    """Which of ``models`` changed since their last spool (``store.is_dirty``), asked in
    one query: each table's counter against the ``spooled_seq`` of its state."""
    if not models:
        return []
    parts = [
        f"SELECT {i}, (SELECT seq FROM {_q(store.changes_table(m._meta.db_table))}), "
        f"(SELECT spooled_seq FROM {store.STATE_TABLE} WHERE label = ?)"
        for i, m in enumerate(models)
    ]
    rows = conn.execute(" UNION ALL ".join(parts), [m._meta.label for m in models]).fetchall()
    return [models[i] for i, seq, spooled in rows if seq is None or seq != (spooled or 0)]


def forget(model: ModelType, seq: int) -> None:
    """Drop the journal keys a spool read at counter ``seq`` stored; a ``TRUNCATE``
    before ``seq`` is stored too."""
    table = model._meta.db_table
    counter = _q(store.changes_table(table))
    try:
        with transaction(private()) as cursor:
            # The counter row first, as the writers take it: no deadlock with them.
            cursor.execute(f"SELECT seq FROM {counter} FOR UPDATE")
            if store.journal_column(model):
                journal = _q(store.journal_table(table))
                cursor.execute(f"DELETE FROM {journal} WHERE seq <= %s", [seq])
            cursor.execute(f"UPDATE {counter} SET whole = false WHERE whole AND seq <= %s", [seq])
    except DatabaseError as exc:
        store.logger.warning(
            "memdb: %s: its journal keeps the keys just stored (%s); the next delta "
            "stores those rows again",
            model._meta.label,
            exc,
        )


# -- restore ---------------------------------------------------------------------------


def load(jobs: list[Any]) -> None:
    """Replace the tables of ``jobs`` (``restore._Job``) with their images and journals.

    Each image is loaded into a temporary copy of its table first (a table of this
    session alone, dropped with it), while the table's writers go on: an error of the
    load (a value, a full table, a lost session) leaves the tables as they were. Then,
    in one transaction that holds the tables' writers back (readers go on; on MariaDB,
    whose ``MEMORY`` tables have no transactions, under write locks), each table is
    emptied and filled from its copy by the server, in one ``INSERT ... SELECT``.
    """
    from django.core.management.color import no_style

    from .exceptions import RestoreError
    from .restore import fold_image

    wrapper = private()
    prepared = []
    for job in jobs:
        with closing(sqlite3.connect(job.path, isolation_level=None)) as image:
            columns = fold_image(image, job)
            # Checked before the table is touched.
            held = image.execute(f"SELECT count(*) FROM {_q(job.model._meta.db_table)}")
            (count,) = held.fetchone()
        _check_rows(job, count)
        prepared.append((job, columns))
    labels = ", ".join(job.model._meta.label for job in jobs)
    copies: list[str] = []  # the loaded temporary copies, by job
    try:
        cursor = wrapper.cursor()
        for job, columns in prepared:
            table = _q(job.model._meta.db_table)
            copy = _temporary(wrapper, f"memdb_load_{job.model._meta.db_table}")
            cursor.execute(_drop_temporary(wrapper, copy))
            cursor.execute(
                f"CREATE TEMPORARY TABLE {copy} LIKE {table}"
                if wrapper.vendor == "mysql"
                else f"CREATE TEMPORARY TABLE {copy} (LIKE {table} INCLUDING DEFAULTS)"
            )
            copies.append(copy)
            job.rows = _insert_image(cursor, wrapper, job, columns, into=copy)
            _check_rows(job, job.rows)
        tables = []
        for job in jobs:
            table = job.model._meta.db_table
            tables += [table, store.changes_table(table)]
            if store.journal_column(job.model):
                tables.append(store.journal_table(table))
        tracked = [job.model._meta.db_table for job in jobs]
        with exclusive(wrapper, tables, tracked) as cursor:
            # Emptying a table would run the ON DELETE action of each key pointing at
            # it (DB_CASCADE): rows of other tables, not the restore's to change. Such
            # keys are dropped meanwhile; added back, each checks every row (a
            # snapshot that would orphan one fails the restore, which rolls back).
            keys = _delete_actions(wrapper, cursor, tracked)
            for child, name, _ in keys:
                cursor.execute(f"ALTER TABLE {child} DROP CONSTRAINT {_q(name)}")
            for job, _ in reversed(prepared):
                cursor.execute(f"DELETE FROM {_q(job.model._meta.db_table)}")
            for (job, columns), copy in zip(prepared, copies, strict=True):
                table = job.model._meta.db_table
                names = ", ".join(_q(c) for c in columns)
                cursor.execute(f"INSERT INTO {_q(table)} ({names}) SELECT {names} FROM {copy}")
                if store.journal_column(job.model):
                    cursor.execute(f"DELETE FROM {_q(store.journal_table(table))}")
                counter = _q(store.changes_table(table))
                cursor.execute(f'UPDATE {counter} SET "rows" = %s, whole = false', [job.rows])
                cursor.execute(f"SELECT seq FROM {counter}")
                job.seq = int(cursor.fetchone()[0])
            for child, name, definition in keys:
                cursor.execute(f"ALTER TABLE {child} ADD CONSTRAINT {_q(name)} {definition}")
            for sql in wrapper.ops.sequence_reset_sql(no_style(), [j.model for j in jobs]):
                cursor.execute(sql)
    except RestoreError:
        raise
    except DatabaseError as exc:
        raise RestoreError(f"{labels}: {store.describe(exc)}") from exc
    finally:
        if wrapper.connection is not None:
            for copy in copies:
                with contextlib.suppress(DatabaseError), wrapper.cursor() as cursor:
                    cursor.execute(_drop_temporary(wrapper, copy))


def _delete_actions(
    wrapper: BaseDatabaseWrapper, cursor: Any, tables: list[str]
) -> list[tuple[str, str, str]]:
    """The foreign keys pointing at ``tables`` whose ON DELETE action the server runs
    itself (Django 6.1's ``DB_CASCADE``, ``DB_SET_NULL``, ``DB_SET_DEFAULT``): the
    table that has each (quoted), its name and its definition. None on MariaDB, whose
    ``MEMORY`` tables have no foreign keys."""
    if wrapper.vendor == "mysql":
        return []
    cursor.execute(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE contype = 'f' AND confdeltype IN ('c', 'n', 'd') "
        "AND confrelid = ANY(%s::regclass[]) ORDER BY 1, 2",
        [[_q(table) for table in tables]],
    )
    return [tuple(row) for row in cursor.fetchall()]


def _temporary(wrapper: BaseDatabaseWrapper, name: str) -> str:
    """The quoted name of a temporary table of this session: on PostgreSQL in its
    temporary schema, so that no statement on it can reach a table of the store."""
    quoted = _q(store.short_name(name))
    return quoted if wrapper.vendor == "mysql" else f"pg_temp.{quoted}"


def _drop_temporary(wrapper: BaseDatabaseWrapper, copy: str) -> str:
    """Drop the temporary table ``copy`` (``_temporary``) if it is there, and nothing else."""
    return (
        f"DROP TEMPORARY TABLE IF EXISTS {copy}"
        if wrapper.vendor == "mysql"
        else f"DROP TABLE IF EXISTS {copy}"
    )


def _check_rows(job: Any, count: int) -> None:
    """Refuse a load whose row count is not the one its snapshot or journal recorded."""
    from .exceptions import RestoreError

    expected = job.deltas[-1][1] if job.deltas else job.snapshot.row_count
    if count != expected:
        what = "its journal" if job.deltas else "the snapshot"
        raise RestoreError(
            f"{job.model._meta.label}: {what} says {expected} rows but holds {count}"
        )


def _insert_image(
    cursor: Any, wrapper: BaseDatabaseWrapper, job: Any, columns: list[str], into: str = ""
) -> int:
    """Copy the folded image's rows into the server table (or the table ``into``, quoted),
    converted field by field."""
    model = job.model
    image = image_connection()
    by_column = {f.column: f for f in _fields(model)}
    fields = [by_column[c] for c in columns]
    converters = []  # per column: None (as it is), or (field, its column, converters)
    for f in fields:
        col = f.get_col(model._meta.db_table)
        convert = [*image.ops.get_db_converters(col), *f.get_db_converters(image)]
        converters.append(None if type(f) in _PLAIN and not convert else (f, col, convert))
    table = _q(model._meta.db_table)
    target = into or table
    insert = (
        f"INSERT INTO {target} ({', '.join(_q(c) for c in columns)}) "
        f"VALUES ({', '.join('%s' for _ in columns)})"
    )
    rows = 0
    names = ", ".join(_q(c) for c in columns)
    with closing(sqlite3.connect(job.path, isolation_level=None)) as source:
        # Through a table typed as the model's, as the other stores load it: SQLite's
        # column affinity turns each value into what the SQLite converters expect (an
        # untyped image column, a 0.0.6 JSON snapshot's, holds decimals as text).
        typed = _q("memdb_typed")
        source.execute(f"DROP TABLE IF EXISTS {typed}")
        source.execute(
            _image_table_sql(model).replace(f"CREATE TABLE {table}", f"CREATE TABLE {typed}", 1)
        )
        source.execute(f"INSERT INTO {typed} ({names}) SELECT {names} FROM {table}")
        result = source.execute(f"SELECT {names} FROM {typed}")
        while batch := result.fetchmany(BATCH):
            values = []
            for raw in batch:
                row = []
                for value, how in zip(raw, converters, strict=True):
                    if how is not None:
                        f, col, convert = how
                        for converter in convert:
                            value = converter(value, col, image)
                        value = f.get_db_prep_save(value, wrapper)
                    row.append(value)
                values.append(row)
            if wrapper.vendor == "postgresql":  # COPY: several times executemany's speed
                with cursor.cursor.copy(f"COPY {target} ({names}) FROM STDIN") as copy:
                    for row in values:
                        copy.write_row(row)
            else:
                cursor.executemany(insert, values)
            rows += len(values)
    return rows
