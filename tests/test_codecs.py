"""Codec pipelines: one contract run over every built-in codec and two custom ones.

``CodecContract`` holds the tests; each ``Test<Codec>`` class below runs them with its
chain in ``MEMDB["CODECS"]``: round trips of an empty, a small and a large table, bytes
really encoded, and each failure mode (damaged bytes behind a valid checksum, a codec
that is no longer configured). Fernet's keys, the registry, import paths read from
storage, the system checks and key rotation across real restarts follow.
"""

from __future__ import annotations

import ast
import bz2
import gzip
import hashlib
import json
import lzma
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.test.utils import override_settings
from django.utils import timezone

from memdb import api, codecs
from memdb import checks as memdb_checks
from memdb.exceptions import CodecError, RestoreError, SpoolError
from memdb.models import PersistentStorage, SnapshotChunk
from tests import codec_custom
from tests.children import child_env, read, run
from tests.helpers import (
    create_stored,
    fingerprint,
    info,
    replace_data,
    scores,
    stored,
    stored_chunks,
    stored_data,
)
from tests.test_fields import ROWS, field_values
from tests.testapp.models import AllTypes, Legacy, Score

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])

Override = Callable[..., AbstractContextManager[Any]]
SQLITE_HEADER = b"SQLite format 3\x00"
KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
KEY_C = Fernet.generate_key().decode()
LARGE = 20_000


