"""Restore: load a table from its stored snapshot.

The snapshot's chunks are read one at a time; the codec chain recorded on the snapshot
is undone on each, in reverse, and the result streamed into a scratch file while the
checksum over the stored bytes is verified. The file, a one-table SQLite image, is
attached to a private connection and copied by SQLite in one ``INSERT ... SELECT`` (no
per-row Python). Nothing in storage is changed by a restore, so a restore killed half
way leaves the snapshot as it was for the next start. Columns are matched by name: a field
added since the spool gets its default, a column the model no longer has is dropped
with a warning. A snapshot that cannot be loaded is left untouched, the error names the
table and the reason, and the table is protected from spools until it is restored or
discarded.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import DatabaseError

from . import codecs, compat, signals, store
from .exceptions import MemdbError, RestoreError
from .journal import apply_delta
from .registry import ModelType, persistent_models
from .spooler import (
    FORMAT_VERSION,
    SNAP_SCHEMA,
    SNAPSHOT_FORMAT,
    refuse_inside_transaction,
    scratch_file,
    storage_alias,
    stored_rows,
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
    #: The decoded one-table SQLite image, a scratch file.
    path: str = ""
    #: The journal after the snapshot: (generation, row count, decoded payload).
    deltas: list[tuple[int, int, bytes]] = field(default_factory=list)
    #: Stored bytes of those deltas.
    journal_bytes: int = 0

    @property
    def generation(self) -> int:
        """The generation the table is at once restored: its last delta's, if any."""
        return self.deltas[-1][0] if self.deltas else int(self.snapshot.generation)

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
    return store.restored_if_lost(state, lambda: _restore_models(models, state))


def _restore_models(
    models: list[ModelType], state: store.StoreState
) -> tuple[list[RestoreResult], dict[str, RestoreError]]:
    errors: dict[str, RestoreError] = {}
    done: list[_Job] = []
    with ExitStack() as stack:
        conn = stack.enter_context(store.raw_connection(state.name))
        claimed = {
            model._meta.label: stack.enter_context(store.claim(state, model._meta.label))
            for model in models
        }
        jobs: list[_Job] = []
        for model in models:
            try:
                jobs.append(_prepare(model, stack))
            except RestoreError as exc:
                _failed(claimed, model, exc, errors)
        if state.kind == "server":
            from . import server

            load, limit = (lambda _conn, batch, _gate: server.load(batch)), len(jobs) + 1
        else:
            load, limit = _load, conn.getlimit(sqlite3.SQLITE_LIMIT_ATTACHED)
        for batch in _batches(jobs, limit):
            try:
                load(conn, batch, state.gate)
                done.extend(batch)
                continue
            except RestoreError as exc:
                if len(batch) == 1:
                    _failed(claimed, batch[0].model, exc, errors)
                    continue
            for job in batch:
                try:
                    load(conn, [job], state.gate)
                    done.append(job)
                except RestoreError as exc:
                    _failed(claimed, job.model, exc, errors)
        results = []
        for job in done:
            table_state = claimed[job.model._meta.label]
            table_state.generation = job.generation
            table_state.base = (
                job.snapshot.format,
                tuple(job.snapshot.codecs or ()),
                tuple(job.snapshot.key_ids or ()),
            )
            table_state.base_bytes = job.snapshot.size
            table_state.journal_count = len(job.deltas)
            table_state.journal_bytes = job.journal_bytes
            table_state.restore_error = None
            table_state.restored = True
            table_state.pending = False
            table_state.spooled_seq = job.seq
            results.append(
                RestoreResult(
                    label=job.model._meta.label,
                    rows=job.rows,
                    milliseconds=round((time.perf_counter() - job.started) * 1000, 3),
                    generation=job.generation,
                )
            )
    for job, result in zip(done, results, strict=True):
        signals.post_restore.send(sender=job.model, label=result.label, result=result)
    return results, errors


def _batches(jobs: list[_Job], limit: int) -> list[list[_Job]]:
    size = max(1, limit - 1)
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def _failed(
    claimed: dict[str, store.TableState],
    model: ModelType,
    exc: RestoreError,
    errors: dict[str, RestoreError],
) -> None:
    claimed[model._meta.label].restore_error = str(exc)
    store.logger.error("memdb: restore failed: %s", exc)
    errors[model._meta.label] = exc


