"""Each system check id fires on the misconfiguration it names, and only then."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.apps.registry import Apps
from django.conf import settings
from django.core import checks
from django.db import models
from django.test.utils import isolate_apps, override_settings

from memdb import checks as memdb_checks
from memdb.mixins import InMemoryDB, PersistentInMemoryDB
from memdb.registry import memory_models
from tests.server_stores import on_mariadb_server_store
from tests.testapp.models import Hit, Plain


@pytest.fixture(autouse=True, scope="module")
def _server_version_known(django_db_blocker: Any) -> None:
    """On MariaDB's server store, memdb.W004 asks each field's column type, which needs
    the server's version (Django reads it once per connection): read here, so that
    these tests pass alone as well as after others that connected."""
    if on_mariadb_server_store():
        from django.db import connections

        with django_db_blocker.unblock():
            connections[settings.MEMDB.get("ALIAS", "memdb")].data_types  # noqa: B018


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return sorted(m.id for m in messages if m.id)


def all_messages() -> list[checks.CheckMessage]:
    return memdb_checks.check_settings() + memdb_checks.check_models()


@contextmanager
def memdb_settings(**keys: Any) -> Iterator[None]:
    with override_settings(MEMDB={**settings.MEMDB, **keys}):
        yield


@contextmanager
def memory_database(**entry: Any) -> Iterator[None]:
    """Replace the memory alias's DATABASES entry (the checks read settings only)."""
    databases = {**settings.DATABASES, "memdb": {**settings.DATABASES["memdb"], **entry}}
    with warnings.catch_warnings():
        # "Overriding setting DATABASES can lead to unexpected behavior": connections
        # keep their settings, which is what we want here.
        warnings.simplefilter("ignore", UserWarning)
        with override_settings(DATABASES=databases):
            yield


def unfit_for_memory_tables() -> list[str]:
    """On the server store on MariaDB, the memory fields MEMORY tables cannot hold
    (TEXT, BLOB, JSON), found here by field type; elsewhere none."""
    if not on_mariadb_server_store():
        return []
    unfit = ("TextField", "BinaryField", "JSONField")
    return sorted(
        f"{model._meta.label}.{field.name}"
        for model in memory_models()
        for field in model._meta.local_fields
        if field.get_internal_type() in unfit
    )


def database_actions() -> list[str]:
    """On the server store on MariaDB with Django 6.1, the memory keys whose
    ``on_delete`` the database would run (``Recruit``'s); elsewhere none."""
    from django.db.models import deletion

    if not on_mariadb_server_store() or not hasattr(deletion, "DatabaseOnDelete"):
        return []
    return ["testapp.Recruit.coach", "testapp.Recruit.squad"]


def test_the_test_settings_pass_every_check() -> None:
    """Nothing fires, but on MariaDB's server store memdb.W004 for each field that keeps
    its table in InnoDB (the test models have some; tests/test_server_store.py), and
    with Django 6.1 memdb.W005 for each key with a database delete action."""
    for messages in (all_messages(), checks.run_checks(tags=["memdb"])):
        assert [m.id for m in messages if m.id not in (memdb_checks.W004, "memdb.W005")] == []
        named = sorted(
            f"{m.obj.model._meta.label}.{m.obj.name}" for m in messages if m.id == "memdb.W004"
        )
        assert named == unfit_for_memory_tables()
        named = sorted(
            f"{m.obj.model._meta.label}.{m.obj.name}" for m in messages if m.id == "memdb.W005"
        )
        assert named == database_actions()


def test_w005_a_database_delete_action_on_a_mariadb_memory_table() -> None:
    """Django 6.1's DB_CASCADE and DB_SET_NULL on the MariaDB server store: MEMORY tables
    have no foreign keys, the database would never run them. Not before Django 6.1,
    nor on another store."""
    from django.db.models import deletion

    from tests.testapp.models import Recruit

    warnings = memdb_checks._database_action_warnings(Recruit)
    if not hasattr(deletion, "DatabaseOnDelete"):
        assert warnings == []
        return
    assert [(w.id, w.obj.name) for w in warnings] == [
        ("memdb.W005", "squad"),
        ("memdb.W005", "coach"),
    ]
    assert "on_delete=DB_CASCADE" in warnings[0].msg and "MEMORY" in warnings[0].msg
    assert "models.CASCADE" in warnings[0].hint
    with memdb_settings(STORE="server"), memory_database(ENGINE="memdb.backends.mysql"):
        assert memdb_checks.W005 in ids(memdb_checks._memory_engine_warnings(Recruit))
    assert memdb_checks._memory_engine_warnings(Recruit) == [] or on_mariadb_server_store()


