"""``memdb_api``: the REST control surface under ``/memdb/`` (issue 4).

Every answer is checked against ``memdb.api`` and the ``PersistentStorage`` rows; every
refused call is checked to have changed nothing, in storage or in memory.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.http import HttpRequest
from django.middleware.csrf import get_token
from django.test.utils import override_settings
from django.utils.dateparse import parse_datetime
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from memdb import api
from memdb.models import PersistentStorage
from tests.helpers import replace_data, stored_chunks, stored_data
from tests.testapp.models import CommitScore, Hit, IntervalScore, Legacy, Score

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])

Override = Callable[..., AbstractContextManager[Any]]
PASSWORD = "correct horse battery staple"
TABLE_FIELDS = {
    "label",
    "app_label",
    "model",
    "persistent",
    "policy",
    "rows",
    "dirty",
    "last_spooled",
    "snapshot_bytes",
    "snapshot_rows",
    "generation",
    "codecs",
    "restore_state",
    "restore_error",
    "store",
    "warning",
    "leader",
}
SPOOL_FIELDS = {
    "label",
    "rows",
    "bytes",
    "milliseconds",
    "generation",
    "unchanged",
    "chunks",
    "kind",
}
RESTORE_FIELDS = {"label", "rows", "milliseconds", "generation"}
SLASHES = pytest.mark.parametrize("slash", ["", "/"], ids=["no-slash", "slash"])


@pytest.fixture(autouse=True)
def _no_throttle_history() -> Iterator[None]:
    """DRF's throttle history lives in the default cache: every test starts and ends
    without it."""
    cache.clear()
    yield
    cache.clear()


def make_user(username: str, *, staff: bool) -> Any:
    return get_user_model().objects.create_user(username, password=PASSWORD, is_staff=staff)


@pytest.fixture
def staff() -> Any:
    return make_user("ops", staff=True)


@pytest.fixture
def member() -> Any:
    return make_user("member", staff=False)


def token_client(user: Any) -> APIClient:
    """A client as a deploy script is: a DRF token, no session, no CSRF."""
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def ops(staff: Any) -> APIClient:
    return token_client(staff)


def post(client: APIClient, path: str, body: Any = None, **extra: Any) -> Any:
    """POST ``body`` as JSON (a ``str`` or ``bytes`` body is sent as it is)."""
    if body is None:
        return client.post(path, **extra)
    raw = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(path, data=raw, content_type="application/json", **extra)


def stored(model: type) -> PersistentStorage:
    return PersistentStorage.objects.get(
        app_label=model._meta.app_label, model_name=model._meta.object_name
    )


def storage_rows() -> list[tuple[Any, ...]]:
    return sorted(
        (row.label, row.kind, row.generation, row.checksum, row.row_count, row.updated_at)
        for row in PersistentStorage.objects.all()
    )


def memory() -> dict[str, list[Any]]:
    return {
        "Score": sorted(Score.objects.values_list("player", "points")),
        "Legacy": sorted(Legacy.objects.values_list("text", flat=True)),
        "Hit": sorted(Hit.objects.values_list("path", flat=True)),
    }


def world() -> tuple[list[tuple[Any, ...]], dict[str, list[Any]]]:
    """A stored Score snapshot, then changes in memory that a spool or restore would
    write or undo; returns what storage and memory hold."""
    Score.objects.bulk_create([Score(player="a", points=1), Score(player="b", points=2)])
    api.spool("testapp.Score")
    Score.objects.create(player="c", points=3)
    Legacy.objects.create(text="never spooled")
    Hit.objects.create(path="/")
    return storage_rows(), memory()


def assert_error(response: Any, status: int, code: str, *named: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["code"] == code, body
    for name in named:
        assert name in body["detail"], body
    return body


def table_json(info: api.TableInfo) -> dict[str, Any]:
    """What ``GET /memdb/tables`` must say of ``info`` (``last_spooled`` parsed)."""
    return {
        "label": info.label,
        "app_label": info.app_label,
        "model": info.model_name,
        "persistent": info.persistent,
        "policy": info.policy,
        "rows": info.rows,
        "dirty": info.dirty,
        "last_spooled": info.last_spooled,
        "snapshot_bytes": info.snapshot_bytes,
        "snapshot_rows": info.snapshot_rows,
        "generation": info.generation,
        "codecs": list(info.codecs),
        "restore_state": info.restore_state,
        "restore_error": info.restore_error,
        "store": info.store,
        "warning": info.warning,
        "leader": info.leader,
    }


def parsed_table(entry: dict[str, Any]) -> dict[str, Any]:
    assert set(entry) == TABLE_FIELDS
    when = entry["last_spooled"]
    return {**entry, "last_spooled": parse_datetime(when) if when is not None else None}


def by_label(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["label"]: entry for entry in entries}


def assert_spool_results_match_storage(results: list[dict[str, Any]]) -> None:
    for result in results:
        assert set(result) == SPOOL_FIELDS
        row = PersistentStorage.objects.get(
            app_label=result["label"].split(".")[0], model_name=result["label"].split(".")[1]
        )
        assert (result["rows"], result["bytes"], result["generation"], result["chunks"]) == (
            row.row_count,
            row.size,
            row.generation,
            row.chunk_count,
        )
        assert row.chunk_count == len(stored_chunks(row)) >= 1
        assert isinstance(result["milliseconds"], float) and result["milliseconds"] >= 0


def persistent_labels() -> set[str]:
    return {info.label for info in api.tables() if info.persistent}


# GET /memdb/tables


@SLASHES
def test_tables_lists_every_memory_table_as_memdb_api_reports_it(
    ops: APIClient, slash: str
) -> None:
    Score.objects.bulk_create([Score(player="a", points=1), Score(player="b", points=2)])
    api.spool("testapp.Score")
    Score.objects.create(player="c", points=3)
    Hit.objects.bulk_create([Hit(path=f"/{i}") for i in range(4)])

    response = ops.get("/memdb/tables" + slash)

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    entries = response.json()
    infos = api.tables()
    assert [entry["label"] for entry in entries] == [info.label for info in infos]
    assert [parsed_table(entry) for entry in entries] == [table_json(info) for info in infos]

    tables = by_label(entries)
    snapshot = stored(Score)
    score = parsed_table(tables["testapp.Score"])
    assert score["persistent"] is True and score["policy"] == "manual"
    assert (score["rows"], score["dirty"], score["snapshot_rows"]) == (3, True, 2)
    assert score["generation"] == snapshot.generation == 1
    assert score["snapshot_bytes"] == snapshot.size > 0
    assert score["last_spooled"] == snapshot.updated_at
    assert (score["codecs"], score["restore_state"], score["restore_error"]) == ([], "none", None)
    hit = tables["testapp.Hit"]
    assert (hit["persistent"], hit["policy"], hit["rows"], hit["dirty"]) == (False, None, 4, False)
    assert (hit["generation"], hit["snapshot_bytes"], hit["last_spooled"]) == (None, None, None)
    assert tables["testapp.CommitScore"]["policy"] == CommitScore.memdb_policy == "commit"
    assert tables["testapp.IntervalScore"]["policy"] == IntervalScore.memdb_policy
    assert tables["testapp.Legacy"]["rows"] == 0


@SLASHES
def test_table_detail_shows_one_table(ops: APIClient, slash: str, memdb_override: Override) -> None:
    Score.objects.create(player="a", points=1)
    with memdb_override(CODECS=["zlib", "lzma"]):
        api.spool("testapp.Score")
    api.restore("testapp.Score")

    response = ops.get("/memdb/tables/testapp.Score" + slash)

    assert response.status_code == 200
    (info,) = api.tables("testapp.Score")
    assert parsed_table(response.json()) == table_json(info)
    body = response.json()
    assert body["codecs"] == ["zlib", "lzma"] == stored(Score).codecs
    assert (body["restore_state"], body["dirty"], body["rows"]) == ("ok", False, 1)


def test_table_labels_are_case_insensitive_and_memory_only_tables_have_details(
    ops: APIClient,
) -> None:
    response = ops.get("/memdb/tables/TESTAPP.score")
    assert response.status_code == 200 and response.json()["label"] == "testapp.Score"
    hit = ops.get("/memdb/tables/testapp.Hit/").json()
    assert (hit["label"], hit["persistent"], hit["policy"]) == ("testapp.Hit", False, None)


@pytest.mark.parametrize(
    "label, named",
    [
        ("testapp.Nope", "testapp.Nope"),
        ("testapp.Plain", "testapp.Plain"),  # a model of the default database
        ("auth.User", "auth.User"),
        ("nodot", "nodot"),
        ("a.b.c", "a.b.c"),
        (".", "'.'"),
        ("testapp.", "testapp."),
        ("x" * 300, "x" * 300),
        ("%C3%BCn%C3%AF.c%C3%B8d%C3%A9", "ünï.cødé"),
        ("testapp.Score%00", "testapp.Score"),
        ("%20", "is not a memory table"),
        ("%FF%FE", "is not a memory table"),
    ],
)
def test_unknown_table_is_404_naming_it(ops: APIClient, label: str, named: str) -> None:
    response = ops.get(f"/memdb/tables/{label}")
    assert_error(response, 404, "unknown_table", named)


# POST /memdb/spool


@SLASHES
def test_spool_without_a_body_spools_every_persistent_table(ops: APIClient, slash: str) -> None:
    Score.objects.bulk_create([Score(player="a", points=1), Score(player="b", points=2)])
    Legacy.objects.create(text="t")
    Hit.objects.create(path="/")

    response = post(ops, "/memdb/spool" + slash)

    assert response.status_code == 200, response.content
    results = response.json()["results"]
    assert {r["label"] for r in results} == persistent_labels()
    assert len(results) == len(persistent_labels())
    assert "testapp.Hit" not in {r["label"] for r in results}
    assert_spool_results_match_storage(results)
    assert all(r["unchanged"] is False and r["generation"] == 1 for r in results)
    assert by_label(results)["testapp.Score"]["rows"] == 2
    assert by_label(results)["testapp.Legacy"]["rows"] == 1
    assert PersistentStorage.objects.count() == len(results)


@pytest.mark.parametrize("body", [{}, {"tables": []}, {"force": False}], ids=str)
def test_spool_with_an_empty_request_spools_every_persistent_table(
    ops: APIClient, body: dict[str, Any]
) -> None:
    Score.objects.create(player="a")
    response = post(ops, "/memdb/spool", body)
    assert response.status_code == 200, response.content
    assert {r["label"] for r in response.json()["results"]} == persistent_labels()


@SLASHES
def test_spool_of_named_tables_spools_those_only(ops: APIClient, slash: str) -> None:
    Score.objects.create(player="a", points=1)
    Legacy.objects.create(text="t")

    response = post(ops, "/memdb/spool" + slash, {"tables": ["TESTAPP.score", "testapp.Score"]})

    assert response.status_code == 200, response.content
    (result,) = response.json()["results"]
    assert (result["label"], result["rows"], result["generation"]) == ("testapp.Score", 1, 1)
    assert_spool_results_match_storage([result])
    assert [row.label for row in PersistentStorage.objects.all()] == ["testapp.Score"]


def test_spool_and_restore_work_under_atomic_requests(
    ops: APIClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``ATOMIC_REQUESTS`` on the default database, the API's views are left out
    of it (a spool inside a transaction there is refused), and a commit-policy write in
    an atomic request is stored when the request commits."""
    monkeypatch.setitem(connections["default"].settings_dict, "ATOMIC_REQUESTS", True)
    Score.objects.create(player="a", points=1)
    response = post(ops, "/memdb/spool", {"tables": ["testapp.Score"]})
    assert response.status_code == 200, response.content
    assert response.json()["results"][0]["rows"] == 1
    response = post(ops, "/memdb/restore", {"tables": ["testapp.Score"]})
    assert response.status_code == 200, response.content


