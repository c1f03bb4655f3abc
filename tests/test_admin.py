"""The admin: stored snapshots, "Spool now" / "Restore from storage", the Memory tables page.

Driven through Django's test client as a logged-in user; tests/test_admin_browser.py
drives the same pages in a real browser.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission, User
from django.db import connections
from django.template.defaultfilters import filesizeformat
from django.test import Client
from django.utils import timezone

from memdb import api
from memdb.exceptions import MemdbError
from memdb.models import PersistentStorage, SnapshotChunk
from memdb.registry import label_of, memory_models
from tests.helpers import create_stored, replace_data, stored_data
from tests.testapp.models import Hit, Legacy, Score

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])

Override = Callable[..., AbstractContextManager[Any]]
STORAGE = "/admin/memdb/persistentstorage/"
TABLES = "/admin/memdb/memorytable/"
SCORES = "/admin/testapp/score/"


# helpers


def text(value: str) -> str:
    """filesizeformat joins number and unit with a no-break space."""
    return value.replace("\xa0", " ")


def size(n: int) -> str:
    return text(filesizeformat(n))


def messages_of(response: Any) -> list[tuple[str, str]]:
    """(level tag, text) of the messages a followed response rendered."""
    return [(m.level_tag, text(str(m))) for m in response.context["messages"]]


def stored(model: type) -> PersistentStorage:
    return PersistentStorage.objects.get(
        app_label=model._meta.app_label, model_name=model._meta.object_name
    )


def corrupt(model: type) -> None:
    """Flip one byte of the stored snapshot, so its checksum no longer matches."""
    snapshot = stored(model)
    damaged = bytearray(stored_data(snapshot))
    damaged[len(damaged) // 2] ^= 0xFF
    replace_data(snapshot, bytes(damaged))


def fake_snapshot(model: type, nbytes: int) -> PersistentStorage:
    """A storage row of a chosen size (its data is not a real snapshot)."""
    now = timezone.now()
    return create_stored(
        app_label=model._meta.app_label,
        model_name=model._meta.object_name,
        format="sqlite",
        format_version=1,
        row_count=1,
        size=nbytes,
        checksum="0" * 64,
        generation=1,
        created_at=now,
        updated_at=now,
        data=b"x",
    )


def user(username: str, *perms: str, staff: bool = True) -> User:
    account = User.objects.create_user(username, password="pw", is_staff=staff)
    for perm in perms:
        app_label, codename = perm.split(".")
        account.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return account


def client_for(account: User) -> Client:
    client = Client()
    client.force_login(account)
    return client


@pytest.fixture
def superuser() -> User:
    return User.objects.create_superuser("root", "root@example.com", "pw")


@pytest.fixture
def admin(superuser: User) -> Client:
    return client_for(superuser)


def action(client: Client, url: str, name: str, pks: list[Any], **extra: str) -> Any:
    data = {"action": name, ACTION_CHECKBOX_NAME: [str(pk) for pk in pks], "index": "0"}
    data.update(extra)
    return client.post(url, data, follow=True)


class TablesPage(HTMLParser):
    """The rows of the Memory tables page: cells, bar width and buttons by table label."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, Any]] = {}
        self.all_buttons: list[str] = []
        self._row: dict[str, Any] | None = None
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-table"):
            self._row = {"cells": [], "bar": None, "buttons": []}
            self.rows[a["data-table"] or ""] = self._row
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "span" and self._row is not None and "width" in (a.get("style") or ""):
            self._row["bar"] = float(re.search(r"width:\s*([\d.]+)%", a["style"] or "")[1])
        elif tag == "input" and a.get("type") == "submit":
            (self._row["buttons"] if self._row is not None else self.all_buttons).append(
                a.get("value")
            )

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(text(data))

    def cells(self, label: str) -> dict[str, str]:
        names = ["table", "kind", "policy", "rows", "dirty", "last", "bar", "size", "restore"]
        return dict(zip(names, self.rows[label]["cells"]))


# PersistentStorage: the changelist


