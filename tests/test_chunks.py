"""Snapshots stored in chunks: ``SnapshotChunk`` rows numbered 0..n-1 under one
``PersistentStorage`` row.

With a small ``MEMDB["CHUNK_SIZE"]`` a table spools into several chunks, each made of
``CHUNK_SIZE`` plain bytes run through the codec chain on its own; restore joins them
back exactly, whatever ``CHUNK_SIZE`` says by then. Storage that lost, gained,
renumbered, reordered or damaged a chunk (or whose ``chunk_count`` was edited) fails
to restore with an error naming the table and the reason, leaves storage as it was and
protects the table. Migration 0004 turns an old single-``data`` row into one chunk.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.conf import settings
from django.db import connections, transaction
from django.db.migrations.executor import MigrationExecutor
from django.test.utils import override_settings
from django.utils import timezone

from memdb import api, codecs
from memdb import checks as memdb_checks
from memdb.exceptions import CodecError, RestoreError, SpoolError
from memdb.models import PersistentStorage, SnapshotChunk
from memdb.spooler import FORMAT_VERSION, SNAPSHOT_FORMAT
from tests import codec_custom
from tests.helpers import fingerprint, info, scores, stored, stored_chunks, stored_data
from tests.testapp.models import Legacy, Score

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])

Override = Callable[..., AbstractContextManager[Any]]
SQLITE_HEADER = b"SQLite format 3\x00"
#: Not a divisor of SQLite's page size, so the last chunk is a short one.
CHUNK = 1500
#: Rows enough for an image of several pages (about 40 KB), so a dozen chunks or more.
ROWS = 600
KEY = Fernet.generate_key().decode()


def fill(n: int = ROWS) -> list[tuple[int, str, int]]:
    Score.objects.bulk_create(
        [Score(player=f"player-{i:04d}-{'x' * (i % 23)}", points=i * 7 % 1000) for i in range(n)]
    )
    return scores()


def chunk_rows(model: type) -> list[tuple[int, int]]:
    """``(number, stored length)`` of each chunk of ``model``'s snapshot, in order."""
    return [(number, len(data)) for number, data in enumerate(stored_chunks(model))]


def check_layout(model: type, result: api.SpoolResult | None = None) -> list[bytes]:
    """The snapshot's chunk rows agree with its header; returns the stored chunks."""
    snapshot = stored(model)
    numbers = list(
        SnapshotChunk.objects.filter(snapshot=snapshot)
        .order_by("number")
        .values_list("number", flat=True)
    )
    chunks = stored_chunks(snapshot)
    assert numbers == list(range(snapshot.chunk_count)) == list(range(len(chunks)))
    data = b"".join(chunks)
    assert snapshot.size == len(data)
    assert snapshot.checksum == hashlib.sha256(data).hexdigest()
    if result is not None:
        assert (result.chunks, result.bytes, result.generation) == (
            snapshot.chunk_count,
            snapshot.size,
            snapshot.generation,
        )
    return chunks