def test_spool_of_an_unchanged_table_writes_nothing_unless_forced(ops: APIClient) -> None:
    Score.objects.create(player="a", points=1)
    Legacy.objects.create(text="t")
    first = post(ops, "/memdb/spool", {"tables": ["testapp.Score", "testapp.Legacy"]})
    assert first.status_code == 200
    before = storage_rows()

    again = post(ops, "/memdb/spool", {"tables": ["testapp.Score", "testapp.Legacy"]})
    assert again.status_code == 200
    assert [(r["label"], r["unchanged"], r["generation"]) for r in again.json()["results"]] == [
        ("testapp.Score", True, 1),
        ("testapp.Legacy", True, 1),
    ]
    assert storage_rows() == before

    forced = post(ops, "/memdb/spool/", {"tables": ["testapp.Score"], "force": True})
    assert forced.status_code == 200, forced.content
    (result,) = forced.json()["results"]
    assert (result["unchanged"], result["generation"]) == (False, 2)
    assert_spool_results_match_storage([result])
    assert stored(Legacy).generation == 1, "force writes the named tables only"


# POST /memdb/restore


@SLASHES
def test_restore_of_a_named_table_replaces_it_with_its_snapshot(ops: APIClient, slash: str) -> None:
    Score.objects.bulk_create([Score(player="a", points=1), Score(player="b", points=2)])
    Legacy.objects.create(text="t")
    api.spool("testapp.Score", "testapp.Legacy")
    Score.objects.filter(player="a").delete()
    Score.objects.create(player="c", points=3)
    Legacy.objects.create(text="added")

    response = post(ops, "/memdb/restore" + slash, {"tables": ["testapp.Score"]})

    assert response.status_code == 200, response.content
    (result,) = response.json()["results"]
    assert set(result) == RESTORE_FIELDS
    assert (result["label"], result["rows"], result["generation"]) == ("testapp.Score", 2, 1)
    assert result["generation"] == stored(Score).generation
    assert isinstance(result["milliseconds"], float) and result["milliseconds"] >= 0
    assert memory()["Score"] == [("a", 1), ("b", 2)]
    assert memory()["Legacy"] == ["added", "t"], "a table not named is left alone"
    detail = ops.get("/memdb/tables/testapp.Score").json()
    assert (detail["restore_state"], detail["dirty"]) == ("ok", False)


