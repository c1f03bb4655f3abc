"""The ``commit`` policy's journal (issue 7): deltas of the changed rows, their replay on
restore, their compaction into a snapshot, and what a damaged journal does.

After a table's first (whole) snapshot, every committed write of a ``commit``-policy table
stores one ``delta`` row holding only the rows it changed, as the next generation. The
deltas are decoded here as a restore would (and, for the codec tests, with the codec's
own library), and restores are compared with the memory table both in this process
(``api.restore`` after scrambling the memory table) and across real restarts (children
on a fresh default database, tests/children.py).
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.db import connections, transaction
from django.db.models import F

from memdb import api, codecs, journal, policies, signals, spooler, store
from memdb import restore as restore_module
from memdb.exceptions import ConflictError, ProtectedTableError, RestoreError, SpoolError
from memdb.models import PersistentStorage
from memdb.spooler import SpoolResult
from tests.children import (
    PRELUDE,
    TIMEOUT,
    child_env,
    last_json,
    read,
    run,
    start_process,
    stop,
)
from tests.helpers import (
    fingerprint,
    info,
    replace_data,
    stored,
    stored_chunks,
    stored_table,
    wait_until,
)
from tests.test_fields import ROWS, field_values
from tests.testapp.models import AllTypes, CommitScore, Score

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])

Override = Callable[..., AbstractContextManager[Any]]
LABEL = "testapp.CommitScore"
TABLE = CommitScore._meta.db_table
COLUMNS = ["id", "player", "points"]
KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


# -- reading what is stored ----------------------------------------------------------------


def rows_stored(model: type = CommitScore) -> list[PersistentStorage]:
    """Every stored row of ``model`` (snapshot and deltas), by generation."""
    return list(
        PersistentStorage.objects.filter(
            app_label=model._meta.app_label, model_name=model._meta.object_name
        ).order_by("generation", "kind")
    )


def layout(model: type = CommitScore) -> list[tuple[str, int, int]]:
    """``(kind, generation, row_count)`` of every stored row of ``model``."""
    return [(row.kind, row.generation, row.row_count) for row in rows_stored(model)]


def deltas(model: type = CommitScore) -> list[PersistentStorage]:
    return [row for row in rows_stored(model) if row.kind == PersistentStorage.KIND_DELTA]


def delta(generation: int, model: type = CommitScore) -> PersistentStorage:
    (row,) = [row for row in deltas(model) if row.generation == generation]
    return row


def plain(row: PersistentStorage) -> bytes:
    """A delta's payload: its codec chain undone chunk by chunk, as a restore does."""
    return b"".join(
        codecs.decode(row.codecs, chunk, label=row.label) for chunk in stored_chunks(row)
    )


def payload(row: PersistentStorage) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(plain(row))
    return data


def changes(row: PersistentStorage) -> tuple[list[tuple[Any, ...]], list[Any]]:
    """A delta's upserted rows (as tuples, by id) and deleted keys (sorted)."""
    data = payload(row)
    assert data["columns"] == COLUMNS and data["pk"] == "id", data
    return sorted(tuple(r) for r in data["upsert"]), sorted(data["delete"])


def everything_stored(model: type = CommitScore) -> list[tuple[Any, ...]]:
    """The snapshot's fingerprint and every field and chunk of every delta: what a failed
    restore (or a refused spool) must leave as it was."""
    rows = [fingerprint(model)]
    for row in deltas(model):
        chunks = tuple(stored_chunks(row))
        rows.append(
            (
                row.pk,
                row.generation,
                row.format,
                row.format_version,
                row.codecs,
                row.key_ids,
                row.row_count,
                row.size,
                row.checksum,
                row.chunk_count,
                row.updated_at,
                chunks,
            )
        )
    return rows


def memory() -> list[tuple[int, str, int]]:
    return list(CommitScore.objects.order_by("pk").values_list("pk", "player", "points"))


def stored_now() -> list[tuple[Any, ...]]:
    """What a restore would give, folded from storage alone (tests.helpers)."""
    return stored_table(CommitScore, "id, player, points")


def scramble_memory() -> None:
    """Replace the memory table's rows behind Django's back (no spool runs), so a restore
    that then gives the expected rows has read them from storage."""
    with store.raw_connection() as conn:
        conn.execute(f'DELETE FROM "{TABLE}"')
        conn.execute(f"INSERT INTO \"{TABLE}\" (id, player, points) VALUES (999999, 'junk', 0)")


def restore_and_check(expected: list[tuple[int, str, int]], generation: int) -> None:
    # The interval thread's backstop for dirty commit tables would store the scrambled
    # table (a generation more) if it ticked between the scramble and the restore.
    policies.stop_interval()
    try:
        scramble_memory()
        (result,) = api.restore(LABEL)
    finally:
        policies.process_started()
    assert result.generation == generation
    assert result.rows == len(expected)
    assert memory() == expected
    table = info(LABEL)
    assert table.restore_state == "ok"
    assert table.generation == generation
    assert table.dirty is False


def raw_sql(sql: str, params: list[Any] | None = None) -> None:
    with connections["memdb"].cursor() as cursor:
        cursor.execute(sql, params or [])


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def compactions_finish() -> Iterator[None]:
    """No background compaction outlives its test (the next one starts from nothing)."""
    yield
    assert wait_until(lambda: not journal._compacting, 30.0), (
        "a background compaction did not finish"
    )


@pytest.fixture
def spools() -> Iterator[list[SpoolResult]]:
    """The result of every spool while the test runs, in order."""
    results: list[SpoolResult] = []

    def receiver(sender: Any, result: SpoolResult, **kwargs: Any) -> None:
        results.append(result)

    signals.post_spool.connect(receiver, weak=False, dispatch_uid="test_journal")
    yield results
    signals.post_spool.disconnect(dispatch_uid="test_journal")


@pytest.fixture
def compaction_requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Labels of the compactions spools asked for (the real ones still run)."""
    asked: list[str] = []
    original = journal.request_compaction

    def spy(model: Any) -> bool:
        asked.append(model._meta.label)
        return original(model)

    monkeypatch.setattr(journal, "request_compaction", spy)
    return asked


def seed(count: int = 10) -> list[int]:
    """``count`` rows (points 0 .. count-1) stored as the table's first snapshot."""
    CommitScore.objects.bulk_create([CommitScore(player=f"p{i}", points=i) for i in range(count)])
    assert layout() == [("snapshot", 1, count)]
    return list(CommitScore.objects.order_by("pk").values_list("pk", flat=True))


# -- one delta per write, holding only the changed rows -------------------------------------


def write_create(ids: list[int]) -> tuple[set[int], set[int]]:
    obj = CommitScore.objects.create(player="new", points=42)
    return {obj.pk}, set()


def write_save(ids: list[int]) -> tuple[set[int], set[int]]:
    obj = CommitScore.objects.get(pk=ids[3])
    obj.points = 333
    obj.save()
    return {ids[3]}, set()


def write_delete(ids: list[int]) -> tuple[set[int], set[int]]:
    CommitScore.objects.get(pk=ids[4]).delete()
    return set(), {ids[4]}


def write_bulk_create(ids: list[int]) -> tuple[set[int], set[int]]:
    CommitScore.objects.bulk_create([CommitScore(player=f"bulk{i}", points=i) for i in range(3)])
    new = set(CommitScore.objects.values_list("pk", flat=True)) - set(ids)
    assert len(new) == 3
    return new, set()


def write_queryset_update(ids: list[int]) -> tuple[set[int], set[int]]:
    assert CommitScore.objects.filter(points__gte=7).update(points=F("points") + 100) == 3
    return set(ids[7:]), set()


