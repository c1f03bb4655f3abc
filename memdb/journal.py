"""The journal: a table's changes since its snapshot, stored as small ``delta`` rows.

A spool of a table that has a stored snapshot this process knows, and few changed
rows, stores only those rows: the triggers record every written primary key in the
table's journal table (``memdb.store.journal_table``), and a delta holds, for each of
them, the row as it is now or the fact that it is gone. Its cost is the number of
changed rows, not the size of the table, which is what makes the ``commit`` policy
affordable on big tables.

Deltas are ``PersistentStorage`` rows of kind ``delta`` that continue the table's
generations: snapshot ``g``, then deltas ``g+1``, ``g+2``, ... A restore loads the
snapshot and replays the deltas after it in order. A delta holds row *states*, read in
one transaction, so replaying deltas in the order they were read gives the table as of
the last one, whatever was replayed before it.

When the journal outgrows ``JOURNAL_RATIO`` of its snapshot (or holds ``JOURNAL_MAX``
deltas), a background thread *compacts* it, like Redis rewrites its append-only file:
from storage alone (the snapshot and the deltas up to ``L``, folded in a scratch file)
it writes a new snapshot of generation ``L`` and drops what it replaces. It never
touches the memory table, so writers never wait for it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import sqlite3
import threading
from dataclasses import dataclass
from typing import Any

from . import store
from .conf import memdb_settings
from .registry import ModelType

DELTA_FORMAT = "memdb-delta"
DELTA_FORMAT_VERSION = 1
#: A spool stores a delta while the changed rows are at most this share of the table.
DELTA_MAX_SHARE = 0.2
#: Compact once the journal's bytes exceed this share of its snapshot's: a compaction
#: costs about one snapshot, and happens once per that many bytes of deltas, so its
#: cost per write stays the same whatever the table's size (Redis's AOF rewrite rule).
JOURNAL_RATIO = 0.5
#: ... or once it holds this many deltas (a restore replays each; a cap for tables
#: whose snapshot is large and writes are tiny).
JOURNAL_MAX = 10_000


#: Seconds a spool waits to drop the journal keys it stored (``forget``).
FORGET_TIMEOUT = 0.5


@dataclass(frozen=True)
class Delta:
    seq: int
    rows: int
    changed: int
    payload: bytes


def _encode_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b": base64.b64encode(value).decode("ascii")}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        return base64.b64decode(value["b"])
    return value


def read_delta(conn: Any, model: ModelType, gate: store.Gate) -> Delta | None:
    """The changed rows of ``model``'s table as of one instant, as a delta payload; None
    when too many changed for a delta (more than ``DELTA_MAX_SHARE`` of the rows and
    more than 100, or more than ``CHUNK_SIZE`` bytes of them): store the table then.

    One statement (the gate closed until it holds its locks) reads the change counter,
    the row count, the journal's keys and their rows, so the delta is a consistent
    point-in-time read of the rows it names.
    """
    if getattr(conn, "kind", None) == "server":
        from . import server

        return server.read_delta(model)
    table = model._meta.db_table
    column = store.journal_column(model)
    assert column is not None
    q, j, c = (
        store.quote(table),
        store.quote(store.journal_table(table)),
        store.quote(store.changes_table(table)),
    )

    # One statement, so one point-in-time read: the counter, the row count and the
    # number of keys on every row, then each key with its row as it is now (NULLs where
    # the row is gone; one row of NULLs when the journal is empty).
    sql = (
        f"SELECT c.seq, c.rows, (SELECT count(*) FROM {j}), {j}.pk, {q}.* FROM {c} AS c "
        f"LEFT JOIN {j} ON 1 LEFT JOIN main.{q} ON {q}.{store.quote(column)} = {j}.pk"
    )

    def read() -> Delta | None:
        with contextlib.closing(conn.execute(sql)) as cursor:
            first = cursor.fetchone()  # the statement holds its table locks from here
            gate.open()
            seq, rows, changed = first[:3]
            if changed > max(100, DELTA_MAX_SHARE * rows):
                return None
            columns = [d[0] for d in cursor.description[4:]]
            index = columns.index(column) + 4
            upsert, deleted = [], []
            for row in itertools.chain([first], cursor) if changed else ():
                if row[index] is None:
                    deleted.append(_encode_value(row[3]))
                else:
                    upsert.append([_encode_value(v) for v in row[4:]])
        payload = json.dumps(
            {"columns": columns, "pk": column, "upsert": upsert, "delete": deleted},
            separators=(",", ":"),
            allow_nan=True,
        ).encode()
        if len(payload) > memdb_settings.CHUNK_SIZE:
            return None  # a delta is one chunk at most
        return Delta(seq=seq, rows=rows, changed=changed, payload=payload)

    with gate.closed():
        return store.retry_locked(read, gate=gate)


def forget(conn: Any, model: ModelType, seq: int, gate: store.Gate) -> None:
    """Drop the journal's keys stored by a spool read at counter ``seq``.

    The spool has stored its rows by then, so a failure here (a transaction held the
    journal for ``FORGET_TIMEOUT``: in a ``host`` store any write transaction does, as
    SQLite has one writer per database file) is logged, not raised: the keys stay in
    the journal and the next delta stores their rows again, which replays to the same
    table. ``gate`` holds this process's writers back meanwhile, so back-to-back
    transactions cannot starve the delete.
    """
    if getattr(conn, "kind", None) == "server":
        from . import server

        return server.forget(model, seq)
    if not store.journal_column(model):
        return
    j = store.quote(store.journal_table(model._meta.db_table))
    try:
        with gate.closed():
            store.retry_locked(
                lambda: conn.execute(f"DELETE FROM {j} WHERE seq <= ?", (seq,)),
                FORGET_TIMEOUT,
                gate=gate,
            )
    except sqlite3.Error as exc:
        store.logger.warning(
            "memdb: %s: its journal keeps the keys just stored (%s); the next delta "
            "stores those rows again",
            model._meta.label,
            exc,
        )


def apply_delta(
    conn: sqlite3.Connection,
    target: str,
    columns: list[str],
    fill: dict[str, Any],
    payload: bytes,
    label: str,
) -> None:
    """Replay one delta onto ``target`` (a qualified table name) with ``columns``.

    Its rows replace theirs and its deletions go. ``fill`` gives the value of each of
    ``columns`` the delta does not have (a field added since); columns the delta has
    and the table no longer has are dropped.
    """
    from .exceptions import RestoreError

    try:
        delta = json.loads(payload)
        stored, column = list(delta["columns"]), delta["pk"]
        upsert, deleted = delta["upsert"], delta["delete"]
        index = stored.index(column)
    except (ValueError, KeyError, TypeError) as exc:
        raise RestoreError(f"{label}: a journal delta is not readable ({exc})") from exc
    missing = [name for name in columns if name not in stored and name not in fill]
    if missing:
        raise RestoreError(
            f"{label}: a journal delta has no column {', '.join(missing)} and the model "
            f"gives no default"
        )
    positions = {name: i for i, name in enumerate(stored)}
    try:
        gone = [(_decode_value(k),) for k in deleted]
        gone += [(_decode_value(r[index]),) for r in upsert]
        rows = [
            [
                _decode_value(row[positions[name]]) if name in positions else fill[name]
                for name in columns
            ]
            for row in upsert
        ]
    except (IndexError, KeyError, TypeError, ValueError) as exc:
        raise RestoreError(
            f"{label}: a journal delta is not readable ({type(exc).__name__}: {exc})"
        ) from exc
    conn.executemany(f"DELETE FROM {target} WHERE {store.quote(column)} = ?", gone)
    if not rows:
        return
    conn.executemany(
        f"INSERT INTO {target} ({', '.join(map(store.quote, columns))}) "
        f"VALUES ({', '.join('?' for _ in columns)})",
        rows,
    )


# -- compaction ---------------------------------------------------------------------

_compacting: set[str] = set()
_compacting_lock = threading.Lock()


def request_compaction(model: ModelType) -> bool:
    """Start compacting ``model``'s journal in a background thread, unless one runs.

    Not at interpreter shutdown (the spool at exit, or the interval spooler's last
    tick), where Python 3.12 refuses new threads: the journal is whole as it is, and the
    next process compacts it once it outgrows the snapshot again.
    """
    label = model._meta.label
    with _compacting_lock:
        if label in _compacting:
            return False
        _compacting.add(label)
    thread = threading.Thread(
        target=_compact_in_background, args=(model,), name=f"memdb-compact-{label}", daemon=True
    )
    try:
        thread.start()
    except RuntimeError:  # "can't create new thread at interpreter shutdown"
        with _compacting_lock:
            _compacting.discard(label)
        store.logger.info("memdb: %s: no compaction at interpreter shutdown", label)
        return False
    return True


def _compact_in_background(model: ModelType) -> None:
    from django.db import close_old_connections

    try:
        compact(model)
    except Exception:
        store.logger.exception("memdb: compacting the journal of %s failed", model._meta.label)
    finally:
        close_old_connections()
        with _compacting_lock:
            _compacting.discard(model._meta.label)


def compact(model: ModelType) -> int | None:
    """Fold the stored snapshot and its deltas into a new snapshot; its generation.

    Works from storage only: the memory table and its writers are not involved, so
    they never wait for it. None when there was nothing to fold.
    """
    from .spooler import compact_stored

    try:
        with store.compaction_lock(store.current_state(), model._meta.label):
            return compact_stored(model)
    except store.Busy:
        return None  # another process of a shared store is compacting it
