"""``memdb.api``: spool, restore, discard, tables and their errors."""

from __future__ import annotations

import hashlib
import lzma
import sqlite3
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from memdb import api, policies, store
from memdb.exceptions import (
    ConflictError,
    MemdbError,
    NotPersistentError,
    ProtectedTableError,
    RestoreError,
    SpoolError,
    UnknownTableError,
)
from memdb.models import PersistentStorage
from memdb.restore import SchemaDriftWarning
from memdb.spooler import FORMAT_VERSION, SNAPSHOT_FORMAT
from tests.helpers import (
    create_stored,
    fingerprint,
    replace_data,
    stored_chunks,
    stored_data,
)
from tests.testapp.models import (
    AllTypes,
    CommitScore,
    Hit,
    Legacy,
    Player,
    Recruit,
    Score,
    Squad,
    Team,
)

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])

Override = Callable[..., AbstractContextManager[Any]]
SQLITE_HEADER = b"SQLite format 3\x00"


def stored(model: type) -> PersistentStorage:
    return PersistentStorage.objects.get(
        app_label=model._meta.app_label, model_name=model._meta.object_name
    )


def info(label: str) -> api.TableInfo:
    (result,) = api.tables(label)
    return result


def scores() -> list[tuple[str, int]]:
    return list(Score.objects.order_by("pk").values_list("player", "points"))


# spool


def test_spool_returns_rows_bytes_and_generation() -> None:
    Score.objects.bulk_create([Score(player=f"p{i}", points=i) for i in range(25)])
    (result,) = api.spool("testapp.Score")
    snapshot = stored(Score)
    assert result.label == "testapp.Score"
    assert result.rows == 25 == snapshot.row_count
    data = stored_data(snapshot)
    assert result.bytes == snapshot.size == len(data) > 0
    assert result.chunks == snapshot.chunk_count == len(stored_chunks(snapshot)) == 1
    assert result.generation == snapshot.generation == 1
    assert result.milliseconds >= 0
    assert snapshot.format == SNAPSHOT_FORMAT and snapshot.format_version == FORMAT_VERSION
    assert snapshot.codecs == []
    assert snapshot.checksum == hashlib.sha256(data).hexdigest()
    assert data.startswith(SQLITE_HEADER)
    assert snapshot.created_at <= snapshot.updated_at <= timezone.now()


def test_generation_increments_and_one_row_per_table_is_kept() -> None:
    Score.objects.create(player="a")
    Legacy.objects.create(text="x")
    generations = [r.generation for r in api.spool("testapp.Score", "testapp.Legacy")]
    first = stored(Score)
    unchanged = []
    for points in range(3):
        Score.objects.update(points=points)
        results = api.spool("testapp.Score", "testapp.Legacy")
        generations += [r.generation for r in results]
        unchanged += [r.unchanged for r in results]
    # Legacy did not change, so its snapshot is not rewritten.
    assert generations == [1, 1, 2, 1, 3, 1, 4, 1]
    assert unchanged == [False, True] * 3
    rows = PersistentStorage.objects.values_list("app_label", "model_name", "generation")
    assert sorted(rows) == [("testapp", "Legacy", 1), ("testapp", "Score", 4)]
    latest = stored(Score)
    assert latest.created_at == first.created_at
    assert latest.updated_at > first.updated_at


def test_spool_without_labels_spools_every_persistent_table() -> None:
    Score.objects.create(player="a")
    results = api.spool()
    labels = {r.label for r in results}
    assert "testapp.Hit" not in labels
    assert labels == {i.label for i in api.tables() if i.persistent}
    assert PersistentStorage.objects.count() == len(labels)