def test_e001_memory_alias_missing() -> None:
    with memdb_settings(ALIAS="nowhere"):
        (error,) = [m for m in memdb_checks.check_settings() if m.id == "memdb.E001"]
    assert isinstance(error, checks.Error)
    assert "'nowhere'" in error.msg
    assert "memdb.configure" in error.hint


def test_e002_router_missing() -> None:
    with override_settings(DATABASE_ROUTERS=[]):
        messages = memdb_checks.check_settings()
    assert ids(messages) == ["memdb.E002"]
    assert "memdb.router.MemDBRouter" in messages[0].msg
    assert "DATABASE_ROUTERS" in messages[0].hint


@pytest.mark.sqlite_store
def test_e003_memory_alias_with_another_engine() -> None:
    with memory_database(ENGINE="django.db.backends.sqlite3"):
        messages = memdb_checks.check_settings()
    assert ids(messages) == ["memdb.E003"]
    assert "memdb.backends.sqlite3" in messages[0].hint


@pytest.mark.parametrize(
    "name",
    [
        ":memory:",
        "",
        "/tmp/memdb.sqlite3",
        "file:memdb_memdb?mode=memory",
        "file:memdb_memdb?cache=shared",
    ],
)
@pytest.mark.process_store
def test_e004_memory_alias_not_a_named_shared_memory_database(name: str) -> None:
    with memory_database(NAME=name):
        messages = memdb_checks.check_settings()
    assert ids(messages) == ["memdb.E004"]
    assert repr(name) in messages[0].msg


@pytest.mark.sqlite_store
def test_w002_test_runner_would_migrate_the_memory_alias() -> None:
    with memory_database(TEST={}):
        messages = memdb_checks.check_settings()
    assert ids(messages) == ["memdb.W002"]
    assert isinstance(messages[0], checks.Warning)
    assert "MIGRATE" in messages[0].hint


def test_e006_bad_global_policy() -> None:
    with memdb_settings(POLICY="sometimes"):
        messages = memdb_checks.check_settings()
    assert ids(messages) == ["memdb.E006"]
    assert "'sometimes'" in messages[0].msg
    assert "MEMDB['POLICY']" in messages[0].hint


@pytest.mark.parametrize("key", ["INTERVAL", "LOCK_TIMEOUT"])
@pytest.mark.parametrize("value", [0, -1, "1", None, True])
def test_e007_interval_and_lock_timeout_must_be_positive_numbers(key: str, value: Any) -> None:
    with memdb_settings(**{key: value}):
        messages = memdb_checks.check_settings()
    assert ids(messages) == ["memdb.E007"]
    assert f"MEMDB[{key!r}]" in messages[0].msg


@pytest.mark.parametrize("value", [0.01, 5, 2.5])
def test_e007_positive_numbers_pass(value: float) -> None:
    with memdb_settings(INTERVAL=value, LOCK_TIMEOUT=value):
        assert memdb_checks.check_settings() == []


def test_e008_unknown_codec_in_settings() -> None:
    with memdb_settings(CODECS=["zlib", "snappy", "no.such.module.Codec"]):
        messages = memdb_checks.check_settings()
    assert ids(messages) == ["memdb.E008", "memdb.E008"]
    assert "'snappy'" in messages[0].msg and "MEMDB['CODECS']" in messages[0].msg
    assert "'no.such.module.Codec'" in messages[1].msg


def test_e008_a_single_name_in_settings_is_one_codec() -> None:
    """Regression: MEMDB['CODECS'] = "zlib" was split into the codecs 'z', 'l', 'i', 'b'."""
    with memdb_settings(CODECS="zlib"):
        assert memdb_checks.check_settings() == []
    with memdb_settings(CODECS="zstd"):
        (message,) = memdb_checks.check_settings()
    assert message.id == "memdb.E008" and "'zstd'" in message.msg


def test_e008_known_codecs_pass() -> None:
    with memdb_settings(CODECS=["zlib", "gzip", "bz2", "lzma"]):
        assert memdb_checks.check_settings() == []


def test_w001_unknown_key() -> None:
    with memdb_settings(INTERVALL=2):
        messages = memdb_checks.check_settings()
    assert ids(messages) == ["memdb.W001"]
    assert isinstance(messages[0], checks.Warning)
    assert "'INTERVALL'" in messages[0].msg


def test_ids_match_severity() -> None:
    names = [n for n in dir(memdb_checks) if n[0] in "EW" and n[1:].isdigit()]
    values = [getattr(memdb_checks, n) for n in names]
    assert len(set(values)) == len(values)
    assert all(value == f"memdb.{name}" for name, value in zip(names, values))


