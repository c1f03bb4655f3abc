"""Spool: one memory table into one ``PersistentStorage`` snapshot.

The snapshot is a SQLite database image holding one table, copied by SQLite itself in
a single read transaction (a consistent point-in-time read) from a private connection,
so it holds committed rows only and the stored values are exactly what SQLite holds:
every Django field type round-trips unchanged. The image then runs through the codec
chain and is written in one transaction on the default database that inserts the next
generation and deletes the previous one for this table only.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from . import codecs, compat, signals, store
from .conf import memdb_settings
from .exceptions import ConflictError, MemdbError, ProtectedTableError, SpoolError
from .models import PersistentStorage
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


def storage_alias() -> str:
    return router.db_for_write(PersistentStorage)


def stored_snapshots(model: ModelType) -> Any:
    """The queryset of ``model``'s snapshot rows (normally one)."""
    return PersistentStorage.objects.using(storage_alias()).filter(
        app_label=model._meta.app_label,
        model_name=model_name_of(model),
        kind=PersistentStorage.KIND_SNAPSHOT,
    )


def refuse_inside_transaction(action: str, label: str, error: type[MemdbError]) -> None:
    if connections[memdb_settings.ALIAS].in_atomic_block:
        raise error(
            f"cannot {action} {label} inside transaction.atomic() on the memory database "
            f"{memdb_settings.ALIAS!r}: it would wait for that transaction; "
            f"do it after the block (transaction.on_commit)"
        )


def writer_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


#: Rows copied per statement while a snapshot is read: between two statements other
#: connections of the shared cache get their turn, so a big table's spool does not
#: stall writes to the other tables.
COPY_CHUNK = 20_000


def read_image(conn: sqlite3.Connection, table: str) -> tuple[int, int, bytes]:
    """``(seq, rows, image)``: the table as of one instant, as a one-table SQLite image.

    ``seq`` is read just before the copy: a write between the two makes the snapshot
    newer than ``seq`` says, so the table is spooled once more, never once too few.
    The copy runs in one read transaction, which keeps writers of this table out until
    it ends, so the image is a consistent point-in-time read.
    """
    q = store.quote(table)
    seq = store.read_seq(conn, table)
    conn.execute(f"ATTACH DATABASE ':memory:' AS {SNAP_SCHEMA}")
    try:

        def copy() -> int:
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
                if not batch[0]:
                    return rows
                conn.execute(
                    f"INSERT INTO {SNAP_SCHEMA}.{q} SELECT * FROM main.{q} "
                    f"{'WHERE' if last is None else bound + ' AND'} rowid <= ? ORDER BY rowid",
                    (*params, batch[1]),
                )
                last, rows = batch[1], rows + batch[0]

        rows = store.run_locked_transaction(conn, copy, immediate=False)
        return seq, rows, conn.serialize(name=SNAP_SCHEMA)
    finally:
        conn.execute(f"DETACH DATABASE {SNAP_SCHEMA}")


def spool_model(model: ModelType, *, force: bool = False) -> SpoolResult:
    """Write ``model``'s table as its next snapshot; see ``memdb.api.spool``."""
    label = model._meta.label
    refuse_inside_transaction("spool", label, SpoolError)
    store.ensure_ready()
    state = store.current_state()
    table_state = state.table(label)
    with table_state.lock:
        if table_state.restore_error and not force:
            raise ProtectedTableError(
                f"{label} is not spooled: its stored snapshot failed to restore "
                f"({table_state.restore_error}); restore it or discard it first, or spool "
                f"with force to overwrite it"
            )
        started = time.perf_counter()
        chain = codecs.chain_for(model)
        if not force:
            unchanged = _unchanged(model, state, chain)
            if unchanged is not None:
                return unchanged
        signals.pre_spool.send(sender=model, label=label)
        try:
            with store.raw_connection(state.name) as conn:
                if compat.hooks_connected():
                    seq, rows, payload, processors = compat.encode(model, conn)
                    fmt = compat.FORMAT
                else:
                    seq, rows, payload = read_image(conn, model._meta.db_table)
                    processors, fmt = [], SNAPSHOT_FORMAT
                data = codecs.encode(chain, payload, label=label)
                generation = write_snapshot(
                    model,
                    data=data,
                    rows=rows,
                    chain=(*processors, *chain),
                    fmt=fmt,
                    expected=table_state.generation,
                    force=force,
                )
                table_state.generation = generation
                table_state.restore_error = None
                table_state.spooled_seq = seq
        except MemdbError:
            raise
        except Exception as exc:
            raise SpoolError(f"{label} was not spooled: {store.describe(exc)}") from exc
        result = SpoolResult(
            label=label,
            rows=rows,
            bytes=len(data),
            milliseconds=round((time.perf_counter() - started) * 1000, 3),
            generation=generation,
        )
    signals.post_spool.send(sender=model, label=label, result=result)
    return result