def damage_keeping_checksum(model: type) -> None:
    """Flip a byte in the middle of the stored data and make checksum and size agree,
    so only the codec can notice."""
    snapshot = stored(model)
    assert snapshot.chunk_count == 1, "a small table is one chunk"
    data = bytearray(stored_data(snapshot))
    data[len(data) // 2] ^= 0xFF
    replace_data(snapshot, bytes(data), fix_checksum=True)


def unxor(data: bytes) -> bytes:
    """Undo ``codec_custom.Xor`` without using it."""
    assert data[:4] == codec_custom.MAGIC
    return bytes(b ^ codec_custom.MASK for b in data[8:])


# -- the contract ----------------------------------------------------------------------


class CodecContract:
    """Every codec, run as ``MEMDB["CODECS"] = chain``, must pass these."""

    chain: ClassVar[list[str]]
    keys: ClassVar[list[str]] = []
    #: A large repetitive table shrinks to less than half.
    compresses: ClassVar[bool] = False
    #: Restore still works once the codec is no longer in the settings.
    readable_after_settings_change: ClassVar[bool] = True

    @staticmethod
    def reference_decode(data: bytes) -> bytes:
        """Undo the codec with the library it is built on, not with memdb."""
        raise NotImplementedError

    @property
    def codec(self) -> str:
        return self.chain[-1]

    @pytest.fixture(autouse=True)
    def codec_settings(self, memdb_override: Override) -> Iterator[None]:
        with memdb_override(CODECS=self.chain, FERNET_KEYS=self.keys):
            yield

    def check_recorded(self, model: type) -> bytes:
        """The chain is on the snapshot and in ``tables()``; returns the decoded image
        (the chain runs on each chunk by itself, so each is undone by itself)."""
        snapshot = stored(model)
        assert snapshot.codecs == self.chain
        assert info(model._meta.label).codecs == tuple(self.chain)
        chunks = stored_chunks(snapshot)
        assert snapshot.chunk_count == len(chunks) >= 1
        data = b"".join(chunks)
        assert snapshot.size == len(data)
        assert snapshot.checksum == hashlib.sha256(data).hexdigest()
        assert not data.startswith(SQLITE_HEADER), "the stored bytes are the plain image"
        image = b"".join(self.reference_decode(chunk) for chunk in chunks)
        assert image.startswith(SQLITE_HEADER)
        return image

    def test_empty_table_round_trip(self) -> None:
        (result,) = api.spool("testapp.Score")
        assert result.rows == 0
        self.check_recorded(Score)
        assert stored(Score).row_count == 0
        Score.objects.create(player="added after the spool")

        (restored,) = api.restore("testapp.Score")

        assert restored.rows == 0
        assert not Score.objects.exists()
        assert info("testapp.Score").restore_state == "ok"

    def test_small_table_of_every_field_type_round_trip(self) -> None:
        created = [AllTypes.objects.create(**row) for row in ROWS]
        before = [field_values(AllTypes.objects.get(pk=obj.pk)) for obj in created]
        (result,) = api.spool("testapp.AllTypes")
        assert result.rows == len(ROWS)
        self.check_recorded(AllTypes)
        AllTypes.objects.all().delete()

        api.restore("testapp.AllTypes")

        assert [field_values(obj) for obj in AllTypes.objects.order_by("pk")] == before

    def test_large_table_round_trip_and_the_bytes_are_encoded(self) -> None:
        Score.objects.bulk_create(
            [Score(player=f"player-{i % 10}", points=i % 100) for i in range(LARGE)]
        )
        before = scores()
        (result,) = api.spool("testapp.Score")
        assert result.rows == LARGE
        image = self.check_recorded(Score)
        data = stored_data(Score)
        assert data != image
        if self.compresses:
            assert len(data) * 2 < len(image), f"{len(data)} bytes from {len(image)}"
        assert result.bytes == len(data)
        Score.objects.all().delete()

        (restored,) = api.restore("testapp.Score")

        assert restored.rows == LARGE
        assert scores() == before

    def test_damaged_bytes_behind_a_valid_checksum(self) -> None:
        """The codec detects the damage; the error names the table and the codec; the
        snapshot stays as it is; the table is protected; the other table restores."""
        Score.objects.bulk_create([Score(player=f"s{i}", points=i) for i in range(50)])
        Legacy.objects.create(text="kept")
        api.spool("testapp.Score", "testapp.Legacy")
        damage_keeping_checksum(Score)
        before = fingerprint(Score)
        Score.objects.create(player="in memory only")
        in_memory = scores()
        Legacy.objects.all().delete()

        with pytest.raises(RestoreError) as excinfo:
            api.restore()

        message = str(excinfo.value)
        assert re.search(rf"testapp\.Score\b.*'{re.escape(self.codec)}'", message), message
        assert set(excinfo.value.errors) == {"testapp.Score"}
        assert [r.label for r in excinfo.value.results] == ["testapp.Legacy"]
        assert list(Legacy.objects.values_list("text", flat=True)) == ["kept"]
        assert info("testapp.Legacy").restore_state == "ok"
        assert fingerprint(Score) == before
        table = info("testapp.Score")
        assert table.restore_state == "failed"
        assert self.codec in (table.restore_error or "")
        assert scores() == in_memory, "a failed restore leaves the memory table as it was"
        with pytest.raises(SpoolError, match=r"testapp\.Score"):
            api.spool("testapp.Score")
        assert fingerprint(Score) == before

    def test_restore_uses_the_recorded_chain_not_the_settings(
        self, memdb_override: Override
    ) -> None:
        Score.objects.bulk_create([Score(player=f"r{i}", points=i) for i in range(30)])
        before = scores()
        api.spool("testapp.Score")
        Score.objects.all().delete()
        other = ["zlib"] if self.chain != ["zlib"] else ["lzma"]

        with memdb_override(CODECS=other, FERNET_KEYS=self.keys):
            if self.readable_after_settings_change:
                api.restore("testapp.Score")
                assert scores() == before
                return
            with pytest.raises(RestoreError, match=rf"testapp\.Score.*'{re.escape(self.codec)}'"):
                api.restore("testapp.Score")
        api.restore("testapp.Score")  # configured again
        assert scores() == before


class TestZlib(CodecContract):
    chain = ["zlib"]
    compresses = True
    reference_decode = staticmethod(zlib.decompress)


class TestGzip(CodecContract):
    chain = ["gzip"]
    compresses = True
    reference_decode = staticmethod(gzip.decompress)


class TestBz2(CodecContract):
    chain = ["bz2"]
    compresses = True
    reference_decode = staticmethod(bz2.decompress)


class TestLzma(CodecContract):
    chain = ["lzma"]
    compresses = True
    reference_decode = staticmethod(lzma.decompress)


class TestFernet(CodecContract):
    chain = ["fernet"]
    keys = [KEY_A]

    @staticmethod
    def reference_decode(data: bytes) -> bytes:
        return Fernet(KEY_A).decrypt(data)


class TestCompressThenEncrypt(CodecContract):
    chain = ["lzma", "fernet"]
    keys = [KEY_A]
    compresses = True

    @staticmethod
    def reference_decode(data: bytes) -> bytes:
        return lzma.decompress(Fernet(KEY_A).decrypt(data))


class TestCustomByImportPath(CodecContract):
    """A codec class named by import path. It is only ever imported while the settings
    (or a model) configure it, so dropping it from the settings makes its snapshots
    unreadable, with an error that says so, until it is configured again."""

    chain = ["tests.codec_custom.Xor"]
    readable_after_settings_change = False
    reference_decode = staticmethod(unxor)


class TestCustomRegistered(CodecContract):
    """A codec registered by name: readable whatever the settings say."""

    chain = ["tests-registered-xor"]
    reference_decode = staticmethod(unxor)

    @pytest.fixture(autouse=True)
    def registered(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(codecs, "_registry", dict(codecs._registry))
        codec = codec_custom.Xor()
        codec.name = "tests-registered-xor"
        codecs.register(codec)


# -- fernet keys ---------------------------------------------------------------------------


def assert_no_key_in(message: str) -> None:
    for key in (KEY_A, KEY_B, KEY_C):
        assert key not in message and key[:12] not in message, "a key leaked into a message"


def test_fernet_wrong_key_names_the_table_and_the_codec(memdb_override: Override) -> None:
    Score.objects.create(player="secret", points=1)
    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[KEY_A]):
        api.spool("testapp.Score")
    before = fingerprint(Score)
    Score.objects.all().delete()

    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[KEY_C]):
        with pytest.raises(RestoreError, match=r"testapp\.Score.*'fernet'.*FERNET_KEYS") as exc:
            api.restore("testapp.Score")
    assert_no_key_in(str(exc.value))
    assert fingerprint(Score) == before
    assert info("testapp.Score").restore_state == "failed"
    assert not Score.objects.exists()

    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[KEY_C, KEY_A]):
        api.restore("testapp.Score")
    assert scores()[0][1:] == ("secret", 1)


