"""The django-memdb 0.0.6 processor hooks: ``store_save`` / ``store_load``.

The 0.0.6 README example hook (``tests/codec_hook_006.py``, verbatim) compresses across
a real restart, and fails clearly without it; then, in process, the arguments its
receivers get, the order processors run in, processors that raise, and processors
combined with byte codecs. Every receiver connected here is disconnected afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.test.utils import override_settings

import memdb
from memdb import api, signals
from memdb.exceptions import RestoreError, SpoolError
from memdb.models import PersistentStorage
from tests.children import (
    MIGRATE,
    PRELUDE,
    check_quiet,
    child_env,
    last_json,
    run_process,
)
from tests.helpers import fingerprint, info, scores, stored, stored_data
from tests.test_fields import ROWS, field_values
from tests.testapp.models import AllTypes, Legacy, Score

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])

Override = Callable[..., AbstractContextManager[Any]]
HOOK = "processor:tests.codec_hook_006.compress"
KEYS = {"data", "application", "model", "database", "processors", "process"}


@pytest.fixture(autouse=True)
def no_receiver_left_behind() -> Iterator[None]:
    before = (list(signals.store_save.receivers), list(signals.store_load.receivers))
    yield
    after = (list(signals.store_save.receivers), list(signals.store_load.receivers))
    assert after == before, "a test left a store_save / store_load receiver connected"


@contextmanager
def connected(receiver: Callable[..., Any], *, save: bool = True, load: bool = True):
    """``receiver`` connected to ``store_save`` and/or ``store_load`` for the block."""
    if save:
        signals.store_save.connect(receiver)
    if load:
        signals.store_load.connect(receiver)
    try:
        yield
    finally:
        signals.store_save.disconnect(receiver)
        signals.store_load.disconnect(receiver)


@pytest.fixture
def hook_006() -> Iterator[Any]:
    """The verbatim 0.0.6 hook module, connected (importing it connects it once)."""
    module = importlib.import_module("tests.codec_hook_006")
    with connected(module.hook):
        yield module


def appending(*processors: Callable[[dict[str, Any]], Any]) -> Callable[..., None]:
    """A 0.0.6-style receiver that appends ``processors``."""

    def receiver(sender: Any, **kwargs: Any) -> None:
        kwargs["kwargs"]["processors"].extend(processors)

    return receiver


# -- module-level processors, so their recorded names are stable ---------------------------

CALLS: list[tuple[str, str, Any]] = []


def record(arguments: dict[str, Any]) -> None:
    """Leaves the data as it is, notes what it saw."""
    CALLS.append(("record", arguments["process"], dict(arguments)))


def first(arguments: dict[str, Any]) -> None:
    CALLS.append(("first", arguments["process"], type(arguments["data"])))
    if arguments["process"] == "encode":
        arguments["data"] = json.dumps(arguments["data"])


def second(arguments: dict[str, Any]) -> None:
    CALLS.append(("second", arguments["process"], type(arguments["data"])))
    if arguments["process"] == "encode":
        assert isinstance(arguments["data"], str), "second ran before first"
        arguments["data"] = arguments["data"].encode("utf-8")


def explode(arguments: dict[str, Any]) -> None:
    raise ValueError(f"explode cannot {arguments['process']}")


def fragile(arguments: dict[str, Any]) -> None:
    """Encodes every table; cannot decode Score."""
    if arguments["process"] == "decode" and arguments["model"] == "Score":
        raise ValueError("fragile cannot decode Score")


def to_a_set(arguments: dict[str, Any]) -> None:
    arguments["data"] = {1, 2}


@pytest.fixture(autouse=True)
def clear_calls() -> None:
    CALLS.clear()


# -- the 0.0.6 README hook across a real restart ---------------------------------------------

CHILD_IMPORTS = """
from tests.test_fields import ROWS, field_values
from tests.testapp.models import AllTypes

def picture():
    return [repr(sorted(field_values(o).items())) for o in AllTypes.objects.order_by("pk")]
"""

WRITE = """
for i in range(5):
    Score.objects.create(player=f"plain{i}", points=i)
api.spool("testapp.Score")  # before the hook is connected: a plain snapshot
import tests.codec_hook_006
for row in ROWS:
    AllTypes.objects.create(**row)
