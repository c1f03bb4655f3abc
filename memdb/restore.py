"""Restore: load a table from its stored snapshot.

The checksum is verified, the codec chain recorded on the snapshot is undone in
reverse, and the table image is attached to a private connection and copied by SQLite
in one ``INSERT ... SELECT`` (no per-row Python). Columns are matched by name: a field
added since the spool gets its default, a column the model no longer has is dropped
with a warning. A snapshot that cannot be loaded is left untouched, the error names the
table and the reason, and the table is protected from spools until it is restored or
discarded.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
import warnings
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connections

from . import codecs, signals, store
from .conf import memdb_settings
from .exceptions import MemdbError, RestoreError
from .registry import ModelType, persistent_models
from .spooler import (
    FORMAT_VERSION,
    SNAP_SCHEMA,
    SNAPSHOT_FORMAT,
    refuse_inside_transaction,
    stored_snapshots,
)


class SchemaDriftWarning(UserWarning):
    """A snapshot has columns the model no longer has; their values are dropped."""


@dataclass(frozen=True)
class RestoreResult:
    label: str
    rows: int
    milliseconds: float
    generation: int


def restore_model(model: ModelType, *, state: store.StoreState | None = None) -> RestoreResult:
    """Replace ``model``'s memory table with its stored snapshot; see ``memdb.api.restore``."""
    label = model._meta.label
    booting = state is not None
    if not booting:
        refuse_inside_transaction("restore", label, RestoreError)
        store.ensure_ready()
        state = store.current_state()
    assert state is not None
    table_state = state.table(label)
    with table_state.lock:
        snapshot = stored_snapshots(model).order_by("-generation").first()
        if snapshot is None:
            raise RestoreError(f"{label} has no stored snapshot to restore")
        signals.pre_restore.send(sender=model, label=label)
        started = time.perf_counter()
        try:
            image = _verified_image(model, snapshot)
            with store.raw_connection(state.name) as conn:
                rows = load_image(conn, model, image, expected_rows=snapshot.row_count)
        except MemdbError as exc:
            table_state.restore_error = str(exc)
            raise
        except Exception as exc:
            table_state.restore_error = f"{label}: {store.describe(exc)}"
            raise RestoreError(table_state.restore_error) from exc
        table_state.generation = snapshot.generation
        table_state.restore_error = None
        table_state.restored = True
        result = RestoreResult(
            label=label,
            rows=rows,
            milliseconds=round((time.perf_counter() - started) * 1000, 3),
            generation=snapshot.generation,
        )
    signals.post_restore.send(sender=model, label=label, result=result)
    return result


def _verified_image(model: ModelType, snapshot: Any) -> bytes:
    label = model._meta.label
    if snapshot.format != SNAPSHOT_FORMAT or snapshot.format_version > FORMAT_VERSION:
        raise RestoreError(
            f"{label}: snapshot format {snapshot.format!r} version {snapshot.format_version} "
            f"is not supported by this version of django-memdb"
        )
    data = bytes(snapshot.data)
    if hashlib.sha256(data).hexdigest() != snapshot.checksum:
        raise RestoreError(
            f"{label}: checksum mismatch, the stored snapshot (generation "
            f"{snapshot.generation}) is corrupt"
        )
    return codecs.decode(snapshot.codecs or [], data, label=label)