def test_fernet_without_keys_is_a_clear_error_on_restore_and_spool(
    memdb_override: Override,
) -> None:
    Score.objects.create(player="a", points=1)
    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[KEY_A]):
        api.spool("testapp.Score")
    before = fingerprint(Score)

    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[]):
        with pytest.raises(RestoreError, match=r"testapp\.Score.*'fernet'.*at least one key"):
            api.restore("testapp.Score")
        assert fingerprint(Score) == before
        api.discard("testapp.Score")  # so the spool below gets as far as the codec
        Score.objects.create(player="b", points=2)
        with pytest.raises((CodecError, SpoolError), match=r"testapp\.Score.*'fernet'.*KEYS"):
            api.spool("testapp.Score")
    assert not PersistentStorage.objects.exists() and not SnapshotChunk.objects.exists(), (
        "a failed spool stores nothing"
    )


def test_fernet_invalid_key_is_a_clear_error_that_does_not_show_it(
    memdb_override: Override,
) -> None:
    Score.objects.create(player="a")
    bad = "this-is-not-a-fernet-key"
    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[bad]):
        with pytest.raises((CodecError, SpoolError), match=r"testapp\.Score.*invalid key") as exc:
            api.spool("testapp.Score")
    assert bad not in str(exc.value)
    assert not PersistentStorage.objects.exists() and not SnapshotChunk.objects.exists()


