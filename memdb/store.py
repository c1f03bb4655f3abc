"""The memory store's lifecycle: keeper connection, schema, change tracking, lock retries.

One named shared-cache SQLite memory database per alias and process. A *keeper*
connection opened with the first Django connection holds it open for the life of the
process, so Django closing its per-thread connections (``CONN_MAX_AGE=0``) never drops
the data. At the first connection the tables are created from the current models, the
change-tracking triggers are installed and the snapshots restored; nothing of this runs
in ``AppConfig.ready()``.

Change tracking lives in the database: triggers on every memory table bump the one-row
counter table ``memdb_changes_<table>``, so every write path (ORM, bulk,
``QuerySet.update``, raw SQL) is seen, and rolled-back writes are not. A table is dirty
while its ``seq`` differs from ``TableState.spooled_seq``, the ``seq`` its last snapshot
was read at. One counter table per table keeps a long transaction on one table from
blocking the dirty checks (and spools) of the others.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .conf import memdb_settings

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("memdb")

T = TypeVar("T")


def changes_table(table: str) -> str:
    """The one-row table counting the rows written to ``table``."""
    return f"memdb_changes_{table}"


def is_lock_error(exc: BaseException) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (shared-cache table and schema locks included)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        cause = exc.__cause__
        return cause is not None and cause is not exc and is_lock_error(cause)
    return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def retry_locked(
    func: Callable[[], T], timeout: float | None = None, *, gate: Gate | None = None
) -> T:
    """Run ``func``, retrying while another connection holds a conflicting lock.

    In shared-cache mode SQLite reports table-lock conflicts at once (no busy timeout
    applies), and a failed statement has no effect, so retrying it is safe. With
    ``gate`` (closed by the caller), the gate is opened once ``Gate.HOLD`` seconds were
    spent waiting, so a long transaction holds back the other writers no longer.
    """
    started = time.monotonic()
    deadline = started + (memdb_settings.LOCK_TIMEOUT if timeout is None else timeout)
    delay = 0.0001
    while True:
        try:
            return func()
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
            now = time.monotonic()
            if not is_lock_error(exc) or now >= deadline:
                raise
            if gate is not None and now - started >= Gate.HOLD:
                gate.open()
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.005)


class Gate:
    """Holds new transactions back while a spool or restore waits for its table locks.

    SQLite's shared cache keeps no queue of lock waiters: a spool polling for a table's
    read lock can starve behind back-to-back write transactions, each starting the
    moment the last one ended. While a gate is closed, every Django connection to the
    memory database that starts a transaction (or an autocommit statement) waits at it;
    the transactions already running finish, and the spool gets its lock. The closer
    opens it as soon as it holds its lock, or after ``HOLD`` seconds of waiting (a long
    transaction), so other writers are held back briefly at most.
    """

    HOLD = 0.1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()

    def wait(self) -> None:
        """Pass the gate: at once while it is open."""
        if self._lock.locked() and not getattr(self._local, "closed", False):
            with self._lock:
                pass

    @contextmanager
    def closed(self) -> Iterator[Gate]:
        """Close the gate for the block (or until ``open()``); reentrant per thread."""
        if getattr(self._local, "closed", False):
            yield self
            return
        self._lock.acquire()
        self._local.closed = True
        try:
            yield self
        finally:
            self.open()

    def open(self) -> None:
        """Open the gate if this thread closed it (idempotent)."""
        if getattr(self._local, "closed", False):
            self._local.closed = False
            self._lock.release()


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class TableState:
    """What this process knows of one persistent table's snapshot."""

    #: Generation of the snapshot this process restored or last wrote; None: never looked.
    generation: int | None = None
    #: Why the last restore failed; the table is protected from spools while set.
    restore_error: str | None = None
    restored: bool = False
    #: The table's change counter when its last snapshot (spooled or restored) was read.
    spooled_seq: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Format, codec chain and key ids of the stored snapshot deltas build on (None:
    #: unknown here, so the next spool writes a whole snapshot).
    base: tuple[str, tuple[str, ...], tuple[str, ...]] | None = None
    #: Bytes of that snapshot, and of the deltas stored after it, and their number.
    base_bytes: int = 0
    journal_bytes: int = 0
    journal_count: int = 0
    #: The interval spooler left the table for its next tick because it was busy; it
    #: waits for it then (see ``memdb.spooler.flush``).
    skipped: bool = False


@dataclass
class StoreState:
    """One memory database (one NAME) of this process."""

    name: str
    keeper: sqlite3.Connection | None = None
    ready: bool = False
    booting: threading.Thread | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    tables: dict[str, TableState] = field(default_factory=dict)
    #: Lets spools and restores get their locks between writers' transactions.
    gate: Gate = field(default_factory=Gate)

    def table(self, label: str) -> TableState:
        with self.lock:
            return self.tables.setdefault(label, TableState())


_states: dict[str, StoreState] = {}
_states_lock = threading.Lock()


def state_for(name: str) -> StoreState:
    with _states_lock:
        state = _states.get(name)
        if state is None:
            state = _states[name] = StoreState(name=name)
        return state


def used_in_this_process() -> bool:
    """True once a memory database was opened and built here."""
    with _states_lock:
        return any(state.ready for state in _states.values())


def current_name() -> str:
    from django.db import connections

    return connections[memdb_settings.ALIAS].settings_dict["NAME"]


def current_state() -> StoreState:
    return state_for(current_name())


def open_raw(name: str) -> sqlite3.Connection:
    """A plain sqlite3 connection to the memory database, in autocommit mode."""
    return sqlite3.connect(name, uri=True, isolation_level=None, check_same_thread=False)


def keep_alive(name: str) -> None:
    """Open the keeper connection of ``name`` once per process."""
    state = state_for(name)
    with state.lock:
        if state.keeper is None:
            state.keeper = open_raw(name)


_raw = threading.local()


@contextmanager
def raw_connection(name: str | None = None) -> Iterator[sqlite3.Connection]:
    """A private connection to the memory database for spool and restore work.

    It is separate from Django's, so a snapshot sees committed data only and never
    joins a transaction the caller has open. Each thread keeps its connection for the
    next use (opening one costs more than a ``commit`` write's own work); one left in
    a transaction or by an error is closed instead.
    """
    ensure_ready()
    name = name or current_name()
    idle: dict[str, sqlite3.Connection] = _raw.__dict__.setdefault("idle", {})
    conn = idle.pop(name, None) or open_raw(name)
    try:
        yield conn
    except BaseException:
        conn.close()
        raise
    if conn.in_transaction or name in idle:
        conn.close()
    else:
        idle[name] = conn


def ensure_ready() -> None:
    """Open the memory alias (and so build and restore it) if this process has not yet."""
    from django.db import connections

    if not current_state().ready:
        connections[memdb_settings.ALIAS].ensure_connection()


def bootstrap(wrapper: BaseDatabaseWrapper) -> None:
    """Create tables and triggers, restore snapshots, start the interval spooler.

    Runs once per memory database and process, at its first connection. Other threads
    wait until it is done; the booting thread's own nested use passes through.
    """
    state = state_for(wrapper.settings_dict["NAME"])
    if state.ready:
        return
    with state.lock:
        if state.ready or state.booting is threading.current_thread():
            return
        state.booting = threading.current_thread()
        try:
            create_schema(wrapper)
            from .spooler import remove_stale_scratch_files

            remove_stale_scratch_files()
            if memdb_settings.RESTORE_ON_START:
                from .restore import restore_at_start

                restore_at_start(state)
            state.ready = True
        finally:
            state.booting = None
    _warn_if_multi_process()
    from . import policies

    policies.process_started()


#: The kind of store this module keeps: a SQLite shared-cache memory database private to
#: one process (reported by ``api.tables()``).
STORE = "process"


def _warn_if_multi_process() -> None:
    """Log once per process when its persistent tables are one copy among several."""
    from .deployment import process_store_warning
    from .registry import persistent_models

    if persistent_models() and (warning := process_store_warning()):
        logger.warning("memdb: %s", warning)


def create_schema(wrapper: BaseDatabaseWrapper) -> None:
    """Create missing memory tables from the current models, then the tracking triggers."""
    from .registry import memory_models

    models = memory_models()
    # Creating a model creates its auto-created M2M tables too, hence two rounds.
    for round_models in ([m for m in models if not m._meta.auto_created], models):
        with wrapper.cursor() as cursor:
            existing = set(wrapper.introspection.table_names(cursor))
        missing = [m for m in round_models if m._meta.db_table not in existing]
        if missing:
            with wrapper.schema_editor() as editor:
                for model in missing:
                    editor.create_model(model)
    statements = []
    for model in models:
        table = model._meta.db_table
        counter = quote(changes_table(table))
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {counter} "
            f"(seq INTEGER NOT NULL, rows INTEGER NOT NULL DEFAULT 0)"
        )
        statements.append(
            f"INSERT INTO {counter} (seq, rows) SELECT 0, (SELECT count(*) FROM {quote(table)}) "
            f"WHERE NOT EXISTS (SELECT 1 FROM {counter})"
        )
        if journal_column(model):
            statements.append(
                f"CREATE TABLE IF NOT EXISTS {quote(journal_table(table))} "
                f"(pk PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID"
            )
        statements.extend(create_triggers_sql(model))
    with wrapper.cursor() as cursor:
        for sql in statements:
            cursor.execute(sql)


