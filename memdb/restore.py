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
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connections

from . import codecs, compat, signals, store
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

FORMATS = (SNAPSHOT_FORMAT, compat.FORMAT)


class SchemaDriftWarning(UserWarning):
    """A snapshot has columns the model no longer has; their values are dropped."""


@dataclass(frozen=True)
class RestoreResult:
    label: str
    rows: int
    milliseconds: float
    generation: int


@dataclass
class _Job:
    model: ModelType
    snapshot: Any
    image: bytes = b""
    started: float = 0.0
    rows: int = 0
    seq: int = 0


def restore_models(
    models: list[ModelType], *, state: store.StoreState | None = None
) -> tuple[list[RestoreResult], dict[str, RestoreError]]:
    """Replace the tables of ``models`` (parents first) with their stored snapshots.

    The tables are replaced together in one transaction, children emptied before
    parents and parents loaded before children, so foreign keys between them are
    checked against the restored set rather than against a half-restored one. If that
    transaction fails, each table is tried on its own so the good ones still load.
    ``state`` is given while the store boots; otherwise this refuses to run inside
    ``atomic()`` on the memory alias.
    """
    if state is None:
        for model in models:
            refuse_inside_transaction("restore", model._meta.label, RestoreError)
        store.ensure_ready()
        state = store.current_state()
    errors: dict[str, RestoreError] = {}
    done: list[_Job] = []
    with ExitStack() as stack:
        for model in models:
            stack.enter_context(state.table(model._meta.label).lock)
        jobs: list[_Job] = []
        for model in models:
            try:
                jobs.append(_prepare(model))
            except RestoreError as exc:
                _failed(state, model, exc, errors)
        if jobs:
            with store.raw_connection(state.name) as conn:
                limit = conn.getlimit(sqlite3.SQLITE_LIMIT_ATTACHED)
                for batch in _batches(jobs, limit):
                    try:
                        _load(conn, batch)
                        done.extend(batch)
                        continue
                    except RestoreError as exc:
                        if len(batch) == 1:
                            _failed(state, batch[0].model, exc, errors)
                            continue
                    for job in batch:
                        try:
                            _load(conn, [job])
                            done.append(job)
                        except RestoreError as exc:
                            _failed(state, job.model, exc, errors)
        results = []
        for job in done:
            table_state = state.table(job.model._meta.label)
            table_state.generation = job.snapshot.generation
            table_state.restore_error = None
            table_state.restored = True
            table_state.spooled_seq = job.seq
            results.append(
                RestoreResult(
                    label=job.model._meta.label,
                    rows=job.rows,
                    milliseconds=round((time.perf_counter() - job.started) * 1000, 3),
                    generation=job.snapshot.generation,
                )
            )
    for job, result in zip(done, results, strict=True):
        signals.post_restore.send(sender=job.model, label=result.label, result=result)
    return results, errors


def _batches(jobs: list[_Job], limit: int) -> list[list[_Job]]:
    size = max(1, limit - 1)
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def _failed(
    state: store.StoreState, model: ModelType, exc: RestoreError, errors: dict[str, RestoreError]
) -> None:
    state.table(model._meta.label).restore_error = str(exc)
    store.logger.error("memdb: restore failed: %s", exc)
    errors[model._meta.label] = exc


def _prepare(model: ModelType) -> _Job:
    """Fetch, verify and decode the snapshot: everything that needs no memory-table lock."""
    label = model._meta.label
    snapshot = stored_snapshots(model).order_by("-generation").first()
    if snapshot is None:
        raise RestoreError(f"{label} has no stored snapshot to restore")
    signals.pre_restore.send(sender=model, label=label)
    job = _Job(model=model, snapshot=snapshot, started=time.perf_counter())
    try:
        job.image = _verified_image(model, snapshot)
    except RestoreError:
        raise
    except MemdbError as exc:
        raise RestoreError(str(exc)) from exc
    return job