def test_deleting_every_row_of_one_model_does_not_touch_other_snapshots() -> None:
    """Regression: 0.0.6 deleted every stored table when one model was stored empty."""
    Score.objects.create(player="a", points=1)
    Legacy.objects.create(text="keep me")
    team = Team.objects.create(name="red")
    Player.objects.create(team=team, name="ann")
    api.spool()
    others = {
        (row.app_label, row.model_name): (row.pk, row.generation, row.checksum, stored_data(row))
        for row in PersistentStorage.objects.exclude(model_name="Score")
    }

    Score.objects.all().delete()
    (result,) = api.spool("testapp.Score")

    assert result.rows == 0 and stored(Score).row_count == 0
    after = {
        (row.app_label, row.model_name): (row.pk, row.generation, row.checksum, stored_data(row))
        for row in PersistentStorage.objects.exclude(model_name="Score")
    }
    assert after == others
    Legacy.objects.all().delete()
    api.restore("testapp.Legacy")
    assert list(Legacy.objects.values_list("text", flat=True)) == ["keep me"]


def test_spool_of_an_unknown_label_names_it() -> None:
    with pytest.raises(UnknownTableError, match="testapp.Nope"):
        api.spool("testapp.Nope")
    with pytest.raises(UnknownTableError, match="'plain'"):
        api.spool("plain")
    with pytest.raises(UnknownTableError, match="testapp.Plain"):
        api.restore("testapp.Plain")
    assert not PersistentStorage.objects.exists()


def test_labels_are_case_insensitive() -> None:
    (result,) = api.spool("TESTAPP.score")
    assert result.label == "testapp.Score"


def test_spool_of_a_memory_only_table_is_refused() -> None:
    Hit.objects.create(path="/")
    with pytest.raises(NotPersistentError, match="testapp.Hit"):
        api.spool("testapp.Hit")
    with pytest.raises(NotPersistentError, match="testapp.Hit"):
        api.spool("testapp.Score", "testapp.Hit")
    with pytest.raises(NotPersistentError):
        api.restore("testapp.Hit")
    assert not PersistentStorage.objects.exists()


def test_spool_inside_atomic_on_the_memory_database_is_refused() -> None:
    with transaction.atomic(using="memdb"):
        Score.objects.create(player="a")
        with pytest.raises(SpoolError, match=r"inside transaction\.atomic\(\)"):
            api.spool("testapp.Score")
        with pytest.raises(RestoreError, match=r"inside transaction\.atomic\(\)"):
            api.restore("testapp.Score")
    assert not PersistentStorage.objects.exists()
    # Inside atomic() on the default database, a spool is refused too (a rollback there
    # would take the snapshot away while memdb counted it stored); a restore only reads.
    with transaction.atomic(using="default"):
        with pytest.raises(SpoolError, match=r"inside transaction\.atomic\(\) on the default"):
            api.spool("testapp.Score")
    assert not PersistentStorage.objects.exists()
    (result,) = api.spool("testapp.Score")
    assert result.rows == 1
    with transaction.atomic(using="default"):
        (restored,) = api.restore("testapp.Score")
    assert restored.rows == 1
    with transaction.atomic(using="default"):
        with pytest.raises(MemdbError, match=r"cannot discard inside a transaction"):
            api.discard("testapp.Score")
    assert PersistentStorage.objects.count() == 1


def test_spool_snapshots_committed_rows_only() -> None:
    Score.objects.create(player="committed")
    api.spool("testapp.Score")
    Score.objects.all().delete()
    api.restore("testapp.Score")
    assert scores() == [("committed", 0)]


# restore


def test_restore_replaces_the_table_with_its_snapshot() -> None:
    Score.objects.bulk_create([Score(player="a", points=1), Score(player="b", points=2)])
    api.spool("testapp.Score")
    before = scores()
    Score.objects.filter(player="a").delete()
    Score.objects.create(player="c", points=3)

    (result,) = api.restore("testapp.Score")

    assert scores() == before
    assert result.label == "testapp.Score" and result.rows == 2 and result.generation == 1
    assert info("testapp.Score").restore_state == "ok"
    assert info("testapp.Score").dirty is False


