"""Spool policies: commit, interval and manual, and flush()."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.db import connections, transaction

from memdb import api, policies, store
from memdb.exceptions import ConflictError
from memdb.models import PersistentStorage
from tests.helpers import stored_table, wait_until
from tests.testapp.models import CommitScore, Hit, IntervalScore, Legacy, Score

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])

Override = Callable[..., AbstractContextManager[Any]]
INTERVAL = float(settings.MEMDB["INTERVAL"])


def snapshot(model: type) -> tuple[int, int] | None:
    """(generation, row_count) of ``model``'s latest stored row (its snapshot or the
    last delta of its journal), or None."""
    row = (
        PersistentStorage.objects.filter(
            app_label=model._meta.app_label, model_name=model._meta.object_name
        )
        .order_by("-generation")
        .values_list("generation", "row_count")
        .first()
    )
    return tuple(row) if row else None  # type: ignore[return-value]


def stored_rows(model: type) -> list[tuple[str, int]]:
    """The rows of ``model`` as stored (snapshot and journal), decoded as a restore would."""
    return stored_table(model)


def memory_rows(model: type) -> list[tuple[str, int]]:
    return list(model.objects.order_by("pk").values_list("player", "points"))


# commit


def test_commit_policy_spools_before_create_returns() -> None:
    CommitScore.objects.create(player="a", points=1)
    assert snapshot(CommitScore) == (1, 1)
    CommitScore.objects.create(player="b", points=2)
    assert snapshot(CommitScore) == (2, 2)
    assert stored_rows(CommitScore) == [("a", 1), ("b", 2)]
    assert api.tables("testapp.CommitScore")[0].dirty is False


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda obj: obj.save(), id="save"),
        pytest.param(lambda obj: obj.delete(), id="delete"),
        pytest.param(lambda obj: CommitScore.objects.update(points=9), id="queryset-update"),
        pytest.param(lambda obj: CommitScore.objects.all().delete(), id="queryset-delete"),
        pytest.param(
            lambda obj: CommitScore.objects.bulk_create(
                [CommitScore(player=f"x{i}") for i in range(3)]
            ),
            id="bulk-create",
        ),
        pytest.param(
            # INSERT IGNORE INTO (MariaDB), INSERT OR IGNORE INTO (SQLite)
            lambda obj: CommitScore.objects.bulk_create(
                [CommitScore(player="y")], ignore_conflicts=True
            ),
            id="bulk-create-ignoring-conflicts",
        ),
        pytest.param(
            lambda obj: CommitScore.objects.bulk_create(
                [CommitScore(pk=obj.pk, player="a", points=8)],
                update_conflicts=True,
                # MariaDB takes no conflict target (any unique key is one)
                unique_fields=["id"]
                if connections["memdb"].features.supports_update_conflicts_with_target
                else None,
                update_fields=["points"],
            ),
            id="bulk-create-updating-conflicts",
        ),
        pytest.param(
            lambda obj: CommitScore.objects.update_or_create(player="a", defaults={"points": 5}),
            id="update-or-create",
        ),
        pytest.param(
            lambda obj: (
                connections["memdb"]
                .cursor()
                .execute(f"UPDATE {CommitScore._meta.db_table} SET points = 7")
            ),
            id="raw-sql",
        ),
    ],
)
def test_commit_policy_spools_every_write_path(write: Callable[[CommitScore], object]) -> None:
    obj = CommitScore.objects.create(player="a", points=1)
    assert snapshot(CommitScore) == (1, 1)
    obj.points = 2
    write(obj)
    generation, rows = snapshot(CommitScore) or (0, 0)
    assert generation == 2
    assert rows == CommitScore.objects.count()
    assert api.tables("testapp.CommitScore")[0].dirty is False
    assert stored_rows(CommitScore) == memory_rows(CommitScore)


def test_commit_policy_spools_when_the_outermost_atomic_exits() -> None:
    with transaction.atomic(using="memdb"):
        CommitScore.objects.create(player="a")
        assert snapshot(CommitScore) is None
        with transaction.atomic(using="memdb"):
            CommitScore.objects.create(player="b")
        assert snapshot(CommitScore) is None, "a savepoint release is not a commit"
        CommitScore.objects.create(player="c")
        assert snapshot(CommitScore) is None
    assert snapshot(CommitScore) == (1, 3)


def test_commit_policy_spools_once_per_transaction() -> None:
    with transaction.atomic(using="memdb"):
        for number in range(20):
            CommitScore.objects.create(player=f"p{number}")
    assert snapshot(CommitScore) == (1, 20)


@pytest.mark.transactional_memory
def test_commit_policy_rolled_back_atomic_spools_nothing() -> None:
    CommitScore.objects.create(player="kept")
    assert snapshot(CommitScore) == (1, 1)
    with pytest.raises(RuntimeError):
        with transaction.atomic(using="memdb"):
            CommitScore.objects.create(player="lost")
            raise RuntimeError("roll back")
    assert snapshot(CommitScore) == (1, 1)
    assert api.tables("testapp.CommitScore")[0].dirty is False
    # The next committed write spools, and the rolled-back row is not in it.
    CommitScore.objects.create(player="next")
    assert snapshot(CommitScore) == (2, 2)
    assert [p for p, _ in stored_rows(CommitScore)] == ["kept", "next"]


@pytest.mark.parametrize(
    ("sql", "table"),
    [
        ('INSERT INTO "testapp_hit" ("path") VALUES (%s)', "testapp_hit"),
        ("INSERT IGNORE INTO `testapp_hit` (`path`) VALUES (%s)", "testapp_hit"),
        ('INSERT OR IGNORE INTO "testapp_hit" ("path") VALUES (%s)', "testapp_hit"),
        ("REPLACE INTO testapp_hit (path) VALUES (%s)", "testapp_hit"),
        ('UPDATE "testapp_hit" SET "path" = %s', "testapp_hit"),
        ('DELETE FROM "testapp_hit"', "testapp_hit"),
        ("  delete from testapp_hit where id = 1", "testapp_hit"),
        ('TRUNCATE "testapp_hit", "testapp_score"', ""),  # may name several
        ('INSERT INTO "memdb"."testapp_hit" ("path") VALUES (%s)', ""),
        ("INSERT INTO testapp_hit(path) VALUES (%s)", ""),
        ("INSERT INTO other.testapp_hit (path) VALUES (%s)", "other.testapp_hit"),
        ('SELECT "path" FROM "testapp_hit"', None),
        ('SAVEPOINT "s1"', None),
    ],
)
def test_a_write_names_its_table_or_counts_as_any(sql: str, table: str | None) -> None:
    """The table a statement writes, as the spool after a write reads it: a table it
    cannot tell ("") has every ``commit`` table checked; a read (None) none."""
    assert policies.written_table(sql) == table
    if table is not None:
        assert policies.may_reach_commit(table) is (table != "testapp_hit")


def test_a_write_to_a_table_that_cannot_reach_a_commit_table_checks_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check of the ``commit`` tables after each write costs more than a write to a
    memory table: a write to another table skips it (every store)."""
    checks: list[str] = []
    real = policies.spool_committed
    monkeypatch.setattr(policies, "spool_committed", lambda: checks.append("checked") or real())
    Hit.objects.create(path="/")
    Score.objects.create(player="manual")
    assert checks == []
    CommitScore.objects.create(player="commit")
    assert checks == ["checked"]
    assert snapshot(CommitScore) == (1, 1)