def _verified_image(model: ModelType, snapshot: Any) -> bytes:
    label = model._meta.label
    if snapshot.format not in FORMATS or snapshot.format_version > FORMAT_VERSION:
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
    chain = list(snapshot.codecs or [])
    processors = [name for name in chain if name.startswith(codecs.PROCESSOR_PREFIX)]
    payload = codecs.decode(chain[len(processors) :], data, label=label)
    if snapshot.format == compat.FORMAT:
        return compat.decode(model, payload, processors)
    if processors:
        raise RestoreError(f"{label}: processors recorded on a {snapshot.format!r} snapshot")
    return payload


def _load(conn: sqlite3.Connection, jobs: list[_Job]) -> None:
    """Replace the tables of ``jobs`` with their images, all in one transaction."""
    attached: list[str] = []
    try:
        plans = []
        for number, job in enumerate(jobs):
            schema = f"{SNAP_SCHEMA}{number}"
            conn.execute(f"ATTACH DATABASE ':memory:' AS {schema}")
            attached.append(schema)
            plans.append((job, schema, _plan(conn, job, schema)))

        def copy() -> None:
            # Without the counting triggers: restored rows are clean, and a per-row
            # trigger would also disable SQLite's fast DELETE of a whole table.
            for job, _, _ in plans:
                for sql in store.drop_triggers_sql(job.model._meta.db_table):
                    conn.execute(sql)
            for job, _, _ in reversed(plans):
                conn.execute(f"DELETE FROM main.{store.quote(job.model._meta.db_table)}")
            for job, schema, (columns, values, params) in plans:
                table = job.model._meta.db_table
                q = store.quote(table)
                conn.execute(
                    f"INSERT INTO main.{q} ({', '.join(map(store.quote, columns))}) "
                    f"SELECT {', '.join(values)} FROM {schema}.{q}",
                    params,
                )
                job.rows = conn.execute(f"SELECT count(*) FROM main.{q}").fetchone()[0]
                if job.rows != job.snapshot.row_count:
                    raise RestoreError(
                        f"{job.model._meta.label}: the snapshot says "
                        f"{job.snapshot.row_count} rows but holds {job.rows}"
                    )
                for sql in store.create_triggers_sql(table):
                    conn.execute(sql)
                job.seq = store.read_seq(conn, table)

        conn.execute("PRAGMA foreign_keys = ON")
        try:
            store.run_locked_transaction(conn, copy, immediate=True)
        except sqlite3.IntegrityError as exc:
            labels = ", ".join(job.model._meta.label for job in jobs)
            raise RestoreError(
                f"{labels}: the snapshot's rows break a constraint of the current model "
                f"({exc}); a related table may be missing rows or have failed to restore"
            ) from exc
        except sqlite3.DatabaseError as exc:
            labels = ", ".join(job.model._meta.label for job in jobs)
            raise RestoreError(f"{labels}: {store.describe(exc)}") from exc
    finally:
        for schema in attached:
            conn.execute(f"DETACH DATABASE {schema}")


def _plan(
    conn: sqlite3.Connection, job: _Job, schema: str
) -> tuple[list[str], list[str], list[Any]]:
    """Attach the job's image as ``schema`` and map its columns onto the model's."""
    label = job.model._meta.label
    table = job.model._meta.db_table
    try:
        conn.deserialize(job.image, name=schema)
        kind = conn.execute(
            f"SELECT type FROM {schema}.sqlite_master WHERE name = ?", (table,)
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        raise RestoreError(f"{label}: the snapshot is not a readable table image ({exc})") from exc
    if kind is None or kind[0] != "table":
        raise RestoreError(f"{label}: the snapshot holds no table {table!r}")
    stored = [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({store.quote(table)})")]
    return _column_mapping(job.model, stored)


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
        if model._meta.label not in stored:
            state.table(model._meta.label).generation = 0
    restore_models([m for m in models if m._meta.label in stored], state=state)


def _stored_labels() -> set[str]:
    from .models import PersistentStorage
    from .spooler import storage_alias

    rows = PersistentStorage.objects.using(storage_alias()).values_list("app_label", "model_name")
    return {f"{app}.{name}" for app, name in rows}