def write_queryset_delete(ids: list[int]) -> tuple[set[int], set[int]]:
    assert CommitScore.objects.filter(points__lt=3).delete()[0] == 3
    return set(), set(ids[:3])


def write_raw_update(ids: list[int]) -> tuple[set[int], set[int]]:
    raw_sql(f"UPDATE {TABLE} SET player = 'raw' WHERE id IN (%s, %s)", [ids[1], ids[8]])
    return {ids[1], ids[8]}, set()


def write_update_or_create_update(ids: list[int]) -> tuple[set[int], set[int]]:
    obj, created = CommitScore.objects.update_or_create(pk=ids[5], defaults={"points": 555})
    assert not created
    return {ids[5]}, set()


def write_update_or_create_create(ids: list[int]) -> tuple[set[int], set[int]]:
    obj, created = CommitScore.objects.update_or_create(player="fresh", defaults={"points": 1})
    assert created
    return {obj.pk}, set()


def write_pk_change(ids: list[int]) -> tuple[set[int], set[int]]:
    new = ids[-1] + 1000
    raw_sql(f"UPDATE {TABLE} SET id = %s WHERE id = %s", [new, ids[6]])
    return {new}, {ids[6]}


WRITES = [
    write_create,
    write_save,
    write_delete,
    write_bulk_create,
    write_queryset_update,
    write_queryset_delete,
    write_raw_update,
    write_update_or_create_update,
    write_update_or_create_create,
    write_pk_change,
]


@pytest.mark.parametrize("write", WRITES, ids=lambda w: w.__name__[len("write_") :])
def test_each_write_stores_one_delta_of_only_the_changed_rows(
    write: Callable[[list[int]], tuple[set[int], set[int]]], spools: list[SpoolResult]
) -> None:
    ids = seed()
    spools.clear()

    upserted, deleted = write(ids)

    count = CommitScore.objects.count()
    assert layout() == [("snapshot", 1, 10), ("delta", 2, count)]
    assert [(r.kind, r.generation, r.rows) for r in spools] == [("delta", 2, count)]
    row = delta(2)
    assert (row.format, row.format_version) == (journal.DELTA_FORMAT, 1)
    # One row, its data inline: no chunks.
    assert (
        spools[0].bytes == row.size == len(row.inline) and spools[0].chunks == row.chunk_count == 0
    )
    upsert, delete = changes(row)
    now = {r[0]: r for r in memory()}
    assert upsert == sorted(now[pk] for pk in upserted), "exactly the changed rows, as they are"
    assert delete == sorted(deleted)
    assert stored_now() == memory()
    assert info(LABEL).dirty is False


def test_back_to_back_writes_store_one_delta_each(
    spools: list[SpoolResult],
) -> None:
    """Back-to-back writes each store their own delta, each with its own row only."""
    ids = seed()
    spools.clear()
    for number in range(5):
        CommitScore.objects.filter(pk=ids[number]).update(points=-number)
    assert [(r.kind, r.generation) for r in spools] == [("delta", g) for g in range(2, 7)]
    for number in range(5):
        upsert, delete = changes(delta(number + 2))
        assert upsert == [(ids[number], f"p{number}", -number)] and delete == []


@pytest.mark.transactional_memory
def test_a_rolled_back_atomic_or_a_write_that_changes_nothing_stores_nothing(
    spools: list[SpoolResult],
) -> None:
    ids = seed()
    spools.clear()
    before = everything_stored()

    with pytest.raises(RuntimeError):
        with transaction.atomic(using="memdb"):
            CommitScore.objects.create(player="lost", points=1)
            CommitScore.objects.filter(pk=ids[0]).update(points=1000)
            CommitScore.objects.filter(pk=ids[1]).delete()
            raise RuntimeError("roll back")
    assert CommitScore.objects.filter(points__lt=-1).update(points=0) == 0
    assert CommitScore.objects.filter(points__lt=-1).delete()[0] == 0

    assert spools == []
    assert everything_stored() == before
    assert info(LABEL).dirty is False

    # The next write's delta holds its own row, nothing of the rolled-back ones.
    obj = CommitScore.objects.create(player="next", points=2)
    assert changes(delta(2)) == ([(obj.pk, "next", 2)], [])


def test_an_atomic_block_of_several_writes_stores_one_delta(spools: list[SpoolResult]) -> None:
    ids = seed()
    spools.clear()

    with transaction.atomic(using="memdb"):
        created = CommitScore.objects.create(player="created", points=1)
        CommitScore.objects.filter(pk=ids[0]).update(points=100)
        CommitScore.objects.filter(pk=ids[0]).update(points=200)  # the same row twice
        CommitScore.objects.filter(pk=ids[1]).delete()
        CommitScore.objects.filter(pk=ids[2]).update(points=300)
        CommitScore.objects.filter(pk=ids[2]).delete()  # updated, then deleted
        CommitScore.objects.filter(pk=ids[3]).delete()
        CommitScore.objects.create(pk=ids[3], player="re-inserted", points=3)
        transient = CommitScore.objects.create(player="transient", points=0).pk
        CommitScore.objects.filter(pk=transient).delete()
        with transaction.atomic(using="memdb"):  # a savepoint inside
            CommitScore.objects.filter(pk=ids[4]).update(player="savepoint")

    assert [(r.kind, r.generation, r.rows) for r in spools] == [("delta", 2, 9)]
    assert layout() == [("snapshot", 1, 10), ("delta", 2, 9)]
    upsert, delete = changes(delta(2))
    assert upsert == [
        (ids[0], "p0", 200),
        (ids[3], "re-inserted", 3),
        (ids[4], "savepoint", 4),
        (created.pk, "created", 1),
    ]
    # A row created and deleted inside the block may be named as deleted (it is gone).
    assert set(delete) - {transient} == {ids[1], ids[2]}
    assert stored_now() == memory()


def test_every_field_type_round_trips_exactly_through_a_delta(
    monkeypatch: pytest.MonkeyPatch, spools: list[SpoolResult]
) -> None:
    """Bytes, big integers, floats at their limits, JSON, text with every kind of
    character: a delta stores the values SQLite holds, and a replay gives them back with
    the same SQLite type."""
    monkeypatch.setattr(AllTypes, "memdb_policy", "commit", raising=False)
    monkeypatch.setattr(journal, "JOURNAL_RATIO", 1e9)  # the long text: no compaction
    policies.clear_cache()
    try:
        first = AllTypes.objects.create(**ROWS[0])  # the snapshot
        others = [AllTypes.objects.create(**row) for row in ROWS[1:]]  # deltas
        first.blob = b"\x00\xffchanged\x00"
        first.floating = 0.1 + 0.2
        first.save()
        assert [r.kind for r in spools] == ["snapshot"] + ["delta"] * len(ROWS)
        assert [kind for kind, _, _ in layout(AllTypes)] == ["snapshot"] + ["delta"] * len(ROWS)
        stored_delta = payload(delta(2, AllTypes))
        (row,) = stored_delta["upsert"]
        blob = row[stored_delta["columns"].index("blob")]
        assert blob == {"b": base64.b64encode(ROWS[1]["blob"]).decode()}
        expected = [field_values(AllTypes.objects.get(pk=o.pk)) for o in [first, *others]]
        table = AllTypes._meta.db_table

        def raw() -> list[list[tuple[str, Any]]]:
            with store.raw_connection() as conn:
                rows = conn.execute(f'SELECT * FROM "{table}" ORDER BY id').fetchall()
            return [[(type(v).__name__, v) for v in row] for row in rows]

        before = raw()
        with store.raw_connection() as conn:
            conn.execute(f'DELETE FROM "{table}"')
        (result,) = api.restore("testapp.AllTypes")
        assert result.generation == 1 + len(ROWS)
        assert raw() == before
        assert [field_values(o) for o in AllTypes.objects.order_by("pk")] == expected
    finally:
        monkeypatch.undo()
        policies.clear_cache()