def test_commit_policy_leaves_other_policies_alone() -> None:
    Score.objects.create(player="manual")
    CommitScore.objects.create(player="commit")
    assert snapshot(CommitScore) == (1, 1)
    assert snapshot(Score) is None
    assert api.tables("testapp.Score")[0].dirty is True


def test_commit_policy_write_inside_an_atomic_on_default_only() -> None:
    """An atomic() on the default database does not delay the memory write's spool."""
    with transaction.atomic(using="default"):
        CommitScore.objects.create(player="a")
    assert snapshot(CommitScore) == (1, 1)


def test_commit_policy_spool_error_reaches_the_writer() -> None:
    CommitScore.objects.create(player="a")
    PersistentStorage.objects.filter(model_name="CommitScore").update(generation=42)
    with pytest.raises(ConflictError, match=r"testapp\.CommitScore.*generation 42"):
        CommitScore.objects.create(player="b")
    # The row itself was committed; the snapshot from the other process is kept, and
    # the next statement (a read) does not raise the spool error again.
    assert CommitScore.objects.count() == 2
    assert snapshot(CommitScore) == (42, 1)


# interval


def test_interval_thread_is_running() -> None:
    thread = policies._interval
    assert thread is not None and thread.is_alive()
    assert thread.daemon and thread.name == "memdb-interval-spooler"


