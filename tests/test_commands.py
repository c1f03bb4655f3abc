"""The management commands: memdb_spool, memdb_restore, memdb_status."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from memdb import api, spooler
from memdb.exceptions import RestoreError
from memdb.management.commands._util import human_bytes
from memdb.models import PersistentStorage
from tests.testapp.models import Hit, Legacy, Score

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])


def run(*args: str, **options: object) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err, no_color=True, **options)
    return out.getvalue(), err.getvalue()


def persistent_labels() -> list[str]:
    return [i.label for i in api.tables() if i.persistent]


def test_spool_says_when_a_table_is_unchanged() -> None:
    Score.objects.create(player="a")
    run("memdb_spool", "testapp.Score")
    out, _ = run("memdb_spool", "testapp.Score")
    assert out == "[1/1] spooling testapp.Score ... unchanged since generation 1, not rewritten\n"
    assert PersistentStorage.objects.get(model_name="Score").generation == 1


def test_spool_with_labels_shows_progress() -> None:
    Score.objects.bulk_create([Score(player=f"p{i}") for i in range(3)])
    Legacy.objects.create(text="t")
    out, err = run("memdb_spool", "testapp.Score", "testapp.Legacy")
    lines = out.splitlines()
    assert len(lines) == 2
    assert re.fullmatch(
        r"\[1/2\] spooling testapp\.Score \.\.\. 3 rows, [\d.]+ (B|KiB), generation 1, \d+ ms",
        lines[0],
    )
    assert lines[1].startswith("[2/2] spooling testapp.Legacy ... 1 rows")
    assert err == ""
    assert sorted(PersistentStorage.objects.values_list("model_name", flat=True)) == [
        "Legacy",
        "Score",
    ]


def test_spool_without_labels_spools_every_persistent_table() -> None:
    out, _ = run("memdb_spool")
    labels = persistent_labels()
    assert len(out.splitlines()) == len(labels)
    for number, label in enumerate(labels, 1):
        assert f"[{number}/{len(labels)}] spooling {label} ... 0 rows" in out
    assert PersistentStorage.objects.count() == len(labels)


def test_spool_unknown_label_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="testapp.Nope"):
        run("memdb_spool", "testapp.Score", "testapp.Nope")
    assert not PersistentStorage.objects.exists()


def test_spool_memory_only_label_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="testapp.Hit"):
        run("memdb_spool", "testapp.Hit")


def test_spool_conflict_fails_that_table_and_force_overwrites() -> None:
    Score.objects.create(player="a")
    Legacy.objects.create(text="t")
    run("memdb_spool", "testapp.Score")
    PersistentStorage.objects.filter(model_name="Score").update(generation=7)

    out = StringIO()
    err = StringIO()
    with pytest.raises(CommandError, match="not spooled: testapp.Score"):
        call_command("memdb_spool", "testapp.Score", "testapp.Legacy", stdout=out, stderr=err)
    assert "[1/2] spooling testapp.Score ... failed" in out.getvalue()
    assert "[2/2] spooling testapp.Legacy ... 1 rows" in out.getvalue()
    assert "generation 7" in err.getvalue()

    out_text, _ = run("memdb_spool", "testapp.Score", "--force")
    assert "generation 8" in out_text
    assert PersistentStorage.objects.get(model_name="Score").generation == 8


def test_restore_with_labels_shows_progress() -> None:
    Score.objects.bulk_create([Score(player="a"), Score(player="b")])
    api.spool("testapp.Score")
    Score.objects.all().delete()
    out, err = run("memdb_restore", "testapp.Score")
    assert re.fullmatch(
        r"restoring 1 table\(s\) together \.\.\.\n"
        r"\[1/1\] restoring testapp\.Score \.\.\. 2 rows from generation 1, \d+ ms\n",
        out,
    )
    assert err == ""
    assert Score.objects.count() == 2


def test_restore_without_labels_restores_the_stored_tables() -> None:
    Score.objects.create(player="a")
    Legacy.objects.create(text="t")
    api.spool("testapp.Score", "testapp.Legacy")
    Score.objects.all().delete()
    Legacy.objects.all().delete()
    out, _ = run("memdb_restore")
    header, *lines = out.splitlines()
    assert header == "restoring 2 table(s) together ..."
    assert len(lines) == 2
    assert all(
        re.match(r"\[[12]/2\] restoring testapp\.(Score|Legacy) \.\.\. 1 rows", x) for x in lines
    )
    assert Score.objects.count() == 1 and Legacy.objects.count() == 1


def test_restore_unknown_label_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="testapp.Nope"):
        run("memdb_restore", "testapp.Nope")


def test_restore_failure_is_reported_and_the_others_are_restored() -> None:
    Score.objects.create(player="a")
    Legacy.objects.create(text="t")
    api.spool("testapp.Score", "testapp.Legacy")
    PersistentStorage.objects.filter(model_name="Score").update(checksum="0" * 64)
    Legacy.objects.all().delete()
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError, match="not restored: testapp.Score"):
        call_command("memdb_restore", "testapp.Score", "testapp.Legacy", stdout=out, stderr=err)
    assert "restoring testapp.Score ... failed" in out.getvalue()
    assert "checksum" in err.getvalue()
    assert Legacy.objects.count() == 1


def test_status_lists_every_memory_table() -> None:
    Hit.objects.create(path="/")
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    Score.objects.create(player="b")
    out, _ = run("memdb_status")
    *lines, store_line = out.splitlines()
    assert store_line == f"store: {settings.MEMDB.get('STORE', 'process')}"
    header, *rows = lines
    assert header.split() == [
        "table",
        "kind",
        "policy",
        "rows",
        "dirty",
        "snapshot",
        "gen",
        "last",
        "spooled",
        "by",
        "restore",
    ]
    by_label = {row.split()[0]: row for row in rows}
    assert set(by_label) == {i.label for i in api.tables()}
    assert re.fullmatch(
        r"testapp\.Hit\s+memory\s+-\s+1\s+no\s+-\s+-\s+-\s+-\s+none", by_label["testapp.Hit"]
    )
    size = re.escape(human_bytes(PersistentStorage.objects.get(model_name="Score").size))
    assert re.fullmatch(
        rf"testapp\.Score\s+persistent\s+manual\s+2\s+yes\s+{size}\s+1\s+"
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\s+{re.escape(spooler.writer_id())}\s+none",
        by_label["testapp.Score"],
    )
    assert re.match(
        r"testapp\.Legacy\s+persistent\s+manual\s+0\s+no\s+-", by_label["testapp.Legacy"]
    )


def test_status_with_labels_and_a_failed_restore() -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    PersistentStorage.objects.filter(model_name="Score").update(checksum="0" * 64)
    with pytest.raises(RestoreError):
        api.restore("testapp.Score")
    out, _ = run("memdb_status", "testapp.Score", "testapp.Hit")
    header, *rows, _store = out.splitlines()
    assert [row.split()[0] for row in rows] == ["testapp.Hit", "testapp.Score"]
    assert "failed: testapp.Score: checksum mismatch" in rows[1]


def test_status_unknown_label_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="testapp.Nope"):
        run("memdb_status", "testapp.Nope")