@pytest.mark.parametrize("body", [None, {}, {"tables": []}], ids=str)
def test_restore_without_tables_restores_every_stored_table(ops: APIClient, body: Any) -> None:
    Score.objects.create(player="a", points=1)
    api.spool("testapp.Score")
    Score.objects.all().delete()
    Legacy.objects.create(text="not stored")

    response = post(ops, "/memdb/restore", body)

    assert response.status_code == 200, response.content
    assert [(r["label"], r["rows"]) for r in response.json()["results"]] == [("testapp.Score", 1)]
    assert memory()["Score"] == [("a", 1)]
    assert memory()["Legacy"] == ["not stored"]


def test_restore_of_a_table_without_a_snapshot_is_409(ops: APIClient) -> None:
    Legacy.objects.create(text="t")
    response = post(ops, "/memdb/restore", {"tables": ["testapp.Legacy"]})
    body = assert_error(response, 409, "restore_failed", "testapp.Legacy", "no stored snapshot")
    assert set(body["errors"]) == {"testapp.Legacy"} and body["results"] == []
    assert memory()["Legacy"] == ["t"]


# GET /memdb/storage


@SLASHES
def test_storage_of_nothing(ops: APIClient, slash: str) -> None:
    response = ops.get("/memdb/storage" + slash)
    assert response.status_code == 200
    assert response.json() == {
        "snapshots": [],
        "totals": {"snapshots": 0, "rows": 0, "bytes": 0},
    }