def test_storage_changelist_shows_table_rows_size_codecs_and_generation(
    admin: Client, memdb_override: Override
) -> None:
    Score.objects.bulk_create([Score(player=f"p{i}", points=i) for i in range(25)])
    Legacy.objects.create(text="x")
    api.spool("testapp.Score")
    with memdb_override(CODECS=["zlib"]):
        api.spool("testapp.Legacy")
        Legacy.objects.create(text="y")
        api.spool("testapp.Legacy")

    response = admin.get(STORAGE)

    assert response.status_code == 200
    html = text(response.content.decode())
    score, legacy = stored(Score), stored(Legacy)
    assert [row.label for row in response.context["cl"].result_list] == [
        "testapp.Legacy",
        "testapp.Score",
    ]
    for needle in (
        f'<th class="field-table"><a href="{STORAGE}{score.pk}/change/">testapp.Score</a></th>',
        '<td class="field-row_count">25</td>',
        f'<td class="field-human_size">{size(score.size)}</td>',
        '<td class="field-codec_chain">—</td>',
        '<td class="field-generation">1</td>',
        '<td class="field-row_count">2</td>',
        f'<td class="field-human_size">{size(legacy.size)}</td>',
        '<td class="field-codec_chain">zlib</td>',
        '<td class="field-generation">2</td>',
    ):
        assert needle in html
    assert "Add persistent storage" not in html


def test_storage_changelist_sorts_by_bytes_not_by_the_text(admin: Client) -> None:
    """By size 900 bytes < 1.2 KB < 4.8 MB, though not alphabetically."""
    fake_snapshot(Score, 1_200)
    fake_snapshot(Legacy, 5_000_000)
    fake_snapshot(Hit, 900)
    column = 1 + ["table", "kind", "row_count", "human_size"].index("human_size")

    ascending = admin.get(STORAGE, {"o": str(column)})
    descending = admin.get(STORAGE, {"o": f"-{column}"})

    def sizes(response: Any) -> list[str]:
        return [size(row.size) for row in response.context["cl"].result_list]

    assert sizes(ascending) == ["900 bytes", "1.2 KB", "4.8 MB"]
    assert sizes(descending) == ["4.8 MB", "1.2 KB", "900 bytes"]
    assert sorted(sizes(ascending)) != sizes(ascending), "the text order would differ"


def test_storage_change_page_shows_no_data_and_saves_nothing(admin: Client) -> None:
    Score.objects.create(player="a", points=1)
    api.spool("testapp.Score")
    before = stored(Score)
    data = stored_data(before)
    url = f"{STORAGE}{before.pk}/change/"

    page = admin.get(url)

    assert page.status_code == 200
    html = page.content.decode()
    assert "field-data" not in html and 'name="data"' not in html
    assert before.checksum in html, "the checksum is shown, the data is not"
    assert "<textarea" not in html and 'type="file"' not in html
    assert page.context["title"] == "View persistent storage"
    assert 'name="_save"' not in html and 'name="_continue"' not in html
    assert list(page.context["adminform"].form.fields) == [], "every field is read-only"

    refused = admin.post(
        url,
        {
            "app_label": "other",
            "model_name": "Other",
            "generation": "99",
            "row_count": "0",
            "size": "1",
            "checksum": "f" * 64,
            "data": "garbage",
            "_save": "Save",
        },
    )

    assert refused.status_code == 403

    after = stored(Score)
    assert (after.pk, after.generation, after.row_count, after.size, after.checksum) == (
        before.pk,
        before.generation,
        before.row_count,
        before.size,
        before.checksum,
    )
    assert stored_data(after) == data
    assert after.updated_at == before.updated_at
    Score.objects.all().delete()
    api.restore("testapp.Score")
    assert list(Score.objects.values_list("player", "points")) == [("a", 1)]


def test_storage_add_is_refused(admin: Client) -> None:
    assert admin.get(f"{STORAGE}add/").status_code == 403
    assert admin.post(f"{STORAGE}add/", {"app_label": "testapp"}).status_code == 403
    assert not PersistentStorage.objects.exists()


def test_storage_delete_page_is_refused_discard_is_the_way(admin: Client) -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    pk = stored(Score).pk
    assert admin.post(f"{STORAGE}{pk}/delete/", {"post": "yes"}).status_code == 403
    assert PersistentStorage.objects.filter(pk=pk).exists()
    choices = dict(admin.get(STORAGE).context["action_form"].fields["action"].choices)
    assert "delete_selected" not in choices
    assert choices["restore_selected"] == "Restore selected tables"
    assert choices["discard_selected"] == "Discard selected snapshots"


# PersistentStorage: the actions


