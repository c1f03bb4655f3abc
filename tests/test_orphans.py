"""Orphaned snapshots: stored tables no persistent model claims any more.

An app or model removed since its table was spooled leaves a snapshot behind. It is
never restored nor changed, a start names it in a warning, ``api.orphans()``,
``api.storage()``, ``GET /memdb/storage`` and ``memdb_status`` list it, and it is
deleted only when asked: ``api.discard(label)`` or ``memdb_discard``.
"""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from memdb import api
from memdb.exceptions import UnknownTableError
from memdb.models import PersistentStorage, SnapshotChunk
from tests.children import MIGRATE, PRELUDE, child_env, last_json, run_process
from tests.helpers import create_stored, stored_data
from tests.testapp.models import Score

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])


def orphan(model_name: str = "Gone", app_label: str = "oldapp") -> PersistentStorage:
    """A stored snapshot of a model that does not exist (any bytes will do: it is never
    decoded)."""
    now = timezone.now()
    return create_stored(
        app_label=app_label,
        model_name=model_name,
        format="sqlite-table",
        format_version=1,
        row_count=2,
        generation=4,
        created_at=now,
        updated_at=now,
        data=[b"first chunk", b"second chunk"],
    )


def test_orphans_are_listed_and_marked_in_storage() -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    orphan("Gone")
    orphan("Removed", app_label="testapp")

    assert api.orphans() == ["oldapp.Gone", "testapp.Removed"]
    marked = {s.label: (s.orphaned, s.chunks) for s in api.storage()}
    assert marked == {
        "oldapp.Gone": (True, 2),
        "testapp.Removed": (True, 2),
        "testapp.Score": (False, 1),
    }


def test_restoring_everything_leaves_orphans_alone() -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    gone = orphan()
    before = stored_data(gone)

    results = api.restore()

    assert [r.label for r in results] == ["testapp.Score"]
    assert PersistentStorage.objects.filter(pk=gone.pk).exists()
    assert stored_data(gone) == before


def test_discard_takes_an_orphan_label_case_insensitively() -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    gone = orphan()

    assert api.discard("OLDAPP.gone") == 1

    assert not PersistentStorage.objects.filter(pk=gone.pk).exists()
    assert not SnapshotChunk.objects.filter(snapshot_id=gone.pk).exists()
    assert api.orphans() == []
    assert PersistentStorage.objects.filter(model_name="Score").count() == 1, "others kept"


def test_discard_of_a_label_that_is_neither_table_nor_orphan_names_it() -> None:
    orphan()
    with pytest.raises(UnknownTableError, match="nosuch.Thing"):
        api.discard("nosuch.Thing")
    assert api.orphans() == ["oldapp.Gone"]


def test_discarding_only_orphans_keeps_every_table_snapshot() -> None:
    """Naming orphans only must not fall back to "every table"."""
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    orphan()

    assert api.discard("oldapp.Gone") == 1
    assert PersistentStorage.objects.filter(model_name="Score").count() == 1


def test_status_command_names_orphans() -> None:
    orphan()
    out = StringIO()
    call_command("memdb_status", stdout=out, no_color=True)
    assert "orphaned snapshots" in out.getvalue() and "oldapp.Gone" in out.getvalue()


def test_discard_command_with_orphans_flag() -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    orphan()
    orphan("Old", app_label="oldapp")
    out = StringIO()

    call_command("memdb_discard", "--orphans", "--noinput", stdout=out)

    assert "deleted 2 snapshot(s)" in out.getvalue()
    assert api.orphans() == []
    assert PersistentStorage.objects.filter(model_name="Score").count() == 1


def test_discard_command_asks_and_a_no_keeps_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = orphan()
    monkeypatch.setattr("builtins.input", lambda prompt: "no")
    with pytest.raises(CommandError, match="nothing deleted"):
        call_command("memdb_discard", "oldapp.Gone")
    assert PersistentStorage.objects.filter(pk=gone.pk).exists()


def test_discard_command_without_labels_or_flag_refuses() -> None:
    gone = orphan()
    with pytest.raises(CommandError, match="--orphans"):
        call_command("memdb_discard", "--noinput")
    assert PersistentStorage.objects.filter(pk=gone.pk).exists()


def test_rest_storage_marks_orphans() -> None:
    orphan()
    User.objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.login(username="root", password="pw")

    body: Any = client.get("/memdb/storage").json()

    (entry,) = body["snapshots"]
    assert (entry["table"], entry["orphaned"], entry["chunks"]) == ("oldapp.Gone", True, 2)


def test_a_start_names_the_orphan_and_restores_the_rest(default_db: str) -> None:
    """In real processes: the first spools Score, then its snapshot's model "goes away"
    (renamed in storage, as if the app was removed); the next start warns about it,
    restores nothing from it, and leaves it in storage."""
    env = child_env(default_db)
    first = (
        PRELUDE
        + MIGRATE
        + (
            "Score.objects.create(player='kept', points=1)\n"
            "api.spool('testapp.Score')\n"
            "CommitScore.objects.create(player='c', points=2)\n"
            "PersistentStorage.objects.filter(model_name='Score').update(app_label='oldapp')\n"
            "report(ok=True)\n"
        )
    )
    second = PRELUDE + (
        "report(scores=rows(Score), commit=rows(CommitScore), orphans=api.orphans(),\n"
        "       stored=sorted(s.label for s in api.storage()))\n"
    )
    for source in (first, second):
        proc = run_process(source, env)
        assert proc.returncode == 0, proc.stderr
    seen = last_json(proc.stdout)
    assert "a stored snapshot of oldapp.Score is not restored" in proc.stderr
    assert "memdb_discard oldapp.Score" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert seen["scores"] == []
    assert [r[1:] for r in seen["commit"]] == [["c", 2]]
    assert seen["orphans"] == ["oldapp.Score"]
    assert seen["stored"] == ["oldapp.Score", "testapp.CommitScore"]