def _unchanged(
    model: ModelType, state: store.StoreState, chain: tuple[str, ...]
) -> SpoolResult | None:
    """The stored snapshot's figures if it already holds this table as it is now.

    Rewriting an identical snapshot would cost a whole table's write and bump the
    generation under the feet of another process that shares the storage (a management
    command run beside a server restores the snapshot, then would write it back).
    """
    table_state = state.table(model._meta.label)
    if not table_state.generation:
        return None
    with store.raw_connection(state.name) as conn:
        if store.is_dirty(state, model, store.read_seq(conn, model._meta.db_table)):
            return None
    stored = (
        stored_snapshots(model)
        .values("generation", "row_count", "size", "codecs", "key_ids", "format")
        .first()
    )
    if stored is None or stored["generation"] != table_state.generation:
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
        rows=stored["row_count"],
        bytes=stored["size"],
        milliseconds=0.0,
        generation=stored["generation"],
        unchanged=True,
    )


def write_snapshot(
    model: ModelType,
    *,
    data: bytes,
    rows: int,
    chain: tuple[str, ...],
    fmt: str,
    expected: int | None,
    force: bool,
) -> int:
    """Store the next generation and drop the previous one, in one transaction."""
    label = model._meta.label
    alias = storage_alias()
    now = timezone.now()
    try:
        with transaction.atomic(using=alias):
            existing = stored_snapshots(model)
            current = (
                existing.select_for_update()
                .order_by("-generation")
                .values("pk", "generation", "created_at", "written_by", "updated_at")
                .first()
            )
            if current is not None and not force:
                if expected is None:
                    raise ConflictError(
                        f"{label} has a stored snapshot (generation {current['generation']}) "
                        f"that this process has not restored; restore it, discard it, or "
                        f"spool with force to overwrite it"
                    )
                if current["generation"] != expected:
                    raise ConflictError(
                        f"{label}: the stored snapshot is generation {current['generation']}, "
                        f"written by {current['written_by'] or 'unknown'} at "
                        f"{current['updated_at']:%Y-%m-%d %H:%M:%S}, but this process last "
                        f"saw generation {expected}: another process writes this table too. "
                        f"Restore to take its data, or spool with force to overwrite it"
                    )
            generation = (current["generation"] if current else 0) + 1
            new = PersistentStorage.objects.using(alias).create(
                app_label=model._meta.app_label,
                model_name=model_name_of(model),
                kind=PersistentStorage.KIND_SNAPSHOT,
                format=fmt,
                format_version=FORMAT_VERSION,
                codecs=list(chain),
                key_ids=codecs.key_ids(chain, label=label),
                row_count=rows,
                size=len(data),
                checksum=hashlib.sha256(data).hexdigest(),
                generation=generation,
                written_by=writer_id(),
                created_at=current["created_at"] if current else now,
                updated_at=now,
                data=data,
            )
            existing.exclude(pk=new.pk).delete()
    except IntegrityError as exc:
        raise ConflictError(
            f"{label}: another process stored a snapshot at the same time ({exc}); "
            f"restore to take its data, or spool again"
        ) from exc
    return generation


def flush(
    policy: str | None = None, *, raise_errors: bool = False, skip_busy: bool = False
) -> list[SpoolResult]:
    """Spool the dirty persistent tables (of one ``policy``, or all).

    Errors are logged, or raised (the first one) with ``raise_errors``; the other tables
    are still spooled either way. ``skip_busy`` leaves a table that a transaction is
    writing right now for the next call instead of waiting for it. A memory database
    this process has not opened has nothing to flush, and is not opened (so not built
    and restored) just to find that out.
    """
    state = store.current_state()
    if not state.ready:
        return []
    models = [m for m in persistent_models() if policy is None or policy_of(m) == policy]
    dirty = []
    with store.raw_connection(state.name) as conn:
        for model in models:
            try:
                seq = store.read_seq(conn, model._meta.db_table, timeout=0 if skip_busy else None)
            except sqlite3.OperationalError as exc:
                if skip_busy and store.is_lock_error(exc):
                    continue
                raise
            if store.is_dirty(state, model, seq):
                dirty.append(model)
    results: list[SpoolResult] = []
    first_error: MemdbError | None = None
    for model in dirty:
        try:
            results.append(spool_model(model))
        except MemdbError as exc:
            store.logger.error("memdb: %s", exc)
            first_error = first_error or exc
    if raise_errors and first_error is not None:
        raise first_error
    return results