def test_restore_selected_tables_brings_the_rows_back(admin: Client) -> None:
    Score.objects.bulk_create([Score(player=f"p{i}", points=i) for i in range(3)])
    Legacy.objects.create(text="kept")
    api.spool("testapp.Score", "testapp.Legacy")
    Score.objects.all().delete()
    Legacy.objects.all().delete()

    response = action(admin, STORAGE, "restore_selected", [stored(Score).pk])

    assert response.status_code == 200
    ((level, message),) = messages_of(response)
    assert level == "success"
    assert message.startswith("Restored testapp.Score: 3 rows from generation 1, in ")
    assert sorted(Score.objects.values_list("player", flat=True)) == ["p0", "p1", "p2"]
    assert Legacy.objects.count() == 0, "only the selected table is restored"


def test_restore_selected_reports_a_corrupt_snapshot(admin: Client) -> None:
    Score.objects.create(player="a", points=1)
    api.spool("testapp.Score")
    corrupt(Score)
    Score.objects.create(player="b", points=2)

    response = action(admin, STORAGE, "restore_selected", [stored(Score).pk])

    ((level, message),) = messages_of(response)
    assert level == "error"
    assert message.startswith("Not restored: ")
    assert "testapp.Score" in message and "checksum" in message
    assert Score.objects.count() == 2, "a failed restore leaves the memory table alone"
    assert PersistentStorage.objects.count() == 1


def test_discard_selected_confirms_first_then_deletes(admin: Client) -> None:
    Score.objects.create(player="a")
    Legacy.objects.create(text="x")
    api.spool("testapp.Score", "testapp.Legacy")
    score, legacy = stored(Score), stored(Legacy)

    confirm = action(admin, STORAGE, "discard_selected", [score.pk])

    assert confirm.status_code == 200
    assert [t.name for t in confirm.templates][0] == (
        "admin/memdb/persistentstorage/discard_confirmation.html"
    )
    html = confirm.content.decode()
    assert "Discard the stored snapshots of these tables?" in html
    assert "<li>testapp.Score</li>" in html and "testapp.Legacy" not in html
    assert '<input type="hidden" name="post" value="yes">' in html
    assert PersistentStorage.objects.count() == 2, "nothing is deleted before confirming"

    done = admin.post(
        STORAGE,
        {"action": "discard_selected", ACTION_CHECKBOX_NAME: [str(score.pk)], "post": "yes"},
        follow=True,
    )

    assert done.redirect_chain[-1][0].endswith(STORAGE)
    assert messages_of(done) == [
        (
            "success",
            "Discarded 1 snapshot(s) of testapp.Score; the tables spool again from memory.",
        )
    ]
    assert list(PersistentStorage.objects.values_list("pk", flat=True)) == [legacy.pk]
    assert Score.objects.count() == 1, "discarding leaves the memory table alone"
    assert api.spool("testapp.Score")[0].generation == 1


def test_discard_needs_the_delete_permission(admin: Client) -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    pk = stored(Score).pk
    keeper = client_for(
        user(
            "keeper",
            "memdb.view_persistentstorage",
            "memdb.change_persistentstorage",
        )
    )

    page = keeper.get(STORAGE)
    choices = dict(page.context["action_form"].fields["action"].choices)
    assert "restore_selected" in choices
    assert "discard_selected" not in choices

    for data in ({"index": "0"}, {"post": "yes"}):
        keeper.post(
            STORAGE, {"action": "discard_selected", ACTION_CHECKBOX_NAME: [str(pk)], **data}
        )
    assert PersistentStorage.objects.filter(pk=pk).exists()

    viewer = client_for(user("viewer", "memdb.view_persistentstorage"))
    assert viewer.get(STORAGE).status_code == 200
    assert viewer.get(STORAGE).context["action_form"] is None, "view only: no actions"
    Score.objects.all().delete()
    viewer.post(
        STORAGE, {"action": "restore_selected", ACTION_CHECKBOX_NAME: [str(pk)], "index": "0"}
    )
    assert Score.objects.count() == 0
    assert client_for(user("outsider")).get(STORAGE).status_code == 403


# MemDBModelAdmin: "Spool now" and "Restore from storage"


def test_model_admin_offers_both_actions(admin: Client) -> None:
    choices = dict(admin.get(SCORES).context["action_form"].fields["action"].choices)
    assert choices["memdb_spool_now"] == "Spool now (write the whole table to storage)"
    assert choices["memdb_restore"] == "Restore from storage (replace the whole table)"
    viewer = client_for(user("viewer", "testapp.view_score"))
    assert viewer.get(SCORES).context["action_form"] is None