#: How often a restore starts over when another process replaced the snapshot while
#: its chunks were being read.
READ_ATTEMPTS = 3


class _Replaced(Exception):
    """The snapshot being read was replaced by a newer generation meanwhile."""


def _prepare(model: ModelType, stack: ExitStack) -> _Job:
    """Fetch, verify and decode the snapshot: everything that needs no memory-table lock."""
    label = model._meta.label
    signals.pre_restore.send(sender=model, label=label)
    for _ in range(READ_ATTEMPTS):
        snapshot = stored_snapshots(model).order_by("-generation").first()
        if snapshot is None:
            raise RestoreError(f"{label} has no stored snapshot to restore")
        job = _Job(model=model, snapshot=snapshot, started=time.perf_counter())
        job.path = stack.enter_context(scratch_file("restore"))
        try:
            _decode_into(model, snapshot, job.path)
            job.deltas, job.journal_bytes = _journal(model, snapshot)
            _still_current(model, snapshot)
            return job
        except _Replaced:
            continue
        except RestoreError:
            raise
        except MemdbError as exc:
            raise RestoreError(str(exc)) from exc
    raise RestoreError(
        f"{label}: the snapshot was replaced {READ_ATTEMPTS} times while being read; "
        f"another process spools it continuously, try again"
    )


def _decode_into(model: ModelType, snapshot: Any, path: str) -> None:
    """Write the snapshot's decoded bytes to ``path``, verifying its checksum on the way."""
    label = model._meta.label
    if snapshot.format not in FORMATS or snapshot.format_version > FORMAT_VERSION:
        raise RestoreError(
            f"{label}: snapshot format {snapshot.format!r} version {snapshot.format_version} "
            f"is not supported by this version of django-memdb"
        )
    chain = list(snapshot.codecs or [])
    processors = [name for name in chain if name.startswith(codecs.PROCESSOR_PREFIX)]
    if processors and snapshot.format != compat.FORMAT:
        raise RestoreError(f"{label}: processors recorded on a {snapshot.format!r} snapshot")
    with open(path, "wb") as out:
        _write_decoded(label, snapshot, chain[len(processors) :], out)
    if snapshot.format == compat.FORMAT:
        image = compat.decode(model, Path(path).read_bytes(), processors)
        Path(path).write_bytes(image)


def _still_current(model: ModelType, snapshot: Any) -> None:
    """Raise ``_Replaced`` if ``snapshot`` is no longer the latest one.

    A compaction (or a spool) that committed while the snapshot and its journal were
    read replaced them: what was read may lack the journal's rows, so read again.
    """
    latest = stored_snapshots(model).order_by("-generation").values_list("pk", flat=True).first()
    if latest != snapshot.pk:
        raise _Replaced


def _journal(model: ModelType, snapshot: Any) -> tuple[list[tuple[int, int, bytes]], int]:
    """The decoded deltas stored after ``snapshot``, in order, and their stored bytes.

    A gap in their generations is an error."""
    from .journal import DELTA_FORMAT, DELTA_FORMAT_VERSION
    from .models import PersistentStorage

    label = model._meta.label
    deltas = []
    size = 0
    expected = snapshot.generation + 1
    rows = stored_rows(model).filter(
        kind=PersistentStorage.KIND_DELTA, generation__gt=snapshot.generation
    )
    headers = list(rows.order_by("generation"))
    fetched = _chunks_of(headers)
    for delta in headers:
        if delta.generation != expected:
            raise RestoreError(
                f"{label}: the journal after the snapshot (generation "
                f"{snapshot.generation}) is missing generation {expected}"
            )
        if delta.format != DELTA_FORMAT or delta.format_version > DELTA_FORMAT_VERSION:
            raise RestoreError(
                f"{label}: journal delta format {delta.format!r} version "
                f"{delta.format_version} is not supported by this version of django-memdb"
            )
        out = io.BytesIO()
        _write_decoded(label, delta, list(delta.codecs or []), out, _checked(label, delta, fetched))
        deltas.append((delta.generation, delta.row_count, out.getvalue()))
        size += delta.size
        expected += 1
    return deltas, size