def test_fernet_key_rotation_in_process(memdb_override: Override) -> None:
    """Spool with [A]; restore with [B, A]; the next spool, though nothing changed,
    re-encrypts with B, which then reads it alone."""
    Score.objects.bulk_create([Score(player=f"k{i}", points=i) for i in range(10)])
    before = scores()
    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[KEY_A]):
        api.spool("testapp.Score")
    Fernet(KEY_A).decrypt(stored_data(Score))
    Score.objects.all().delete()

    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[KEY_B, KEY_A]):
        api.restore("testapp.Score")
        assert scores() == before
        (result,) = api.spool("testapp.Score")
    assert not result.unchanged and result.generation == 2

    token = stored_data(Score)
    assert Fernet(KEY_B).decrypt(token).startswith(SQLITE_HEADER)
    with pytest.raises(InvalidToken):
        Fernet(KEY_A).decrypt(token)
    Score.objects.all().delete()
    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[KEY_B]):
        api.restore("testapp.Score")
    assert scores() == before


def test_an_unchanged_encrypted_table_is_rewritten_only_for_a_new_key(
    memdb_override: Override,
) -> None:
    """Regression: every explicit spool rewrote a fernet table, so a memdb_spool command
    beside a server bumped the generation and the server's next spool met a conflict."""
    Score.objects.create(player="a", points=1)
    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[KEY_A]):
        (first,) = api.spool("testapp.Score")
        (again,) = api.spool("testapp.Score")
        key_ids = stored(Score).key_ids
    assert again.unchanged and again.generation == first.generation == 1
    assert len(key_ids) == 1 and key_ids[0].startswith("fernet:")
    assert KEY_A not in key_ids[0]
    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[KEY_A, KEY_B]):
        assert api.spool("testapp.Score")[0].unchanged, "an old key listed second changes nothing"
    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[KEY_B, KEY_A]):
        (rotated,) = api.spool("testapp.Score")
    assert not rotated.unchanged and rotated.generation == 2
    assert stored(Score).key_ids != key_ids


def store_json_snapshot(model: type, fields: dict[str, Any]) -> None:
    """One row stored as a ``django-json`` snapshot with no processors."""
    row = {"model": model._meta.label_lower, "pk": 1, "fields": fields}
    data = json.dumps([row]).encode()
    create_stored(
        app_label=model._meta.app_label,
        model_name=model.__name__,
        format="django-json",
        format_version=1,
        codecs=[],
        row_count=1,
        generation=1,
        created_at=timezone.now(),
        updated_at=timezone.now(),
        data=data,
    )


def test_a_json_snapshot_missing_a_field_without_default_fails_naming_it() -> None:
    """The 0.0.6 path maps an old snapshot onto the model like the default path: a field
    added since, with neither default nor null, is a clear error, not a NULL or ''."""
    store_json_snapshot(Score, {"player": "old"})
    api.restore("testapp.Score")
    assert scores() == [(1, "old", 0)], "points has a default (0)"

    store_json_snapshot(AllTypes, {"char": "c"})
    with pytest.raises(RestoreError, match=r"testapp\.AllTypes: field 'small' was added"):
        api.restore("testapp.AllTypes")


def test_fernet_without_cryptography_is_a_clear_error(
    memdb_override: Override, monkeypatch: pytest.MonkeyPatch
) -> None:
    Score.objects.create(player="a")
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)
    with memdb_override(CODECS=["fernet"], FERNET_KEYS=[KEY_A]):
        with pytest.raises((CodecError, SpoolError), match=r"testapp\.Score.*cryptography"):
            api.spool("testapp.Score")
    assert not PersistentStorage.objects.exists() and not SnapshotChunk.objects.exists()


