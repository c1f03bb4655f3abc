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

import contextlib
import fcntl
import json
import logging
import os
import random
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

from .conf import memdb_settings

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("memdb")

T = TypeVar("T")


def changes_table(table: str) -> str:
    """The one-row table counting the rows written to ``table``."""
    return short_name(f"memdb_changes_{table}")


def short_name(name: str) -> str:
    """``name``, or a name at most 60 characters long made of it and its hash (the
    server stores' identifiers are limited: 63 characters on PostgreSQL, 64 on MariaDB)."""
    if len(name) <= 60:
        return name
    import hashlib

    return f"{name[:51]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


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
    try:
        return func()  # almost always at once: the clock starts at the first conflict
    except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
        if not is_lock_error(exc) or timeout == 0:
            raise
    started = time.monotonic()
    deadline = started + (memdb_settings.LOCK_TIMEOUT if timeout is None else timeout)
    delay = 0.0001
    while True:
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.005)
        try:
            return func()
        except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
            now = time.monotonic()
            if not is_lock_error(exc) or now >= deadline:
                raise
            if gate is not None and now - started >= Gate.HOLD:
                gate.open()


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
    """What a store knows of one persistent table's snapshot.

    A ``process`` store keeps it in this process (``StoreState.tables``), as it keeps
    the table. A ``host`` store keeps it in its own file (``memdb_state``), beside the
    table, for every worker: ``claim()`` reads it under the table's spool lock and
    writes it back.
    """

    #: Generation of the snapshot this store restored or last wrote; None: never looked.
    generation: int | None = None
    #: Why the last restore failed; the table is protected from spools while set.
    restore_error: str | None = None
    restored: bool = False
    #: The table's change counter when its last snapshot (spooled or restored) was read.
    spooled_seq: int = 0
    #: Format, codec chain and key ids of the stored snapshot deltas build on (None:
    #: unknown here, so the next spool writes a whole snapshot).
    base: tuple[str, tuple[str, ...], tuple[str, ...]] | None = None
    #: Bytes of that snapshot, and of the deltas stored after it, and their number.
    base_bytes: int = 0
    journal_bytes: int = 0
    journal_count: int = 0
    #: ``leader`` was storing the generation after ``generation`` and has not said how
    #: that ended (it was killed, or its storage write failed): the next claim looks.
    pending: bool = False
    #: Who led the table's last spool (``host:pid``) and when (seconds since the epoch).
    leader: str | None = None
    led_at: float | None = None

    def dump(self) -> str:
        return json.dumps(
            {f.name: getattr(self, f.name) for f in fields(self) if f.name != "spooled_seq"}
        )

    @classmethod
    def load(cls, spooled_seq: int, data: str) -> TableState:
        values = json.loads(data)
        known = {f.name for f in fields(cls)}
        state = cls(spooled_seq=spooled_seq, **{k: v for k, v in values.items() if k in known})
        if state.base is not None:
            fmt, chain, keys = state.base
            state.base = (fmt, tuple(chain), tuple(keys))
        return state


STATE_TABLE = "memdb_state"
META_TABLE = "memdb_meta"
_state_conns = threading.local()