def test_restore_without_labels_restores_stored_tables_only() -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    Legacy.objects.create(text="not stored")
    results = api.restore()
    assert [r.label for r in results] == ["testapp.Score"]
    assert Legacy.objects.count() == 1


def test_spool_and_restore_copy_big_tables_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot copy goes a chunk of rows per statement; none is lost or doubled
    at chunk edges, with gaps in the primary keys too."""
    monkeypatch.setattr("memdb.spooler.COPY_CHUNK", 7)
    Score.objects.bulk_create([Score(player=f"p{i}", points=i) for i in range(60)])
    Score.objects.filter(points__in=[0, 6, 7, 13, 14, 59]).delete()
    expected = list(Score.objects.order_by("pk").values_list("pk", "player", "points"))

    (result,) = api.spool("testapp.Score")
    Score.objects.all().delete()
    api.restore("testapp.Score")

    assert result.rows == len(expected) == 54
    assert list(Score.objects.order_by("pk").values_list("pk", "player", "points")) == expected


def test_restore_without_a_snapshot_is_an_error() -> None:
    with pytest.raises(RestoreError, match="testapp.Score has no stored snapshot"):
        api.restore("testapp.Score")


def corrupt(model: type) -> bytes:
    """Flip one byte of the stored snapshot; return the original bytes."""
    snapshot = stored(model)
    original = stored_data(snapshot)
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    replace_data(snapshot, bytes(damaged))
    return original


def test_corrupt_snapshot_is_reported_left_alone_and_protected() -> None:
    Score.objects.create(player="a", points=1)
    api.spool("testapp.Score")
    original = corrupt(Score)
    damaged = stored(Score)
    damaged_data = stored_data(damaged)

    with pytest.raises(RestoreError, match=r"testapp\.Score.*checksum"):
        api.restore("testapp.Score")

    after = stored(Score)
    assert (after.pk, stored_data(after), after.checksum, after.generation) == (
        damaged.pk,
        damaged_data,
        damaged.checksum,
        damaged.generation,
    )
    table = info("testapp.Score")
    assert table.restore_state == "failed"
    assert "checksum" in (table.restore_error or "")
    assert scores() == [("a", 1)], "a failed restore leaves the memory table as it was"

    Score.objects.all().delete()
    with pytest.raises(SpoolError, match=r"testapp\.Score.*failed to restore"):
        api.spool("testapp.Score")
    with pytest.raises(SpoolError):
        api.flush(raise_errors=True)
    assert stored_data(Score) == damaged_data

    # Repaired storage restores, and the table spools again.
    replace_data(after, original)
    api.restore("testapp.Score")
    assert info("testapp.Score").restore_state == "ok"
    assert scores() == [("a", 1)]
    assert api.spool("testapp.Score")[0].unchanged
    Score.objects.create(player="b", points=2)
    assert api.spool("testapp.Score")[0].generation == 2


def test_discard_unprotects_a_table_whose_snapshot_failed() -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    corrupt(Score)
    with pytest.raises(RestoreError):
        api.restore("testapp.Score")
    with pytest.raises(SpoolError):
        api.spool("testapp.Score")

    assert api.discard("testapp.Score") == 1
    assert not PersistentStorage.objects.exists()
    assert info("testapp.Score").restore_state == "none"
    (result,) = api.spool("testapp.Score")
    assert result.generation == 1 and result.rows == 1


def test_force_overwrites_a_snapshot_that_failed_to_restore() -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    corrupt(Score)
    with pytest.raises(RestoreError):
        api.restore("testapp.Score")
    (result,) = api.spool("testapp.Score", force=True)
    assert result.generation == 2
    assert info("testapp.Score").restore_state != "failed"
    Score.objects.all().delete()
    api.restore("testapp.Score")
    assert Score.objects.count() == 1


def test_restore_of_several_tables_tries_all_and_reports_the_failure() -> None:
    Score.objects.create(player="a")
    Legacy.objects.create(text="t")
    api.spool("testapp.Score", "testapp.Legacy")
    corrupt(Score)
    Legacy.objects.all().delete()
    with pytest.raises(RestoreError, match=r"testapp\.Score") as excinfo:
        api.restore("testapp.Score", "testapp.Legacy")
    assert "testapp.Legacy" not in str(excinfo.value)
    assert Legacy.objects.count() == 1
    assert info("testapp.Legacy").restore_state == "ok"


@pytest.mark.transactional_memory
def test_restore_of_a_parent_table_keeps_foreign_keys_valid() -> None:
    red = Team.objects.create(name="red")
    Player.objects.create(team=red, name="ann")
    api.spool("testapp.Team", "testapp.Player")

    api.restore("testapp.Team")  # the rows its children point to are in the snapshot
    assert Player.objects.get().team.name == "red"

    blue = Team.objects.create(name="blue")
    Player.objects.create(team=blue, name="bob")
    with pytest.raises(RestoreError, match=r"testapp\.Team.*constraint"):
        api.restore("testapp.Team")  # would orphan bob
    assert sorted(Team.objects.values_list("name", flat=True)) == ["blue", "red"]
    assert Player.objects.get(name="bob").team == blue


@pytest.mark.transactional_memory
def test_restore_of_a_parent_table_runs_no_delete_action_of_the_keys_pointing_at_it() -> None:
    """On Django 6.1 the database itself deletes (``DB_CASCADE``) or clears
    (``DB_SET_NULL``) the rows pointing at a row it deletes. A restore of the parent
    alone replaces its rows: the rows pointing at them stay as they are (a restore
    that ran the actions emptied the child table, and its next spool stored it
    empty), and a snapshot that would orphan one is still refused."""
    red = Squad.objects.create(name="red")
    Recruit.objects.create(squad=red, coach=red, name="ann")
    api.spool("testapp.Squad", "testapp.Recruit")

    api.restore("testapp.Squad")
    kept = [("ann", "red", "red")]
    assert list(Recruit.objects.values_list("name", "squad__name", "coach__name")) == kept
    assert not info("testapp.Recruit").dirty

    blue = Squad.objects.create(name="blue")
    Recruit.objects.create(squad=blue, coach=blue, name="bob")
    with pytest.raises(RestoreError, match=r"testapp\.Squad.*constraint"):
        api.restore("testapp.Squad")  # would orphan bob
    assert sorted(Squad.objects.values_list("name", flat=True)) == ["blue", "red"]
    assert sorted(Recruit.objects.values_list("name", "squad__name", "coach__name")) == [
        *kept,
        ("bob", "blue", "blue"),
    ]


def test_tables_reaching_a_policy_follow_the_database_delete_actions() -> None:
    """Django 6.1 deletes the recruits of a deleted squad in the database itself: a
    write to the squads can change the ``commit`` table of recruits. Before it, the ORM
    deleted them with statements of their own."""
    from django.db.models import deletion

    reaching = policies.tables_reaching("commit")
    assert policies.tables_with_policy("commit") <= reaching
    assert ("testapp_squad" in reaching) is hasattr(deletion, "DatabaseOnDelete")
    assert "testapp_team" not in reaching  # Player is not ``commit``


@pytest.mark.transactional_memory  # MariaDB's MEMORY tables have no foreign keys
def test_a_delete_that_reaches_a_commit_table_spools_it() -> None:
    """Deleting a squad deletes its recruits (in the database on Django 6.1, in a
    statement that names the squads alone): the ``commit`` table of recruits is stored
    without them when the delete returns."""

    def stored_rows() -> int:  # as the latest stored generation (a delta) counts them
        latest = PersistentStorage.objects.filter(app_label="testapp", model_name="Recruit")
        return latest.order_by("-generation").values_list("row_count", flat=True)[0]

    red = Squad.objects.create(name="red")
    Recruit.objects.create(squad=red, name="ann")
    assert stored_rows() == 1
    red.delete()
    assert not Recruit.objects.exists()
    assert stored_rows() == 0
    assert not info("testapp.Recruit").dirty


def test_restore_of_related_tables_together_checks_keys_against_the_restored_set() -> None:
    """Regression: restoring every table one by one failed the parent whenever a child
    row added since the last spool pointed at a parent row added since then too."""
    red = Team.objects.create(name="red")
    Player.objects.create(team=red, name="ann")
    api.spool("testapp.Team", "testapp.Player")
    green = Team.objects.create(name="green")
    Player.objects.create(team=green, name="gus")

    results = api.restore("testapp.Team", "testapp.Player")

    assert [r.label for r in results] == ["testapp.Team", "testapp.Player"]
    assert list(Team.objects.values_list("name", flat=True)) == ["red"]
    assert list(Player.objects.values_list("name", "team__name")) == [("ann", "red")]
    assert info("testapp.Team").restore_state == "ok"
    assert info("testapp.Player").restore_state == "ok"


def test_unknown_codec_on_a_snapshot_fails_its_restore() -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    PersistentStorage.objects.filter(model_name="Score").update(codecs=["rot13"])
    with pytest.raises(RestoreError, match=r"testapp\.Score.*'rot13'"):
        api.restore("testapp.Score")
    assert info("testapp.Score").restore_state == "failed"


# conflicts between processes


def test_conflict_when_another_process_wrote_the_snapshot() -> None:
    Score.objects.create(player="mine")
    api.spool("testapp.Score")
    PersistentStorage.objects.filter(model_name="Score").update(
        generation=5, written_by="elsewhere:4242"
    )
    Score.objects.create(player="more")

    with pytest.raises(ConflictError, match=r"testapp\.Score.*generation 5.*elsewhere:4242"):
        api.spool("testapp.Score")
    assert stored(Score).generation == 5 and stored(Score).row_count == 1

    (result,) = api.spool("testapp.Score", force=True)
    assert result.generation == 6
    assert stored(Score).row_count == 2
    assert PersistentStorage.objects.count() == 1
    # Having written generation 6, this process owns the table again.
    Score.objects.create(player="after")
    assert api.spool("testapp.Score")[0].generation == 7


def test_restore_takes_the_other_process_snapshot_and_resolves_the_conflict() -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    PersistentStorage.objects.filter(model_name="Score").update(generation=9)
    with pytest.raises(ConflictError):
        api.spool("testapp.Score")
    api.restore("testapp.Score")
    assert api.spool("testapp.Score")[0].generation == 9, "restored and unchanged"
    Score.objects.create(player="b")
    assert api.spool("testapp.Score")[0].generation == 10


def test_an_unchanged_table_is_not_rewritten_unless_forced_or_recoded(
    memdb_override: Override,
) -> None:
    """Regression: a memdb_spool command run beside a server restored the snapshot and
    wrote it back as a new generation, so the server's next spool met a conflict."""
    Score.objects.create(player="a")
    (first,) = api.spool("testapp.Score")
    written = stored(Score).updated_at

    (again,) = api.spool("testapp.Score")
    assert again.unchanged and again.generation == first.generation == 1
    assert (again.rows, again.bytes) == (first.rows, first.bytes)
    assert stored(Score).updated_at == written

    assert api.spool("testapp.Score", force=True)[0].generation == 2
    with memdb_override(CODECS="zlib"):
        (recoded,) = api.spool("testapp.Score")
    assert not recoded.unchanged and recoded.generation == 3
    assert stored(Score).codecs == ["zlib"], "a single codec name is a chain of one"