def test_interval_policy_spools_in_the_background() -> None:
    IntervalScore.objects.create(player="a", points=1)
    assert wait_until(lambda: snapshot(IntervalScore) == (1, 1), timeout=20 * INTERVAL + 5)
    assert wait_until(lambda: not api.tables("testapp.IntervalScore")[0].dirty, timeout=5)

    IntervalScore.objects.filter(player="a").update(points=2)
    IntervalScore.objects.create(player="b", points=3)
    assert wait_until(
        lambda: (snapshot(IntervalScore) or (0, 0))[1] == 2, timeout=20 * INTERVAL + 5
    )
    assert stored_rows(IntervalScore) == [("a", 2), ("b", 3)]


def test_interval_policy_does_not_spool_clean_tables() -> None:
    IntervalScore.objects.create(player="a")
    assert wait_until(lambda: snapshot(IntervalScore) is not None, timeout=20 * INTERVAL + 5)
    first = snapshot(IntervalScore)
    time.sleep(3 * INTERVAL)
    assert snapshot(IntervalScore) == first


def test_interval_thread_can_be_stopped_and_started() -> None:
    policies.stop_interval()
    assert policies._interval is None
    try:
        IntervalScore.objects.create(player="a")
        time.sleep(3 * INTERVAL)
        assert snapshot(IntervalScore) is None
    finally:
        policies.process_started()
    assert policies._interval is not None and policies._interval.is_alive()
    assert wait_until(lambda: snapshot(IntervalScore) == (1, 1), timeout=20 * INTERVAL + 5)


@contextmanager
def held_transaction(write: Callable[[], Any]) -> Iterator[threading.Event]:
    """A thread holds a memory transaction that ran ``write`` for the block; the
    yielded event ends it early (it ends when the block does at the latest)."""
    holding, release = threading.Event(), threading.Event()

    def long_transaction() -> None:
        try:
            with transaction.atomic(using="memdb"):
                write()
                holding.set()
                release.wait(30)
        finally:
            connections.close_all()

    writer = threading.Thread(target=long_transaction)
    writer.start()
    try:
        assert holding.wait(10)
        yield release
    finally:
        release.set()
        writer.join(30)


def test_interval_spool_is_not_held_up_by_a_long_transaction_on_another_table() -> None:
    """Regression: all tables shared one change-counter table, so a transaction writing
    any memory table for longer than LOCK_TIMEOUT stalled every interval spool."""
    IntervalScore.objects.create(player="a")
    with held_transaction(lambda: Hit.objects.create(path="/slow")):
        assert wait_until(lambda: snapshot(IntervalScore) == (1, 1), timeout=20 * INTERVAL + 5)
    assert Hit.objects.filter(path="/slow").exists()


@pytest.mark.process_store  # WAL: a transaction never keeps a spool from reading
def test_interval_flush_skips_a_busy_table_once_then_waits_for_it() -> None:
    """A table held by a transaction for longer than ``Gate.HOLD`` is left for the next
    tick, but only once: the next tick waits for the transaction and spools it.

    Regression (PostgreSQL CI run): skipped at every tick it met busy, a table lost
    more than ``INTERVAL`` plus two spools of writes."""
    policies.stop_interval()
    IntervalScore.objects.create(player="a")
    try:
        with held_transaction(lambda: IntervalScore.objects.create(player="held")) as release:
            started = time.monotonic()
            assert api.flush(policy="interval", skip_busy=True) == []
            assert time.monotonic() - started < 5 * store.Gate.HOLD + 1
            assert snapshot(IntervalScore) is None
            threading.Timer(0.3, release.set).start()
            (result,) = api.flush(policy="interval", skip_busy=True)
            assert time.monotonic() - started >= 0.3
            assert (result.label, result.rows) == ("testapp.IntervalScore", 2)
    finally:
        policies.process_started()
    assert snapshot(IntervalScore) == (1, 2)


