"""Spool: one memory table into one ``PersistentStorage`` snapshot.

The snapshot is a SQLite database image holding one table, copied by SQLite itself in
a single read transaction (a consistent point-in-time read) from a private connection
into a scratch file, so it holds committed rows only and the stored values are exactly
what SQLite holds: every Django field type round-trips unchanged. The image is then
read back in chunks of ``CHUNK_SIZE`` bytes; each chunk runs through the codec chain on
its own and becomes one ``SnapshotChunk`` row. One transaction on the default database
inserts the next generation with all its chunks and deletes the previous one for this
table only, so a crash at any point leaves the last complete snapshot. Memory use is
a few chunks (the database driver copies and escapes each chunk it sends: about 12
chunks' worth on PostgreSQL, 8 on MariaDB, measured), whatever the table's size.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import re
import socket
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from django.db import (
    DatabaseError,
    IntegrityError,
    OperationalError,
    connections,
    router,
    transaction,
)
from django.db.models import Field, Q
from django.utils import timezone

from . import codecs, compat, journal, signals, store
from .conf import memdb_settings
from .exceptions import ConflictError, MemdbError, ProtectedTableError, SpoolError
from .models import PersistentStorage, SnapshotChunk
from .registry import ModelType, model_name_of, persistent_models, policy_of

SNAPSHOT_FORMAT = "sqlite-table"
FORMAT_VERSION = 1
SNAP_SCHEMA = "memdb_snap"


@dataclass(frozen=True)
class SpoolResult:
    label: str
    rows: int
    bytes: int
    milliseconds: float
    generation: int
    #: True when nothing changed since the stored snapshot, so none was written.
    unchanged: bool = False
    #: How many ``SnapshotChunk`` rows hold it.
    chunks: int = 0
    #: "snapshot" (the whole table) or "delta" (the rows changed since the last spool).
    kind: str = "snapshot"


def storage_alias() -> str:
    return router.db_for_write(PersistentStorage)


def stored_snapshots(model: ModelType) -> Any:
    """The queryset of ``model``'s snapshot rows (normally one)."""
    return PersistentStorage.objects.using(storage_alias()).filter(
        app_label=model._meta.app_label,
        model_name=model_name_of(model),
        kind=PersistentStorage.KIND_SNAPSHOT,
    )


def stored_rows(model: ModelType) -> Any:
    """The queryset of all of ``model``'s stored rows: its snapshot and journal deltas."""
    return PersistentStorage.objects.using(storage_alias()).filter(
        app_label=model._meta.app_label, model_name=model_name_of(model)
    )


def refuse_inside_transaction(action: str, label: str, error: type[MemdbError]) -> None:
    if connections[memdb_settings.ALIAS].in_atomic_block:
        raise error(
            f"cannot {action} {label} inside transaction.atomic() on the memory database "
            f"{memdb_settings.ALIAS!r}: it would wait for that transaction; "
            f"do it after the block (transaction.on_commit)"
        )


def in_transaction(connection: Any) -> bool:
    """Whether ``connection`` is inside a transaction of its caller's: ``atomic()`` or
    ``set_autocommit(False)``. memdb's storage writes are never made inside one: its
    rollback would undo them while memdb counted them stored."""
    return bool(connection.in_atomic_block or not connection.get_autocommit())


def writer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


#: Rows copied per statement while a snapshot is read: between two statements other
#: connections of the shared cache get their turn, so a big table's spool does not
#: stall writes to the other tables.
COPY_CHUNK = 20_000


SCRATCH_PREFIX = "memdb-scratch-"