api.spool("testapp.AllTypes")
report(alltypes=picture(), scores=rows(Score))
os._exit(0)
"""

WITH_HOOK = """
import tests.codec_hook_006
states = {i.label: [i.restore_state, i.restore_error] for i in api.tables()}
report(alltypes=picture(), scores=rows(Score), states=states)
"""

WITHOUT_HOOK = """
(alltypes,) = api.tables("testapp.AllTypes")
(score,) = api.tables("testapp.Score")
try:
    api.spool("testapp.AllTypes")
    refused = None
except Exception as exc:
    refused = f"{type(exc).__name__}: {exc}"
report(
    alltypes_rows=AllTypes.objects.count(), alltypes_state=alltypes.restore_state,
    alltypes_error=alltypes.restore_error, scores=rows(Score), score_state=score.restore_state,
    refused=refused,
)
"""

SNAPSHOTS = """
import base64
report(snapshots={
    f"{s.app_label}.{s.model_name}": {
        "format": s.format, "codecs": s.codecs, "checksum": s.checksum, "size": s.size,
        "generation": s.generation, "row_count": s.row_count, "chunks": s.chunk_count,
        "data": base64.b64encode(
            b"".join(bytes(c.data) for c in s.chunks.order_by("number"))
        ).decode(),
    }
    for s in PersistentStorage.objects.all()
})
"""


def run_child(
    code: str, env: dict[str, str], *, migrate: bool = False, quiet: bool = True
) -> tuple[Any, str]:
    """Run ``code`` in a new Python process; its last JSON line and its stderr."""
    source = PRELUDE + CHILD_IMPORTS + (MIGRATE if migrate else "") + code
    proc = run_process(source, env)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    if quiet:
        check_quiet(proc.stderr)
    return last_json(proc.stdout), proc.stderr


def snapshots(env: dict[str, str]) -> dict[str, Any]:
    return run_child(SNAPSHOTS, env)[0]["snapshots"]


def test_the_0_0_6_hook_compresses_across_a_restart(default_db: str) -> None:
    env = child_env(default_db)
    written, _ = run_child(WRITE, env, migrate=True)
    assert len(written["alltypes"]) == len(ROWS)

    stored_now = snapshots(env)
    snap = stored_now["testapp.AllTypes"]
    assert snap["format"] == "django-json"
    assert snap["codecs"] == [HOOK]
    assert snap["chunks"] == 1
    data = base64.b64decode(snap["data"])
    assert snap["checksum"] == hashlib.sha256(data).hexdigest() and snap["size"] == len(data)
    rows = json.loads(zlib.decompress(data).decode("utf-8"))
    assert [r["model"] for r in rows] == ["testapp.alltypes"] * len(ROWS)
    assert [r["pk"] for r in rows] == [1, 2, 3]
    for row, expected in zip(rows, ROWS, strict=True):
        for name in ("small", "big", "char", "text", "flag", "maybe", "doc", "nothing"):
            assert row["fields"][name] == expected[name], name
    assert stored_now["testapp.Score"]["format"] == "sqlite-table"
    assert stored_now["testapp.Score"]["codecs"] == []

    restored, _ = run_child(WITH_HOOK, env)
    assert restored["alltypes"] == written["alltypes"]
    assert restored["scores"] == written["scores"]
    assert restored["states"]["testapp.AllTypes"] == ["ok", None]
    assert restored["states"]["testapp.Score"] == ["ok", None]


def test_without_the_hook_its_table_fails_and_the_app_still_starts(
    default_db: str,
) -> None:
    env = child_env(default_db)
    written, _ = run_child(WRITE, env, migrate=True)
    before = snapshots(env)

    seen, stderr = run_child(WITHOUT_HOOK, env, quiet=False)

    assert seen["scores"] == written["scores"], "the other table restored"
    assert seen["score_state"] == "ok"
    assert seen["alltypes_rows"] == 0
    assert seen["alltypes_state"] == "failed"
    error = seen["alltypes_error"]
    assert "testapp.AllTypes" in error and "tests.codec_hook_006.compress" in error, error
    assert "testapp.AllTypes" in seen["refused"], "the failed table is protected from spools"
    assert "memdb: restore failed" in stderr and "tests.codec_hook_006.compress" in stderr
    assert snapshots(env) == before, "the snapshot is left untouched"

    restored, _ = run_child(WITH_HOOK, env)
    assert restored["alltypes"] == written["alltypes"]


# -- in process --------------------------------------------------------------------------------


def test_process_values_in_signals_and_settings() -> None:
    assert signals.MEMDB_PROCESS_ENCODE == "encode"
    assert signals.MEMDB_PROCESS_DECODE == "decode"
    assert settings.MEMDB_PROCESS_ENCODE == "encode"
    assert settings.MEMDB_PROCESS_DECODE == "decode"
    fresh: dict[str, Any] = {}
    memdb.configure(fresh)
    assert (fresh["MEMDB_PROCESS_ENCODE"], fresh["MEMDB_PROCESS_DECODE"]) == ("encode", "decode")
    mine: dict[str, Any] = {"MEMDB_PROCESS_ENCODE": "enc"}
    memdb.configure(mine)
    assert mine["MEMDB_PROCESS_ENCODE"] == "enc", "configure() keeps a value already set"


def test_the_0_0_6_hook_in_process(hook_006: Any) -> None:
    """Every field type round-trips through the JSON path. Regression: datetimes and
    times lost their microseconds (Django's JSON encoder cuts them to milliseconds)."""
    created = [AllTypes.objects.create(**row) for row in ROWS]
    before = [field_values(AllTypes.objects.get(pk=obj.pk)) for obj in created]
    (result,) = api.spool("testapp.AllTypes")
    assert result.rows == len(ROWS)
    snapshot = stored(AllTypes)
    assert (snapshot.format, snapshot.codecs, snapshot.row_count) == ("django-json", [HOOK], 3)
    assert len(json.loads(zlib.decompress(stored_data(snapshot)))) == 3
    AllTypes.objects.all().delete()

    api.restore("testapp.AllTypes")

    assert [field_values(obj) for obj in AllTypes.objects.order_by("pk")] == before


def test_receivers_get_the_0_0_6_arguments() -> None:
    ann = Score.objects.create(player="ann", points=3)
    bob = Score.objects.create(player="bob", points=4)
    before = scores()
    seen: list[tuple[Any, dict[str, Any]]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        assert set(kwargs) == {"signal", "kwargs"}
        seen.append(
            (sender, dict(kwargs["kwargs"], processors=list(kwargs["kwargs"]["processors"])))
        )
        kwargs["kwargs"]["processors"].append(record)

    with connected(receiver):
        api.spool("testapp.Score")
        data_stored = stored_data(Score)
        Score.objects.all().delete()
        api.restore("testapp.Score")

    assert scores() == before
    assert [args["process"] for _, args in seen] == ["encode", "decode"]
    for sender, args in seen:
        assert sender is object, "0.0.6 sent with sender=object"
        assert set(args) == KEYS
        assert (args["application"], args["model"], args["database"]) == (
            "testapp",
            "Score",
            "memdb",
        )
        assert args["processors"] == [], "the receiver gets an empty list to append to"
    assert stored(Score).codecs == ["processor:tests.test_compat.record"]

    encoded, decoded = (arguments for _, _, arguments in CALLS)
    assert set(encoded) == KEYS and set(decoded) == KEYS
    assert encoded["process"] == settings.MEMDB_PROCESS_ENCODE
    data = encoded["data"]
    json.dumps(data)  # JSON-ready
    assert data == [
        {"model": "testapp.score", "pk": ann.pk, "fields": {"player": "ann", "points": 3}},
        {"model": "testapp.score", "pk": bob.pk, "fields": {"player": "bob", "points": 4}},
    ]
    assert encoded["processors"] == [record]
    assert decoded["process"] == settings.MEMDB_PROCESS_DECODE
    assert isinstance(decoded["data"], bytes), "on decode the data starts as the stored bytes"
    assert decoded["data"] == data_stored
    assert json.loads(decoded["data"]) == data


def test_process_values_come_from_the_settings(hook_006: Any) -> None:
    """As in 0.0.6, ``process`` is whatever the settings say, and the hook compares with it."""
    Score.objects.create(player="a", points=1)
    before = scores()
    with connected(appending(record)):
        with override_settings(MEMDB_PROCESS_ENCODE="ENC", MEMDB_PROCESS_DECODE="DEC"):
            api.spool("testapp.Score")
            Score.objects.all().delete()
            api.restore("testapp.Score")
    assert scores() == before
    assert [process for _, process, _ in CALLS] == ["ENC", "DEC"]
    assert stored(Score).codecs == [HOOK, "processor:tests.test_compat.record"]
    json.loads(zlib.decompress(stored_data(Score)))


def test_processors_run_in_the_order_appended() -> None:
    Score.objects.create(player="a", points=1)
    before = scores()
    with connected(appending(first, second)):
        api.spool("testapp.Score")
        assert stored(Score).codecs == [
            "processor:tests.test_compat.first",
            "processor:tests.test_compat.second",
        ]
        Score.objects.all().delete()
        api.restore("testapp.Score")
    assert scores() == before
    assert CALLS == [
        ("first", "encode", list),
        ("second", "encode", str),
        ("first", "decode", bytes),
        ("second", "decode", bytes),
    ]


def test_a_processor_that_raises_on_encode_keeps_the_previous_snapshot() -> None:
    Score.objects.create(player="a", points=1)
    api.spool("testapp.Score")
    before = fingerprint(Score)
    Score.objects.create(player="b", points=2)

    with connected(appending(explode)):
        with pytest.raises(
            SpoolError, match=r"testapp\.Score.*'tests\.test_compat\.explode'.*encode"
        ):
            api.spool("testapp.Score")

    assert fingerprint(Score) == before
    assert info("testapp.Score").dirty
    api.spool("testapp.Score")
    assert stored(Score).row_count == 2


def test_a_processor_that_raises_on_decode_leaves_the_snapshot_and_the_other_tables() -> None:
    Score.objects.create(player="a", points=1)
    Legacy.objects.create(text="kept")
    with connected(appending(fragile)):
        api.spool("testapp.Score", "testapp.Legacy")
        before = fingerprint(Score)
        Legacy.objects.all().delete()
        with pytest.raises(RestoreError) as excinfo:
            api.restore("testapp.Score", "testapp.Legacy")

    message = str(excinfo.value)
    assert "testapp.Score" in message and "tests.test_compat.fragile" in message, message
    assert "fragile cannot decode Score" in message
    assert set(excinfo.value.errors) == {"testapp.Score"}
    assert list(Legacy.objects.values_list("text", flat=True)) == ["kept"]
    assert fingerprint(Score) == before
    assert info("testapp.Score").restore_state == "failed"
    assert info("testapp.Legacy").restore_state == "ok"


def test_store_load_must_supply_the_recorded_processors() -> None:
    Score.objects.create(player="a", points=1)
    with connected(appending(first, second), load=False):
        api.spool("testapp.Score")
    before = fingerprint(Score)
    with connected(appending(first), save=False):
        with pytest.raises(
            RestoreError,
            match=r"testapp\.Score.*tests\.test_compat\.first, tests\.test_compat\.second.*"
            r"supplied \[tests\.test_compat\.first\]",
        ):
            api.restore("testapp.Score")
    assert fingerprint(Score) == before
    assert [name for name, _, _ in CALLS] == ["first", "second"], "nothing ran on decode"


def test_processors_combined_with_byte_codecs(hook_006: Any, memdb_override: Override) -> None:
    Score.objects.bulk_create([Score(player=f"p{i}", points=i) for i in range(100)])
    before = scores()
    with memdb_override(CODECS=["zlib"]):
        (result,) = api.spool("testapp.Score")
        snapshot = stored(Score)
        assert snapshot.codecs == [HOOK, "zlib"]
        assert info("testapp.Score").codecs == (HOOK, "zlib")
        rows = json.loads(zlib.decompress(zlib.decompress(stored_data(snapshot))))
        assert [(r["pk"], r["fields"]["player"], r["fields"]["points"]) for r in rows] == before
        assert result.bytes == snapshot.size == len(stored_data(snapshot))
        Score.objects.all().delete()
    with memdb_override(CODECS=["lzma"]):
        api.restore("testapp.Score")  # the recorded chain, not the settings
    assert scores() == before


def test_processors_that_leave_data_that_is_not_bytes_nor_json_fail_the_spool() -> None:
    Score.objects.create(player="a")
    with connected(appending(to_a_set)):
        with pytest.raises(SpoolError, match=r"testapp\.Score.*neither bytes, str nor JSON"):
            api.spool("testapp.Score")
    assert not PersistentStorage.objects.exists()