def test_model_admin_spool_now_writes_the_whole_table(admin: Client) -> None:
    scores = Score.objects.bulk_create([Score(player=f"p{i}", points=i) for i in range(4)])

    response = action(admin, SCORES, "memdb_spool_now", [scores[0].pk])

    snapshot = stored(Score)
    assert snapshot.row_count == 4, "the whole table, whatever rows were selected"
    assert snapshot.generation == 1
    ((level, message),) = messages_of(response)
    assert level == "success"
    assert message.startswith(
        f"Spooled testapp.Score: 4 rows, {size(snapshot.size)}, generation 1, in "
    )
    assert message.endswith(" ms.")

    again = action(admin, SCORES, "memdb_spool_now", [scores[0].pk])
    assert messages_of(again) == [
        (
            "info",
            f"Nothing to write for testapp.Score: unchanged since generation 1 "
            f"(4 rows, {size(snapshot.size)}).",
        )
    ]

    Score.objects.create(player="new", points=9)
    third = action(admin, SCORES, "memdb_spool_now", [scores[0].pk])
    assert stored(Score).generation == 2 and stored(Score).row_count == 5
    assert messages_of(third)[0][1].startswith("Spooled testapp.Score: 5 rows, ")


def test_model_admin_restore_replaces_the_table(admin: Client) -> None:
    Score.objects.bulk_create([Score(player=f"p{i}", points=i) for i in range(3)])
    api.spool("testapp.Score")
    Score.objects.filter(player="p0").delete()
    extra = Score.objects.create(player="extra")

    response = action(admin, SCORES, "memdb_restore", [extra.pk])

    ((level, message),) = messages_of(response)
    assert level == "success"
    assert message.startswith("Restored testapp.Score: 3 rows from generation 1, in ")
    assert sorted(Score.objects.values_list("player", flat=True)) == ["p0", "p1", "p2"]


def test_model_admin_restore_of_a_corrupt_snapshot_then_spool_is_refused(
    admin: Client,
) -> None:
    score = Score.objects.create(player="a", points=1)
    api.spool("testapp.Score")
    corrupt(Score)
    damaged = stored_data(Score)

    restore = action(admin, SCORES, "memdb_restore", [score.pk])

    ((level, message),) = messages_of(restore)
    assert level == "error"
    assert message.startswith("Not restored: testapp.Score")
    assert "checksum" in message

    Score.objects.create(player="b", points=2)
    spool = action(admin, SCORES, "memdb_spool_now", [score.pk])

    ((level, message),) = messages_of(spool)
    assert level == "error"
    assert message.startswith("Not spooled: ")
    assert "testapp.Score" in message and "failed to restore" in message
    assert stored_data(Score) == damaged, "the protected snapshot is kept"


def test_model_admin_spool_of_a_memory_only_table_says_why(admin: Client) -> None:
    hit = Hit.objects.create(path="/")

    response = action(admin, "/admin/testapp/hit/", "memdb_spool_now", [hit.pk])

    ((level, message),) = messages_of(response)
    assert level == "error"
    assert message.startswith("Not spooled: ") and "testapp.Hit" in message
    assert not PersistentStorage.objects.exists()


def test_model_admin_actions_need_the_change_permission(admin: Client) -> None:
    score = Score.objects.create(player="a")
    viewer = client_for(user("viewer", "testapp.view_score"))
    viewer.post(
        SCORES, {"action": "memdb_spool_now", ACTION_CHECKBOX_NAME: [str(score.pk)], "index": "0"}
    )
    assert not PersistentStorage.objects.exists()
    editor = client_for(user("editor", "testapp.view_score", "testapp.change_score"))
    action(editor, SCORES, "memdb_spool_now", [score.pk])
    assert stored(Score).row_count == 1


# The Memory tables page


