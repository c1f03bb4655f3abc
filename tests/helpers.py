"""Small readers (and writers) of stored snapshots shared by the test modules.

A snapshot's bytes live in its ``SnapshotChunk`` rows (``number`` 0, 1, ...); the codec
chain ran on each chunk by itself. Tests that damage or hand-make a snapshot go
through ``replace_data`` and ``create_stored`` so they need not know the layout.
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from django.db import transaction

from memdb import api, codecs
from memdb.models import PersistentStorage, SnapshotChunk
from tests.testapp.models import Score

SnapshotOrModel = PersistentStorage | type


def stored(model: type) -> PersistentStorage:
    """The stored snapshot row of ``model`` (not its journal deltas)."""
    return PersistentStorage.objects.get(
        app_label=model._meta.app_label,
        model_name=model._meta.object_name,
        kind=PersistentStorage.KIND_SNAPSHOT,
    )


def stored_table(model: type, columns: str = "player, points") -> list[tuple[Any, ...]]:
    """``columns`` of every row a restore of ``model`` would give, ordered by id: the
    stored snapshot with its journal replayed, read from storage alone."""
    from memdb.restore import materialize

    with ExitStack() as stack:
        folded = materialize(model, stack)
        conn = sqlite3.connect(folded[3] if folded else ":memory:")
        try:
            if not folded:
                conn.deserialize(decoded_image(model))
            sql = f'SELECT {columns} FROM "{model._meta.db_table}" ORDER BY id'
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


def _chunk_rows(snapshot_or_model: SnapshotOrModel) -> list[tuple[int, int, Any]]:
    """``(pk, number, data)`` of the chunks, in order, read by one query (so a spool that
    replaces the snapshot meanwhile cannot give half of one and half of the other)."""
    chunks = SnapshotChunk.objects.all()
    if isinstance(snapshot_or_model, PersistentStorage):
        chunks = chunks.filter(snapshot_id=snapshot_or_model.pk)
    else:
        chunks = chunks.filter(
            snapshot__app_label=snapshot_or_model._meta.app_label,
            snapshot__model_name=snapshot_or_model._meta.object_name,
        )
    return list(chunks.order_by("number").values_list("pk", "number", "data"))


def stored_chunks(snapshot_or_model: SnapshotOrModel) -> list[bytes]:
    """The stored bytes of each chunk, in order (the inline data of a row without
    chunks, a journal delta)."""
    if isinstance(snapshot_or_model, PersistentStorage) and not snapshot_or_model.chunk_count:
        inline = snapshot_or_model.inline
        return [] if inline is None else [bytes(inline)]
    return [bytes(data) for _, _, data in _chunk_rows(snapshot_or_model)]


def stored_data(snapshot_or_model: SnapshotOrModel) -> bytes:
    """All the stored bytes of a snapshot: its chunks joined in order."""
    return b"".join(stored_chunks(snapshot_or_model))


def decoded_image(snapshot_or_model: SnapshotOrModel) -> bytes:
    """The snapshot's plain bytes: its codec chain undone chunk by chunk, as a restore
    would (byte codecs only, no 0.0.6 processors)."""
    snapshot = (
        snapshot_or_model
        if isinstance(snapshot_or_model, PersistentStorage)
        else stored(snapshot_or_model)
    )
    return b"".join(
        codecs.decode(snapshot.codecs, chunk, label=snapshot.label)
        for chunk in stored_chunks(snapshot)
    )


def replace_data(
    snapshot_or_model: SnapshotOrModel, data: bytes, *, fix_checksum: bool = False
) -> None:
    """Replace the snapshot's chunks by one chunk holding ``data`` (``chunk_count`` = 1).

    ``size`` and ``checksum`` are left as they were (so damaged bytes fail the checksum)
    unless ``fix_checksum``, which makes them agree with ``data``.
    """
    pk = (
        snapshot_or_model.pk
        if isinstance(snapshot_or_model, PersistentStorage)
        else stored(snapshot_or_model).pk
    )
    fields: dict[str, Any] = {"chunk_count": 1, "inline": None}
    if fix_checksum:
        fields.update(size=len(data), checksum=hashlib.sha256(data).hexdigest())
    with transaction.atomic():
        SnapshotChunk.objects.filter(snapshot_id=pk).delete()
        SnapshotChunk.objects.create(snapshot_id=pk, number=0, data=data)
        PersistentStorage.objects.filter(pk=pk).update(**fields)


def create_stored(*, data: bytes | Sequence[bytes], **fields: Any) -> PersistentStorage:
    """Hand-create a stored snapshot row and its chunk(s), as a spool would store them.

    ``data`` is the one chunk's bytes, or a list of chunks. ``size``, ``checksum`` and
    ``chunk_count`` default to what the chunks say; pass them to store an inconsistent
    row. Every other field of ``PersistentStorage`` is passed through.
    """
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
    joined = b"".join(bytes(c) for c in chunks)
    fields.setdefault("size", len(joined))
    fields.setdefault("checksum", hashlib.sha256(joined).hexdigest())
    fields.setdefault("chunk_count", len(chunks))
    with transaction.atomic():
        row = PersistentStorage.objects.create(**fields)
        SnapshotChunk.objects.bulk_create(
            SnapshotChunk(snapshot=row, number=number, data=bytes(chunk))
            for number, chunk in enumerate(chunks)
        )
    return row


def fingerprint(model: type) -> tuple[Any, ...]:
    """Everything of a stored snapshot a failed restore must leave as it was, its chunk
    rows (ids, numbers, bytes) included."""
    s = stored(model)
    chunks = tuple((pk, number, bytes(data)) for pk, number, data in _chunk_rows(s))
    return (
        s.pk,
        chunks,
        s.chunk_count,
        s.checksum,
        s.size,
        s.generation,
        s.codecs,
        s.format,
        s.updated_at,
    )


def info(label: str) -> api.TableInfo:
    (result,) = api.tables(label)
    return result


def scores() -> list[tuple[int, str, int]]:
    return list(Score.objects.order_by("pk").values_list("pk", "player", "points"))


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` every 20 ms for up to ``timeout`` seconds; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