def _chunks_of(headers: list[Any]) -> dict[int, list[tuple[int, bytes]]]:
    """The chunks of several small stored rows (journal deltas), by one query."""
    from .models import SnapshotChunk

    found: dict[int, list[tuple[int, bytes]]] = {}
    if not headers:
        return found
    chunks = (
        SnapshotChunk.objects.using(storage_alias())
        .filter(snapshot_id__in=[h.pk for h in headers])
        .order_by("snapshot_id", "number")
        .values_list("snapshot_id", "number", "data")
    )
    for snapshot_id, number, data in chunks:
        found.setdefault(snapshot_id, []).append((number, bytes(data)))
    return found


def _checked(label: str, stored: Any, fetched: dict[int, list[tuple[int, bytes]]]) -> list[bytes]:
    """``stored``'s chunks from ``fetched``, all there and in order, or an error."""
    from .models import PersistentStorage

    if (data := _inline(stored)) is not None:
        return [data]
    parts = fetched.get(stored.pk, [])
    if not parts and not stored.chunk_count:
        raise _no_data(label, stored)
    if [number for number, _ in parts] != list(range(stored.chunk_count)):
        if not PersistentStorage.objects.using(storage_alias()).filter(pk=stored.pk).exists():
            raise _Replaced
        raise RestoreError(
            f"{label}: the stored journal delta (generation {stored.generation}) is "
            f"truncated: it has {len(parts)} of its {stored.chunk_count} chunks"
        )
    return [data for _, data in parts]


def _write_decoded(
    label: str, stored: Any, chain: list[str], out: Any, chunks: Iterable[bytes] | None = None
) -> None:
    """Decode a stored row's chunks into ``out``, verifying its checksum on the way.

    A chunk that fails to decode is reported as a checksum mismatch when the stored
    bytes do not match their checksum (corruption), as a codec error when they do (a
    wrong key, a codec no longer configured).
    """
    what = "snapshot" if stored.kind == "snapshot" else "journal delta"
    digest, failure = hashlib.sha256(), None
    for data in _stored_chunks(label, stored) if chunks is None else chunks:
        digest.update(data)
        if failure is None:
            try:
                out.write(codecs.decode(chain, data, label=label))
            except MemdbError as exc:
                failure = exc
    if digest.hexdigest() != stored.checksum:
        raise RestoreError(
            f"{label}: checksum mismatch, the stored {what} (generation "
            f"{stored.generation}) is corrupt"
        )
    if failure is not None:
        raise failure


def _inline(stored: Any) -> bytes | None:
    """The data of a row stored inline (no chunks), or None: it has chunks, or should.

    A row of no chunks, nothing inline and size 0 holds an empty payload (a 0.0.6
    processor may make one)."""
    if stored.chunk_count:
        return None
    if stored.inline is None:
        return b"" if stored.size == 0 else None
    return bytes(stored.inline)


def _no_data(label: str, stored: Any) -> RestoreError:
    what = "snapshot" if stored.kind == "snapshot" else "journal delta"
    return RestoreError(
        f"{label}: the stored {what} (generation {stored.generation}) has no data: "
        f"no chunks and nothing inline"
    )


def _stored_chunks(label: str, snapshot: Any) -> Iterator[bytes]:
    """The snapshot's chunks in order, each fetched by its own query (one in memory)."""
    from .models import PersistentStorage, SnapshotChunk

    if (inline := _inline(snapshot)) is not None:
        yield inline
        return
    alias = storage_alias()
    chunks = SnapshotChunk.objects.using(alias).filter(snapshot_id=snapshot.pk)
    found = chunks.count()
    if found == 0 == snapshot.chunk_count:
        raise _no_data(label, snapshot)
    if found != snapshot.chunk_count:
        if not PersistentStorage.objects.using(alias).filter(pk=snapshot.pk).exists():
            raise _Replaced
        raise RestoreError(
            f"{label}: the stored snapshot (generation {snapshot.generation}) is truncated: "
            f"it has {found} of its {snapshot.chunk_count} chunks"
        )
    for number in range(snapshot.chunk_count):
        data = chunks.filter(number=number).values_list("data", flat=True).first()
        if data is None:
            if not PersistentStorage.objects.using(alias).filter(pk=snapshot.pk).exists():
                raise _Replaced
            raise RestoreError(
                f"{label}: the stored snapshot (generation {snapshot.generation}) is "
                f"missing chunk {number} of {snapshot.chunk_count}"
            )
        yield bytes(data)