def test_a_model_chain_overrides_the_settings(
    memdb_override: Override, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Score, "memdb_codecs", ["lzma", "fernet"], raising=False)
    Score.objects.create(player="a", points=1)
    Legacy.objects.create(text="t")
    with memdb_override(CODECS=["zlib"], FERNET_KEYS=[KEY_A]):
        api.spool("testapp.Score", "testapp.Legacy")
    assert stored(Score).codecs == ["lzma", "fernet"]
    assert stored(Legacy).codecs == ["zlib"]
    image = lzma.decompress(Fernet(KEY_A).decrypt(stored_data(Score)))
    assert image.startswith(SQLITE_HEADER)


# -- unknown, broken and untrusted codecs ---------------------------------------------------


def test_unknown_codec_in_settings_fails_the_spool_naming_it(memdb_override: Override) -> None:
    Score.objects.create(player="a", points=1)
    api.spool("testapp.Score")
    before = fingerprint(Score)
    Score.objects.create(player="b", points=2)

    with memdb_override(CODECS=["zlib", "snappy"]):
        with pytest.raises((CodecError, SpoolError), match=r"testapp\.Score.*'snappy'"):
            api.spool("testapp.Score")
    assert fingerprint(Score) == before


def test_unknown_import_path_in_settings_fails_the_spool_naming_it(
    memdb_override: Override,
) -> None:
    Score.objects.create(player="a")
    with memdb_override(CODECS=["tests.codec_custom.NoSuchCodec"]):
        with pytest.raises(
            (CodecError, SpoolError), match=r"testapp\.Score.*tests\.codec_custom\.NoSuchCodec"
        ):
            api.spool("testapp.Score")
    assert not PersistentStorage.objects.exists() and not SnapshotChunk.objects.exists()


def test_custom_codec_whose_decode_raises_is_named(memdb_override: Override) -> None:
    Score.objects.create(player="a")
    with memdb_override(CODECS=["tests.codec_custom.BrokenDecode"]):
        api.spool("testapp.Score")
        before = fingerprint(Score)
        with pytest.raises(
            RestoreError,
            match=r"testapp\.Score.*'tests\.codec_custom\.BrokenDecode'.*BrokenDecode always",
        ):
            api.restore("testapp.Score")
    assert fingerprint(Score) == before
    assert info("testapp.Score").restore_state == "failed"


def test_custom_codec_whose_encode_raises_keeps_the_previous_snapshot(
    memdb_override: Override,
) -> None:
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    before = fingerprint(Score)
    Score.objects.create(player="b")
    with memdb_override(CODECS=["tests.codec_custom.BrokenEncode"]):
        with pytest.raises(
            (CodecError, SpoolError), match=r"testapp\.Score.*'tests\.codec_custom\.BrokenEncode'"
        ):
            api.spool("testapp.Score")
    assert fingerprint(Score) == before


def test_an_import_path_read_from_storage_is_never_imported() -> None:
    """Regression guard for "restore never executes anything that came from storage":
    a chain naming a module the settings do not configure fails without importing it
    (the trap module's codec would decode, so only the refusal makes this fail)."""
    os.environ.pop("MEMDB_CODEC_TRAP_IMPORTED", None)
    assert "tests.codec_trap" not in sys.modules
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    PersistentStorage.objects.update(codecs=["tests.codec_trap.Trap"])
    before = fingerprint(Score)

    with pytest.raises(
        RestoreError, match=r"testapp\.Score.*'tests\.codec_trap\.Trap'.*never imported"
    ):
        api.restore("testapp.Score")

    assert "tests.codec_trap" not in sys.modules
    assert "MEMDB_CODEC_TRAP_IMPORTED" not in os.environ
    assert fingerprint(Score) == before
    assert info("testapp.Score").restore_state == "failed"