def test_a_snapshot_this_process_never_restored_is_not_overwritten() -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    api.restore("testapp.Score")
    with store.raw_connection() as conn:  # as in a new process that found no snapshot yet
        seqs = {"testapp.Score": store.read_seq(conn, Score._meta.db_table)}
    store.reset_tables(store.current_state(), seqs)
    with pytest.raises(ConflictError, match="has not restored"):
        api.spool("testapp.Score")


def test_a_refused_spool_leaves_nothing_pending() -> None:
    """A spool refused with ConflictError stored nothing: the table is not left marked
    as pending, a mark that would have a later spool take the other writer's stored
    generation for one of its own."""
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    with store.raw_connection() as conn:  # as in a process that never restored it
        seqs = {"testapp.Score": store.read_seq(conn, Score._meta.db_table)}
    store.reset_tables(store.current_state(), seqs)
    Score.objects.create(player="b")
    with pytest.raises(ConflictError):
        api.spool("testapp.Score")
    with store.claim(store.current_state(), "testapp.Score") as table:
        assert (table.pending, table.generation) == (False, None)


# schema drift


def store_image(model: type, create_sql: str, rows: list[tuple[Any, ...]], insert_sql: str) -> None:
    """Store a hand-made one-table snapshot of ``model``, as a spool would."""
    conn = sqlite3.connect(":memory:")
    conn.execute(create_sql)
    conn.executemany(insert_sql, rows)
    conn.commit()
    data = conn.serialize()
    conn.close()
    now = timezone.now()
    create_stored(
        app_label=model._meta.app_label,
        model_name=model._meta.object_name,
        format=SNAPSHOT_FORMAT,
        format_version=FORMAT_VERSION,
        codecs=[],
        row_count=len(rows),
        generation=1,
        created_at=now,
        updated_at=now,
        data=data,
    )