def load_image(
    conn: sqlite3.Connection, model: ModelType, image: bytes, *, expected_rows: int
) -> int:
    """Replace the table's rows with those of a one-table SQLite image; return the count."""
    label = model._meta.label
    table = model._meta.db_table
    q = store.quote(table)
    conn.execute(f"ATTACH DATABASE ':memory:' AS {SNAP_SCHEMA}")
    try:
        try:
            conn.deserialize(image, name=SNAP_SCHEMA)
            kind = conn.execute(
                f"SELECT type FROM {SNAP_SCHEMA}.sqlite_master WHERE name = ?", (table,)
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise RestoreError(
                f"{label}: the snapshot is not a readable table image ({exc})"
            ) from exc
        if kind is None or kind[0] != "table":
            raise RestoreError(f"{label}: the snapshot holds no table {table!r}")
        stored = [r[1] for r in conn.execute(f"PRAGMA {SNAP_SCHEMA}.table_info({q})")]
        columns, values, params = _column_mapping(model, stored)

        def copy() -> int:
            # Without its counting triggers for the copy (restored rows are clean, and a
            # per-row trigger would also disable SQLite's fast DELETE of a whole table).
            for sql in store.drop_triggers_sql(table):
                conn.execute(sql)
            conn.execute(f"DELETE FROM main.{q}")
            conn.execute(
                f"INSERT INTO main.{q} ({', '.join(map(store.quote, columns))}) "
                f"SELECT {', '.join(values)} FROM {SNAP_SCHEMA}.{q}",
                params,
            )
            rows = conn.execute(f"SELECT count(*) FROM main.{q}").fetchone()[0]
            if rows != expected_rows:
                raise RestoreError(
                    f"{label}: the snapshot says {expected_rows} rows but holds {rows}"
                )
            for sql in store.create_triggers_sql(table):
                conn.execute(sql)
            conn.execute(f"UPDATE {store.CHANGES_TABLE} SET spooled = seq WHERE tbl = ?", (table,))
            return rows

        try:
            conn.execute("PRAGMA foreign_keys = ON")
            return store.run_locked_transaction(conn, copy, immediate=True)
        except sqlite3.IntegrityError as exc:
            raise RestoreError(
                f"{label}: the snapshot's rows break a constraint of the current model ({exc}); "
                f"a related table may have failed to restore"
            ) from exc
    finally:
        conn.execute(f"DETACH DATABASE {SNAP_SCHEMA}")


def _column_mapping(model: ModelType, stored: list[str]) -> tuple[list[str], list[str], list[Any]]:
    """Target columns, the SELECT expression for each, and the parameters for defaults."""
    label = model._meta.label
    connection = connections[memdb_settings.ALIAS]
    fields = [(f, f.column) for f in model._meta.local_concrete_fields if f.column]
    current = {column for _, column in fields}
    dropped = [c for c in stored if c not in current]
    if dropped:
        warnings.warn(
            f"{label}: the snapshot has column(s) {', '.join(dropped)} that the model no "
            f"longer has; their values are dropped",
            SchemaDriftWarning,
            stacklevel=2,
        )
        store.logger.warning("memdb: %s: dropped snapshot column(s) %s", label, ", ".join(dropped))
    columns: list[str] = []
    values: list[str] = []
    params: list[Any] = []
    for f, column in fields:
        columns.append(column)
        if column in stored:
            values.append(store.quote(column))
        elif f.has_default() or f.null:
            default = f.get_default() if f.has_default() else None
            params.append(f.get_db_prep_save(default, connection))
            values.append("?")
        else:
            raise RestoreError(
                f"{label}: field {f.name!r} was added since the snapshot and has no default; "
                f"give it a default or null=True, or discard the snapshot"
            )
    return columns, values, params


def restore_at_start(state: store.StoreState) -> None:
    """Restore every stored snapshot; failures are logged and do not stop the others."""
    try:
        models = persistent_models()
        stored = _stored_labels()
    except DatabaseError as exc:
        store.logger.warning(
            "memdb: cannot read PersistentStorage (%s); nothing was restored. Run migrate.", exc
        )
        return
    for model in models:
        label = model._meta.label
        if label not in stored:
            state.table(label).generation = 0
            continue
        try:
            restore_model(model, state=state)
        except MemdbError as exc:
            store.logger.error("memdb: restore failed: %s", exc)


def _stored_labels() -> set[str]:
    from .models import PersistentStorage
    from .spooler import storage_alias

    rows = PersistentStorage.objects.using(storage_alias()).values_list("app_label", "model_name")
    return {f"{app}.{name}" for app, name in rows}