def journal_table(table: str) -> str:
    """The table of the primary keys written to ``table`` since its last spool.

    Each row holds the change counter's value of its last write, so a spool that read
    the table at counter ``seq`` forgets exactly the keys it stored (``seq`` or less).
    """
    return f"memdb_journal_{table}"


def journal_column(model: Any) -> str | None:
    """The primary key column a persistent model's journal records; None: no journal.

    Memory-only models, and models whose key is not one column (a composite primary
    key), are spooled whole each time.
    """
    from .registry import is_persistent

    pk = model._meta.pk
    if not is_persistent(model) or pk is None or not getattr(pk, "column", None):
        return None
    return str(pk.column)


TRIGGER_EVENTS = ("INSERT", "UPDATE", "DELETE")


def create_triggers_sql(model: Any) -> list[str]:
    """The triggers that count every row written to the model's table (and its row
    count) in its counter table, and record the written keys in its journal table."""
    table = model._meta.db_table
    counter = quote(changes_table(table))
    column = journal_column(model)
    statements = []
    for event in TRIGGER_EVENTS:
        rows = {"INSERT": ", rows = rows + 1", "DELETE": ", rows = rows - 1"}.get(event, "")
        body = [f"UPDATE {counter} SET seq = seq + 1{rows};"]
        if column is not None:
            keys = {"INSERT": ["NEW"], "UPDATE": ["OLD", "NEW"], "DELETE": ["OLD"]}[event]
            for ref in keys:
                body.append(
                    f"INSERT INTO {quote(journal_table(table))} (pk, seq) "
                    f"VALUES ({ref}.{quote(column)}, (SELECT seq FROM {counter})) "
                    f"ON CONFLICT (pk) DO UPDATE SET seq = excluded.seq;"
                )
        statements.append(
            f"CREATE TRIGGER IF NOT EXISTS {quote(f'memdb_{table}_{event.lower()}')} "
            f"AFTER {event} ON {quote(table)} BEGIN {' '.join(body)} END"
        )
    return statements