def test_drift_added_field_gets_its_default_and_removed_column_is_dropped() -> None:
    table = Score._meta.db_table
    store_image(
        Score,
        f'CREATE TABLE "{table}" ("id" integer NOT NULL PRIMARY KEY, '
        '"player" varchar(50) NOT NULL, "nickname" text NOT NULL)',
        [(1, "ann", "annie"), (7, "bob", "bobby")],
        f'INSERT INTO "{table}" VALUES (?, ?, ?)',
    )
    with pytest.warns(SchemaDriftWarning, match=r"testapp\.Score.*nickname"):
        (result,) = api.restore("testapp.Score")
    assert result.rows == 2
    assert list(Score.objects.order_by("pk").values_list("pk", "player", "points")) == [
        (1, "ann", 0),
        (7, "bob", 0),
    ]
    assert info("testapp.Score").restore_state == "ok"


def test_drift_added_nullable_field_gets_null() -> None:
    from tests.test_fields import ROWS

    AllTypes.objects.create(**ROWS[1])
    api.spool("testapp.AllTypes")
    snapshot = stored(AllTypes)
    conn = sqlite3.connect(":memory:")
    conn.deserialize(stored_data(snapshot))
    conn.execute(f'ALTER TABLE "{AllTypes._meta.db_table}" DROP COLUMN "nothing"')
    conn.commit()
    data = conn.serialize()
    conn.close()
    replace_data(snapshot, data, fix_checksum=True)
    AllTypes.objects.all().delete()

    api.restore("testapp.AllTypes")

    restored = AllTypes.objects.get()
    assert restored.nothing is None
    assert (restored.char, restored.big, restored.doc) == (
        ROWS[1]["char"],
        2**63 - 1,
        ROWS[1]["doc"],
    )