def test_a_processor_name_read_from_storage_is_never_imported() -> None:
    """The same for a 0.0.6 processor recorded on a ``django-json`` snapshot."""
    assert "tests.codec_trap" not in sys.modules
    Score.objects.create(player="a")
    api.spool("testapp.Score")
    PersistentStorage.objects.update(
        format="django-json", codecs=["processor:tests.codec_trap.compress"]
    )

    with pytest.raises(RestoreError, match=r"testapp\.Score.*tests\.codec_trap\.compress"):
        api.restore("testapp.Score")

    assert "tests.codec_trap" not in sys.modules
    assert "MEMDB_CODEC_TRAP_IMPORTED" not in os.environ


# -- the registry ----------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A copy of the registry for the test to change."""
    copy = dict(codecs._registry)
    monkeypatch.setattr(codecs, "_registry", copy)
    return copy


@pytest.mark.django_db(databases=[])
def test_registry_refuses_a_duplicate_name(registry: dict[str, Any]) -> None:
    for name in ("zlib", "fernet"):
        codec = codec_custom.Xor()
        codec.name = name
        with pytest.raises(CodecError, match=rf"'{name}' is already registered"):
            codecs.register(codec)
    mine = codec_custom.Xor()
    mine.name = "mine"
    assert codecs.register(mine) is mine
    assert codecs.register(mine) is mine, "registering the same codec again is harmless"
    other = codec_custom.Xor()
    other.name = "mine"
    with pytest.raises(CodecError, match="'mine' is already registered"):
        codecs.register(other)
    assert codecs.get_codec("mine") is mine
    assert codecs.get_codec("zlib").decode(zlib.compress(b"x")) == b"x"


@pytest.mark.django_db(databases=[])
def test_registry_refuses_processor_names_and_non_codecs(registry: dict[str, Any]) -> None:
    codec = codec_custom.Xor()
    codec.name = "processor:tests.x"
    with pytest.raises(CodecError, match="may not start with 'processor:'"):
        codecs.register(codec)
    with pytest.raises(CodecError, match="is not a codec"):
        codecs.register(object())  # type: ignore[arg-type]
    assert "processor:tests.x" not in registry