@SLASHES
def test_storage_lists_every_snapshot_with_totals(
    ops: APIClient, slash: str, memdb_override: Override
) -> None:
    Score.objects.bulk_create([Score(player=f"p{i}", points=i) for i in range(30)])
    Legacy.objects.create(text="t")
    with memdb_override(CODECS=["zlib"]):
        api.spool("testapp.Score")
    api.spool("testapp.Legacy")
    Legacy.objects.create(text="u")
    api.spool("testapp.Legacy")

    response = ops.get("/memdb/storage" + slash)

    assert response.status_code == 200
    body = response.json()
    rows = list(PersistentStorage.objects.order_by("app_label", "model_name"))
    assert [{**snap, "updated": parse_datetime(snap["updated"])} for snap in body["snapshots"]] == [
        {
            "table": row.label,
            "kind": row.kind,
            "format": row.format,
            "rows": row.row_count,
            "bytes": row.size,
            "codecs": row.codecs,
            "generation": row.generation,
            "written_by": row.written_by,
            "updated": row.updated_at,
            "chunks": row.chunk_count,
            "orphaned": False,
        }
        for row in rows
    ]
    assert [(s["table"], s["codecs"], s["generation"]) for s in body["snapshots"]] == [
        ("testapp.Legacy", [], 2),
        ("testapp.Score", ["zlib"], 1),
    ]
    assert body["totals"] == {
        "snapshots": 2,
        "rows": 32,
        "bytes": sum(row.size for row in rows),
    }
    assert body["totals"]["bytes"] == sum(len(stored_data(row)) for row in rows)
    assert [s.label for s in api.storage()] == [s["table"] for s in body["snapshots"]]


# errors


@pytest.mark.parametrize("path", ["/memdb/spool", "/memdb/restore/"])
def test_unknown_table_in_a_body_is_404_naming_it_and_nothing_is_done(
    ops: APIClient, path: str
) -> None:
    before = world()
    response = post(ops, path, {"tables": ["testapp.Score", "testapp.Nope"]})
    assert_error(response, 404, "unknown_table", "testapp.Nope")
    assert (storage_rows(), memory()) == before


@pytest.mark.parametrize("path", ["/memdb/spool", "/memdb/restore/"])
def test_a_memory_only_table_in_a_body_is_400_naming_it_and_nothing_is_done(
    ops: APIClient, path: str
) -> None:
    before = world()
    response = post(ops, path, {"tables": ["testapp.Legacy", "testapp.Hit"]})
    assert_error(response, 400, "not_persistent", "testapp.Hit", "memory-only")
    assert (storage_rows(), memory()) == before


@pytest.mark.parametrize(
    "raw",
    ['{"tables": [', "{tables: []}", "{'tables': []}", '{"force": NaN}', b'{"tables": ["\xff"]}'],
    ids=["truncated", "bare-key", "single-quotes", "nan", "not-utf8"],
)
@pytest.mark.parametrize("path", ["/memdb/spool", "/memdb/restore"])
def test_malformed_json_is_400(ops: APIClient, path: str, raw: str | bytes) -> None:
    before = world()
    body = assert_error(post(ops, path, raw), 400, "parse_error")
    assert "JSON" in body["detail"]
    assert (storage_rows(), memory()) == before


@pytest.mark.parametrize("raw", ["[]", '["testapp.Score"]', '"x"', '""', "1", "true", "null"])
@pytest.mark.parametrize("path", ["/memdb/spool", "/memdb/restore"])
def test_a_body_that_is_not_an_object_is_400(ops: APIClient, path: str, raw: str) -> None:
    """Regression: ``null`` and ``""`` were taken for an empty body and spooled (or
    restored) every table."""
    before = world()
    body = assert_error(post(ops, path, raw), 400, "invalid", "JSON object")
    assert "body" in body["fields"]
    assert (storage_rows(), memory()) == before