def test_drift_added_field_without_default_fails_naming_the_field() -> None:
    table = Score._meta.db_table
    store_image(
        Score,
        f'CREATE TABLE "{table}" ("id" integer NOT NULL PRIMARY KEY, "points" integer)',
        [(1, 5)],
        f'INSERT INTO "{table}" VALUES (?, ?)',
    )
    data = stored_data(Score)
    with pytest.raises(RestoreError, match=r"testapp\.Score.*'player'"):
        api.restore("testapp.Score")
    assert stored_data(Score) == data
    assert info("testapp.Score").restore_state == "failed"
    assert Score.objects.count() == 0


def test_primary_key_type_change_fails_naming_it_and_keeps_everything() -> None:
    """A snapshot spooled when ``Score``'s primary key held UUID strings: SQLite would
    take them into the integer column, so the restore refuses, naming the key."""
    table = Score._meta.db_table
    store_image(
        Score,
        f'CREATE TABLE "{table}" ("id" char(32) NOT NULL PRIMARY KEY, '
        '"player" varchar(50) NOT NULL, "points" integer NOT NULL)',
        [("3f1c9e0ad1b44d7c9a3a0e8c2b7f5a11", "ann", 1), ("0b7e", "bob", 2)],
        f'INSERT INTO "{table}" VALUES (?, ?, ?)',
    )
    Score.objects.create(player="in memory")
    before = fingerprint(Score)

    with pytest.raises(RestoreError) as caught:
        api.restore("testapp.Score")

    message = str(caught.value)
    assert "testapp.Score" in message
    assert "primary key 'id' held text values and now holds number values" in message
    assert fingerprint(Score) == before
    assert list(Score.objects.values_list("player", flat=True)) == ["in memory"]
    assert info("testapp.Score").restore_state == "failed"
    with pytest.raises(ProtectedTableError):
        api.spool("testapp.Score")
    assert fingerprint(Score) == before