def test_memory_tables_page_lists_every_table(admin: Client) -> None:
    Score.objects.bulk_create([Score(player=f"player {i}", points=i) for i in range(2000)])
    Legacy.objects.create(text="x")
    Hit.objects.bulk_create([Hit(path="/a"), Hit(path="/b")])
    api.spool("testapp.Score", "testapp.Legacy")
    Score.objects.create(player="late")

    response = admin.get(TABLES)

    assert response.status_code == 200
    page = TablesPage(response.content.decode())
    assert list(page.rows) == [label_of(m) for m in memory_models()]
    score, legacy, hit = (page.cells(f"testapp.{n}") for n in ("Score", "Legacy", "Hit"))
    assert (score["kind"], score["policy"], score["rows"], score["dirty"]) == (
        "persistent",
        "manual",
        "2001",
        "yes",
    )
    assert (legacy["rows"], legacy["dirty"], legacy["restore"]) == ("1", "no", "none")
    assert score["size"] == size(stored(Score).size)
    assert legacy["size"] == size(stored(Legacy).size)
    assert score["last"] != "—" and legacy["last"] != "—"
    assert (hit["kind"], hit["policy"], hit["rows"], hit["dirty"], hit["size"]) == (
        "memory only",
        "—",
        "2",
        "no",
        "—",
    )
    assert page.cells("testapp.CommitScore")["policy"] == "commit"
    assert page.cells("testapp.IntervalScore")["policy"] == "interval"
    assert page.rows["testapp.Player_tags"]["cells"][1] == "persistent"

    # The bar: the largest snapshot fills it, the others in proportion, none is empty.
    assert stored(Score).size > stored(Legacy).size
    assert page.rows["testapp.Score"]["bar"] == 100.0
    assert page.rows["testapp.Legacy"]["bar"] == round(
        100 * stored(Legacy).size / stored(Score).size, 1
    )
    assert page.rows["testapp.Hit"]["bar"] == 0.0
    assert page.rows["testapp.Team"]["bar"] == 0.0

    # Buttons: per persistent table, and for all.
    assert page.rows["testapp.Score"]["buttons"] == ["Spool now", "Restore"]
    assert page.rows["testapp.Hit"]["buttons"] == []
    assert page.all_buttons == ["Spool all tables", "Restore all tables"]


def test_memory_tables_page_follows_the_admin_look(admin: Client) -> None:
    response = admin.get(TABLES)
    html = response.content.decode()
    names = [t.name for t in response.templates]
    assert names[:2] == ["admin/memdb/memorytable/memory_tables.html", "admin/base_site.html"]
    assert "admin/base.html" in names
    assert '<div class="breadcrumbs">' in html
    assert '<a href="/admin/memdb/">' in html
    assert "<title>Memory tables | Django site admin</title>" in html
    assert 'id="theme-toggle"' in html or "theme-toggle" in html, "the dark mode switch"