@pytest.mark.parametrize(
    "tables",
    [
        "testapp.Score",
        {"testapp.Score": True},
        None,
        1,
        [1],
        [1.5],
        [True],
        [None],
        [""],
        ["   "],
        [["testapp.Score"]],
        [{"label": "testapp.Score"}],
        ["a" * 300],
        ["testapp.Score\u0000"],
    ],
    ids=repr,
)
@pytest.mark.parametrize("path", ["/memdb/spool", "/memdb/restore"])
def test_tables_must_be_a_list_of_labels(ops: APIClient, path: str, tables: Any) -> None:
    """Regression: numbers in ``tables`` were turned into strings and answered 404."""
    before = world()
    body = assert_error(post(ops, path, {"tables": tables}), 400, "invalid", "tables")
    assert set(body["fields"]) == {"tables"}
    assert (storage_rows(), memory()) == before


def test_every_problem_is_in_fields_and_the_detail_stays_short(ops: APIClient) -> None:
    response = post(ops, "/memdb/spool", {"tables": [1] * 40, "force": "x"})
    body = assert_error(response, 400, "invalid", "tables", "more")
    assert len(body["fields"]["tables"]) == 40 and "39" in body["fields"]["tables"][-1]
    assert set(body["fields"]) == {"tables", "force"}
    assert len(body["detail"]) < 400


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/memdb/spool", {"table": ["testapp.Score"]}, "table"),
        ("/memdb/spool", {"tables": [], "dry_run": True}, "dry_run"),
        ("/memdb/restore", {"force": True}, "force"),
        ("/memdb/restore", {"": 1}, "''"),
    ],
)
def test_unknown_body_fields_are_400_naming_them(
    ops: APIClient, path: str, body: dict[str, Any], field: str
) -> None:
    before = world()
    error = assert_error(post(ops, path, body), 400, "invalid")
    name = field.strip("'")
    assert error["fields"] == {name: ["Unknown field."]}
    assert f"{name}: Unknown field." in error["detail"]
    assert (storage_rows(), memory()) == before


@pytest.mark.parametrize("force", ["maybe", 2, [], {}, None, "true", "yes", 1, 0], ids=repr)
def test_force_must_be_a_boolean(ops: APIClient, force: Any) -> None:
    """JSON true or false only, as documented: not DRF's "yes", 1 or "off"."""
    before = world()
    body = assert_error(post(ops, "/memdb/spool", {"force": force}), 400, "invalid", "force")
    assert set(body["fields"]) == {"force"}
    assert (storage_rows(), memory()) == before


@pytest.mark.parametrize(
    "content_type, raw",
    [
        ("application/x-www-form-urlencoded", "tables=testapp.Score"),
        (
            "multipart/form-data; boundary=XX",
            '--XX\r\nContent-Disposition: form-data; name="tables"\r\n\r\ntestapp.Score\r\n--XX--\r\n',
        ),
        ("text/plain", '{"tables": ["testapp.Score"]}'),
        ("application/xml", "<tables/>"),
    ],
    ids=["form", "multipart", "text", "xml"],
)
@pytest.mark.parametrize("path", ["/memdb/spool", "/memdb/restore"])
def test_a_body_that_is_not_json_is_415(
    ops: APIClient, path: str, content_type: str, raw: str
) -> None:
    before = world()
    response = ops.post(path, data=raw, content_type=content_type)
    assert_error(response, 415, "unsupported_media_type", content_type.split(";")[0])
    assert (storage_rows(), memory()) == before


def test_spool_conflict_is_409_with_the_other_tables_results(ops: APIClient) -> None:
    Score.objects.create(player="mine")
    Legacy.objects.create(text="t")
    api.spool("testapp.Score", "testapp.Legacy")
    PersistentStorage.objects.filter(model_name="Score").update(
        generation=5, written_by="elsewhere:4242"
    )
    Score.objects.create(player="more")
    Legacy.objects.create(text="u")

    response = post(ops, "/memdb/spool", {"tables": ["testapp.Score", "testapp.Legacy"]})

    body = assert_error(response, 409, "conflict", "testapp.Score", "generation 5")
    assert set(body) == {"detail", "code", "errors", "results"}
    assert set(body["errors"]) == {"testapp.Score"}
    assert "elsewhere:4242" in body["errors"]["testapp.Score"]
    (legacy,) = body["results"]
    assert (legacy["label"], legacy["rows"], legacy["generation"]) == ("testapp.Legacy", 2, 2)
    assert_spool_results_match_storage(body["results"])
    score = stored(Score)
    assert (score.generation, score.row_count, score.written_by) == (5, 1, "elsewhere:4242")

    forced = post(ops, "/memdb/spool", {"tables": ["testapp.Score"], "force": True})
    assert forced.status_code == 200, forced.content
    assert forced.json()["results"][0]["generation"] == 6 == stored(Score).generation