def test_field_kind_change_fails_naming_the_field() -> None:
    table = Score._meta.db_table
    store_image(
        Score,
        f'CREATE TABLE "{table}" ("id" integer NOT NULL PRIMARY KEY, '
        '"player" varchar(50) NOT NULL, "points" text NOT NULL)',
        [(1, "ann", "many")],
        f'INSERT INTO "{table}" VALUES (?, ?, ?)',
    )
    with pytest.raises(RestoreError, match=r"field 'points' held text values and now holds num"):
        api.restore("testapp.Score")
    assert Score.objects.count() == 0


def test_a_change_within_numbers_or_text_restores() -> None:
    """``varchar(20)`` to ``varchar(50)``, a decimal to an integer: same kind of value."""
    table = Score._meta.db_table
    store_image(
        Score,
        f'CREATE TABLE "{table}" ("id" bigint NOT NULL PRIMARY KEY, '
        '"player" varchar(20) NOT NULL, "points" decimal NOT NULL)',
        [(1, "ann", 3), (2, "bob", 4)],
        f'INSERT INTO "{table}" VALUES (?, ?, ?)',
    )
    (result,) = api.restore("testapp.Score")
    assert result.rows == 2
    assert scores() == [("ann", 3), ("bob", 4)]


def test_snapshot_without_the_table_fails() -> None:
    store_image(Score, 'CREATE TABLE "other" ("id" integer)', [], 'INSERT INTO "other" VALUES (?)')
    with pytest.raises(RestoreError, match=r"testapp\.Score.*no table"):
        api.restore("testapp.Score")


def test_snapshot_with_a_wrong_row_count_fails_and_keeps_the_table() -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    PersistentStorage.objects.filter(model_name="Score").update(row_count=3)
    Score.objects.create(player="b")
    with pytest.raises(RestoreError, match=r"testapp\.Score.*3 rows but holds 1"):
        api.restore("testapp.Score")
    assert sorted(Score.objects.values_list("player", flat=True)) == ["a", "b"]


# codecs


def test_codec_chain_is_recorded_and_used(memdb_override: Override) -> None:
    Score.objects.bulk_create([Score(player="x" * 40, points=i) for i in range(200)])
    before = scores()
    with memdb_override(CODECS=["zlib"]):
        (result,) = api.spool("testapp.Score")
        snapshot = stored(Score)
        assert snapshot.codecs == ["zlib"]
        assert zlib.decompress(stored_data(snapshot)).startswith(SQLITE_HEADER)
        assert result.bytes == snapshot.size == len(stored_data(snapshot))
        assert info("testapp.Score").codecs == ("zlib",)
        Score.objects.all().delete()
        api.restore("testapp.Score")
        assert scores() == before

    Score.objects.all().delete()
    with memdb_override(CODECS=["lzma"]):
        api.restore("testapp.Score")  # the recorded chain wins over the settings
        assert scores() == before
        api.spool("testapp.Score")
        assert stored(Score).codecs == ["lzma"]
        assert lzma.decompress(stored_data(Score)).startswith(SQLITE_HEADER)

    Score.objects.all().delete()
    api.restore("testapp.Score")  # back to no codecs in settings
    assert scores() == before