def image_rows(image: bytes, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(":memory:")
    try:
        conn.deserialize(image)
        return conn.execute(f'SELECT id, player, points FROM "{table}" ORDER BY id').fetchall()
    finally:
        conn.close()


@pytest.fixture
def small_chunks(memdb_override: Override) -> Iterator[None]:
    with memdb_override(CHUNK_SIZE=CHUNK):
        yield


# -- layout and round trips -----------------------------------------------------------


@pytest.mark.usefixtures("small_chunks")
def test_a_table_spools_into_numbered_chunks_of_chunk_size_plain_bytes() -> None:
    before = fill()
    (result,) = api.spool("testapp.Score")

    chunks = check_layout(Score, result)
    image = b"".join(chunks)
    n = len(chunks)
    assert n == -(-len(image) // CHUNK) > 10, f"{len(image)} bytes in {n} chunks"
    assert [len(c) for c in chunks[:-1]] == [CHUNK] * (n - 1)
    assert 0 < len(chunks[-1]) < CHUNK, "1500 does not divide a whole number of pages"
    assert image.startswith(SQLITE_HEADER)
    assert image_rows(image, Score._meta.db_table) == before
    assert SnapshotChunk.objects.count() == n, "no chunk rows besides this snapshot's"

    Score.objects.all().delete()
    Score.objects.create(player="only in memory")
    (restored,) = api.restore("testapp.Score")

    assert restored.rows == ROWS and restored.generation == 1
    assert scores() == before


@pytest.mark.parametrize(
    ("chain", "keys", "decode"),
    [
        (["zlib"], [], zlib.decompress),
        (["fernet"], [KEY], lambda data: Fernet(KEY).decrypt(data)),
        (["zlib", "fernet"], [KEY], lambda data: zlib.decompress(Fernet(KEY).decrypt(data))),
    ],
    ids=["zlib", "fernet", "zlib-fernet"],
)
def test_the_codec_chain_runs_on_each_chunk_by_itself(
    memdb_override: Override, chain: list[str], keys: list[str], decode: Any
) -> None:
    before = fill()
    with memdb_override(CHUNK_SIZE=CHUNK, CODECS=chain, FERNET_KEYS=keys):
        (result,) = api.spool("testapp.Score")
        chunks = check_layout(Score, result)
        assert stored(Score).codecs == chain
        plain = [decode(chunk) for chunk in chunks]
        assert len(plain) > 10
        assert [len(p) for p in plain[:-1]] == [CHUNK] * (len(plain) - 1)
        assert 0 < len(plain[-1]) < CHUNK
        assert all(not c.startswith(SQLITE_HEADER) for c in chunks), "each chunk is encoded"
        assert image_rows(b"".join(plain), Score._meta.db_table) == before
        Score.objects.all().delete()

        api.restore("testapp.Score")

        assert scores() == before
        assert api.spool("testapp.Score")[0].unchanged


@pytest.mark.parametrize("chunk_size", [1024, 4096, 64 * 1024])
def test_restore_does_not_depend_on_the_chunk_size_it_is_run_with(
    memdb_override: Override, chunk_size: int
) -> None:
    """A snapshot spooled with one CHUNK_SIZE restores under another (bigger or smaller),
    and one spooled with the default (one chunk) restores under a small one."""
    before = fill()
    with memdb_override(CHUNK_SIZE=chunk_size, CODECS=["zlib"]):
        api.spool("testapp.Score")
    count = stored(Score).chunk_count
    assert count > 1 if chunk_size < 8192 else count == 1
    Score.objects.all().delete()
    with memdb_override(CHUNK_SIZE=CHUNK):
        api.restore("testapp.Score")
    assert scores() == before

    api.discard("testapp.Score")
    api.spool("testapp.Score")  # the default CHUNK_SIZE, 4 MiB: one chunk
    assert stored(Score).chunk_count == 1
    Score.objects.all().delete()
    with memdb_override(CHUNK_SIZE=1024):
        api.restore("testapp.Score")
    assert scores() == before


@pytest.mark.usefixtures("small_chunks")
def test_a_new_generation_replaces_every_chunk_of_the_old_one() -> None:
    """Spools that grow and shrink the table leave only the current snapshot's chunks."""
    before = fill()
    (big,) = api.spool("testapp.Score")
    Score.objects.filter(pk__gt=before[10][0]).delete()
    (small,) = api.spool("testapp.Score")

    assert small.generation == big.generation + 1
    assert 0 < small.chunks < big.chunks
    check_layout(Score, small)
    assert SnapshotChunk.objects.count() == small.chunks
    assert set(SnapshotChunk.objects.values_list("snapshot_id", flat=True)) == {stored(Score).pk}
    (unchanged,) = api.spool("testapp.Score")
    assert unchanged.unchanged and unchanged.chunks == small.chunks

    fill(ROWS)
    (again,) = api.spool("testapp.Score")
    check_layout(Score, again)
    assert SnapshotChunk.objects.count() == again.chunks > small.chunks

    assert api.discard("testapp.Score") == 1
    assert not SnapshotChunk.objects.exists(), "discard deletes the chunks too"


@pytest.mark.usefixtures("small_chunks")
def test_other_tables_keep_their_chunks_when_one_table_spools() -> None:
    fill()
    Legacy.objects.bulk_create([Legacy(text=f"legacy {i} " * 20) for i in range(100)])
    api.spool("testapp.Score", "testapp.Legacy")
    assert stored(Legacy).chunk_count > 1, "Legacy is stored in several chunks too"
    legacy = fingerprint(Legacy)

    Score.objects.create(player="new")
    api.spool("testapp.Score")

    assert fingerprint(Legacy) == legacy
    Legacy.objects.all().delete()
    api.restore("testapp.Legacy")
    assert Legacy.objects.count() == 100


@pytest.mark.usefixtures("small_chunks")
def test_a_codec_failing_half_way_through_the_chunks_stores_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The header and the chunks are written in one transaction: a failure on the third
    chunk leaves the previous generation whole, and no stray chunk rows."""
    monkeypatch.setattr(codecs, "_registry", dict(codecs._registry))
    calls = {"encode": 0}

    class FailsOnThirdChunk(codec_custom.Xor):
        name = "tests-fails-on-third-chunk"

        def encode(self, data: bytes) -> bytes:
            calls["encode"] += 1
            if calls["encode"] == 3:
                raise ValueError("third chunk refused")
            return super().encode(data)

    codecs.register(FailsOnThirdChunk())
    before = fill()
    api.spool("testapp.Score")
    kept = fingerprint(Score)
    chunk_ids = set(SnapshotChunk.objects.values_list("pk", flat=True))
    Score.objects.create(player="newer")

    with override_settings(
        MEMDB={**settings.MEMDB, "CHUNK_SIZE": CHUNK, "CODECS": [FailsOnThirdChunk.name]}
    ):
        with pytest.raises((CodecError, SpoolError), match=r"testapp\.Score.*third chunk refused"):
            api.spool("testapp.Score")

    assert calls["encode"] == 3
    assert fingerprint(Score) == kept
    assert set(SnapshotChunk.objects.values_list("pk", flat=True)) == chunk_ids
    assert PersistentStorage.objects.count() == 1
    assert info("testapp.Score").dirty
    Score.objects.all().delete()
    api.restore("testapp.Score")
    assert scores() == before


def test_scratch_files_are_removed_after_spool_and_restore(
    memdb_override: Override, tmp_path: Path
) -> None:
    before = fill()
    with memdb_override(CHUNK_SIZE=CHUNK, TEMP_DIR=str(tmp_path)):
        api.spool("testapp.Score")
        assert list(tmp_path.iterdir()) == []
        Score.objects.all().delete()
        api.restore("testapp.Score")
        assert list(tmp_path.iterdir()) == []
        assert scores() == before
        SnapshotChunk.objects.filter(snapshot=stored(Score), number=3).delete()
        with pytest.raises(RestoreError):
            api.restore("testapp.Score")
        assert list(tmp_path.iterdir()) == [], "a failed restore leaves no scratch file"


# -- damaged storage ------------------------------------------------------------------


def drop_chunk(number: int) -> str:
    SnapshotChunk.objects.filter(snapshot=stored(Score), number=number).delete()
    return "truncated"


def add_chunk(number: int) -> str:
    SnapshotChunk.objects.create(snapshot=stored(Score), number=number, data=b"\x00" * CHUNK)
    return "truncated"


def set_chunk_count(count: int) -> str:
    PersistentStorage.objects.filter(pk=stored(Score).pk).update(chunk_count=count)
    return "truncated"


def renumber_chunk(old: int, new: int) -> str:
    """A chunk moved out of 0..n-1: as many rows as chunk_count says, one number missing."""
    SnapshotChunk.objects.filter(snapshot=stored(Score), number=old).update(number=new)
    return f"missing chunk {old}"


def swap_chunks(a: int, b: int) -> str:
    """Two chunks in each other's place: every byte is there, in the wrong order."""
    chunks = SnapshotChunk.objects.filter(snapshot=stored(Score))
    with transaction.atomic():
        chunks.filter(number=a).update(number=10_000)
        chunks.filter(number=b).update(number=a)
        chunks.filter(number=10_000).update(number=b)
    return "checksum"


def flip_byte(number: int) -> str:
    chunk = SnapshotChunk.objects.get(snapshot=stored(Score), number=number)
    data = bytearray(bytes(chunk.data))
    data[len(data) // 2] ^= 0xFF
    SnapshotChunk.objects.filter(pk=chunk.pk).update(data=bytes(data))
    return "checksum"


DAMAGE: dict[str, Callable[[int], str]] = {
    "missing middle chunk": lambda n: drop_chunk(n // 2),
    "missing last chunk": lambda n: drop_chunk(n - 1),
    "missing first chunk": lambda n: drop_chunk(0),
    "extra chunk": lambda n: add_chunk(n),
    "chunk_count one less": lambda n: set_chunk_count(n - 1),
    "chunk_count one more": lambda n: set_chunk_count(n + 1),
    "chunk_count zero": lambda n: set_chunk_count(0),
    "chunk renumbered past the end": lambda n: renumber_chunk(n // 2, n + 5),
    "chunks swapped": lambda n: swap_chunks(1, n // 2),
    "corrupted middle chunk": lambda n: flip_byte(n // 2),
    "corrupted last chunk": lambda n: flip_byte(n - 1),
}


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_chunks_fail_the_restore_and_leave_everything_as_it_was(damage: str) -> None:
    fill()
    Legacy.objects.create(text="kept")
    api.spool("testapp.Score", "testapp.Legacy")
    count = stored(Score).chunk_count
    assert count > 10
    reason = DAMAGE[damage](count)
    before = fingerprint(Score)
    total_chunks = SnapshotChunk.objects.count()
    Score.objects.all().delete()
    Score.objects.create(player="in memory only")
    in_memory = scores()
    Legacy.objects.all().delete()

    with pytest.raises(RestoreError) as excinfo:
        api.restore()

    message = str(excinfo.value)
    assert re.search(rf"testapp\.Score\b.*{reason}", message), message
    if reason == "truncated":
        assert re.search(r"generation 1\).*\d+ of its \d+ chunks", message), message
    assert set(excinfo.value.errors) == {"testapp.Score"}
    assert "testapp.Legacy" in [r.label for r in excinfo.value.results]
    assert list(Legacy.objects.values_list("text", flat=True)) == ["kept"]
    assert fingerprint(Score) == before, "a failed restore changes nothing in storage"
    assert SnapshotChunk.objects.count() == total_chunks
    table = info("testapp.Score")
    assert table.restore_state == "failed"
    assert reason in (table.restore_error or "")
    assert scores() == in_memory, "a failed restore leaves the memory table as it was"

    Score.objects.create(player="more")
    with pytest.raises(SpoolError, match=r"testapp\.Score.*failed to restore"):
        api.spool("testapp.Score")
    with pytest.raises(SpoolError):
        api.flush(raise_errors=True)
    assert fingerprint(Score) == before, "the protected snapshot is kept"

    # Discarding the broken snapshot is the way out; the table spools again.
    assert api.discard("testapp.Score") == 1
    assert not SnapshotChunk.objects.filter(snapshot_id=before[0]).exists()
    (result,) = api.spool("testapp.Score")
    assert result.generation == 1 and result.rows == 2
    check_layout(Score, result)


@pytest.mark.parametrize(
    ("chain", "keys", "codec"),
    [(["zlib"], [], "zlib"), (["fernet"], [KEY], "fernet")],
    ids=["zlib", "fernet"],
)
def test_a_damaged_middle_chunk_behind_a_valid_checksum_is_caught_by_its_codec(
    memdb_override: Override, chain: list[str], keys: list[str], codec: str
) -> None:
    """Only the codec can notice: the error names the table and the codec."""
    fill()
    with memdb_override(CHUNK_SIZE=CHUNK, CODECS=chain, FERNET_KEYS=keys):
        api.spool("testapp.Score")
        snapshot = stored(Score)
        middle = SnapshotChunk.objects.get(snapshot=snapshot, number=snapshot.chunk_count // 2)
        data = bytearray(bytes(middle.data))
        data[len(data) // 2] ^= 0xFF
        SnapshotChunk.objects.filter(pk=middle.pk).update(data=bytes(data))
        joined = stored_data(snapshot)
        PersistentStorage.objects.filter(pk=snapshot.pk).update(
            checksum=hashlib.sha256(joined).hexdigest()
        )
        before = fingerprint(Score)
        Score.objects.all().delete()

        with pytest.raises(RestoreError, match=rf"testapp\.Score.*'{codec}'"):
            api.restore("testapp.Score")

    assert fingerprint(Score) == before
    assert info("testapp.Score").restore_state == "failed"
    assert not Score.objects.exists()


# -- migration 0004: a single-``data`` row becomes one chunk --------------------------------

BEFORE_CHUNKS = ("memdb", "0003_snapshot_key_ids")


class Migrations:
    """Moves the default database's schema back and forth; ``forward`` is idempotent."""

    def __init__(self) -> None:
        self.connection = connections["default"]
        self.leaves = MigrationExecutor(self.connection).loader.graph.leaf_nodes()

    def back(self) -> Any:
        """Migrate memdb back to 0003; return the historical apps of that state."""
        executor = MigrationExecutor(self.connection)
        executor.migrate([BEFORE_CHUNKS])
        return executor.loader.project_state(BEFORE_CHUNKS).apps

    def forward(self) -> None:
        executor = MigrationExecutor(self.connection)
        executor.migrate(self.leaves)


@pytest.fixture
def migrations() -> Iterator[Migrations]:
    moves = Migrations()
    try:
        yield moves
    finally:
        moves.forward()  # whatever happened in the test, the schema is current again


def old_row(apps: Any, model: type, image: bytes, chain: list[str], rows: int) -> Any:
    """Insert a snapshot row as 0003 stored it: all its bytes in ``data``."""
    now = timezone.now()
    return apps.get_model("memdb", "PersistentStorage").objects.create(
        app_label=model._meta.app_label,
        model_name=model._meta.object_name,
        kind="snapshot",
        format=SNAPSHOT_FORMAT,
        format_version=FORMAT_VERSION,
        codecs=chain,
        key_ids=[],
        row_count=rows,
        size=len(image),
        checksum=hashlib.sha256(image).hexdigest(),
        generation=1,
        written_by="before 0004",
        created_at=now,
        updated_at=now,
        data=image,
    )


def test_migration_0004_turns_an_old_data_row_into_one_chunk(
    migrations: Migrations, memdb_override: Override
) -> None:
    """An old row's bytes become its chunk 0; checksum and size still hold; it restores,
    even with a CHUNK_SIZE smaller than that chunk, and the table spools on from it."""
    before = fill()
    Legacy.objects.create(text="from before 0004")
    api.spool("testapp.Score", "testapp.Legacy")  # the default CHUNK_SIZE: one chunk each
    score_image = stored_data(Score)
    legacy_image = zlib.compress(stored_data(Legacy))
    assert len(score_image) > 10 * CHUNK
    api.discard("testapp.Score", "testapp.Legacy")
    assert not PersistentStorage.objects.exists()

    apps = migrations.back()
    score_pk = old_row(apps, Score, score_image, [], ROWS).pk
    legacy_pk = old_row(apps, Legacy, legacy_image, ["zlib"], 1).pk
    migrations.forward()

    for model, pk, image, chain in [
        (Score, score_pk, score_image, []),
        (Legacy, legacy_pk, legacy_image, ["zlib"]),
    ]:
        snapshot = stored(model)
        assert (snapshot.pk, snapshot.chunk_count, snapshot.codecs) == (pk, 1, chain)
        assert stored_chunks(snapshot) == [image]
        assert (snapshot.size, snapshot.checksum) == (
            len(image),
            hashlib.sha256(image).hexdigest(),
        )
        check_layout(model)

    Score.objects.all().delete()
    Legacy.objects.all().delete()
    with memdb_override(CHUNK_SIZE=1024):
        results = api.restore("testapp.Score", "testapp.Legacy")
    assert {r.label: (r.rows, r.generation) for r in results} == {
        "testapp.Score": (ROWS, 1),
        "testapp.Legacy": (1, 1),
    }
    assert scores() == before
    assert list(Legacy.objects.values_list("text", flat=True)) == ["from before 0004"]
    Legacy.objects.create(text="after 0004")
    with memdb_override(CHUNK_SIZE=CHUNK):
        (respooled,) = api.spool("testapp.Legacy")
    assert respooled.generation == 2
    check_layout(Legacy, respooled)


def test_migration_0004_backward_joins_the_chunks_into_data(
    migrations: Migrations, memdb_override: Override
) -> None:
    """Unapplying 0004 with a chunked snapshot stored gives the old ``data`` column the
    chunks joined in order (a plain snapshot: that is its whole image); applying it again
    makes that one chunk, which restores."""
    before = fill()
    with memdb_override(CHUNK_SIZE=CHUNK):
        (chunked,) = api.spool("testapp.Score")
    assert chunked.chunks > 10
    joined = stored_data(Score)
    row = stored(Score)

    apps = migrations.back()
    moved = apps.get_model("memdb", "PersistentStorage").objects.get(pk=row.pk)
    assert bytes(moved.data) == joined
    assert (moved.size, moved.checksum) == (row.size, row.checksum)
    assert image_rows(bytes(moved.data), Score._meta.db_table) == before
    migrations.forward()

    snapshot = stored(Score)
    assert snapshot.chunk_count == 1 and stored_chunks(snapshot) == [joined]
    assert (snapshot.size, snapshot.checksum) == (row.size, row.checksum)
    Score.objects.all().delete()
    api.restore("testapp.Score")
    assert scores() == before


# -- the setting ----------------------------------------------------------------------------


@pytest.mark.django_db(databases=[])
@pytest.mark.parametrize("value", [0, 1023, -4096, 4096.0, "4096", True, None])
def test_e012_chunk_size_must_be_a_whole_number_of_bytes_of_at_least_1024(value: Any) -> None:
    with override_settings(MEMDB={**settings.MEMDB, "CHUNK_SIZE": value}):
        messages = memdb_checks.check_settings()
    (error,) = [m for m in messages if m.id == "memdb.E012"]
    assert repr(value) in error.msg and "CHUNK_SIZE" in (error.hint or "")
    assert [m.id for m in messages] == ["memdb.E012"]


@pytest.mark.django_db(databases=[])
@pytest.mark.parametrize("value", [1024, CHUNK, 4 * 1024 * 1024])
def test_e012_valid_chunk_sizes_pass(value: int) -> None:
    with override_settings(MEMDB={**settings.MEMDB, "CHUNK_SIZE": value}):
        assert memdb_checks.check_settings() == []