def state_connection(state: StoreState) -> Any:
    """This thread's connection to a ``host`` store's state database (a ``server``
    store's state is on the server: its private connection).

    The state lives in a database of its own beside the store's file, so recording a
    spool never waits for the writers of the tables (SQLite has one writer at a time
    per database), and a spool's reads of the tables never wait either (WAL).
    """
    if state.kind == "server":
        return server.conn()
    conns: dict[str, sqlite3.Connection] = _state_conns.__dict__.setdefault("conns", {})
    conn = conns.get(state.name)
    if conn is None:
        path = os.path.join(aux_dir(state.name), "state.sqlite3")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=False,
            timeout=float(memdb_settings.LOCK_TIMEOUT),
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(
            f'CREATE TABLE IF NOT EXISTS {META_TABLE} ("key" TEXT PRIMARY KEY, '
            f"value TEXT NOT NULL) WITHOUT ROWID"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {STATE_TABLE} (label TEXT PRIMARY KEY, "
            f"spooled_seq INTEGER NOT NULL DEFAULT 0, data TEXT NOT NULL DEFAULT '{{}}') "
            f"WITHOUT ROWID"
        )
        conns[state.name] = conn
    return conn


def load_table(state: StoreState, label: str) -> TableState:
    """The recorded ``TableState`` of ``label`` in a ``host`` store (fresh if none)."""
    sql = f"SELECT spooled_seq, data FROM {STATE_TABLE} WHERE label = ?"
    row = state_connection(state).execute(sql, (label,)).fetchone()
    return TableState() if row is None else TableState.load(*row)


def upsert_sql(conn: Any, table: str, columns: list[str]) -> str:
    """An INSERT of one row of ``columns`` into ``table`` that updates the row with the
    same first column instead, in the words of ``conn``'s database (a store's
    connection: SQLite, or the server store's ``Conn``, PostgreSQL or MariaDB)."""
    key, *others = map(quote, columns)
    names, marks = ", ".join(map(quote, columns)), ", ".join("?" * len(columns))
    head = f"INSERT INTO {table} ({names}) VALUES ({marks}) "
    if getattr(conn, "vendor", "sqlite") == "mysql":
        return head + "ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in others)
    return (
        head
        + f"ON CONFLICT ({key}) DO UPDATE SET "
        + ", ".join(f"{c} = excluded.{c}" for c in others)
    )


def save_table(state: StoreState, label: str, table: TableState) -> None:
    conn = state_connection(state)
    sql = upsert_sql(conn, STATE_TABLE, ["label", "spooled_seq", "data"])
    conn.execute(sql, (label, table.spooled_seq, table.dump()))


def reset_tables(state: StoreState, seqs: dict[str, int]) -> None:
    """Forget every table's state; each of ``seqs`` is clean at its counter (tests)."""
    with state.lock:
        state.tables.clear()
        state.skipped.clear()
        if state.shared:
            state_connection(state).execute(f"DELETE FROM {STATE_TABLE}")
        for label, seq in seqs.items():
            state.tables[label] = TableState(spooled_seq=seq)
            if state.shared:
                save_table(state, label, state.tables[label])


def get_meta(state: StoreState) -> dict[str, str]:
    sql = f'SELECT "key", value FROM {META_TABLE}'
    return dict(state_connection(state).execute(sql).fetchall())


def set_meta(state: StoreState, key: str, value: str) -> None:
    conn = state_connection(state)
    conn.execute(upsert_sql(conn, META_TABLE, ["key", "value"]), (key, value))


class Busy(Exception):
    """Another process leads the table's spool right now (``claim(wait=False)``)."""


class StoreLost(Exception):
    """The server emptied a ``server`` store's tables (a crash, a restart) since this
    process opened it: they must be restored before anything is spooled."""


@dataclass
class StoreState:
    """One memory database (one NAME) as this process sees it."""

    name: str
    keeper: sqlite3.Connection | None = None
    ready: bool = False
    booting: threading.Thread | None = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: Each table's spool lock among this process's threads (``claim``).
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    #: Each table's state: the state itself in a ``process`` store, the copy last read
    #: from the file in a ``host`` store.
    tables: dict[str, TableState] = field(default_factory=dict)
    #: Tables the interval spooler left for its next tick because they were busy; it
    #: waits for them then (see ``memdb.spooler.flush``).
    skipped: set[str] = field(default_factory=set)
    #: Lets spools and restores get their locks between writers' transactions.
    gate: Gate = field(default_factory=Gate)
    #: The id of the ``host`` store's file this process opened (``prepare``), or of the
    #: ``server`` store's tables.
    store_id: str | None = None
    #: The thread restoring a ``server`` store the server lost (``server.recover``).
    recovering: threading.Thread | None = None

    @property
    def kind(self) -> str:
        """``process`` (a shared-cache memory database), ``host`` (a file) or
        ``server`` (tables on the PostgreSQL server)."""
        return store_kind(self.name)

    @property
    def shared(self) -> bool:
        """Whether other processes use this store too (its state outlives this one)."""
        return self.kind != "process"

    def lock_for(self, label: str) -> threading.Lock:
        with self.lock:
            return self.locks.setdefault(label, threading.Lock())

    def table(self, label: str) -> TableState:
        """This process's ``TableState`` of ``label`` (see ``claim`` for a shared store)."""
        with self.lock:
            return self.tables.setdefault(label, TableState())

    def table_states(self) -> dict[str, TableState]:
        """Every table's state as the store has it now."""
        if self.shared:
            sql = f"SELECT label, spooled_seq, data FROM {STATE_TABLE}"
            rows = state_connection(self).execute(sql).fetchall()
            return {label: TableState.load(seq, data) for label, seq, data in rows}
        with self.lock:
            return dict(self.tables)


def store_kind(name: str) -> str:
    """The store a state name (``state_name``) is: ``process``, ``host`` or ``server``."""
    if name.startswith("server:"):
        return "server"
    return "process" if "mode=memory" in name else "host"


def state_name(settings_dict: dict[str, Any]) -> str:
    """The name of the store of a memory alias's settings: its SQLite NAME, or the
    server and database of a ``server`` store."""
    from . import SERVER_ENGINES

    if settings_dict.get("ENGINE") in SERVER_ENGINES.values():
        return server.state_name(settings_dict)
    return str(settings_dict["NAME"])


def host_path(name: str) -> str:
    """The file of a ``host`` store (its NAME without a ``file:`` URI's trimmings)."""
    if name.startswith("file:"):
        name = name[len("file:") :].split("?", 1)[0]
    return name


def aux_dir(name: str) -> str:
    """The directory of a ``host`` store's lock files and state, beside its file."""
    return host_path(name) + ".memdb"


@contextmanager
def _file_lock(path: str, *, wait: bool) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (released by the kernel if this process dies)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise Busy(path) from None
        yield
    finally:
        os.close(fd)


@contextmanager
def _process_lock(state: StoreState, name: str, *, wait: bool) -> Iterator[None]:
    """One process of a shared store at a time: a file lock beside a ``host`` store's
    file, an advisory lock on a ``server`` store's server (``Busy`` if not ``wait``)."""
    if state.kind == "server":
        with server.advisory_lock(state, name, wait=wait):
            yield
        return
    with _file_lock(os.path.join(aux_dir(state.name), f"{name}.lock"), wait=wait):
        yield


@contextmanager
def claim(state: StoreState, label: str, *, wait: bool = True) -> Iterator[TableState]:
    """Lead ``label``'s spools and restores in this store, and hold its state.

    One thread of this process at a time (a thread lock, always waited for) and, in a
    shared store, one process of all that share it (a file lock on the host, an
    advisory lock on the server; ``wait=False`` raises ``Busy`` instead of waiting
    while another process leads). There the table's
    ``TableState`` is read from the store's state database once the locks are held
    and written back at the end, even after an error. A spool also records itself as
    ``pending`` before it stores anything, so if this process dies before the end, the
    next leader finds out from storage how that ended.
    """
    with state.lock_for(label), contextlib.ExitStack() as stack:
        if not state.shared:
            yield state.table(label)
            return
        stack.enter_context(_process_lock(state, label, wait=wait))
        if state.kind == "server":
            server.check(state, label)
        elif state.store_id is not None and get_meta(state).get("store") != state.store_id:
            from .exceptions import MemdbError

            raise MemdbError(
                f"{label}: the host store's file {host_path(state.name)} was replaced "
                f"since this process opened it (deleted, or made anew); this process "
                f"still writes the old one: restart it"
            )
        table = load_table(state, label)
        with state.lock:
            state.tables[label] = table
        try:
            yield table
        finally:
            save_table(state, label, table)


def restored_if_lost(state: StoreState, action: Callable[[], T]) -> T:
    """Run ``action`` (which claims tables); if the server lost the store meanwhile
    (``StoreLost``), restore the store first (``server.recover``), then run it again."""
    for attempt in range(RECOVERY_TRIES):
        try:
            return action()
        except StoreLost as exc:
            if attempt == 0:
                logger.warning("memdb: %s", exc)
            server.recover(state)  # or wait for the thread or process restoring it
    return action()


#: Times an action that met a lost ``server`` store waits for its restore and tries
#: again (another thread may be restoring it meanwhile).
RECOVERY_TRIES = 5


@contextmanager
def compaction_lock(state: StoreState, label: str) -> Iterator[None]:
    """Held while one process compacts ``label``'s journal (``Busy`` if another does)."""
    if not state.shared:
        yield
        return
    with _process_lock(state, f"{label}.compact", wait=False):
        yield


@contextmanager
def boot_lock(state: StoreState) -> Iterator[None]:
    """Held while a store is built and restored: one process of those sharing it at a
    time."""
    if not state.shared:
        yield
        return
    with _process_lock(state, "boot", wait=True):
        yield


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

    return state_name(connections[memdb_settings.ALIAS].settings_dict)


def current_state() -> StoreState:
    return state_for(current_name())


def image_connection() -> BaseDatabaseWrapper:
    """The Django SQLite connection whose field values a snapshot image holds: the
    memory alias's own, or for a ``server`` store one of no database."""
    from django.db import connections

    if current_state().kind == "server":
        return server.image_connection()
    return connections[memdb_settings.ALIAS]


def open_raw(name: str) -> sqlite3.Connection:
    """A plain sqlite3 connection to the memory database, in autocommit mode.

    No busy timeout: SQLite's own waits get longer and longer (up to 100 ms a try), so
    back-to-back writers would starve a spool; ``retry_locked`` retries every few
    milliseconds instead (a shared-cache memory database has no busy timeout anyway).
    """
    return sqlite3.connect(name, uri=True, isolation_level=None, check_same_thread=False, timeout=0)


def keep_alive(name: str) -> None:
    """Open the keeper connection of ``name`` once per process."""
    state = state_for(name)
    with state.lock:
        if state.keeper is None:
            state.keeper = open_raw(name)


_raw = threading.local()


@contextmanager
def raw_connection(name: str | None = None) -> Iterator[Any]:
    """A private connection to the memory database for spool and restore work.

    It is separate from Django's, so a snapshot sees committed data only and never
    joins a transaction the caller has open. Each thread keeps its connection for the
    next use (opening one costs more than a ``commit`` write's own work); one left in
    a transaction or by an error is closed instead.
    """
    ensure_ready()
    name = name or current_name()
    if store_kind(name) == "server":
        yield server.conn()
        return
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
    wait until it is done; the booting thread's own nested use passes through. In a
    ``host`` store the other processes of the host wait too (``boot_lock``), and only
    the first one after the store's file was made restores it.
    """
    state = state_for(state_name(wrapper.settings_dict))
    if state.ready:
        return
    with state.lock:
        if state.ready or state.booting is threading.current_thread():
            return
        state.booting = threading.current_thread()
        try:
            with boot_lock(state):
                fresh = prepare(wrapper, state)
                created = create_schema(wrapper)
                from .spooler import remove_stale_scratch_files

                remove_stale_scratch_files()
                if memdb_settings.RESTORE_ON_START and fresh:
                    from .restore import restore_at_start

                    restored = (
                        server.restore_fresh(state, created)
                        if state.kind == "server"
                        else restore_at_start(state)
                    )
                    # Only once storage could be read: until then, every start tries.
                    if restored is not None and state.shared:
                        set_meta(state, "restored", str(time.time()))
            state.ready = True
        finally:
            state.booting = None
    _warn_if_multi_process(state)
    from . import policies

    policies.process_started()


def boot_id() -> str:
    """This boot of the host (Linux), so a ``host`` store left by an earlier boot is seen."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def prepare(wrapper: BaseDatabaseWrapper, state: StoreState) -> bool:
    """Set the store's file up; True if it holds nothing restored yet.

    A ``host`` store runs in WAL mode, so readers and the spooler's snapshot reads never
    wait for writers. A file an earlier boot of the host left (a HOST_PATH on disk)
    is emptied, unless ``HOST_KEEP_ON_REBOOT``: its tables are then as that boot left
    them, and the snapshots in storage (the same or newer) are not restored over them.
    A ``process`` store is new in every process.
    """
    if not state.shared:
        return True
    if state.kind == "server":
        return server.prepare(state)
    raw = wrapper.connection

    def execute(sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        # The booted workers of the host use the file meanwhile: even the WAL pragma
        # may find it locked (this connection has no busy timeout: see retry_locked).
        return retry_locked(lambda: raw.execute(sql, params))

    execute("PRAGMA journal_mode = WAL")
    meta = get_meta(state)
    if meta.get("boot", boot_id()) != boot_id() and not memdb_settings.HOST_KEEP_ON_REBOOT:
        logger.info("memdb: %s was left by an earlier boot; emptied", host_path(state.name))
        tables = execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        _drop_tables(raw, [name for (name,) in tables])
    # The state database belongs to one store file: a new file (deleted, or replaced
    # by the test runner) starts with no state, whatever the old file left.
    execute(f"CREATE TABLE IF NOT EXISTS {STORE_ID_TABLE} (id TEXT NOT NULL)")
    row = execute(f"SELECT id FROM {STORE_ID_TABLE}").fetchone()
    if row is None:
        row = (uuid.uuid4().hex,)
        execute(f"INSERT INTO {STORE_ID_TABLE} (id) VALUES (?)", row)
    if meta.get("store") != row[0]:
        for table in (META_TABLE, STATE_TABLE):
            state_connection(state).execute(f"DELETE FROM {table}")
        meta = {}
        set_meta(state, "store", row[0])
    state.store_id = row[0]
    set_meta(state, "boot", boot_id())
    return "restored" not in meta


#: The one-row table of a ``host`` store's file that names it (``prepare``).
STORE_ID_TABLE = "memdb_store"


def _drop_tables(raw: sqlite3.Connection, tables: list[str]) -> None:
    """Drop ``tables`` (their triggers and indexes go with them), foreign keys aside."""
    raw.execute("PRAGMA foreign_keys = OFF")
    try:
        for table in tables:
            raw.execute(f"DROP TABLE IF EXISTS {quote(table)}")
    finally:
        raw.execute("PRAGMA foreign_keys = ON")


def _warn_if_multi_process(state: StoreState) -> None:
    """Log once per process when its persistent tables are one copy among several."""
    from .deployment import process_store_warning
    from .registry import persistent_models

    if state.kind != "process":
        return
    if persistent_models() and (warning := process_store_warning()):
        logger.warning("memdb: %s", warning)


def create_schema(wrapper: BaseDatabaseWrapper) -> set[str]:
    """Create missing memory tables from the current models, then the tracking triggers
    (and bring a kept ``host`` store's tables up to their models: ``_migrate_drifted``).
    Returns the tables a ``server`` store created (no other store needs to know)."""
    from .registry import memory_models

    if state_for(state_name(wrapper.settings_dict)).kind == "server":
        return server.create_schema(wrapper)
    models = memory_models()
    _migrate_drifted(wrapper, models)
    create_missing_tables(wrapper, models)
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
    return set()


def create_missing_tables(
    wrapper: BaseDatabaseWrapper,
    models: list[Any],
    made_in: Callable[[Any], AbstractContextManager[Any]] | None = None,
) -> set[str]:
    """Create the tables of ``models`` that ``wrapper``'s database lacks, by Django's
    schema editor; the tables created. ``made_in(model)``, if given, is a context each
    model's table is created in (the server store's choice of MariaDB engine)."""
    created: set[str] = set()
    # Creating a model creates its auto-created M2M tables too, hence two rounds.
    for round_models in ([m for m in models if not m._meta.auto_created], models):
        with wrapper.cursor() as cursor:
            existing = set(wrapper.introspection.table_names(cursor))
        missing = [m for m in round_models if m._meta.db_table not in existing]
        if missing:
            with wrapper.schema_editor() as editor:
                for model in missing:
                    with made_in(model) if made_in else nullcontext():
                        editor.create_model(model)
            created |= {m._meta.db_table for m in missing}
    return created


def _migrate_drifted(wrapper: BaseDatabaseWrapper, models: list[Any]) -> None:
    """Bring the tables of a ``host`` store kept across a deploy up to their models.

    A table whose definition or indexes differ from what its model makes now (compared
    as SQL with the model's table made in a scratch database) is made again in place,
    in one ``BEGIN IMMEDIATE`` transaction (the other processes' writers wait for it),
    the way SQLite documents for any change ``ALTER TABLE`` cannot make: a new table
    from the model, the rows copied over by column name (a new column gets its
    default), the old table dropped, the new one renamed, its indexes and change
    tracking made. No row is lost, spooled or not, and nothing is read from storage.
    A new column that has no default cannot be filled: that table is left as it is,
    with an error in the log. The table's next spool stores it whole.
    """
    state = state_for(state_name(wrapper.settings_dict))
    if state.kind != "host":
        return  # a process store is new: its tables are the models'
    with wrapper.cursor() as cursor:
        existing = set(wrapper.introspection.table_names(cursor))
    for model in models:
        table = model._meta.db_table
        if table not in existing or model._meta.auto_created:
            continue
        statements = _model_sql(wrapper, model)
        scratch = sqlite3.connect(":memory:")
        try:
            for sql in statements:
                scratch.execute(sql)
            wanted = _definition(scratch, table)
        finally:
            scratch.close()
        if _definition(wrapper.connection, table) != wanted:
            _remake(wrapper, state, model, statements)


def _model_sql(wrapper: BaseDatabaseWrapper, model: Any) -> list[str]:
    """The SQL that makes ``model``'s table as the model is now (its M2M tables too)."""
    with wrapper.schema_editor(collect_sql=True, atomic=False) as editor:
        editor.create_model(model)
    return [sql.rstrip(";") for sql in editor.collected_sql]


def _definition(conn: sqlite3.Connection, table: str) -> tuple[str, ...]:
    """How a table is made: its CREATE TABLE (without its name) and CREATE INDEX SQL."""
    rows = conn.execute(
        "SELECT type, sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL "
        "AND type IN ('table', 'index') ORDER BY type DESC, sql",
        (table,),
    ).fetchall()
    return tuple(
        _CREATE_TABLE.sub("CREATE TABLE", sql) if kind == "table" else sql for kind, sql in rows
    )


_CREATE_TABLE = re.compile(r'^CREATE TABLE\s+("(?:[^"]|"")+"|\S+)', re.IGNORECASE)


def _remake(
    wrapper: BaseDatabaseWrapper, state: StoreState, model: Any, statements: list[str]
) -> None:
    from .restore import column_defaults

    raw = wrapper.connection
    table, label = model._meta.db_table, model._meta.label
    q = quote(table)
    create = [sql for sql in statements if _makes(sql, table)]
    on_table = re.compile(rf"^CREATE (UNIQUE )?INDEX .* ON {re.escape(q)} ?\(")
    indexes = [sql for sql in statements if on_table.match(sql)]
    old = {row[1] for row in raw.execute(f"PRAGMA table_xinfo({q})") if row[6] == 0}
    has_rows = raw.execute(f"SELECT EXISTS (SELECT 1 FROM {q})").fetchone()[0]
    fill = column_defaults(model)
    columns, values, params = [], [], []
    for f in model._meta.local_concrete_fields:
        if not f.column or getattr(f, "generated", False):
            continue
        if f.column in old:
            columns.append(quote(f.column))
            values.append(quote(f.column))
        elif f.column in fill:
            columns.append(quote(f.column))
            values.append("?")
            params.append(fill[f.column])
        elif has_rows:
            logger.error(
                "memdb: the memory table %s is not as its model %s makes it, and its new "
                "field %r has no default to fill its rows with; it is left as it is. Give "
                "the field a default, or empty the host store (spool, then delete %s)",
                table,
                label,
                f.name,
                host_path(state.name),
            )
            return
    new = f"memdb_new_{table}"
    # AUTOINCREMENT keeps ids of deleted rows from coming back: keep its counter.
    has_sequence = raw.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'"
    ).fetchone()
    sequence = (
        raw.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        if has_sequence
        else None
    )
    with claim(state, label) as table_state:
        raw.execute("PRAGMA foreign_keys = OFF")
        raw.execute("PRAGMA legacy_alter_table = ON")  # other tables' REFERENCES stay
        try:
            raw.execute("BEGIN IMMEDIATE")
            try:
                (sql,) = create
                raw.execute(f"DROP TABLE IF EXISTS {quote(new)}")
                raw.execute(_CREATE_TABLE.sub(f"CREATE TABLE {quote(new)}", sql, count=1))
                raw.execute(
                    f"INSERT INTO {quote(new)} ({', '.join(columns)}) "
                    f"SELECT {', '.join(values)} FROM {q}",
                    params,
                )
                raw.execute(f"DROP TABLE {q}")
                raw.execute(f"ALTER TABLE {quote(new)} RENAME TO {q}")
                for sql in indexes:
                    raw.execute(sql)
                for sql in create_triggers_sql(model):
                    raw.execute(sql)
                if sequence is not None:
                    raw.execute(
                        "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?",
                        (sequence[0], table),
                    )
                raw.execute("COMMIT")
            except BaseException:
                raw.execute("ROLLBACK")
                raise
        finally:
            raw.execute("PRAGMA legacy_alter_table = OFF")
            raw.execute("PRAGMA foreign_keys = ON")
        table_state.base = None  # the next spool stores the whole table
    logger.warning(
        "memdb: the memory table %s was not as its model %s makes it now; made again, "
        "its rows kept",
        table,
        label,
    )


def _makes(sql: str, table: str) -> bool:
    """Whether ``sql`` is the CREATE TABLE statement of ``table``."""
    match = _CREATE_TABLE.match(sql)
    return match is not None and match.group(1) in (quote(table), table)


def journal_table(table: str) -> str:
    """The table of the primary keys written to ``table`` since its last spool.

    Each row holds the change counter's value of its last write, so a spool that read
    the table at counter ``seq`` forgets exactly the keys it stored (``seq`` or less).
    """
    return short_name(f"memdb_journal_{table}")


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
    row = retry_locked(lambda: conn.execute(sql).fetchone(), timeout, gate=gate)
    # No counter: a server store's tables were emptied by the server (dirty, so the
    # next spool finds out and restores them: ``StoreLost``).
    return -1 if row is None else int(row[0])


def is_dirty(
    state: StoreState,
    conn: sqlite3.Connection,
    model: Any,
    *,
    timeout: float | None = None,
    gate: Gate | None = None,
) -> bool:
    """Whether ``model``'s table changed since its last snapshot was read: its change
    counter against the ``spooled_seq`` of its state. Waits for a writer of that table
    only."""
    seq = read_seq(conn, model._meta.db_table, timeout=timeout, gate=gate)
    label = model._meta.label
    if not state.shared:
        return seq != state.table(label).spooled_seq
    sql = f"SELECT spooled_seq FROM {STATE_TABLE} WHERE label = ?"
    row = state_connection(state).execute(sql, (label,)).fetchone()
    return seq != (row[0] if row else 0)


def dirty_models(state: StoreState, conn: Any, models: Iterable[Any]) -> list[Any]:
    """Which of ``models`` changed since their last spool (``is_dirty``, waiting for
    writers); on the server store asked in one query for all (one round trip)."""
    if state.kind == "server":
        return server.dirty_models(conn, tuple(models))
    return [model for model in models if is_dirty(state, conn, model)]


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


def _after_fork_in_child() -> None:
    """A forked worker (gunicorn ``--preload`` after the parent used memdb) starts clean.

    SQLite forbids using a connection across ``fork()``: the child drops its parent's
    (without closing them, which would touch the parent's files) and opens its own.
    Locks another thread of the parent held at the fork would stay held forever in the
    child: they are made anew. The interval spooler, a thread, did not survive the
    fork: it is started again.
    """
    global _state_conns, _raw, _states_lock
    _states_lock = threading.Lock()
    _state_conns = threading.local()
    _raw = threading.local()
    server.forget_connections()  # and its locks
    for state in _states.values():
        if not state.shared:  # a copy of the parent's tables: its spools are not ours
            for table in state.tables.values():
                table.pending = False
        state.lock = threading.RLock()
        state.locks = {}
        state.gate = Gate()
        if state.kind == "host":
            state.keeper = None
            if state.ready:
                keep_alive(state.name)
    try:
        from django.db import connections

        wrapper = connections[memdb_settings.ALIAS]
        if (
            wrapper.connection is not None
            and store_kind(state_name(wrapper.settings_dict)) != "process"
        ):
            wrapper.connection = None  # the next query opens this process's own
    except Exception:  # noqa: BLE001 - Django not set up in this process: nothing to drop
        pass
    from . import journal, policies

    policies._interval_lock = threading.Lock()
    journal._compacting_lock = threading.Lock()
    journal._compacting.clear()
    if used_in_this_process():
        policies.process_started()


os.register_at_fork(after_in_child=_after_fork_in_child)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# Imported once this module is whole (memdb.server uses it), never lazily: an import
# run for the first time by a thread while another forks would hang the child
# (``_after_fork_in_child`` uses it).
from . import server  # noqa: E402