@pytest.mark.process_store
def test_memory_tables_page_warns_when_this_is_one_of_several_workers(
    admin: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert "worker processes" not in admin.get(TABLES).content.decode()
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    html = admin.get(TABLES).content.decode()
    assert 'class="warning"' in html and "one of 4 worker processes" in html


def test_memory_tables_page_shows_a_failed_restore(admin: Client) -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    corrupt(Score)
    admin.post(TABLES, {"action": "restore", "table": "testapp.Score"})

    page = TablesPage(admin.get(TABLES).content.decode())

    restore = page.cells("testapp.Score")["restore"]
    assert restore.startswith("failed: ") and "checksum" in restore


def test_admin_spools_under_atomic_requests(admin: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``ATOMIC_REQUESTS`` on the default database, memdb's admin views are left
    out of it: the Memory tables page and a memory model's action still spool (the same
    with ``ATOMIC_REQUESTS`` on the memory alias)."""
    for alias in ("default", "memdb"):
        monkeypatch.setitem(connections[alias].settings_dict, "ATOMIC_REQUESTS", True)
    scores = Score.objects.bulk_create([Score(player=f"p{i}", points=i) for i in range(3)])
    response = admin.post(TABLES, {"action": "spool", "table": "testapp.Score"}, follow=True)
    assert [level for level, _ in messages_of(response)] == ["success"], messages_of(response)
    Score.objects.create(player="late")
    response = action(admin, SCORES, "memdb_spool_now", [scores[0].pk])
    assert [level for level, _ in messages_of(response)] == ["success"], messages_of(response)
    assert stored(Score).row_count == 4


def test_memory_tables_spool_now_for_one_table(admin: Client) -> None:
    Score.objects.bulk_create([Score(player=f"p{i}", points=i) for i in range(3)])
    Legacy.objects.create(text="x")

    response = admin.post(TABLES, {"action": "spool", "table": "testapp.Score"}, follow=True)

    assert response.redirect_chain == [(TABLES, 302)]
    snapshot = stored(Score)
    ((level, message),) = messages_of(response)
    assert level == "success"
    assert message.startswith(f"Spooled testapp.Score: 3 rows, {size(snapshot.size)}, ")
    assert [row.label for row in PersistentStorage.objects.all()] == ["testapp.Score"]
    page = TablesPage(response.content.decode())
    assert page.cells("testapp.Score")["size"] == size(snapshot.size)
    assert page.cells("testapp.Score")["dirty"] == "no"
    assert page.cells("testapp.Legacy")["dirty"] == "yes"
    assert page.rows["testapp.Score"]["bar"] == 100.0


def test_memory_tables_spool_all_and_restore_all(admin: Client) -> None:
    Score.objects.bulk_create([Score(player=f"p{i}", points=i) for i in range(3)])
    Legacy.objects.create(text="x")
    Hit.objects.create(path="/")

    spooled = admin.post(TABLES, {"action": "spool"}, follow=True)

    persistent = [i.label for i in api.tables() if i.persistent]
    assert sorted(row.label for row in PersistentStorage.objects.all()) == sorted(persistent)
    levels_and_labels = [(lvl, msg.split(":")[0]) for lvl, msg in messages_of(spooled)]
    assert ("success", "Spooled testapp.Score") in levels_and_labels
    assert ("success", "Spooled testapp.Legacy") in levels_and_labels
    assert len(levels_and_labels) == len(persistent)

    Score.objects.all().delete()
    Legacy.objects.all().delete()
    restored = admin.post(TABLES, {"action": "restore"}, follow=True)

    messages = dict((msg.split(":")[0], (lvl, msg)) for lvl, msg in messages_of(restored))
    assert messages["Restored testapp.Score"][0] == "success"
    assert messages["Restored testapp.Score"][1].startswith(
        "Restored testapp.Score: 3 rows from generation 1"
    )
    assert messages["Restored testapp.Legacy"][1].startswith("Restored testapp.Legacy: 1 rows")
    assert Score.objects.count() == 3 and Legacy.objects.count() == 1
    assert Hit.objects.count() == 1, "memory-only tables are not touched"
    page = TablesPage(restored.content.decode())
    assert page.cells("testapp.Score")["restore"] == "ok"


def test_memory_tables_restore_of_an_empty_table(admin: Client) -> None:
    """The model admin's actions need a selected row; this page restores an empty table."""
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    Score.objects.all().delete()

    response = admin.post(TABLES, {"action": "restore", "table": "testapp.Score"}, follow=True)

    assert messages_of(response)[0][1].startswith("Restored testapp.Score: 1 rows")
    assert Score.objects.count() == 1


def test_memory_tables_bad_input_is_named(admin: Client) -> None:
    unknown = admin.post(TABLES, {"action": "spool", "table": "testapp.Nope"}, follow=True)
    ((level, message),) = messages_of(unknown)
    assert level == "error" and "testapp.Nope" in message

    memory_only = admin.post(TABLES, {"action": "spool", "table": "testapp.Hit"}, follow=True)
    ((level, message),) = messages_of(memory_only)
    assert level == "error" and "testapp.Hit" in message

    missing = admin.post(TABLES, {"action": "restore", "table": "testapp.Score"}, follow=True)
    ((level, message),) = messages_of(missing)
    assert level == "error" and "testapp.Score has no stored snapshot" in message

    odd = admin.post(TABLES, {"action": "drop"}, follow=True)
    assert messages_of(odd) == [("error", "Unknown action 'drop'.")]
    assert not PersistentStorage.objects.exists()


def test_memory_tables_spool_of_a_protected_table_is_an_error(admin: Client) -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    corrupt(Score)
    admin.post(TABLES, {"action": "restore", "table": "testapp.Score"}, follow=True)
    Score.objects.create(player="b")

    response = admin.post(TABLES, {"action": "spool", "table": "testapp.Score"}, follow=True)

    ((level, message),) = messages_of(response)
    assert level == "error"
    assert "testapp.Score" in message and "failed to restore" in message
    assert stored(Score).generation == 1


# The Memory tables page: who may see and do what


def spool_score(client: Client) -> Any:
    return client.post(TABLES, {"action": "spool", "table": "testapp.Score"})


def test_anonymous_is_sent_to_the_login_page() -> None:
    Score.objects.create(player="a")
    anonymous = Client()
    for response in (anonymous.get(TABLES), spool_score(anonymous)):
        assert response.status_code == 302
        assert response["Location"] == f"/admin/login/?next={TABLES}"
    assert not PersistentStorage.objects.exists()


def test_staff_without_the_view_permission_gets_403() -> None:
    Score.objects.create(player="a")
    staff = client_for(user("staff", "memdb.view_persistentstorage"))
    assert staff.get(TABLES).status_code == 403
    assert spool_score(staff).status_code == 403
    assert not PersistentStorage.objects.exists()


def test_non_staff_is_sent_to_the_login_page() -> None:
    outsider = client_for(user("outsider", "memdb.change_memorytable", staff=False))
    response = outsider.get(TABLES)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_view_permission_sees_the_page_without_buttons() -> None:
    Score.objects.create(player="a")
    viewer = client_for(user("viewer", "memdb.view_memorytable"))

    response = viewer.get(TABLES)

    assert response.status_code == 200
    page = TablesPage(response.content.decode())
    assert "testapp.Score" in page.rows
    assert all(row["buttons"] == [] for row in page.rows.values())
    assert page.all_buttons == []
    assert "Actions</th>" not in response.content.decode()
    assert spool_score(viewer).status_code == 403
    assert viewer.post(TABLES, {"action": "restore"}).status_code == 403
    assert not PersistentStorage.objects.exists()


@pytest.mark.parametrize(
    "perms",
    [("memdb.view_memorytable", "memdb.change_memorytable"), ("memdb.change_memorytable",)],
    ids=["view+change", "change"],
)
def test_change_permission_may_spool_and_restore(perms: tuple[str, ...]) -> None:
    Score.objects.create(player="a")
    operator = client_for(user("operator", *perms))

    page = TablesPage(operator.get(TABLES).content.decode())
    assert page.rows["testapp.Score"]["buttons"] == ["Spool now", "Restore"]
    assert spool_score(operator).status_code == 302
    assert stored(Score).row_count == 1
    Score.objects.all().delete()
    assert operator.post(TABLES, {"action": "restore"}).status_code == 302
    assert Score.objects.count() == 1


def test_superuser_may_do_everything(admin: Client) -> None:
    Score.objects.create(player="a")
    page = TablesPage(admin.get(TABLES).content.decode())
    assert page.all_buttons == ["Spool all tables", "Restore all tables"]
    assert spool_score(admin).status_code == 302
    assert stored(Score).row_count == 1


def test_the_app_index_links_to_memory_tables(admin: Client) -> None:
    html = admin.get("/admin/memdb/").content.decode()
    assert f'<a href="{TABLES}">Memory tables</a>' in html
    assert f'<a href="{STORAGE}">Persistent storage</a>' in html
    assert f'href="{TABLES}add/"' not in html
    viewer = client_for(user("viewer", "memdb.view_memorytable"))
    assert "Memory tables" in viewer.get("/admin/").content.decode()


def test_a_snapshot_of_a_model_that_is_gone_is_marked_and_can_be_discarded(
    admin: Client,
) -> None:
    """A snapshot whose model was removed from the code (an orphan): the list marks it
    in the "model" column and "Discard selected snapshots" deletes it and its chunks."""
    now = timezone.now()
    orphan = create_stored(
        app_label="testapp",
        model_name="Gone",
        format="sqlite",
        format_version=1,
        row_count=0,
        size=1,
        checksum="0" * 64,
        generation=1,
        created_at=now,
        updated_at=now,
        data=b"x",
    )

    listing = admin.get(STORAGE)
    html = listing.content.decode()
    assert "testapp.Gone" in html and 'alt="False"' in html

    done = admin.post(
        STORAGE,
        {"action": "discard_selected", ACTION_CHECKBOX_NAME: [str(orphan.pk)], "post": "yes"},
        follow=True,
    )

    ((level, message),) = messages_of(done)
    assert level == "success", message
    assert "testapp.Gone" in message
    assert not PersistentStorage.objects.filter(pk=orphan.pk).exists()
    assert not SnapshotChunk.objects.filter(snapshot_id=orphan.pk).exists()


def test_memory_tables_page_reports_when_it_cannot_list(
    admin: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*labels: str) -> list[api.TableInfo]:
        raise MemdbError("the memory database is gone")

    monkeypatch.setattr(api, "tables", broken)

    response = admin.get(TABLES)

    assert response.status_code == 200
    assert messages_of(response) == [
        ("error", "Cannot list the memory tables: the memory database is gone")
    ]
    assert "No memory tables" in response.content.decode()