@contextlib.contextmanager
def scratch_file(purpose: str) -> Iterator[str]:
    """The path of a new empty file in ``TEMP_DIR``, deleted afterwards.

    Its name carries this process's pid, so the files of a process killed mid-spool are
    found and deleted by the next process that starts (``remove_stale_scratch_files``).
    """
    fd, path = tempfile.mkstemp(
        prefix=f"{SCRATCH_PREFIX}{os.getpid()}-{purpose}-",
        suffix=".sqlite3",
        dir=memdb_settings.TEMP_DIR,
    )
    os.close(fd)
    try:
        yield path
    finally:
        for leftover in (path, f"{path}-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)


def remove_stale_scratch_files() -> int:
    """Delete the scratch files of processes that no longer run; return how many."""
    directory = memdb_settings.TEMP_DIR or tempfile.gettempdir()
    removed = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(SCRATCH_PREFIX):
            continue
        pid = name[len(SCRATCH_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or _running(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
            removed += 1
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists but belongs to someone else
    return True


def read_image(conn: Any, model: ModelType, path: str, gate: store.Gate) -> tuple[int, int]:
    """``(seq, rows)``: write the table as of one instant into ``path``, a SQLite file.

    ``seq`` is read just before the copy: a write between the two makes the snapshot
    newer than ``seq`` says, so the table is spooled once more, never once too few.
    The copy runs in one read transaction, which keeps writers of this table out until
    it ends, so the image is a consistent point-in-time read. ``gate`` is closed until
    the copy holds its lock, so back-to-back writers cannot starve it. The scratch file
    needs no journal: a crash leaves nothing to recover there.
    """
    if getattr(conn, "kind", None) == "server":
        from . import server

        return server.read_image(model, path)
    table = model._meta.db_table
    q = store.quote(table)
    conn.execute(f"ATTACH DATABASE ? AS {SNAP_SCHEMA}", (path,))
    try:
        conn.execute(f"PRAGMA {SNAP_SCHEMA}.journal_mode = OFF")
        conn.execute(f"PRAGMA {SNAP_SCHEMA}.synchronous = OFF")
        with gate.closed():
            seq = store.read_seq(conn, table, gate=gate)
            rows = store.run_locked_transaction(
                conn, lambda: _copy_table(conn, q, gate), immediate=False, gate=gate
            )
        return seq, rows
    finally:
        conn.execute(f"DETACH DATABASE {SNAP_SCHEMA}")


def _copy_table(conn: sqlite3.Connection, q: str, gate: store.Gate) -> int:
    """Copy ``main.q`` into the scratch schema, ``COPY_CHUNK`` rows per statement."""
    conn.execute(f"DROP TABLE IF EXISTS {SNAP_SCHEMA}.{q}")
    conn.execute(f"CREATE TABLE {SNAP_SCHEMA}.{q} AS SELECT * FROM main.{q} WHERE 0")
    last, rows = None, 0
    while True:
        bound = "" if last is None else "WHERE rowid > ?"
        params = () if last is None else (last,)
        batch = conn.execute(
            f"SELECT count(*), max(r) FROM (SELECT rowid AS r FROM main.{q} {bound} "
            f"ORDER BY rowid LIMIT {COPY_CHUNK})",
            params,
        ).fetchone()
        gate.open()  # the read lock on main.q is held until the transaction ends
        if not batch[0]:
            return rows
        conn.execute(
            f"INSERT INTO {SNAP_SCHEMA}.{q} SELECT * FROM main.{q} "
            f"{'WHERE' if last is None else bound + ' AND'} rowid <= ? ORDER BY rowid",
            (*params, batch[1]),
        )
        last, rows = batch[1], rows + batch[0]


def encoded_chunks(stream: IO[bytes], chain: tuple[str, ...], label: str) -> Iterator[bytes]:
    """``stream`` in pieces of ``CHUNK_SIZE`` bytes, each run through ``chain`` on its own."""
    size = memdb_settings.CHUNK_SIZE
    while piece := stream.read(size):
        yield codecs.encode(chain, piece, label=label)


def spool_model(
    model: ModelType, *, force: bool = False, wait: bool = True, whole: bool = False
) -> SpoolResult:
    """Write ``model``'s table as its next snapshot; see ``memdb.api.spool``.

    The spool leads the table in its store (``store.claim``): with ``wait=False`` it
    raises ``store.Busy`` at once when another process of a shared store leads it.
    ``whole`` stores the whole table even where a journal delta would do.
    """
    label = model._meta.label
    refuse_inside_transaction("spool", label, SpoolError)
    if in_transaction(connections[storage_alias()]):
        raise SpoolError(
            f"cannot spool {label} inside transaction.atomic() on the default database "
            f"{storage_alias()!r}: a rollback of that block would take the stored snapshot "
            f"with it while this process counted it as stored; spool after the block "
            f"(transaction.on_commit)"
        )
    store.ensure_ready()
    state = store.current_state()

    def spool() -> SpoolResult:
        with contextlib.ExitStack() as stack:
            conn = stack.enter_context(store.raw_connection(state.name))
            table_state = stack.enter_context(store.claim(state, label, wait=wait))
            if table_state.restore_error and not force:
                raise ProtectedTableError(
                    f"{label} is not spooled: its stored snapshot failed to restore "
                    f"({table_state.restore_error}); restore it or discard it first, or "
                    f"spool with force to overwrite it"
                )
            return _spool_claimed(model, state, table_state, conn, stack, force=force, whole=whole)

    result = store.restored_if_lost(state, spool)
    if not result.unchanged:
        signals.post_spool.send(sender=model, label=label, result=result)
    return result


def _spool_claimed(
    model: ModelType,
    state: store.StoreState,
    table_state: store.TableState,
    conn: sqlite3.Connection,
    stack: contextlib.ExitStack,
    *,
    force: bool,
    whole: bool,
) -> SpoolResult:
    """The spool itself, while this process leads the table (``spool_model``)."""
    label = model._meta.label
    started = time.perf_counter()
    chain = codecs.chain_for(model)
    kind = PersistentStorage.KIND_SNAPSHOT
    try:
        _settle_pending(model, table_state)
        if not force:
            unchanged = _unchanged(model, table_state, chain, conn)
            if unchanged is not None:
                return unchanged
        signals.pre_spool.send(sender=model, label=label)
        stream: IO[bytes]
        delta = None
        if not (force or whole) and _delta_fits(model, table_state, chain):
            delta = journal.read_delta(conn, model, state.gate)
        if delta is not None:
            seq, rows, kind = delta.seq, delta.rows, PersistentStorage.KIND_DELTA
            _lead(state, label, table_state)
            generation, size, chunks = write_delta(
                model,
                payload=delta.payload,
                rows=rows,
                chain=chain,
                expected=table_state.generation,
            )
            table_state.journal_bytes += size
            table_state.journal_count += 1
        else:
            if compat.hooks_connected():
                seq, rows, payload, processors = compat.encode(model, conn)
                stream, fmt = io.BytesIO(payload), compat.FORMAT
            else:
                path = stack.enter_context(scratch_file("spool"))
                seq, rows = read_image(conn, model, path, state.gate)
                stream = stack.enter_context(open(path, "rb"))
                processors, fmt = [], SNAPSHOT_FORMAT
            _lead(state, label, table_state)
            generation, size, chunks = write_snapshot(
                model,
                chunks=encoded_chunks(stream, chain, label),
                rows=rows,
                chain=(*processors, *chain),
                fmt=fmt,
                expected=table_state.generation,
                force=force,
            )
            table_state.base = (
                fmt,
                (*processors, *chain),
                tuple(codecs.key_ids(chain, label=label)),
            )
            table_state.base_bytes, table_state.journal_bytes = size, 0
            table_state.journal_count = 0
        table_state.generation = generation
        table_state.pending = False
        table_state.restore_error = None
        table_state.spooled_seq = seq
        journal.forget(conn, model, seq, state.gate)
    except ConflictError:
        table_state.pending = False  # refused: nothing of this spool was stored
        raise
    except MemdbError:
        raise
    except Exception as exc:
        raise SpoolError(f"{label} was not spooled: {store.describe(exc)}") from exc
    if kind == PersistentStorage.KIND_DELTA and (
        table_state.journal_bytes > journal.JOURNAL_RATIO * table_state.base_bytes
        or table_state.journal_count >= journal.JOURNAL_MAX
    ):
        journal.request_compaction(model)
    return SpoolResult(
        label=label,
        rows=rows,
        bytes=size,
        milliseconds=round((time.perf_counter() - started) * 1000, 3),
        generation=generation,
        chunks=chunks,
        kind=kind,
    )


def _lead(state: store.StoreState, label: str, table_state: store.TableState) -> None:
    """Record that this process is about to store the table's next generation.

    In a shared store the record is written first: if this process dies before it
    records how the write ended, the next leader finds it (``_settle_pending``).
    """
    table_state.pending = True
    table_state.leader = writer_id()
    table_state.led_at = time.time()
    if state.shared:
        store.save_table(state, label, table_state)


def _settle_pending(model: ModelType, table_state: store.TableState) -> None:
    """Take over from a leader that died (or failed) while storing the table.

    If its write landed, storage holds a later generation written by it: this store's
    tables hold at least what it stored (they are the ones it read), so the generation
    is taken as this store's own. Its journal keys were not forgotten, so the next
    delta stores those rows again; the table stays dirty and is spooled again.
    """
    if not table_state.pending:
        return
    latest = (
        stored_rows(model)
        .order_by("-generation", "-kind")
        .values("generation", "kind", "written_by", "format", "codecs", "key_ids", "size")
        .first()
    )
    if (
        latest is not None
        and latest["written_by"] == table_state.leader
        and latest["generation"] > (table_state.generation or 0)
    ):
        store.logger.warning(
            "memdb: %s: %s stored generation %s and stopped before recording it; taken over",
            model._meta.label,
            table_state.leader,
            latest["generation"],
        )
        table_state.generation = latest["generation"]
        if latest["kind"] == PersistentStorage.KIND_SNAPSHOT:
            table_state.base = (
                latest["format"],
                tuple(latest["codecs"] or ()),
                tuple(latest["key_ids"] or ()),
            )
            table_state.base_bytes, table_state.journal_bytes = latest["size"], 0
            table_state.journal_count = 0
        else:
            table_state.journal_bytes += latest["size"]
            table_state.journal_count += 1
    table_state.pending = False


def _delta_fits(model: ModelType, table_state: store.TableState, chain: tuple[str, ...]) -> bool:
    """Whether this spool may store only the changed rows (if few changed: see
    ``journal.read_delta``).

    It may when the table has the ``commit`` policy (spooled at every write) and keeps
    a journal, and this process knows the stored snapshot the delta builds on (same
    format, codec chain and keys as now).
    """
    if policy_of(model) != "commit":
        return False  # the other policies spool seldom: a whole snapshot each time
    if not table_state.generation or table_state.base is None or compat.hooks_connected():
        return False
    if not store.journal_column(model):
        return False
    fmt, base_chain, base_keys = table_state.base
    if (
        fmt != SNAPSHOT_FORMAT
        or base_chain != tuple(chain)
        or base_keys != tuple(codecs.key_ids(chain, label=model._meta.label))
    ):
        return False
    return True


def _unchanged(
    model: ModelType,
    table_state: store.TableState,
    chain: tuple[str, ...],
    conn: sqlite3.Connection,
) -> SpoolResult | None:
    """The stored figures if storage already holds this table as it is now.

    Rewriting an identical snapshot would cost a whole table's write and bump the
    generation under the feet of another process that shares the storage (a management
    command run beside a server restores the snapshot, then would write it back).
    """
    if not table_state.generation:
        return None
    if store.read_seq(conn, model._meta.db_table) != table_state.spooled_seq:
        return None
    latest = stored_rows(model).order_by("-generation").values("generation", "row_count").first()
    stored = (
        stored_snapshots(model)
        .order_by("-generation")
        .values("size", "codecs", "key_ids", "format", "chunk_count")
        .first()
    )
    if stored is None or latest is None or latest["generation"] != table_state.generation:
        return None
    recorded = list(stored["codecs"] or [])
    codec_part = [n for n in recorded if not n.startswith(codecs.PROCESSOR_PREFIX)]
    wanted_format = compat.FORMAT if compat.hooks_connected() else SNAPSHOT_FORMAT
    if (
        stored["format"] != wanted_format
        or codec_part != list(chain)
        or list(stored["key_ids"] or []) != codecs.key_ids(chain, label=model._meta.label)
    ):
        return None
    return SpoolResult(
        label=model._meta.label,
        rows=latest["row_count"],
        bytes=stored["size"],
        milliseconds=0.0,
        generation=latest["generation"],
        unchanged=True,
        chunks=stored["chunk_count"],
    )


def write_snapshot(
    model: ModelType,
    *,
    chunks: Iterable[bytes],
    rows: int,
    chain: tuple[str, ...],
    fmt: str,
    expected: int | None,
    force: bool,
) -> tuple[int, int, int]:
    """Store the next generation and drop the previous one, in one transaction.

    Returns ``(generation, bytes stored, chunks stored)``. ``chunks`` is consumed inside
    the transaction, one at a time, so only one chunk is in memory at once.
    """
    label = model._meta.label
    alias = storage_alias()
    now = timezone.now()
    me = writer_id()
    try:
        with transaction.atomic(using=alias):
            existing = stored_rows(model)
            _take_write_lock(existing, alias)
            # The latest row, the snapshot first where a compaction left a snapshot
            # and a delta of the same generation: the row a delta writer locks too.
            current = (
                existing.select_for_update()
                .order_by("-generation", "-kind")
                .values("pk", "generation", "created_at", "written_by", "updated_at")
                .first()
            )
            if current is not None:
                _check_generation(label, current, expected, force, me)
            # Not forced, the generation is the one after the one this process knows:
            # two processes that saw the same one and spool at once both insert it, and
            # the unique constraint refuses the second, whatever the isolation level.
            known = current["generation"] if current else 0
            generation = (max(known, expected or 0) if force else expected or known) + 1
            size, count = _insert_with_chunks(
                model,
                alias,
                chunks,
                kind=PersistentStorage.KIND_SNAPSHOT,
                fmt=fmt,
                format_version=FORMAT_VERSION,
                chain=chain,
                rows=rows,
                generation=generation,
                created_at=current["created_at"] if current else now,
            )
            old = existing.exclude(generation=generation, kind=PersistentStorage.KIND_SNAPSHOT)
            # A locking read sees what committed meanwhile (even under MariaDB's
            # REPEATABLE READ): a snapshot another process stored while this one was
            # writing is refused here, not deleted below.
            newer = (
                old.select_for_update()
                .order_by("-generation")
                .values("generation", "written_by", "updated_at", "created_at", "pk")
            )
            replaced: list[int] = []
            for row in newer:
                if not force and row["generation"] > (expected or 0):
                    _check_generation(label, row, expected, force, me)
                replaced.append(row["generation"])
            # Only the rows read (and locked) here: a row stored after that read has a
            # later generation and is no business of this snapshot's.
            if replaced:
                gone = old.filter(generation__lte=max(replaced))
                SnapshotChunk.objects.using(alias).filter(snapshot__in=gone).delete()
                gone.delete()
    except IntegrityError as exc:
        raise _lost_race(model, exc) from exc
    except DatabaseError as exc:
        raise _storage_error(label, exc) from exc
    return generation, size, count


def write_delta(
    model: ModelType,
    *,
    payload: bytes,
    rows: int,
    chain: tuple[str, ...],
    expected: int | None,
) -> tuple[int, int, int]:
    """Append a journal delta as generation ``expected + 1``; never forced.

    ``(generation, bytes stored, chunks stored)``. The same checks as a snapshot's
    guard it: the latest stored generation must be the one this process knows, and
    the unique constraint refuses a second delta of the same generation. A deadlock
    with a compaction of the same journal (InnoDB may pick the delta as its victim)
    is retried, and so is SQLite's "database is locked" (the INSERT reads before it
    writes; another writer that wants to commit makes SQLite fail it at once rather
    than wait, since the two would wait for each other).
    """
    label = model._meta.label
    for attempt in range(DEADLOCK_RETRIES):
        try:
            return _write_delta_once(model, payload, rows, chain, expected)
        except OperationalError as exc:
            if attempt + 1 == DEADLOCK_RETRIES or not (
                _is_deadlock(exc) or store.is_lock_error(exc)
            ):
                raise _storage_error(label, exc) from exc
            store.logger.info("memdb: %s: deadlock storing a delta, retrying", label)
        except IntegrityError as exc:
            raise _lost_race(model, exc) from exc
        except DatabaseError as exc:
            raise _storage_error(label, exc) from exc
    raise AssertionError("unreachable")  # pragma: no cover


DEADLOCK_RETRIES = 3


def _is_deadlock(exc: BaseException) -> bool:
    """A deadlock or serialization failure: MariaDB's error code, PostgreSQL's sqlstate."""
    code = exc.args[0] if exc.args else None
    sqlstate = getattr(exc.__cause__, "sqlstate", None)
    return code in (1213, 1205) or sqlstate in ("40P01", "40001") or "deadlock" in str(exc).lower()


def _latest(existing: Any) -> dict[str, Any] | None:
    """The latest of ``existing`` stored rows, as ``_check_generation`` reads it."""
    row: dict[str, Any] | None = (
        existing.order_by("-generation")
        .values("pk", "generation", "created_at", "written_by", "updated_at")
        .first()
    )
    return row


def _write_delta_once(
    model: ModelType, payload: bytes, rows: int, chain: tuple[str, ...], expected: int | None
) -> tuple[int, int, int]:
    """One try of ``write_delta``: a single INSERT, its data inline.

    The INSERT copies the row of generation ``expected`` (its ``created_at``), locking it
    where the database locks rows, and inserts nothing when that row is gone or a newer
    generation is stored; then the latest row is read to say why. One statement rather
    than a transaction of several, written out rather than built by the ORM: a delta is
    stored at every committed write, and on PostgreSQL each round trip, on every
    database each ORM query (0.25 ms of Python here), cost as much as the write itself
    (bench/bench_perf.py, target 1b).
    """
    label = model._meta.label
    connection = connections[storage_alias()]
    generation = (expected or 0) + 1
    (data,) = encoded_chunks(io.BytesIO(payload), chain, label)
    sql, fields = _delta_statement(connection)
    same = (
        model._meta.app_label,
        model_name_of(model),
        PersistentStorage.KIND_DELTA,
        journal.DELTA_FORMAT,
        journal.DELTA_FORMAT_VERSION,
        tuple(chain),
        tuple(codecs.key_ids(chain, label=label)),
        writer_id(),
    )
    own = (rows, len(data), hashlib.sha256(data).hexdigest(), 0, data, generation, timezone.now())
    key: tuple[Any, ...] = (same[0], same[1], expected or 0)
    params = [
        *_prepared_same(connection.alias, connection.vendor, same),
        *(f.get_db_prep_save(v, connection) for f, v in zip(fields[len(same) :], own, strict=True)),
    ]
    for _attempt in range(READ_RETRIES):
        with bound_cursor(connection) as cursor:
            cursor.execute(sql, [*params, *key, *key])
            if cursor.rowcount == 1:
                return generation, len(data), 0
        current = _latest(stored_rows(model))
        if current is None:
            raise ConflictError(
                f"{label}: its stored snapshot is gone (discarded by another process?); "
                f"spool again to store the whole table"
            )
        _check_generation(label, current, expected, False, writer_id())
        # Still the generation this process knows: the row the INSERT read was replaced
        # by a compaction's snapshot of the same generation meanwhile. Again.
    raise ConflictError(
        f"{label}: generation {expected} was replaced {READ_RETRIES} times while a delta "
        f"was stored on it; try again"
    )


#: The ``PersistentStorage`` fields a delta's INSERT sets, in ``_write_delta_once``'s
#: order: first those that are the same at every delta of a table, then its own;
#: ``created_at`` is copied from the row it builds on.
DELTA_FIELDS = (
    "app_label",
    "model_name",
    "kind",
    "format",
    "format_version",
    "codecs",
    "key_ids",
    "written_by",
    "row_count",
    "size",
    "checksum",
    "chunk_count",
    "inline",
    "generation",
    "updated_at",
)

_delta_statements: dict[tuple[str, str], tuple[str, list[Field]]] = {}


def _delta_statement(connection: Any) -> tuple[str, list[Field]]:
    """The SQL of a delta's INSERT on ``connection``'s database, and its fields; made
    once per database (a delta is stored at every committed write)."""
    cache_key = (connection.alias, connection.vendor)
    found = _delta_statements.get(cache_key)
    if found is not None:
        return found
    fields = [cast(Field, PersistentStorage._meta.get_field(name)) for name in DELTA_FIELDS]
    qn = connection.ops.quote_name
    # Parameter types for server-side binding on PostgreSQL (``bound_cursor``); no
    # length, so a value too long is an error, not cut short.
    typed = connection.vendor == "postgresql"
    lock = (
        " " + connection.ops.for_update_sql() if connection.features.has_select_for_update else ""
    )
    storage = qn(PersistentStorage._meta.db_table)
    sql = (
        f"INSERT INTO {storage} ({', '.join(qn(str(f.column)) for f in fields)}, created_at) "
        f"SELECT {', '.join(f'%s::{_base_type(f, connection)}' if typed else '%s' for f in fields)}, "
        f"created_at FROM {storage} WHERE app_label = %s AND model_name = %s AND generation = %s "
        f"AND NOT EXISTS (SELECT 1 FROM {storage} newer WHERE newer.app_label = %s AND "
        f"newer.model_name = %s AND newer.generation > %s) ORDER BY kind DESC LIMIT 1{lock}"
    )
    _delta_statements[cache_key] = (sql, fields)
    return sql, fields


@functools.lru_cache(maxsize=64)
def _prepared_same(alias: str, vendor: str, same: tuple[Any, ...]) -> tuple[Any, ...]:
    """The first ``len(same)`` values of ``DELTA_FIELDS``, those that are the same at
    every delta of a table, as ``alias``'s database takes them: prepared once (per
    vendor too: a test may point an alias at another database)."""
    connection = connections[alias]
    _sql, fields = _delta_statement(connection)
    return tuple(
        f.get_db_prep_save(v, connection) for f, v in zip(fields[: len(same)], same, strict=True)
    )


def bound_cursor(connection: Any) -> Any:
    """A cursor of ``connection`` that sends the parameters apart from the SQL.

    On PostgreSQL with psycopg 3, Django's cursors write the parameters into the SQL
    text on the client (unless ``OPTIONS["server_side_binding"]``), and the server
    parses that text again each time: for a delta's INSERT that cost about as much as
    its round trip (bench/bench_perf.py, target 1b). This cursor binds them on the
    server, without a prepared statement, so it works behind a transaction pooler too.
    Elsewhere it is Django's cursor. Either way it is Django's wrapper: errors, query
    logging and ``execute_wrapper`` apply.
    """
    if connection.vendor != "postgresql":
        return connection.cursor()
    from django.db.backends.postgresql import base as postgresql

    binding: Any = getattr(postgresql, "ServerBindingCursor", None)
    if binding is None:  # psycopg 2 binds on the client
        return connection.cursor()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        cursor = binding(connection.connection)
    if connection.queries_logged:
        return connection.make_debug_cursor(cursor)
    return connection.make_cursor(cursor)


#: Tries of a delta whose base row a compaction replaced at the same generation.
READ_RETRIES = 3


def _base_type(field: Field, connection: Any) -> str:
    """The field's column type without a length: ``varchar(100)`` is ``varchar``."""
    return re.sub(r"\(\d+\)", "", str(field.db_type(connection)))


def _storage_error(label: str, exc: BaseException) -> SpoolError:
    return SpoolError(
        f"{label} was not spooled: the default database refused it "
        f"({store.describe(exc)}); a server packet limit (MariaDB max_allowed_packet) "
        f"calls for a smaller MEMDB['CHUNK_SIZE']"
        if _packet_too_large(exc)
        else f"{label} was not spooled: {store.describe(exc)}"
    )


def _insert_with_chunks(
    model: ModelType,
    alias: str,
    chunks: Iterable[bytes],
    *,
    kind: str,
    fmt: str,
    format_version: int,
    chain: tuple[str, ...],
    rows: int,
    generation: int,
    created_at: Any,
    written_by: str | None = None,
) -> tuple[int, int]:
    """Insert one stored row and its chunks (inside the caller's transaction), consuming
    ``chunks`` one at a time; the row's size and checksum are set at the end."""
    label = model._meta.label
    digest = hashlib.sha256()
    header = PersistentStorage.objects.using(alias).create(
        app_label=model._meta.app_label,
        model_name=model_name_of(model),
        kind=kind,
        format=fmt,
        format_version=format_version,
        codecs=list(chain),
        key_ids=codecs.key_ids(chain, label=label),
        row_count=rows,
        size=0,
        checksum="",
        chunk_count=0,
        generation=generation,
        written_by=written_by or writer_id(),
        created_at=created_at,
        updated_at=timezone.now(),
    )
    size, count = 0, 0
    for number, data in enumerate(chunks):
        SnapshotChunk.objects.using(alias).create(snapshot=header, number=number, data=data)
        digest.update(data)
        size, count = size + len(data), count + 1
    PersistentStorage.objects.using(alias).filter(pk=header.pk).update(
        size=size, checksum=digest.hexdigest(), chunk_count=count
    )
    return size, count


def _lost_race(model: ModelType, exc: BaseException) -> ConflictError:
    latest = stored_rows(model).order_by("-generation").values("written_by").first()
    winner = latest["written_by"] if latest else "unknown"
    message = (
        f"{model._meta.label}: a snapshot written by {winner} was stored at the same "
        f"time; this process ({writer_id()}) was refused and its snapshot not stored. "
        f"Restore to take its data, or spool with force to overwrite it"
    )
    store.logger.warning("memdb: conflict: %s (%s)", message, exc)
    return ConflictError(message)


def compact_stored(model: ModelType) -> int | None:
    """Fold the stored snapshot and the deltas after it into a new snapshot.

    From storage only, in a scratch file: the snapshot is decoded, the deltas up to the
    last one ``L`` replayed, and the result stored as the snapshot of generation ``L``;
    then the rows it replaces are dropped. Unless storage changed meanwhile (a whole
    snapshot was stored): then nothing is left of it.
    """
    from .restore import materialize

    label = model._meta.label
    alias = storage_alias()
    with contextlib.ExitStack() as stack:
        folded = materialize(model, stack)
        if folded is None:
            return None
        base, last, rows, path = folded
        # The new snapshot keeps the writer of the last delta it folds: it holds that
        # writer's data, and a worker taking over from that writer, killed before it
        # recorded its delta, recognises it (``_settle_pending``).
        last_writer = (
            stored_rows(model)
            .filter(kind=PersistentStorage.KIND_DELTA, generation=last)
            .values_list("written_by", flat=True)
            .first()
        )
        image = stack.enter_context(scratch_file("compact"))
        with contextlib.closing(sqlite3.connect(image, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode = OFF")
            conn.execute("ATTACH DATABASE ? AS folded", (path,))
            q = store.quote(model._meta.db_table)
            conn.execute(f"CREATE TABLE main.{q} AS SELECT * FROM folded.{q}")
            conn.execute("DETACH DATABASE folded")
        chain = tuple(base.codecs or ())
        # Phase 1: store the new snapshot beside the old rows, taking no lock a delta
        # waits for (the latest row's): writers go on appending deltas meanwhile. A
        # restore already takes it, with the deltas after it.
        try:
            with transaction.atomic(using=alias), open(image, "rb") as stream:
                existing = stored_rows(model)
                _take_write_lock(existing, alias)
                if _latest_snapshot(existing) != base.pk:
                    return None
                _insert_with_chunks(
                    model,
                    alias,
                    encoded_chunks(stream, chain, label),
                    kind=PersistentStorage.KIND_SNAPSHOT,
                    fmt=SNAPSHOT_FORMAT,
                    format_version=FORMAT_VERSION,
                    chain=chain,
                    rows=rows,
                    generation=last,
                    created_at=base.created_at,
                    written_by=last_writer,
                )
        except IntegrityError:
            return None  # another process compacted to the same generation
        # Phase 2, short: drop what the new snapshot replaces. A crash before it leaves
        # both, which restores the same (the newest snapshot and the deltas after it).
        # MariaDB may pick it as a deadlock victim beside a delta's insert (gap locks):
        # it is tried again, as a delta is.
        for attempt in range(READ_RETRIES):
            try:
                if not _drop_replaced(model, alias, last):
                    return None
                break
            except OperationalError as exc:
                if not _is_deadlock(exc) or attempt == READ_RETRIES - 1:
                    raise
                store.logger.info("memdb: %s: deadlock dropping folded rows, retrying", label)
    state = store.current_state()
    with store.claim(state, label) as table_state:
        if table_state.base is not None:
            remaining = stored_rows(model).filter(
                kind=PersistentStorage.KIND_DELTA, generation__gt=last
            )
            sizes = list(remaining.values_list("size", flat=True))
            table_state.base_bytes = (
                stored_snapshots(model).filter(generation=last).values_list("size", flat=True)
            ).first() or table_state.base_bytes
            table_state.journal_bytes, table_state.journal_count = sum(sizes), len(sizes)
    store.logger.info("memdb: %s: journal folded into a snapshot at generation %s", label, last)
    return last


def _drop_replaced(model: ModelType, alias: str, last: int) -> bool:
    """Delete the rows a compaction to generation ``last`` replaced; False if a whole
    snapshot stored meanwhile made the compaction's own snapshot obsolete (then that
    one is deleted instead)."""
    with transaction.atomic(using=alias):
        existing = stored_rows(model)
        _take_write_lock(existing, alias)
        ours = existing.filter(kind=PersistentStorage.KIND_SNAPSHOT, generation=last)
        newest = (
            existing.filter(kind=PersistentStorage.KIND_SNAPSHOT)
            .order_by("-generation")
            .values_list("generation", flat=True)
            .first()
        )
        replaced = (
            ours  # a whole snapshot stored meanwhile made ours obsolete
            if newest != last
            else existing.filter(
                Q(kind=PersistentStorage.KIND_SNAPSHOT, generation__lt=last)
                | Q(kind=PersistentStorage.KIND_DELTA, generation__lte=last)
            )
        )
        SnapshotChunk.objects.using(alias).filter(snapshot__in=replaced).delete()
        replaced.delete()
        return newest == last


def _take_write_lock(existing: Any, alias: str) -> None:
    """On SQLite, take the database's write lock first in a storage transaction.

    SQLite has no row locks: a transaction that reads first and then writes fails at
    once with "database is locked" when another writer got in between (it cannot
    upgrade its read lock). A write that changes nothing takes the lock up front, so
    the transaction waits its turn instead. Other databases lock rows as they go.
    """
    if connections[alias].vendor == "sqlite":
        existing.filter(generation=0).update(generation=0)


def _latest_snapshot(existing: Any) -> int | None:
    pk: int | None = (
        existing.filter(kind=PersistentStorage.KIND_SNAPSHOT)
        .order_by("-generation")
        .values_list("pk", flat=True)
        .first()
    )
    return pk


def _check_generation(
    label: str, current: dict[str, Any], expected: int | None, force: bool, me: str
) -> None:
    """Refuse to replace a snapshot this process has not seen, unless ``force``.

    Both outcomes are logged with who wrote the stored snapshot, so the logs of two
    processes that fought over one table say which one won.
    """
    winner = current["written_by"] or "unknown"
    stored = current["generation"]
    if expected == stored:
        return
    if force:
        store.logger.warning(
            "memdb: %s: %s overwrote generation %s written by %s (force)",
            label,
            me,
            stored,
            winner,
        )
        return
    if expected is None:
        message = (
            f"{label} has a stored snapshot (generation {stored}, written by {winner}) that "
            f"this process ({me}) has not restored; restore it, discard it, or spool with "
            f"force to overwrite it"
        )
    else:
        message = (
            f"{label}: the stored snapshot is generation {stored}, written by {winner} at "
            f"{current['updated_at']:%Y-%m-%d %H:%M:%S}, but this process ({me}) last saw "
            f"generation {expected}: another process writes this table too, and its "
            f"snapshot stays. Restore to take its data, or spool with force to overwrite it"
        )
    store.logger.warning("memdb: conflict: %s", message)
    raise ConflictError(message)


def _packet_too_large(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "max_allowed_packet" in text or "packet" in text and "too large" in text


def flush(
    policy: str | None = None, *, raise_errors: bool = False, skip_busy: bool = False
) -> list[SpoolResult]:
    """Spool the dirty persistent tables (of one ``policy``, or all).

    Errors are logged, or raised (the first one) with ``raise_errors``; the other tables
    are still spooled either way. ``skip_busy`` leaves a table that a transaction has
    been writing for ``Gate.HOLD`` seconds for the next call instead of waiting for it
    (short transactions, however many back to back, are waited for), once: a table
    skipped by the last call is waited for, so a busy table is spooled at least every
    other call (a skip each time lost many intervals of writes); it also leaves a table
    another process of a shared store is spooling to that process. A memory database
    this process has not opened has nothing to flush, and is not opened (so not built
    and restored) just to find that out.
    """
    state = store.current_state()
    if not state.ready:
        return []
    from .policies import models_with_policy

    models = models_with_policy(policy) if policy else persistent_models()
    with store.raw_connection(state.name) as conn:
        if state.kind == "server":  # no SQLite lock to wait for or skip: one query
            dirty = store.dirty_models(state, conn, models)
        else:
            dirty = _dirty_waiting(state, conn, models, skip_busy)
    return spool_each(dirty, raise_errors=raise_errors, wait=not skip_busy)


def _dirty_waiting(
    state: store.StoreState, conn: Any, models: Iterable[ModelType], skip_busy: bool
) -> list[ModelType]:
    """``flush``'s dirty tables of a SQLite store, each asked once its writers let it
    (``skip_busy``: see ``flush``)."""
    dirty = []
    for model in models:
        label = model._meta.label
        skip = skip_busy and label not in state.skipped
        try:
            with state.gate.closed():
                changed = store.is_dirty(
                    state,
                    conn,
                    model,
                    timeout=store.Gate.HOLD if skip else None,
                    gate=state.gate,
                )
        except sqlite3.OperationalError as exc:
            if not (skip_busy and store.is_lock_error(exc)):
                raise
            if skip:
                store.logger.info("memdb: %s is busy; spooled at the next tick", label)
                state.skipped.add(label)
            else:  # waited LOCK_TIMEOUT: skipped again next time, then waited for
                store.logger.warning(
                    "memdb: %s was not spooled: a transaction has held it for more "
                    "than LOCK_TIMEOUT (%s s)",
                    label,
                    memdb_settings.LOCK_TIMEOUT,
                )
                state.skipped.discard(label)
            continue
        state.skipped.discard(label)
        if changed:
            dirty.append(model)
    return dirty


def spool_each(
    models: Iterable[ModelType], *, raise_errors: bool, wait: bool = True
) -> list[SpoolResult]:
    """Spool ``models`` one by one; errors as ``flush`` says. With ``wait=False`` a table
    another process of a shared store is spooling is left to it (``store.Busy``)."""
    results: list[SpoolResult] = []
    first_error: MemdbError | None = None
    for model in models:
        try:
            results.append(spool_model(model, wait=wait))
        except store.Busy:
            store.logger.debug("memdb: %s is spooled by another process", model._meta.label)
        except MemdbError as exc:
            store.logger.error("memdb: %s", exc)
            first_error = first_error or exc
    if raise_errors and first_error is not None:
        raise first_error
    return results