def _load(conn: sqlite3.Connection, jobs: list[_Job], gate: store.Gate) -> None:
    """Replace the tables of ``jobs`` with their images, all in one transaction."""
    attached: list[str] = []
    try:
        plans = []
        for number, job in enumerate(jobs):
            schema = f"{SNAP_SCHEMA}{number}"
            conn.execute(f"ATTACH DATABASE ? AS {schema}", (Path(job.path).as_uri() + "?mode=ro",))
            attached.append(schema)
            plans.append((job, schema, _plan(conn, job, schema)))

        def copy() -> None:
            # Without the counting triggers: restored rows are clean, and a per-row
            # trigger would also disable SQLite's fast DELETE of a whole table.
            for job, _, _ in plans:
                for sql in store.drop_triggers_sql(job.model._meta.db_table):
                    conn.execute(sql)
            gate.open()
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
                expected = job.snapshot.row_count
                if job.deltas:
                    fill = column_defaults(job.model)
                    expected = job.deltas[-1][1]
                    for _, _, payload in job.deltas:
                        apply_delta(
                            conn, f"main.{q}", columns, fill, payload, job.model._meta.label
                        )
                job.rows = conn.execute(f"SELECT count(*) FROM main.{q}").fetchone()[0]
                if job.rows != expected:
                    what = "its journal" if job.deltas else "the snapshot"
                    raise RestoreError(
                        f"{job.model._meta.label}: {what} says {expected} rows but holds {job.rows}"
                    )
                for sql in store.create_triggers_sql(job.model):
                    conn.execute(sql)
                store.reset_tracking(conn, job.model)
                job.seq = store.read_seq(conn, table)
            check_foreign_keys(conn, [job.model._meta.db_table for job, _, _ in plans])

        # Off, so that emptying a table runs no ON DELETE action (Django 6.1's
        # DB_CASCADE, DB_SET_NULL) on the tables that point at it: their rows stay, and
        # the keys are checked once the tables are loaded (``check_foreign_keys``).
        conn.execute("PRAGMA foreign_keys = OFF")
        try:
            with gate.closed():
                store.run_locked_transaction(conn, copy, immediate=True, gate=gate)
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


def check_foreign_keys(conn: sqlite3.Connection, tables: list[str]) -> None:
    """Raise ``sqlite3.IntegrityError`` if a row of ``tables``, or of a table pointing
    at one of them, points at a row that is not there.

    A restore loads with foreign keys off: with them on, emptying a table runs the ON
    DELETE action of each key pointing at it (Django 6.1's ``DB_CASCADE``,
    ``DB_SET_NULL``), and the rows of other tables, which the restore is not asked to
    touch, would be deleted or changed. This is the check SQLite makes at commit with
    them on: a snapshot that would orphan rows is refused, whatever ``on_delete`` says.
    """
    marks = ", ".join("?" * len(tables))
    pointing = conn.execute(
        "SELECT DISTINCT m.name FROM main.sqlite_master AS m, "
        "pragma_foreign_key_list(m.name, 'main') AS k "
        f"WHERE m.type = 'table' AND k.\"table\" IN ({marks}) ORDER BY m.name",
        tables,
    ).fetchall()
    for table in dict.fromkeys([*tables, *(name for (name,) in pointing)]):
        broken = conn.execute(f"PRAGMA main.foreign_key_check({store.quote(table)})").fetchall()
        if broken:
            _, rowid, parent, _ = broken[0]
            raise sqlite3.IntegrityError(
                f"FOREIGN KEY constraint failed: {len(broken)} row(s) of {table} point at "
                f"rows {parent} does not have (the first: rowid {rowid})"
            )