# -- restore: the snapshot and its journal ----------------------------------------------------


def mixed_writes(ids: list[int]) -> list[int]:
    """Creates, updates, deletes and re-inserts of the same keys, a key change, each its
    own committed write; the row count after each."""
    counts = []

    def step(func: Callable[[], object]) -> None:
        func()
        counts.append(CommitScore.objects.count())

    step(lambda: CommitScore.objects.create(player="new", points=100))
    step(lambda: CommitScore.objects.filter(pk=ids[1]).update(points=-1))
    step(lambda: CommitScore.objects.filter(pk=ids[2]).delete())
    step(lambda: CommitScore.objects.create(pk=ids[2], player="again", points=22))
    step(lambda: CommitScore.objects.filter(pk__in=ids[3:6]).delete())
    step(lambda: CommitScore.objects.create(pk=ids[3], player="back", points=33))
    step(lambda: CommitScore.objects.filter(pk=ids[3]).delete())

    def delete_and_reinsert() -> None:
        with transaction.atomic(using="memdb"):
            CommitScore.objects.filter(pk=ids[6]).delete()
            CommitScore.objects.create(pk=ids[6], player="same-transaction", points=66)

    step(delete_and_reinsert)
    step(lambda: raw_sql(f"UPDATE {TABLE} SET id = %s WHERE id = %s", [ids[-1] + 1000, ids[7]]))
    step(lambda: raw_sql(f"UPDATE {TABLE} SET id = %s WHERE id = %s", [ids[4], ids[8]]))
    step(lambda: CommitScore.objects.bulk_create([CommitScore(player="b1"), CommitScore()]))
    return counts


def test_restore_replays_the_journal_exactly(spools: list[SpoolResult]) -> None:
    ids = seed()
    counts = mixed_writes(ids)
    last = 1 + len(counts)
    expected = memory()
    assert [r.kind for r in spools] == ["snapshot"] + ["delta"] * len(counts)
    # Each delta's row count is the table's row count as of that write.
    assert layout() == [("snapshot", 1, 10)] + [
        ("delta", generation, count) for generation, count in enumerate(counts, start=2)
    ]
    assert stored_now() == expected

    restore_and_check(expected, last)

    # The restored generation is the last delta's: the next write continues the journal.
    CommitScore.objects.create(player="after", points=1)
    assert layout()[-1] == ("delta", last + 1, len(expected) + 1)
    restore_and_check(memory(), last + 1)


CHILD_WRITES = """
from django.db import connections
from memdb.spooler import writer_id
ids = None
counts = []

def raw_sql(sql, params):
    with connections["memdb"].cursor() as cursor:
        cursor.execute(sql, params)

def step(func):
    func()
    counts.append(CommitScore.objects.count())

def both():
    with transaction.atomic(using="memdb"):
        CommitScore.objects.filter(pk=ids[5]).delete()
        CommitScore.objects.create(pk=ids[5], player="same-transaction", points=55)

TABLE = CommitScore._meta.db_table
step(lambda: CommitScore.objects.bulk_create([CommitScore(player=f"p{i}", points=i) for i in range(8)]))
ids = list(CommitScore.objects.order_by("pk").values_list("pk", flat=True))
step(lambda: CommitScore.objects.create(player="new", points=100))
step(lambda: CommitScore.objects.filter(pk=ids[1]).update(points=-1))
step(lambda: CommitScore.objects.filter(pk=ids[2]).delete())
step(lambda: CommitScore.objects.create(pk=ids[2], player="again", points=22))
step(lambda: CommitScore.objects.filter(pk__in=ids[3:5]).delete())
step(both)
step(lambda: raw_sql(f"UPDATE {TABLE} SET id = 1000 WHERE id = %s", [ids[6]]))
stored = PersistentStorage.objects.filter(model_name="CommitScore").order_by("generation")
report(
    rows=rows(CommitScore),
    counts=counts,
    stored=[list(s) for s in stored.values_list("kind", "generation", "row_count")],
)
"""

CHILD_RESTARTED = """
seen = rows(CommitScore)
(info,) = api.tables("testapp.CommitScore")
CommitScore.objects.filter(player="new").update(points=101)
stored = PersistentStorage.objects.filter(model_name="CommitScore").order_by("generation")
report(
    seen=seen,
    state=info.restore_state,
    generation=info.generation,
    rows=rows(CommitScore),
    stored=[list(s) for s in stored.values_list("kind", "generation", "row_count")],
)
"""


def test_a_restart_restores_the_snapshot_and_its_journal(default_db: str) -> None:
    env = child_env(default_db)
    first = run(CHILD_WRITES, env, migrate=True)
    counts = first["counts"]
    assert counts[0] == 8
    assert first["stored"] == [["snapshot", 1, 8]] + [
        ["delta", generation, count] for generation, count in enumerate(counts[1:], start=2)
    ]
    last = len(counts)
    players = [row[1] for row in first["rows"]]
    assert "again" in players and "same-transaction" in players and "p3" not in players

    second = run(CHILD_RESTARTED, env)
    assert second["seen"] == first["rows"]
    assert (second["state"], second["generation"]) == ("ok", last)
    assert second["stored"][-1] == ["delta", last + 1, len(first["rows"])]
    assert len(second["stored"]) == last + 1

    third = read("CommitScore", env)
    assert third["restore_state"] == "ok"
    assert third["rows"] == second["rows"] != first["rows"]


# -- many changed rows: a whole snapshot ------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "changed", "kind"),
    [
        pytest.param(600, 120, "delta", id="20%-of-600"),
        pytest.param(600, 121, "snapshot", id="over-20%-of-600"),
        pytest.param(150, 100, "delta", id="100-of-150"),
        pytest.param(150, 101, "snapshot", id="101-of-150"),
    ],
)
def test_many_changed_rows_store_a_whole_snapshot(
    size: int, changed: int, kind: str, spools: list[SpoolResult]
) -> None:
    """A delta while the changed rows are at most 20% of the table or at most 100."""
    ids = seed(size)
    CommitScore.objects.filter(pk=ids[-1]).update(points=-1)
    assert layout() == [("snapshot", 1, size), ("delta", 2, size)]
    spools.clear()

    CommitScore.objects.filter(pk__in=ids[:changed]).update(points=F("points") + 1000)

    assert [(r.kind, r.generation, r.rows) for r in spools] == [(kind, 3, size)]
    if kind == "snapshot":
        assert layout() == [("snapshot", 3, size)], "the old snapshot and deltas are dropped"
    else:
        assert layout() == [("snapshot", 1, size), ("delta", 2, size), ("delta", 3, size)]
        upsert, delete = changes(delta(3))
        assert [r[0] for r in upsert] == ids[:changed] and delete == []
    assert stored_now() == memory()
    restore_and_check(memory(), 3)
    # A snapshot is a new base: the next small write is a delta on top of it again.
    CommitScore.objects.filter(pk=ids[0]).update(points=0)
    assert spools[-1].kind == "delta" and layout()[-1] == ("delta", 4, size)