def corrupt(model: type) -> None:
    """Flip one byte of the stored snapshot, so its checksum no longer matches."""
    snapshot = stored(model)
    damaged = bytearray(stored_data(snapshot))
    damaged[len(damaged) // 2] ^= 0xFF
    replace_data(snapshot, bytes(damaged))


def test_a_failed_restore_is_409_and_its_table_refuses_spools_with_409(ops: APIClient) -> None:
    Score.objects.create(player="a", points=1)
    Legacy.objects.create(text="t")
    api.spool("testapp.Score", "testapp.Legacy")
    corrupt(Score)
    Legacy.objects.create(text="added")
    before = storage_rows()

    restored = post(ops, "/memdb/restore", {"tables": ["testapp.Score", "testapp.Legacy"]})

    body = assert_error(restored, 409, "restore_failed", "testapp.Score", "checksum")
    assert (
        set(body["errors"]) == {"testapp.Score"} and "checksum" in body["errors"]["testapp.Score"]
    )
    assert [(r["label"], r["rows"]) for r in body["results"]] == [("testapp.Legacy", 1)]
    assert storage_rows() == before, "the damaged snapshot is left as it is"
    assert memory()["Score"] == [("a", 1)] and memory()["Legacy"] == ["t"]
    detail = ops.get("/memdb/tables/testapp.Score").json()
    assert detail["restore_state"] == "failed" and "checksum" in detail["restore_error"]

    Score.objects.all().delete()
    refused = post(ops, "/memdb/spool", {"tables": ["testapp.Score"]})
    assert_error(refused, 409, "restore_failed", "testapp.Score", "failed to restore")
    Legacy.objects.create(text="more")
    everything = post(ops, "/memdb/spool")
    body = assert_error(everything, 409, "restore_failed", "testapp.Score")
    assert set(body["errors"]) == {"testapp.Score"}
    assert {r["label"] for r in body["results"]} == persistent_labels() - {"testapp.Score"}
    assert_spool_results_match_storage(body["results"])
    assert stored(Score).checksum == dict((r[0], r[3]) for r in before)["testapp.Score"]

    forced = post(ops, "/memdb/spool", {"tables": ["testapp.Score"], "force": True})
    assert forced.status_code == 200, forced.content
    assert ops.get("/memdb/tables/testapp.Score").json()["restore_state"] != "failed"


DEEP = 100_000
#: Bodies a fuzzer or a broken script may send, and the answers of spool and restore.
ODD_BODIES = [
    ("null", 400, 400),
    ("[]", 400, 400),
    ('"x"', 400, 400),
    ('{"tables": [1]}', 400, 400),
    ('{"tables": [null]}', 400, 400),
    ('{"tables": ["' + "a" * 300 + '"]}', 400, 400),
    ('{"force": "maybe"}', 400, 400),
    ('{"tables": ' + "[" * 50 + "]" * 50 + "}", 400, 400),
    ('{"tables": [{"tables": [{"tables": []}]}]}', 400, 400),
    ("[" * DEEP + "]" * DEEP, 400, 400),
    ('{"a": ' * DEEP + "1" + "}" * DEEP, 400, 400),
    ('{"tables": ["\\ud800"]}', 400, 400),
    ('{"tables": ["x"], "tables": "y"}', 400, 400),
    ('{"force": 1e999}', 400, 400),
    ("{}" * 3, 400, 400),
    (" ", 400, 400),
    ('{"tables": ["\U0001f600.\U0001f600"]}', 404, 404),
    ('{"tables": ["testapp.Score"], "force": true}', 200, 400),
]


@pytest.mark.parametrize(
    "raw, spool_status, restore_status", ODD_BODIES, ids=lambda v: repr(v)[:40]
)
def test_odd_bodies_never_give_a_server_error(
    ops: APIClient, raw: str, spool_status: int, restore_status: int
) -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    for path, status in (("/memdb/spool", spool_status), ("/memdb/restore", restore_status)):
        response = post(ops, path, raw)
        assert response.status_code == status, (path, response.content[:300])
        if status != 200:
            assert_error(response, status, response.json()["code"])


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
@pytest.mark.parametrize("path", ["/memdb/spool", "/memdb/restore/"])
def test_other_methods_on_spool_and_restore_are_405(ops: APIClient, path: str, method: str) -> None:
    before = world()
    response = getattr(ops, method)(path)
    assert_error(response, 405, "method_not_allowed", method.upper())
    assert (storage_rows(), memory()) == before


def test_post_on_the_read_only_endpoints_is_405(ops: APIClient) -> None:
    for path in ("/memdb/tables", "/memdb/tables/testapp.Score", "/memdb/storage/"):
        assert_error(post(ops, path, {}), 405, "method_not_allowed", "POST")


# who may call


ENDPOINTS = [
    ("get", "/memdb/tables"),
    ("get", "/memdb/tables/testapp.Score/"),
    ("get", "/memdb/storage"),
    ("post", "/memdb/spool"),
    ("post", "/memdb/restore/"),
]


def call(client: APIClient, method: str, path: str) -> Any:
    return client.get(path) if method == "get" else post(client, path, {})


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_anonymous_calls_are_refused_and_change_nothing(method: str, path: str) -> None:
    before = world()
    response = call(APIClient(enforce_csrf_checks=True), method, path)
    assert response.status_code in (401, 403)
    assert_error(response, response.status_code, "not_authenticated")
    assert (storage_rows(), memory()) == before


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_authenticated_non_staff_calls_are_403_and_change_nothing(
    member: Any, method: str, path: str
) -> None:
    before = world()
    response = call(token_client(member), method, path)
    assert_error(response, 403, "permission_denied")
    assert (storage_rows(), memory()) == before


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_staff_calls_succeed(ops: APIClient, method: str, path: str) -> None:
    world()
    assert call(ops, method, path).status_code == 200


def session_client(user: Any) -> APIClient:
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username=user.username, password=PASSWORD)
    return client