@pytest.fixture
def isolated() -> Iterator[Apps]:
    """Models declared in a test live in an isolated registry, passed in as ``app_configs``."""
    with isolate_apps("tests.testapp") as apps:
        yield apps


def model_checks(apps: Apps) -> list[checks.CheckMessage]:
    return memdb_checks.check_models(app_configs=apps.get_app_configs())


def test_e005_memory_model_with_a_foreign_key_to_a_default_model(isolated: Apps) -> None:
    class Visit(models.Model, InMemoryDB):
        class Meta:
            app_label = "testapp"

        page = models.ForeignKey(Plain, on_delete=models.CASCADE)

    (error,) = model_checks(isolated)
    assert error.id == "memdb.E005"
    assert error.obj is Visit._meta.get_field("page")
    assert "testapp.Visit.page" in error.msg
    assert "testapp.Plain" in error.msg
    assert "relates a memory model to a default-database model" in error.msg


def test_e005_default_model_with_a_foreign_key_to_a_memory_model(isolated: Apps) -> None:
    class Report(models.Model):
        class Meta:
            app_label = "testapp"

        hit = models.OneToOneField(Hit, on_delete=models.CASCADE)

    (error,) = model_checks(isolated)
    assert error.id == "memdb.E005"
    assert "testapp.Report.hit" in error.msg
    assert "relates a default-database model to a memory model" in error.msg


def test_e005_many_to_many_across_databases(isolated: Apps) -> None:
    class Album(models.Model, PersistentInMemoryDB):
        class Meta:
            app_label = "testapp"

        extras = models.ManyToManyField(Plain)

    (error,) = model_checks(isolated)
    assert error.id == "memdb.E005"
    assert "testapp.Album.extras" in error.msg


def test_relations_inside_one_database_pass(isolated: Apps) -> None:
    class Owner(models.Model, InMemoryDB):
        class Meta:
            app_label = "testapp"

    class Pet(models.Model, PersistentInMemoryDB):
        class Meta:
            app_label = "testapp"

        owner = models.ForeignKey(Owner, on_delete=models.CASCADE)
        friends = models.ManyToManyField("self")
        last_hit = models.ForeignKey(Hit, null=True, on_delete=models.SET_NULL)

    class Note(models.Model):
        class Meta:
            app_label = "testapp"

        plain = models.ForeignKey(Plain, on_delete=models.CASCADE)

    assert model_checks(isolated) == []


def test_e006_bad_model_policy(isolated: Apps) -> None:
    class Sometimes(models.Model, PersistentInMemoryDB):
        class Meta:
            app_label = "testapp"

        memdb_policy = "hourly"

    (error,) = model_checks(isolated)
    assert error.id == "memdb.E006"
    assert error.obj is Sometimes
    assert "testapp.Sometimes.memdb_policy" in error.msg and "'hourly'" in error.msg


@pytest.mark.parametrize("policy", ["commit", "interval", "manual"])
def test_model_policies_pass(isolated: Apps, policy: str) -> None:
    class Fine(models.Model, PersistentInMemoryDB):
        class Meta:
            app_label = "testapp"

        memdb_policy = policy

    assert model_checks(isolated) == []


def test_e008_unknown_model_codec(isolated: Apps) -> None:
    class Packed(models.Model, PersistentInMemoryDB):
        class Meta:
            app_label = "testapp"

        memdb_codecs = ["zlib", "zstd"]

    (error,) = model_checks(isolated)
    assert error.id == "memdb.E008"
    assert error.obj is Packed
    assert "testapp.Packed.memdb_codecs" in error.msg and "'zstd'" in error.msg


def test_e008_a_string_is_one_codec_name(isolated: Apps) -> None:
    class Packed(models.Model, PersistentInMemoryDB):
        class Meta:
            app_label = "testapp"

        memdb_codecs = "lzma"  # type: ignore[assignment]

    assert model_checks(isolated) == []


def test_e008_import_path_that_is_not_a_codec(isolated: Apps) -> None:
    class Packed(models.Model, PersistentInMemoryDB):
        class Meta:
            app_label = "testapp"

        memdb_codecs = ["json.dumps"]

    (error,) = model_checks(isolated)
    assert error.id == "memdb.E008"
    assert "'json.dumps'" in error.msg


def test_model_checks_run_through_django(isolated: Apps) -> None:
    class Visit(models.Model, InMemoryDB):
        class Meta:
            app_label = "testapp"

        page = models.ForeignKey(Plain, on_delete=models.CASCADE)

    messages = checks.run_checks(app_configs=isolated.get_app_configs(), tags=[checks.Tags.models])
    assert "memdb.E005" in ids(messages)