@pytest.mark.sqlite_store
def test_a_delta_bigger_than_a_chunk_stores_a_whole_snapshot(
    memdb_override: Override, spools: list[SpoolResult]
) -> None:
    """A delta is one row holding one chunk: changed rows of more than ``CHUNK_SIZE``
    bytes are stored as a snapshot (in chunks) instead, and deltas follow it again."""
    ids = seed(10)
    with memdb_override(CHUNK_SIZE=4096):
        CommitScore.objects.filter(pk=ids[0]).update(player="small")
        CommitScore.objects.filter(pk=ids[1]).update(player="x" * 5000)
        CommitScore.objects.filter(pk=ids[2]).update(player="small again")
    assert [(r.kind, r.generation) for r in spools[-3:]] == [
        ("delta", 2),
        ("snapshot", 3),
        ("delta", 4),
    ]
    assert stored(CommitScore).chunk_count > 1
    assert delta(4).chunk_count == 0 and delta(4).inline is not None
    restore_and_check(memory(), 4)


def test_other_policies_and_forced_spools_store_whole_snapshots(
    spools: list[SpoolResult],
) -> None:
    Score.objects.create(player="manual", points=1)
    api.spool("testapp.Score")
    Score.objects.create(player="manual", points=2)
    api.spool("testapp.Score")
    assert [(r.kind, r.generation) for r in spools] == [("snapshot", 1), ("snapshot", 2)]
    assert layout(Score) == [("snapshot", 2, 2)]

    seed()
    CommitScore.objects.create(player="x", points=1)
    assert layout()[-1] == ("delta", 2, 11)
    assert api.spool(LABEL)[0].unchanged, "nothing changed since the delta"
    (forced,) = api.spool(LABEL, force=True)
    assert (forced.kind, forced.generation) == ("snapshot", 3)
    assert layout() == [("snapshot", 3, 11)]
    restore_and_check(memory(), 3)


# -- compaction -----------------------------------------------------------------------------


def test_compact_folds_the_journal_into_one_snapshot(spools: list[SpoolResult]) -> None:
    ids = seed()
    before_compaction = everything_stored()
    assert journal.compact(CommitScore) is None, "no journal: nothing to fold"
    assert everything_stored() == before_compaction

    counts = mixed_writes(ids)
    last = 1 + len(counts)
    expected = memory()
    snapshot_codecs = stored(CommitScore).codecs

    assert journal.compact(CommitScore) == last

    assert layout() == [("snapshot", last, len(expected))]
    assert stored(CommitScore).codecs == snapshot_codecs
    assert stored_now() == expected
    assert memory() == expected, "compaction never touches the memory table"
    (table,) = api.tables(LABEL)
    assert (table.generation, table.snapshot_rows, table.dirty) == (last, len(expected), False)

    # Further writes are deltas on top of the new snapshot.
    spools.clear()
    CommitScore.objects.filter(pk=ids[0]).update(points=-50)
    CommitScore.objects.create(player="on top", points=7)
    assert [(r.kind, r.generation) for r in spools] == [("delta", last + 1), ("delta", last + 2)]
    assert layout() == [
        ("snapshot", last, len(expected)),
        ("delta", last + 1, len(expected)),
        ("delta", last + 2, len(expected) + 1),
    ]
    restore_and_check(memory(), last + 2)

    assert journal.compact(CommitScore) == last + 2
    assert layout() == [("snapshot", last + 2, len(expected) + 1)]
    restore_and_check(memory(), last + 2)


def test_the_delta_count_threshold_compacts_in_the_background(
    monkeypatch: pytest.MonkeyPatch, compaction_requests: list[str]
) -> None:
    monkeypatch.setattr(journal, "JOURNAL_MAX", 3)
    ids = seed()
    CommitScore.objects.filter(pk=ids[0]).update(points=100)
    CommitScore.objects.filter(pk=ids[1]).update(points=101)
    assert compaction_requests == []
    assert [kind for kind, _, _ in layout()] == ["snapshot", "delta", "delta"]

    CommitScore.objects.filter(pk=ids[2]).update(points=102)  # the third delta

    assert compaction_requests == [LABEL]
    assert wait_until(lambda: layout() == [("snapshot", 4, 10)], 30.0), layout()
    assert stored_now() == memory()
    restore_and_check(memory(), 4)
    CommitScore.objects.create(player="after", points=1)
    assert layout() == [("snapshot", 4, 10), ("delta", 5, 11)]
    assert compaction_requests == [LABEL], "the count starts again after a compaction"