@pytest.mark.django_db(databases=[])
def test_memdb_never_pickles_or_evaluates() -> None:
    """No module of memdb or memdb_api imports pickle, marshal, shelve or dill, or calls
    eval / exec: stored bytes are only ever decoded as data."""
    root = Path(__file__).resolve().parent.parent
    forbidden = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
    found = []
    for path in [*root.glob("memdb/**/*.py"), *root.glob("memdb_api/**/*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                names = [node.func.id]
            else:
                continue
            found += [
                f"{path.relative_to(root)}:{node.lineno}: {name}"
                for name in names
                if name.split(".")[0] in forbidden | {"eval", "exec"}
            ]
    assert found == []


# -- system checks ---------------------------------------------------------------------------


def fernet_check_ids(**keys: Any) -> list[str]:
    with override_settings(MEMDB={**settings.MEMDB, **keys}):
        return sorted(m.id for m in memdb_checks.check_settings() if m.id)


@pytest.mark.django_db(databases=[])
def test_e009_fernet_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fernet_check_ids(CODECS=["zlib", "fernet"]) == [memdb_checks.E009]
    assert fernet_check_ids(CODECS=["fernet"], FERNET_KEYS=[""]) == [memdb_checks.E009]
    monkeypatch.setattr(Score, "memdb_codecs", ["fernet"], raising=False)
    assert fernet_check_ids() == [memdb_checks.E009], "a model's chain counts too"


@pytest.mark.django_db(databases=[])
def test_e010_invalid_key_names_its_position_not_its_value() -> None:
    bad = "not-a-key-at-all"
    with override_settings(
        MEMDB={**settings.MEMDB, "CODECS": ["fernet"], "FERNET_KEYS": [KEY_A, bad]}
    ):
        messages = memdb_checks.check_settings()
    assert [m.id for m in messages] == [memdb_checks.E010]
    assert "FERNET_KEYS'][1]" in messages[0].msg
    assert bad not in messages[0].msg + (messages[0].hint or "")
    # Keys set for a later switch to fernet are checked too.
    assert fernet_check_ids(FERNET_KEYS=[bad]) == [memdb_checks.E010]


@pytest.mark.django_db(databases=[])
def test_e011_fernet_without_cryptography(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)
    assert fernet_check_ids(CODECS=["fernet"], FERNET_KEYS=[KEY_A]) == [memdb_checks.E011]
    assert fernet_check_ids(CODECS=["zlib"], FERNET_KEYS=[KEY_A]) == []


@pytest.mark.django_db(databases=[])
def test_valid_codec_configurations_pass_every_check() -> None:
    assert fernet_check_ids(CODECS=["fernet"], FERNET_KEYS=[KEY_A]) == []
    assert fernet_check_ids(CODECS=["lzma", "fernet"], FERNET_KEYS=[KEY_B, KEY_A]) == []
    assert fernet_check_ids(CODECS=["zlib", "gzip", "bz2", "lzma"]) == []
    assert fernet_check_ids(CODECS=["tests.codec_custom.Xor"]) == []
    assert fernet_check_ids(CODECS="fernet", FERNET_KEYS=KEY_A) == [], "one name, one key"


# -- key rotation across real restarts ------------------------------------------------------

WRITE = """
Score.objects.bulk_create([Score(player=f"r{i}", points=i * 7) for i in range(200)])
(result,) = api.spool("testapp.Score")
report(rows=rows(Score), generation=result.generation)
os._exit(0)
"""

SPOOL_AGAIN = """
seen = rows(Score)
(result,) = api.spool("testapp.Score")
report(rows=seen, generation=result.generation, unchanged=result.unchanged)
os._exit(0)
"""

SNAPSHOT = """
import base64
s = PersistentStorage.objects.get(app_label="testapp", model_name="Score")
data = b"".join(bytes(c.data) for c in s.chunks.order_by("number"))
report(codecs=s.codecs, generation=s.generation, chunks=s.chunk_count,
       data=base64.b64encode(data).decode())
"""


def stored_in_child(env: dict[str, str]) -> dict[str, Any]:
    """The Score snapshot as a child process reads it from the children's database."""
    import base64

    snapshot: dict[str, Any] = run(SNAPSHOT, env)
    snapshot["data"] = base64.b64decode(snapshot["data"])
    return snapshot


def test_key_rotation_across_restarts(default_db: str) -> None:
    """Spool with key A; restart with [B, A]: restore works and the next spool encrypts
    with B; restart with [B] alone: restore works."""
    env_a = child_env(default_db, MEMDB_TEST_CODECS="fernet", MEMDB_TEST_FERNET_KEYS=KEY_A)
    env_ba = {**env_a, "MEMDB_TEST_FERNET_KEYS": f"{KEY_B},{KEY_A}"}
    env_b = {**env_a, "MEMDB_TEST_FERNET_KEYS": KEY_B}

    written = run(WRITE, env_a, migrate=True)
    assert len(written["rows"]) == 200
    first = stored_in_child(env_a)
    assert first["codecs"] == ["fernet"] and first["chunks"] == 1, "one chunk, one token"
    assert Fernet(KEY_A).decrypt(first["data"]).startswith(SQLITE_HEADER)

    rotated = run(SPOOL_AGAIN, env_ba)
    assert rotated["rows"] == written["rows"]
    assert rotated["generation"] == written["generation"] + 1
    assert not rotated["unchanged"]
    second = stored_in_child(env_ba)
    assert second["codecs"] == ["fernet"] and second["chunks"] == 1
    assert Fernet(KEY_B).decrypt(second["data"]).startswith(SQLITE_HEADER)
    with pytest.raises(InvalidToken):
        Fernet(KEY_A).decrypt(second["data"])

    restored = read("Score", env_b)
    assert restored["rows"] == written["rows"]
    assert restored["restore_state"] == "ok"