def _plan(
    conn: sqlite3.Connection, job: _Job, schema: str
) -> tuple[list[str], list[str], list[Any]]:
    """Map the columns of the job's image, attached as ``schema``, onto the model's."""
    label = job.model._meta.label
    table = job.model._meta.db_table
    try:
        kind = conn.execute(
            f"SELECT type FROM {schema}.sqlite_master WHERE name = ?", (table,)
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        raise RestoreError(f"{label}: the snapshot is not a readable table image ({exc})") from exc
    if kind is None or kind[0] != "table":
        raise RestoreError(f"{label}: the snapshot holds no table {table!r}")
    info = conn.execute(f"PRAGMA {schema}.table_info({store.quote(table)})").fetchall()
    _check_types(job.model, {row[1]: row[2] for row in info})
    return _column_mapping(job.model, [row[1] for row in info])


def _family(declared: str) -> str:
    """What kind of value a column of this declared type holds, by SQLite's affinity rules.

    INTEGER, REAL and NUMERIC affinity are one family: numbers move between them
    unchanged. A snapshot's columns carry affinity names ("INT", "TEXT", "NUM", "REAL",
    "" for BLOB), as ``CREATE TABLE ... AS SELECT`` gives them; an untyped column says
    nothing, so it is not compared.
    """
    t = declared.upper()
    if "INT" in t:
        return "number"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "text"
    if "BLOB" in t or not t:
        return "binary"
    return "number"


def _check_types(model: ModelType, stored: dict[str, str]) -> None:
    """Refuse a snapshot whose columns changed kind, the primary key's above all.

    SQLite would accept text into an integer column and the reverse, so without this a
    primary key changed from integers to UUIDs would load as rows Django cannot read.
    """
    connection = store.image_connection()
    changed = []
    for f in model._meta.local_concrete_fields:
        if not f.column or not stored.get(f.column):
            continue  # not stored, or stored untyped (a 0.0.6 JSON snapshot's table)
        now = _family(f.db_type(connection) or "")
        before = _family(stored[f.column])
        if now != before:
            what = "primary key" if f.primary_key else "field"
            changed.append(f"{what} {f.name!r} held {before} values and now holds {now} values")
    if changed:
        raise RestoreError(
            f"{model._meta.label}: the model changed since the snapshot: {'; '.join(changed)}. "
            f"The snapshot is kept; restore it with the old field type and convert the data "
            f"with a migration of your own, or discard it"
        )


def column_defaults(model: ModelType) -> dict[str, Any]:
    """For each column of ``model`` that has a default (or is nullable), its stored value:
    what a row from a snapshot or delta written before the field existed gets."""
    connection = store.image_connection()
    defaults = {}
    for f in model._meta.local_concrete_fields:
        if f.column and (f.has_default() or f.null):
            default = f.get_default() if f.has_default() else None
            defaults[f.column] = f.get_db_prep_save(default, connection)
    return defaults


def _column_mapping(model: ModelType, stored: list[str]) -> tuple[list[str], list[str], list[Any]]:
    """Target columns, the SELECT expression for each, and the parameters for defaults."""
    label = model._meta.label
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
    defaults = column_defaults(model)
    columns: list[str] = []
    values: list[str] = []
    params: list[Any] = []
    for f, column in fields:
        columns.append(column)
        if column in stored:
            values.append(store.quote(column))
        elif column in defaults:
            params.append(defaults[column])
            values.append("?")
        else:
            raise RestoreError(
                f"{label}: field {f.name!r} was added since the snapshot and has no default; "
                f"give it a default or null=True, or discard the snapshot"
            )
    return columns, values, params


def restore_at_start(
    state: store.StoreState, labels: Iterable[str] | None = None
) -> set[str] | None:
    """Restore every stored snapshot (or those of ``labels``); failures are logged and do
    not stop the others. Returns the labels now as storage has them (restored, or with
    nothing stored), or None when storage could not be read.

    A snapshot no persistent model claims (its app was removed) is left alone and
    named in a warning, once per store.
    """
    try:
        models = persistent_models()
        stored = _stored_labels()
    except DatabaseError as exc:
        store.logger.warning(
            "memdb: cannot read PersistentStorage (%s); nothing was restored. Run migrate.", exc
        )
        return None
    known = {model._meta.label for model in models}
    for label in sorted(stored - known):
        store.logger.warning(
            "memdb: a stored snapshot of %s is not restored: no persistent memory model "
            "is called that (was it removed?). It is kept; discard it with "
            "`manage.py memdb_discard %s` or memdb.api.discard(%r) once it is not needed",
            label,
            label,
            label,
        )
    if labels is not None:
        models = [m for m in models if m._meta.label in set(labels)]
    done = set()
    for model in models:
        if model._meta.label not in stored:
            with store.claim(state, model._meta.label) as table_state:
                table_state.generation = 0
            done.add(model._meta.label)
    results, _ = restore_models([m for m in models if m._meta.label in stored], state=state)
    return done | {result.label for result in results}


def _stored_labels() -> set[str]:
    from .models import PersistentStorage
    from .spooler import storage_alias

    rows = PersistentStorage.objects.using(storage_alias()).values_list("app_label", "model_name")
    return {f"{app}.{name}" for app, name in rows}


def replay(
    conn: sqlite3.Connection, model: ModelType, deltas: list[tuple[int, int, bytes]]
) -> list[str]:
    """Bring a table image (the model's table in ``conn``) up to the model, then replay
    ``deltas`` onto it; the model's columns, which the image now has.

    Folded into the model's columns as they are now: a field added since the snapshot
    gets its column (and default), so deltas that have it keep it.
    """
    label = model._meta.label
    q = store.quote(model._meta.db_table)
    connection = store.image_connection()
    fill = column_defaults(model)
    stored = [row[1] for row in conn.execute(f"PRAGMA table_info({q})")]
    for f in model._meta.local_concrete_fields:
        if f.column and f.column not in stored:
            conn.execute(
                f"ALTER TABLE {q} ADD COLUMN {store.quote(f.column)} {f.db_type(connection) or ''}"
            )
            if f.column in fill:
                conn.execute(f"UPDATE {q} SET {store.quote(f.column)} = ?", (fill[f.column],))
    columns = [f.column for f in model._meta.local_concrete_fields if f.column]
    column = store.journal_column(model)
    if deltas and column is not None:
        conn.execute(f"CREATE INDEX IF NOT EXISTS memdb_fold_key ON {q} ({store.quote(column)})")
        conn.execute("BEGIN")
        for _, _, payload in deltas:
            apply_delta(conn, f"main.{q}", columns, fill, payload, label)
        conn.execute("COMMIT")
    return columns


def fold_image(conn: sqlite3.Connection, job: _Job) -> list[str]:
    """The job's image checked against its model (as a restore checks it), brought up
    to the model and its journal replayed: the image then holds the table to load, in
    the model's columns (returned)."""
    conn.execute("PRAGMA journal_mode = OFF")
    _plan(conn, job, "main")
    return replay(conn, job.model, job.deltas)


def materialize(model: ModelType, stack: ExitStack) -> tuple[Any, int, int, str] | None:
    """The stored snapshot with its journal replayed, as a table in a scratch file.

    ``(snapshot row, last delta's generation, rows, path)``, or None when there is no
    journal to fold (or storage changed while it was read). Used by compaction; reads
    storage only.
    """
    label = model._meta.label
    snapshot = stored_snapshots(model).order_by("-generation").first()
    column = store.journal_column(model)
    if snapshot is None or snapshot.format != SNAPSHOT_FORMAT or column is None:
        return None
    path = stack.enter_context(scratch_file("fold"))
    try:
        _decode_into(model, snapshot, path)
        deltas, _ = _journal(model, snapshot)
    except _Replaced:
        return None
    if not deltas:
        return None
    q = store.quote(model._meta.db_table)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = OFF")
        replay(conn, model, deltas)
        rows = conn.execute(f"SELECT count(*) FROM {q}").fetchone()[0]
    generation, expected = deltas[-1][0], deltas[-1][1]
    if rows != expected:
        raise RestoreError(f"{label}: its journal says {expected} rows but folds into {rows}")
    return snapshot, generation, rows, path