class ShutdownThreading:
    """``threading`` as ``journal`` sees it at interpreter shutdown on Python 3.12+."""

    class Thread(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't create new thread at interpreter shutdown")


def test_a_delta_at_interpreter_shutdown_is_stored_and_leaves_the_compaction(
    monkeypatch: pytest.MonkeyPatch, compaction_requests: list[str], spools: list[SpoolResult]
) -> None:
    """Regression (Python 3.12): the interval spooler's last tick, at exit, stored a delta
    past the threshold, the compaction thread it asked for could not start, and the
    spool was logged as failed; the table was never compacted again in that process."""
    monkeypatch.setattr(journal, "JOURNAL_MAX", 2)
    ids = seed()
    CommitScore.objects.filter(pk=ids[0]).update(points=100)
    with monkeypatch.context() as shutdown:
        shutdown.setattr(journal, "threading", ShutdownThreading)
        CommitScore.objects.filter(pk=ids[1]).update(points=101)  # the second delta
    assert compaction_requests == [LABEL]
    assert [(r.kind, r.generation) for r in spools[-1:]] == [("delta", 3)]
    assert layout() == [("snapshot", 1, 10), ("delta", 2, 10), ("delta", 3, 10)]
    assert stored_now() == memory()

    # Not marked as compacting for good: the next delta's request starts one.
    CommitScore.objects.filter(pk=ids[2]).update(points=102)
    assert compaction_requests == [LABEL, LABEL]
    assert wait_until(lambda: layout() == [("snapshot", 4, 10)], 30.0), layout()
    restore_and_check(memory(), 4)


def test_the_journal_size_threshold_compacts_in_the_background(
    monkeypatch: pytest.MonkeyPatch, compaction_requests: list[str]
) -> None:
    """Compaction starts once the deltas' bytes exceed JOURNAL_RATIO of the snapshot's."""
    ids = seed()
    CommitScore.objects.filter(pk=ids[0]).update(points=100)
    assert compaction_requests == []
    snapshot_bytes, delta_bytes = stored(CommitScore).size, delta(2).size
    # Past the threshold at the second delta of the same size, not at the first.
    monkeypatch.setattr(journal, "JOURNAL_RATIO", 1.5 * delta_bytes / snapshot_bytes)

    CommitScore.objects.filter(pk=ids[1]).update(points=101)
    assert compaction_requests == [LABEL]
    assert wait_until(lambda: layout() == [("snapshot", 3, 10)], 30.0), layout()
    restore_and_check(memory(), 3)


def test_compaction_while_writers_keep_writing_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, compaction_requests: list[str]
) -> None:
    """Every delta asks for a compaction (one runs at a time) while four threads write:
    storage ends exactly like the memory table."""
    monkeypatch.setattr(journal, "JOURNAL_RATIO", 0.0)
    seed(20)
    threads, per_thread = 4, 25
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def writer(number: int) -> None:
        try:
            start.wait(10)
            mine: list[int] = []
            for step in range(per_thread):
                mine.append(CommitScore.objects.create(player=f"t{number}", points=step).pk)
                if step % 3 == 2:
                    CommitScore.objects.filter(pk=mine[-2]).update(points=F("points") + 1000)
                if step % 5 == 4:
                    CommitScore.objects.filter(pk=mine.pop(0)).delete()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connections.close_all()

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not any(worker.is_alive() for worker in workers)
    assert errors == []
    assert wait_until(lambda: not journal._compacting, 30.0)

    expected = memory()
    assert len(expected) == 20 + threads * (per_thread - per_thread // 5)
    snapshot_generation = stored(CommitScore).generation
    print(
        f"{len(compaction_requests)} compactions asked for, the last snapshot at "
        f"generation {snapshot_generation} of {layout()[-1][1]}"
    )
    assert len(compaction_requests) >= 10 and snapshot_generation > 1
    assert stored_now() == expected
    restore_and_check(expected, layout()[-1][1])
    assert journal.compact(CommitScore) in (None, layout()[-1][1])
    restore_and_check(expected, layout()[-1][1])


def test_a_restore_while_the_journal_is_compacted_still_gives_every_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Storage is compacted (as another process would) between the restore's read of
    the snapshot and its read of the journal."""
    ids = seed(3)
    CommitScore.objects.filter(pk=ids[0]).update(points=100)
    CommitScore.objects.create(player="new", points=4)
    expected = memory()
    original = restore_module._decode_into
    compactions: list[threading.Thread] = []
    compacted: list[bool] = []

    def compact() -> None:
        try:
            journal.compact(CommitScore)
        finally:
            connections.close_all()

    def decode_then_compact(model: Any, snapshot: Any, path: str) -> None:
        original(model, snapshot, path)
        if not compactions:
            compactions.append(threading.Thread(target=compact))
            compactions[0].start()
            # Its storage transaction commits; it then waits for the table's lock,
            # which the restore holds, to update this process's figures.
            compacted.append(wait_until(lambda: layout() == [("snapshot", 3, 4)], 10))

    monkeypatch.setattr(restore_module, "_decode_into", decode_then_compact)
    try:
        scramble_memory()
        (result,) = api.restore(LABEL)
    finally:
        for thread in compactions:
            thread.join(30)
    assert compacted == [True], "the compaction did not run between the two reads"
    assert (memory(), result.generation) == (expected, 3)


# -- codecs -----------------------------------------------------------------------------------


@pytest.mark.sqlite_store
def test_deltas_run_through_zlib(memdb_override: Override) -> None:
    with memdb_override(CODECS=["zlib"]):
        ids = seed()
        CommitScore.objects.filter(pk=ids[0]).update(player="zipped" * 20)
        row = delta(2)
        assert row.codecs == ["zlib"] and row.key_ids == []
        data = b"".join(stored_chunks(row))
        assert not data.startswith(b"{")
        decoded = json.loads(zlib.decompress(data))  # zlib itself, not memdb
        assert decoded["upsert"] == [[ids[0], "zipped" * 20, 0]]
        assert len(data) < len(json.dumps(decoded))
        restore_and_check(memory(), 2)


def test_deltas_run_through_fernet(memdb_override: Override) -> None:
    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[KEY_A]):
        ids = seed()
        CommitScore.objects.filter(pk=ids[0]).update(player="secret-player")
        row = delta(2)
        assert row.codecs == ["fernet"]
        assert row.key_ids == stored(CommitScore).key_ids != []
        data = b"".join(stored_chunks(row))
        assert b"secret-player" not in data
        decoded = json.loads(Fernet(KEY_A.encode()).decrypt(data))
        assert decoded["upsert"] == [[ids[0], "secret-player", 0]]
        restore_and_check(memory(), 2)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param({"CODECS": ["zlib"]}, {"CODECS": []}, id="zlib-to-none"),
        pytest.param({"CODECS": []}, {"CODECS": ["zlib"]}, id="none-to-zlib"),
        pytest.param(
            {"CODECS": ["zlib"], "FERNET_KEYS": [KEY_A]},
            {"CODECS": ["zlib", "fernet"], "FERNET_KEYS": [KEY_A]},
            id="fernet-added",
        ),
        pytest.param(
            {"CODECS": ["fernet"], "FERNET_KEYS": [KEY_A]},
            {"CODECS": ["fernet"], "FERNET_KEYS": [KEY_B, KEY_A]},
            id="new-fernet-key",
        ),
    ],
)
def test_a_new_codec_chain_makes_the_next_spool_a_snapshot(
    before: dict[str, Any],
    after: dict[str, Any],
    memdb_override: Override,
    spools: list[SpoolResult],
) -> None:
    with memdb_override(**before):
        ids = seed()
        CommitScore.objects.filter(pk=ids[0]).update(points=100)
        assert layout()[-1] == ("delta", 2, 10)
    spools.clear()
    with memdb_override(**after):
        CommitScore.objects.filter(pk=ids[1]).update(points=101)
        assert [(r.kind, r.generation) for r in spools] == [("snapshot", 3)]
        assert layout() == [("snapshot", 3, 10)]
        assert stored(CommitScore).codecs == after["CODECS"]
        CommitScore.objects.filter(pk=ids[2]).update(points=102)
        assert spools[-1].kind == "delta"
        assert delta(4).codecs == after["CODECS"]
        assert delta(4).key_ids == stored(CommitScore).key_ids
        restore_and_check(memory(), 4)


# -- a damaged journal ----------------------------------------------------------------------


def journal_of_three() -> list[tuple[int, str, int]]:
    """A snapshot (generation 1) and three deltas (2, 3, 4); the memory rows."""
    ids = seed(5)
    CommitScore.objects.filter(pk=ids[0]).update(points=100)
    CommitScore.objects.filter(pk=ids[1]).delete()
    CommitScore.objects.create(player="new", points=7)
    assert [(kind, g) for kind, g, _ in layout()] == [("snapshot", 1)] + [
        ("delta", g) for g in (2, 3, 4)
    ]
    return memory()


def assert_failed_and_protected(match: str) -> None:
    """A restore fails with ``match``; storage and the memory table stay as they were,
    and the table refuses spools (of every kind) until forced."""
    before, in_memory = everything_stored(), memory()
    with pytest.raises(RestoreError, match=match) as excinfo:
        api.restore(LABEL)
    assert set(excinfo.value.errors) == {LABEL}
    assert everything_stored() == before
    assert memory() == in_memory, "a failed restore leaves the memory table as it was"
    table = info(LABEL)
    assert table.restore_state == "failed"
    assert table.restore_error and LABEL in table.restore_error

    with pytest.raises(ProtectedTableError, match=r"testapp\.CommitScore"):
        api.spool(LABEL)
    with pytest.raises(ProtectedTableError, match=r"testapp\.CommitScore"):
        CommitScore.objects.create(player="refused", points=0)  # the commit policy's spool
    assert everything_stored() == before

    # The way out: a forced spool stores the memory table as a new snapshot.
    (forced,) = api.spool(LABEL, force=True)
    assert forced.kind == "snapshot"
    assert layout() == [("snapshot", forced.generation, len(in_memory) + 1)]
    restore_and_check(memory(), forced.generation)


def test_a_gap_in_the_journal_fails_the_restore_naming_the_generation() -> None:
    journal_of_three()
    delta(3).delete()
    assert [g for _, g, _ in layout()] == [1, 2, 4]
    assert_failed_and_protected(
        r"testapp\.CommitScore: the journal after the snapshot \(generation 1\) is "
        r"missing generation 3"
    )


def test_a_corrupt_delta_chunk_fails_the_checksum() -> None:
    journal_of_three()
    row = delta(3)
    data = bytearray(b"".join(stored_chunks(row)))
    data[len(data) // 2] ^= 0x01
    replace_data(row, bytes(data))
    assert_failed_and_protected(
        r"testapp\.CommitScore: checksum mismatch, the stored journal delta "
        r"\(generation 3\) is corrupt"
    )


def test_a_truncated_delta_fails_the_checksum() -> None:
    journal_of_three()
    row = delta(3)
    PersistentStorage.objects.filter(pk=row.pk).update(inline=bytes(row.inline)[:-5])
    assert_failed_and_protected(
        r"testapp\.CommitScore: checksum mismatch, the stored journal delta "
        r"\(generation 3\) is corrupt"
    )


def test_a_delta_without_its_data_fails_naming_it() -> None:
    journal_of_three()
    PersistentStorage.objects.filter(pk=delta(3).pk).update(inline=None)
    assert_failed_and_protected(
        r"testapp\.CommitScore: the stored journal delta \(generation 3\) has no data"
    )


def test_a_delta_stored_in_chunks_before_0_7_is_still_read() -> None:
    """Deltas written before they were stored inline (migration 0007) kept their data
    in a chunk; the migration leaves them there and a restore reads them."""
    rows = journal_of_three()
    for row in PersistentStorage.objects.filter(kind="delta"):
        replace_data(row, bytes(row.inline), fix_checksum=True)
    assert not PersistentStorage.objects.filter(kind="delta", inline__isnull=False).exists()
    restore_and_check(rows, 4)


def test_migration_0007_backward_moves_inline_deltas_into_chunks() -> None:
    """Unapplying 0007 (which stores deltas inline) first gives each inline delta one
    chunk holding its bytes; applying it again leaves them there, and they restore."""
    from django.db.migrations.executor import MigrationExecutor

    rows = journal_of_three()
    inline = {r.generation: bytes(r.inline) for r in PersistentStorage.objects.filter(kind="delta")}
    connection = connections["default"]
    leaves = MigrationExecutor(connection).loader.graph.leaf_nodes()
    executor = MigrationExecutor(connection)
    try:
        executor.migrate([("memdb", "0006_storage_latest_index")])
        old = executor.loader.project_state(("memdb", "0006_storage_latest_index")).apps
        moved = old.get_model("memdb", "PersistentStorage").objects.filter(kind="delta")
        chunks = old.get_model("memdb", "SnapshotChunk").objects
        assert {r.generation: r.chunk_count for r in moved} == {2: 1, 3: 1, 4: 1}
        assert {
            r.generation: bytes(chunks.get(snapshot_id=r.pk, number=0).data) for r in moved
        } == inline
    finally:
        MigrationExecutor(connection).migrate(leaves)
    assert not PersistentStorage.objects.filter(inline__isnull=False).exists()
    restore_and_check(rows, 4)


GOOD_COLUMNS = {"columns": COLUMNS, "pk": "id"}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"\xff\xfe binary", id="not-utf8"),
        pytest.param(b"[1, 2]", id="a-list"),
        pytest.param(b"null", id="null"),
        pytest.param(json.dumps({"upsert": [], "delete": []}).encode(), id="no-columns"),
        pytest.param(json.dumps({**GOOD_COLUMNS, "upsert": []}).encode(), id="no-delete"),
        pytest.param(
            json.dumps({"columns": COLUMNS, "pk": "key", "upsert": [], "delete": []}).encode(),
            id="pk-not-a-column",
        ),
        pytest.param(
            json.dumps({**GOOD_COLUMNS, "upsert": [[1]], "delete": []}).encode(),
            id="short-row",
        ),
        pytest.param(
            json.dumps({**GOOD_COLUMNS, "upsert": 5, "delete": []}).encode(),
            id="upsert-not-a-list",
        ),
        pytest.param(
            json.dumps({**GOOD_COLUMNS, "upsert": [], "delete": [{"x": 1}]}).encode(),
            id="bad-bytes-value",
        ),
    ],
)
def test_an_unreadable_delta_payload_is_a_clear_error(data: bytes) -> None:
    """A hand-edited payload behind a valid checksum (the default chain has no codec)."""
    journal_of_three()
    replace_data(delta(3), data, fix_checksum=True)
    assert_failed_and_protected(
        r"testapp\.CommitScore: a journal delta is not readable|"
        r"testapp\.CommitScore: a journal delta has no column"
    )


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        pytest.param({"format": "memdb-delta-v2"}, "'memdb-delta-v2' version 1", id="format"),
        pytest.param(
            {"format_version": journal.DELTA_FORMAT_VERSION + 1},
            "'memdb-delta' version 2",
            id="version",
        ),
        pytest.param({"format": "sqlite-table"}, "'sqlite-table' version 1", id="snapshot-format"),
    ],
)
def test_an_unknown_delta_format_is_a_clear_error(fields: dict[str, Any], said: str) -> None:
    journal_of_three()
    PersistentStorage.objects.filter(pk=delta(3).pk).update(**fields)
    assert_failed_and_protected(
        rf"testapp\.CommitScore: journal delta format {said} is not supported by this "
        r"version of django-memdb"
    )


def test_a_failed_compaction_leaves_storage_as_it_was() -> None:
    journal_of_three()
    delta(3).delete()
    before = everything_stored()
    with pytest.raises(RestoreError, match="missing generation 3"):
        journal.compact(CommitScore)
    assert everything_stored() == before


# -- schema drift -----------------------------------------------------------------------------


def without_points(data: dict[str, Any], *, extra: bool = False) -> bytes:
    """A delta payload as stored before ``points`` was added (and, with ``extra``, with a
    column the model no longer has)."""
    index = data["columns"].index("points")
    columns = [c for c in data["columns"] if c != "points"]
    upsert = [[v for i, v in enumerate(row) if i != index] for row in data["upsert"]]
    if extra:
        columns.append("retired")
        upsert = [[*row, "old value"] for row in upsert]
    return json.dumps({**data, "columns": columns, "upsert": upsert}).encode()


def snapshot_without_points() -> None:
    """Rewrite the stored snapshot as if spooled before ``points`` was added."""
    snapshot = stored(CommitScore)
    assert snapshot.codecs == [], "the default chain: the chunks are the plain image"
    conn = sqlite3.connect(":memory:")
    try:
        conn.deserialize(b"".join(stored_chunks(snapshot)))
        conn.execute(f'ALTER TABLE "{TABLE}" DROP COLUMN points')
        image = conn.serialize()
    finally:
        conn.close()
    replace_data(snapshot, bytes(image), fix_checksum=True)


def test_a_journal_from_before_a_field_was_added_restores_with_its_default() -> None:
    ids = seed(3)
    CommitScore.objects.create(player="in a delta", points=5)
    CommitScore.objects.filter(pk=ids[0]).update(player="renamed")
    CommitScore.objects.filter(pk=ids[1]).delete()
    snapshot_without_points()
    for generation in (2, 3, 4):
        row = delta(generation)
        replace_data(row, without_points(payload(row), extra=True), fix_checksum=True)
    players = [(pk, player) for pk, player, _ in memory()]

    restore_and_check([(pk, player, 0) for pk, player in players], 4)


def test_a_delta_from_before_a_field_was_added_restores_with_its_default() -> None:
    """The snapshot has ``points`` and a delta does not (written by a process running a
    model without the field, e.g. after a rollback of a deploy that added it)."""
    ids = seed(3)
    CommitScore.objects.create(player="in a delta", points=5)
    row = delta(2)
    replace_data(row, without_points(payload(row)), fix_checksum=True)
    expected = [(pk, player, 0 if pk not in ids else points) for pk, player, points in memory()]

    restore_and_check(expected, 2)


def test_compaction_keeps_a_field_added_since_the_snapshot() -> None:
    seed(3)
    snapshot_without_points()
    api.restore(LABEL)  # points == 0 for the snapshot's rows
    CommitScore.objects.create(player="written after the upgrade", points=7)
    assert memory()[-1][1:] == ("written after the upgrade", 7)
    restore_and_check(memory(), 2)  # the journal replay keeps it

    assert journal.compact(CommitScore) == 2

    restore_and_check(memory(), 2)


# -- two processes ----------------------------------------------------------------------------

CHILD_A = """
from memdb.spooler import writer_id
for player in {players!r}:
    CommitScore.objects.create(player=player, points=1)
report(me=writer_id(), rows=rows(CommitScore))
"""

CHILD_B = """
report(ready=True, rows=rows(CommitScore), generation=api.tables("testapp.CommitScore")[0].generation)
sys.stdin.readline()
try:
    CommitScore.objects.create(player="b", points=2)
    report(error=None)
except Exception as exc:
    report(error=type(exc).__name__, message=str(exc), rows=rows(CommitScore))
sys.stdin.readline()
try:
    api.spool("testapp.CommitScore")
    report(error=None)
except Exception as exc:
    report(error=type(exc).__name__, message=str(exc))
"""

CHILD_LAYOUT = """
stored = PersistentStorage.objects.filter(model_name="CommitScore").order_by("generation")
report(stored=[list(s) for s in stored.values_list("kind", "generation", "written_by")])
"""


def test_a_process_behind_gets_a_conflict_for_its_delta(default_db: str, tmp_path: Any) -> None:
    """B restored generation 2; A then stored delta 3; B's next write must not store a
    delta on top of generation 2 (or 3): ConflictError, and storage keeps A's journal."""
    env = child_env(default_db)
    first = run(CHILD_A.format(players=["a0", "a1"]), env, migrate=True)
    log = tmp_path / "b.log"
    with log.open("w") as stderr:
        b = start_process(PRELUDE + CHILD_B, env, stderr)
    try:
        assert b.stdin is not None and b.stdout is not None

        def answer() -> Any:
            assert b.stdout is not None
            line = b.stdout.readline()
            assert line, f"B exited:\n{log.read_text()}"
            return last_json(line)

        ready = answer()
        assert ready["rows"] == first["rows"] and ready["generation"] == 2
        second = run(CHILD_A.format(players=["a2"]), env)
        assert [row[1] for row in second["rows"]] == ["a0", "a1", "a2"]
        before = run(CHILD_LAYOUT, env)["stored"]
        assert before == [
            ["snapshot", 1, first["me"]],
            ["delta", 2, first["me"]],
            ["delta", 3, second["me"]],
        ]

        b.stdin.write("write\n")
        b.stdin.flush()
        refused = answer()
        assert refused["error"] == "ConflictError", refused
        assert f"generation 3, written by {second['me']}" in refused["message"], refused
        assert "last saw generation 2" in refused["message"], refused
        assert [row[1] for row in refused["rows"]] == ["a0", "a1", "b"], "B's memory"

        b.stdin.write("spool\n")
        b.stdin.flush()
        again = answer()
        assert again["error"] == "ConflictError", again
        b.stdin.close()
        assert b.wait(timeout=TIMEOUT) == 0, log.read_text()
    finally:
        stop(b)

    assert run(CHILD_LAYOUT, env)["stored"] == before
    assert read("CommitScore", env)["rows"] == second["rows"]


# -- inside a transaction on the default database ------------------------------------------


class Boom(Exception):
    pass


def test_a_commit_write_inside_a_default_atomic_is_stored_when_that_commits() -> None:
    """``ATOMIC_REQUESTS`` or an outer ``atomic()`` on the default database: the writes
    are stored when that transaction commits, in one delta; if it rolls back, nothing is
    stored and the table stays dirty, so the next write stores all of them.

    Regression (review): the delta was written inside the outer transaction, the
    rollback took it away while this process counted it stored, and every later write
    of the table failed with a conflict."""
    policies.stop_interval()  # its backstop would store the dirty table (next test)
    try:
        seed(3)
        with transaction.atomic(using="default"):
            for n in range(3):
                CommitScore.objects.create(player=f"inside {n}", points=n)
            assert layout() == [("snapshot", 1, 3)], "not before the outer commit"
        assert layout() == [("snapshot", 1, 3), ("delta", 2, 6)], "one delta for the three"

        with pytest.raises(Boom), transaction.atomic(using="default"):
            CommitScore.objects.create(player="rolled back outside", points=2)
            raise Boom
        assert layout()[-1] == ("delta", 2, 6)
        assert info(LABEL).dirty is True, "the memory write stands, not yet stored"
        CommitScore.objects.create(player="next", points=3)
        assert layout()[-1] == ("delta", 3, 8)
        upsert, _ = changes(delta(3))
        assert [row[1] for row in upsert] == ["rolled back outside", "next"]
        restore_and_check(memory(), 3)
    finally:
        policies.process_started()


def test_a_deferred_spool_that_never_ran_is_stored_by_the_interval_spooler() -> None:
    """A savepoint rolled back inside a committed transaction drops the deferred spool,
    and a transaction managed by hand (``set_autocommit(False)``) cannot defer one: the
    interval spooler stores the dirty table within ``INTERVAL``."""
    seed(3)
    with transaction.atomic(using="default"):
        with pytest.raises(Boom), transaction.atomic(using="default"):
            CommitScore.objects.create(player="in a savepoint", points=1)
            raise Boom
    assert wait_until(lambda: layout()[-1] == ("delta", 2, 4), timeout=30.0)
    default = connections["default"]
    default.set_autocommit(False)
    try:
        CommitScore.objects.create(player="by hand", points=2)
        assert wait_until(lambda: layout()[-1] == ("delta", 3, 5), timeout=30.0)
    finally:
        default.rollback()
        default.set_autocommit(True)
    assert [row[1] for row in stored_now()][-2:] == ["in a savepoint", "by hand"]


def test_a_deferred_spool_that_fails_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """After the default database committed, a spool error must not fail the caller
    (its data committed) nor skip the other on_commit callbacks: it is logged."""
    seed(3)
    policies.stop_interval()
    ran: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ConflictError("testapp.CommitScore: refused on purpose")

    monkeypatch.setattr(spooler, "spool_model", refuse)
    try:
        with transaction.atomic(using="default"):
            CommitScore.objects.create(player="late", points=1)
            transaction.on_commit(lambda: ran.append("other callback"), using="default")
    finally:
        monkeypatch.undo()
        policies.process_started()
    assert ran == ["other callback"]
    assert "after the default database's transaction committed" in caplog.text
    assert "refused on purpose" in caplog.text


def test_spool_inside_a_default_atomic_is_refused() -> None:
    seed(3)
    CommitScore.objects.filter(player="p0").update(points=9)
    with pytest.raises(SpoolError, match=r"inside transaction.atomic\(\) on the default database"):
        with transaction.atomic(using="default"):
            api.spool(LABEL, force=True)
    assert layout() == [("snapshot", 1, 3), ("delta", 2, 3)]


# -- a delta racing a whole snapshot or a compaction on the default database's row locks --


@pytest.fixture
def no_interval() -> Iterator[None]:
    """The interval thread stopped: its backstop for dirty commit tables would join in."""
    policies.stop_interval()
    try:
        yield
    finally:
        policies.process_started()


STORAGE = PersistentStorage._meta.db_table
COPIED = (
    "app_label, model_name, format, format_version, codecs, key_ids, row_count, size, "
    "checksum, chunk_count, inline, created_at, updated_at"
)


def storage_sql(sql: str) -> None:
    """Run ``sql`` ({t}: the storage table) on the default database, in autocommit."""
    with connections["default"].cursor() as cursor:
        cursor.execute(sql.format(t=connections["default"].ops.quote_name(STORAGE)))


def in_thread(name: str, out: dict[str, Any], work: Callable[[], Any]) -> threading.Thread:
    """Run ``work`` in a thread of its own (its own connections); ``out[name]`` is its
    result or the error it raised, as ``("ok", result)`` or ``("error", exc)``."""

    def run() -> None:
        try:
            out[name] = ("ok", work())
        except Exception as exc:
            out[name] = ("error", exc)
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_delta_and_a_snapshot_racing_after_a_compaction_lose_no_acknowledged_write(
    no_interval: None,
) -> None:
    """A compaction left a snapshot and a delta of the same generation 2. A delta
    writer (A) and a process storing the whole table on generation 2 (B) must lock the
    same row, so one of them is refused. (On SQLite the two are serialised by its
    database lock; the outcome must be the same.)

    Regression (review): A locked delta 2 and B snapshot 2; B's delete then removed A's
    acknowledged delta 3, and A's next write stacked delta 4 on B's snapshot."""
    seed(3)
    CommitScore.objects.create(player="x", points=1)  # delta 2
    storage_sql(  # compaction phase 1: a snapshot of generation 2 beside delta 2
        f"INSERT INTO {{t}} ({COPIED}, kind, generation, written_by) SELECT {COPIED}, "
        f"'snapshot', 2, 'compactor' FROM {{t}} WHERE kind = 'delta' AND generation = 2"
    )
    holding, release = threading.Event(), threading.Event()

    def hold_generation_3() -> None:  # freezes A's INSERT on the unique index a while
        with transaction.atomic(using="default"):
            storage_sql(
                f"INSERT INTO {{t}} ({COPIED}, kind, generation, written_by) SELECT "
                f"{COPIED}, 'delta', 3, 'holder' FROM {{t}} WHERE kind = 'delta' AND "
                f"generation = 2"
            )
            holding.set()
            release.wait(30)
            raise RuntimeError("rolled back on purpose")

    out: dict[str, Any] = {}
    holder = in_thread("holder", out, hold_generation_3)
    assert holding.wait(10)
    a = in_thread("A", out, lambda: CommitScore.objects.create(player="acknowledged", points=2))
    time.sleep(1)
    b = in_thread(
        "B",
        out,
        lambda: spooler.write_snapshot(
            CommitScore,
            chunks=iter([b"B's image"]),
            rows=3,
            chain=(),
            fmt=spooler.SNAPSHOT_FORMAT,
            expected=2,
            force=False,
        ),
    )
    time.sleep(1)
    release.set()
    for thread in (holder, a, b):
        thread.join(30)
    assert {out["A"][0], out["B"][0]} == {"ok", "error"}, out
    if out["A"][0] == "ok":
        assert isinstance(out["B"][1], ConflictError), out
        assert layout()[-1] == ("delta", 3, 5)
        upsert, _ = changes(delta(3))
        assert [row[1] for row in upsert] == ["acknowledged"]
    else:
        assert isinstance(out["A"][1], ConflictError), out
        assert layout() == [("snapshot", 3, 3)]


@pytest.mark.skipif(
    os.environ.get("MEMDB_TEST_DB", "sqlite") == "sqlite",
    reason="SQLite serialises writers: no row lock to race on",
)
def test_a_delta_whose_base_a_compaction_replaced_meanwhile_is_stored(no_interval: None) -> None:
    """A delta INSERT that waited on delta 2 while a compaction stored snapshot 2 and
    then dropped delta 2 finds no row to copy: it tries again on snapshot 2.

    Regression (review): it was refused with "generation 2 is no longer stored"."""
    seed(3)
    CommitScore.objects.create(player="x", points=1)  # delta 2
    holding, release = threading.Event(), threading.Event()

    def compaction() -> None:  # phase 2 holds delta 2, phase 1 commits meanwhile
        with transaction.atomic(using="default"):
            storage_sql("SELECT id FROM {t} WHERE kind = 'delta' AND generation = 2 FOR UPDATE")
            holding.set()
            release.wait(30)
            storage_sql("DELETE FROM {t} WHERE kind = 'delta' AND generation = 2")

    out: dict[str, Any] = {}
    phase2 = in_thread("phase 2", out, compaction)
    assert holding.wait(10)
    writer = in_thread("writer", out, lambda: CommitScore.objects.create(player="y", points=2))
    time.sleep(1)
    storage_sql(
        f"INSERT INTO {{t}} ({COPIED}, kind, generation, written_by) SELECT {COPIED}, "
        f"'snapshot', 2, 'compactor' FROM {{t}} WHERE kind = 'delta' AND generation = 2"
    )
    release.set()
    for thread in (phase2, writer):
        thread.join(30)
    assert out["phase 2"][0] == "ok" and out["writer"][0] == "ok", out
    assert layout() == [("snapshot", 1, 3), ("snapshot", 2, 4), ("delta", 3, 5)]


# -- how a delta reaches PostgreSQL -------------------------------------------------------

on_postgresql = pytest.mark.skipif(
    os.environ.get("MEMDB_TEST_DB", "sqlite") != "postgresql",
    reason="server-side binding and prepared statements are PostgreSQL's (psycopg 3)",
)
DELTA_INSERT = f'INSERT INTO "{PersistentStorage._meta.db_table}"'


@on_postgresql
def test_a_delta_on_postgresql_sends_its_values_apart_from_its_sql() -> None:
    """Django's psycopg 3 cursors write the values into the SQL text on the client; a
    delta's INSERT, sent at every committed write, has them bound on the server."""
    import psycopg

    seed(2)
    cursors: list[Any] = []

    def spy(execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if sql.startswith(DELTA_INSERT):
            cursors.append(context["cursor"].cursor)
        return execute(sql, params, many, context)

    with connections["default"].execute_wrapper(spy):
        CommitScore.objects.create(player="bound", points=1)
    (cursor,) = cursors
    assert isinstance(cursor, psycopg.Cursor) and not isinstance(cursor, psycopg.ClientCursor)
    assert layout()[-1][:2] == ("delta", 2)
    (upsert, deleted) = changes(delta(2))
    assert [row[1:] for row in upsert] == [("bound", 1)] and deleted == []


@on_postgresql
def test_a_delta_on_postgresql_is_prepared_only_when_the_connection_prepares() -> None:
    """Not a prepared statement by default (Django turns them off, for transaction
    poolers); one once the connection's ``prepare_threshold`` asks for them."""
    seed(2)
    storage = connections["default"]

    def prepared() -> int:
        with storage.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                [DELTA_INSERT + "%"],
            )
            return int(cursor.fetchone()[0])

    for points in range(3):
        CommitScore.objects.create(player="default", points=points)
    assert prepared() == 0
    storage.ensure_connection()
    storage.connection.prepare_threshold = 0  # as OPTIONS["prepare_threshold"] would
    try:
        for points in range(2):
            CommitScore.objects.create(player="prepared", points=points)
        assert prepared() == 1
    finally:
        storage.close()  # its prepared statement goes with its session
    assert [kind for kind, _, _ in layout()] == ["snapshot"] + ["delta"] * 5
    assert stored_now() == memory()