@pytest.mark.process_store  # WAL: a transaction never keeps a spool from reading
def test_a_table_held_past_lock_timeout_does_not_stop_the_tick(
    memdb_override: Override, caplog: pytest.LogCaptureFixture
) -> None:
    """The tick that waits for a table skipped before gives up after LOCK_TIMEOUT, logs
    it and goes on to the other dirty tables; the next tick skips it again at once.

    Regression (review): the wait's error left flush(), so no other table was tried at
    that tick, and every later tick waited and failed the same way."""
    policies.stop_interval()
    Score.objects.create(player="other")  # dirty too (a write would wait for the held one)
    try:
        with memdb_override(LOCK_TIMEOUT=0.5):
            with held_transaction(lambda: IntervalScore.objects.create(player="held")):
                assert api.flush(policy="interval", skip_busy=True) == []  # skipped
                caplog.clear()
                api.flush(skip_busy=True)  # waits 0.5 s for it, then goes on
                assert "IntervalScore was not spooled: a transaction has held it" in caplog.text
                # Score was tried (its spool needs the write lock the held transaction
                # has, so it failed here, logged).
                assert "testapp.Score" in caplog.text
                started = time.monotonic()
                assert api.flush(policy="interval", skip_busy=True) == []  # skipped again
                assert time.monotonic() - started < 5 * store.Gate.HOLD + 0.4
    finally:
        policies.process_started()
    results = {r.label: r.rows for r in api.flush(skip_busy=True)}
    assert results["testapp.IntervalScore"] == 1
    (score,) = api.tables("testapp.Score")
    assert (score.snapshot_rows, score.dirty) == (1, False)


# manual


def test_manual_policy_waits_for_a_request() -> None:
    Score.objects.create(player="a")
    IntervalScore.objects.create(player="b")
    # Once the interval spooler has passed, it has left the manual table alone.
    assert wait_until(lambda: snapshot(IntervalScore) is not None, timeout=20 * INTERVAL + 5)
    assert snapshot(Score) is None
    assert api.tables("testapp.Score")[0].dirty is True
    api.spool("testapp.Score")
    assert snapshot(Score) == (1, 1)


def test_flush_spools_only_dirty_tables() -> None:
    Score.objects.create(player="a")
    Legacy.objects.create(text="t")
    api.spool("testapp.Score", "testapp.Legacy")
    before = {label: snapshot(m) for label, m in (("Score", Score), ("Legacy", Legacy))}

    Score.objects.create(player="b")
    results = api.flush()

    assert [r.label for r in results] == ["testapp.Score"]
    assert snapshot(Score) == (2, 2)
    assert snapshot(Legacy) == before["Legacy"]
    assert api.flush() == []


def test_flush_by_policy() -> None:
    Score.objects.create(player="a")
    Legacy.objects.create(text="t")
    assert api.flush(policy="commit") == []
    assert snapshot(Score) is None
    results = api.flush(policy="manual")
    assert sorted(r.label for r in results) == ["testapp.Legacy", "testapp.Score"]


@pytest.mark.sqlite_store
def test_flush_does_not_open_an_unused_memory_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the interval thread (and the exit flush) built and restored a fresh
    memory database when the alias's NAME no longer named the one in use."""
    other = "file:memdb_never_used?mode=memory&cache=shared"
    monkeypatch.setitem(connections["memdb"].settings_dict, "NAME", other)
    assert api.flush() == []
    assert other not in store._states or not store._states[other].ready


def test_flush_at_exit_spools_dirty_tables(memdb_override: Override) -> None:
    Score.objects.create(player="a")
    with memdb_override(FLUSH_ON_EXIT=True):
        policies.flush_at_exit()
    assert snapshot(Score) == (1, 1)
    policies.process_started()  # flush_at_exit stopped the interval thread


def test_flush_at_exit_respects_the_setting(memdb_override: Override) -> None:
    Score.objects.create(player="a")
    with memdb_override(FLUSH_ON_EXIT=False):
        policies.flush_at_exit()
    assert snapshot(Score) is None
    policies.process_started()