def csrf_token(client: APIClient) -> str:
    """Give ``client`` a CSRF cookie, as a page of the site would; return the token a
    form or script sends back in ``X-CSRFToken``."""
    request = HttpRequest()
    token = get_token(request)
    client.cookies[settings.CSRF_COOKIE_NAME] = request.META["CSRF_COOKIE"]
    return token


@pytest.mark.parametrize("path", ["/memdb/spool", "/memdb/restore"])
def test_session_post_without_a_csrf_token_is_403_and_changes_nothing(
    staff: Any, path: str
) -> None:
    before = world()
    client = session_client(staff)
    assert client.get("/memdb/tables").status_code == 200, "GET needs no CSRF token"

    response = post(client, path, {})
    assert_error(response, 403, "permission_denied", "CSRF")
    assert (storage_rows(), memory()) == before

    csrf_token(client)  # a cookie but no header
    assert_error(post(client, path, {}), 403, "permission_denied", "CSRF")
    assert (storage_rows(), memory()) == before
    wrong = post(client, path, {}, HTTP_X_CSRFTOKEN="x" * 64)
    assert_error(wrong, 403, "permission_denied", "CSRF")
    assert (storage_rows(), memory()) == before


def test_session_post_with_a_csrf_token_works(staff: Any) -> None:
    world()
    client = session_client(staff)
    token = csrf_token(client)

    spooled = post(client, "/memdb/spool", {"tables": ["testapp.Score"]}, HTTP_X_CSRFTOKEN=token)
    assert spooled.status_code == 200, spooled.content
    assert stored(Score).row_count == 3

    Score.objects.all().delete()
    restored = post(client, "/memdb/restore/", {}, HTTP_X_CSRFTOKEN=token)
    assert restored.status_code == 200, restored.content
    assert len(memory()["Score"]) == 3


def test_session_of_a_non_staff_user_is_403_even_with_a_csrf_token(member: Any) -> None:
    before = world()
    client = session_client(member)
    token = csrf_token(client)
    response = post(client, "/memdb/spool", {}, HTTP_X_CSRFTOKEN=token)
    assert_error(response, 403, "permission_denied")
    assert (storage_rows(), memory()) == before


def test_token_auth_works_for_staff_without_csrf(staff: Any) -> None:
    world()
    client = token_client(staff)
    response = post(client, "/memdb/spool", {"tables": ["testapp.Score"]})
    assert response.status_code == 200, response.content
    assert stored(Score).row_count == 3


@pytest.mark.parametrize(
    "authorization",
    ["Token " + "0" * 40, "Token", "Token a b", "Basic " + "!!!", "Bearer abc"],
)
def test_bad_credentials_are_refused_and_change_nothing(staff: Any, authorization: str) -> None:
    before = world()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=authorization)
    response = post(client, "/memdb/spool", {})
    assert response.status_code in (401, 403)
    assert response.json()["code"] in ("authentication_failed", "not_authenticated")
    assert (storage_rows(), memory()) == before


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def test_basic_auth_works_for_staff_and_a_wrong_password_is_refused(staff: Any) -> None:
    before = world()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=basic("ops", "wrong"))
    refused = post(client, "/memdb/spool", {})
    assert_error(refused, refused.status_code, "authentication_failed")
    assert refused.status_code in (401, 403)
    assert (storage_rows(), memory()) == before

    client.credentials(HTTP_AUTHORIZATION=basic("ops", PASSWORD))
    assert post(client, "/memdb/spool", {}).status_code == 200
    assert stored(Score).row_count == 3


def test_permission_classes_setting_allow_any(memdb_override: Override) -> None:
    world()
    anonymous = APIClient(enforce_csrf_checks=True)
    with memdb_override(API_PERMISSION_CLASSES=["rest_framework.permissions.AllowAny"]):
        assert anonymous.get("/memdb/storage").status_code == 200
        Score.objects.create(player="anon")
        assert post(anonymous, "/memdb/spool", {"tables": ["testapp.Score"]}).status_code == 200
        assert stored(Score).row_count == 4
    assert_error(anonymous.get("/memdb/storage"), 403, "not_authenticated")