def drop_triggers_sql(table: str) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS {quote(f'memdb_{table}_{event.lower()}')}"
        for event in TRIGGER_EVENTS
    ]


def reset_tracking(conn: sqlite3.Connection, model: Any) -> None:
    """After a restore: the journal is empty and the counter holds the row count."""
    table = model._meta.db_table
    if journal_column(model):
        conn.execute(f"DELETE FROM {quote(journal_table(table))}")
    conn.execute(
        f"UPDATE {quote(changes_table(table))} SET rows = (SELECT count(*) FROM {quote(table)})"
    )


def read_seq(
    conn: sqlite3.Connection,
    table: str,
    *,
    timeout: float | None = None,
    gate: Gate | None = None,
) -> int:
    """The change counter of ``table``; waits for a writer of that table only."""
    sql = f"SELECT seq FROM {quote(changes_table(table))}"
    return int(retry_locked(lambda: conn.execute(sql).fetchone()[0], timeout, gate=gate))


def is_dirty(state: StoreState, model: Any, seq: int) -> bool:
    return seq != state.table(model._meta.label).spooled_seq


def count_rows(conn: sqlite3.Connection, table: str) -> int:
    sql = f"SELECT count(*) FROM {quote(table)}"
    return int(retry_locked(lambda: conn.execute(sql).fetchone()[0]))


def run_locked_transaction(
    conn: sqlite3.Connection, body: Callable[[], T], *, immediate: bool, gate: Gate | None = None
) -> T:
    """Run ``body`` inside BEGIN/COMMIT on ``conn``, retrying lock conflicts as a whole.

    With ``gate`` (closed by the caller), see ``retry_locked``; ``body`` opens it once
    its first statement holds the locks it needs.
    """

    def attempt() -> T:
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            result = body()
            conn.execute("COMMIT")
            return result
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    return retry_locked(attempt, gate=gate)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