def test_codec_chain_applies_in_order(memdb_override: Override) -> None:
    Score.objects.create(player="a")
    with memdb_override(CODECS=["zlib", "lzma"]):
        api.spool("testapp.Score")
    snapshot = stored(Score)
    assert snapshot.codecs == ["zlib", "lzma"]
    data = zlib.decompress(lzma.decompress(stored_data(snapshot)))
    assert data.startswith(SQLITE_HEADER)
    Score.objects.all().delete()
    api.restore("testapp.Score")
    assert scores() == [("a", 0)]


# tables()


def test_tables_reports_memory_only_tables() -> None:
    Hit.objects.bulk_create([Hit(path="/a"), Hit(path="/b")])
    hit = info("testapp.Hit")
    assert hit == api.TableInfo(
        label="testapp.Hit",
        app_label="testapp",
        model_name="Hit",
        table=Hit._meta.db_table,
        persistent=False,
        policy=None,
        rows=2,
        dirty=False,
        last_spooled=None,
        snapshot_bytes=None,
        snapshot_rows=None,
        generation=None,
        codecs=(),
        restore_state="none",
        restore_error=None,
        store=settings.MEMDB.get("STORE", "process"),
        warning=None,
    )


def test_tables_reports_persistent_tables() -> None:
    fresh = info("testapp.Score")
    assert (fresh.persistent, fresh.policy, fresh.rows, fresh.dirty) == (True, "manual", 0, False)
    assert (fresh.last_spooled, fresh.snapshot_bytes, fresh.generation) == (None, None, None)

    Score.objects.create(player="a")
    Score.objects.create(player="b")
    dirty = info("testapp.Score")
    assert (dirty.rows, dirty.dirty) == (2, True)

    (result,) = api.spool("testapp.Score")
    Score.objects.create(player="c")
    spooled = info("testapp.Score")
    snapshot = stored(Score)
    assert spooled.rows == 3 and spooled.dirty is True
    assert spooled.snapshot_rows == 2
    assert spooled.snapshot_bytes == result.bytes == snapshot.size
    assert spooled.generation == 1
    assert spooled.last_spooled == snapshot.updated_at
    assert spooled.restore_state == "none"

    api.restore("testapp.Score")
    assert info("testapp.Score").restore_state == "ok"
    assert info("testapp.Score").rows == 2


def test_tables_policies_and_the_many_to_many_table() -> None:
    by_label = {i.label: i for i in api.tables()}
    assert by_label["testapp.CommitScore"].policy == "commit"
    assert by_label["testapp.IntervalScore"].policy == "interval"
    assert by_label["testapp.Legacy"].policy == "manual"
    through = by_label["testapp.Player_tags"]
    assert through.persistent is True and through.table == Player.tags.through._meta.db_table
    assert [i.label for i in api.tables("testapp.Hit", "testapp.score")] == [
        "testapp.Hit",
        "testapp.Score",
    ]
    with pytest.raises(UnknownTableError):
        api.tables("testapp.Plain")


def test_tables_lists_parents_before_children() -> None:
    labels = [i.label for i in api.tables()]
    assert labels.index("testapp.Team") < labels.index("testapp.Player")
    assert labels.index("testapp.Tag") < labels.index("testapp.Player_tags")
    assert labels.index("testapp.Player") < labels.index("testapp.Player_tags")
    assert CommitScore._meta.label in labels