def test_permission_classes_setting_is_authenticated(memdb_override: Override, member: Any) -> None:
    world()
    client = token_client(member)
    assert_error(post(client, "/memdb/spool", {}), 403, "permission_denied")
    with memdb_override(API_PERMISSION_CLASSES="rest_framework.permissions.IsAuthenticated"):
        assert client.get("/memdb/tables").status_code == 200
        assert post(client, "/memdb/spool", {"tables": ["testapp.Score"]}).status_code == 200
        assert stored(Score).row_count == 3
        assert_error(APIClient().get("/memdb/tables"), 403, "not_authenticated")
    assert_error(client.get("/memdb/tables"), 403, "permission_denied")


def test_permission_classes_setting_combines_classes(memdb_override: Override, staff: Any) -> None:
    """Every listed class must allow the call, as in DRF."""
    client = token_client(staff)
    both = ["rest_framework.permissions.IsAdminUser", "tests.test_rest_api.ReadOnly"]
    with memdb_override(API_PERMISSION_CLASSES=both):
        assert client.get("/memdb/tables").status_code == 200
        assert_error(post(client, "/memdb/spool", {}), 403, "permission_denied")
    assert not PersistentStorage.objects.exists()


class ReadOnly:
    def has_permission(self, request: Any, view: Any) -> bool:
        return request.method == "GET"


def test_an_unimportable_permission_class_names_the_setting(
    memdb_override: Override, ops: APIClient
) -> None:
    with memdb_override(API_PERMISSION_CLASSES=["nowhere.Nothing"]):
        with pytest.raises(ImproperlyConfigured, match=r"API_PERMISSION_CLASSES.*nowhere\.Nothing"):
            ops.get("/memdb/tables")


# throttling


@contextmanager
def throttle_rates(rates: dict[str, str | None]) -> Iterator[None]:
    with override_settings(
        REST_FRAMEWORK={**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": rates}
    ):
        cache.clear()
        yield
    cache.clear()


def test_spool_and_restore_share_the_throttle_scope(ops: APIClient) -> None:
    world()
    with throttle_rates({"memdb": "2/minute"}):
        assert post(ops, "/memdb/spool", {}).status_code == 200
        assert post(ops, "/memdb/restore", {}).status_code == 200
        for _ in range(5):
            assert ops.get("/memdb/tables").status_code == 200, "GETs are not throttled"
            assert ops.get("/memdb/storage/").status_code == 200
        Score.objects.create(player="late")
        before = storage_rows(), memory()

        spool = post(ops, "/memdb/spool/", {})
        body = assert_error(spool, 429, "throttled", "throttled")
        assert int(spool["Retry-After"]) > 0
        assert str(int(spool["Retry-After"])) in body["detail"]
        assert_error(post(ops, "/memdb/restore", {}), 429, "throttled")
        assert (storage_rows(), memory()) == before, "a throttled call does nothing"


def test_the_throttle_counts_per_user(ops: APIClient) -> None:
    other = token_client(make_user("ops2", staff=True))
    with throttle_rates({"memdb": "1/minute"}):
        assert post(ops, "/memdb/spool", {}).status_code == 200
        assert post(ops, "/memdb/spool", {}).status_code == 429
        assert post(other, "/memdb/spool", {}).status_code == 200


@pytest.mark.parametrize("rates", [{}, {"memdb": None}, {"user": "1/minute"}], ids=str)
def test_without_a_rate_for_the_scope_nothing_is_throttled(
    ops: APIClient, rates: dict[str, str | None]
) -> None:
    with throttle_rates(rates):
        for _ in range(4):
            assert post(ops, "/memdb/spool", {}).status_code == 200
            assert post(ops, "/memdb/restore", {}).status_code == 200


def test_the_throttle_scope_is_the_api_throttle_scope_setting(
    ops: APIClient, memdb_override: Override
) -> None:
    with memdb_override(API_THROTTLE_SCOPE="deploys"):
        with throttle_rates({"memdb": "1/minute"}):
            for _ in range(3):
                assert post(ops, "/memdb/spool", {}).status_code == 200
        with throttle_rates({"deploys": "1/minute", "memdb": None}):
            assert post(ops, "/memdb/spool", {}).status_code == 200
            assert_error(post(ops, "/memdb/spool", {}), 429, "throttled")


def test_a_label_with_a_slash_is_a_json_404(ops: APIClient) -> None:
    """Regression: ``/memdb/tables/a/b`` fell through to Django's HTML 404 page."""
    response = ops.get("/memdb/tables/testapp/Score")
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_table"
    assert "testapp/Score" in response.json()["detail"]


def test_a_label_of_control_characters_is_looked_up_not_refused(ops: APIClient) -> None:
    """Regression (found by schemathesis): "\\x1c" matches the schema's label pattern, but
    DRF trimmed it to blank with Python's str.strip() and answered 400."""
    response = post(ops, "/memdb/restore", {"tables": ["\x1c"]})
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_table"
    assert post(ops, "/memdb/restore", {"tables": [" \t"]}).status_code == 400
