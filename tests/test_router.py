"""The router sends memory models to the memory alias and nothing else there."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import connections, router

from memdb.models import PersistentStorage
from memdb.router import MemDBRouter
from tests.testapp.models import AllTypes, Hit, Legacy, Plain, Player, Score, Tag, Team

pytestmark = pytest.mark.django_db(databases=["default", "memdb"])

MEMORY = [Hit, Score, Legacy, Team, Player, Tag, AllTypes, Player.tags.through]
DEFAULT = [Plain, PersistentStorage, User]


@pytest.mark.parametrize("model", MEMORY, ids=lambda m: m._meta.label)
def test_memory_models_read_and_write_on_the_memory_alias(model: type) -> None:
    assert router.db_for_read(model) == "memdb"
    assert router.db_for_write(model) == "memdb"


@pytest.mark.parametrize("model", DEFAULT, ids=lambda m: m._meta.label)
def test_other_models_use_the_default_database(model: type) -> None:
    assert MemDBRouter().db_for_read(model) is None
    assert router.db_for_read(model) == "default"
    assert router.db_for_write(model) == "default"


def test_saved_instances_record_their_database() -> None:
    hit = Hit.objects.create(path="/")
    plain = Plain.objects.create(name="p")
    assert hit._state.db == "memdb"
    assert plain._state.db == "default"
    assert Hit.objects.get(pk=hit.pk)._state.db == "memdb"
    assert Hit.objects.all().db == "memdb"
    assert Plain.objects.all().db == "default"


def test_rows_land_in_the_right_database() -> None:
    Hit.objects.create(path="/x")
    Plain.objects.create(name="p")
    with connections["memdb"].cursor() as cursor:
        cursor.execute(f"SELECT path FROM {Hit._meta.db_table}")
        assert list(cursor.fetchall()) == [("/x",)]
    with connections["default"].cursor() as cursor:
        cursor.execute(f"SELECT name FROM {Plain._meta.db_table}")
        assert list(cursor.fetchall()) == [("p",)]


@pytest.mark.parametrize(
    "db, model, allowed",
    [
        ("memdb", Hit, True),
        ("memdb", Score, True),
        ("memdb", Player.tags.through, True),
        ("default", Hit, False),
        ("default", Score, False),
        ("default", Player.tags.through, False),
        ("memdb", Plain, False),
        ("memdb", PersistentStorage, False),
        ("memdb", User, False),
        ("default", Plain, True),
        ("default", PersistentStorage, True),
        ("default", User, True),
    ],
    ids=lambda v: v._meta.label if isinstance(v, type) else str(v),
)
def test_allow_migrate(db: str, model: type, allowed: bool) -> None:
    meta = model._meta
    assert router.allow_migrate(db, meta.app_label, model_name=meta.model_name) is allowed
    assert router.allow_migrate(db, meta.app_label, model=model) is allowed
    assert router.allow_migrate_model(db, model) is allowed


def test_allow_migrate_without_a_model() -> None:
    """RunSQL/RunPython without hints: never on the memory alias, the default decides elsewhere."""
    assert MemDBRouter().allow_migrate("memdb", "testapp") is False
    assert MemDBRouter().allow_migrate("default", "testapp") is None
    assert MemDBRouter().allow_migrate("memdb", "testapp", model_name="nosuchmodel") is False


def table_names(alias: str) -> set[str]:
    connection = connections[alias]
    with connection.cursor() as cursor:
        return set(connection.introspection.table_names(cursor))


@pytest.mark.sqlite_store
def test_memory_tables_exist_only_in_the_memory_database() -> None:
    in_memory = table_names("memdb")
    in_default = table_names("default")
    for model in MEMORY:
        assert model._meta.db_table in in_memory
        assert model._meta.db_table not in in_default
    for model in DEFAULT:
        assert model._meta.db_table in in_default
        assert model._meta.db_table not in in_memory


def test_relations_across_databases_are_refused() -> None:
    team = Team.objects.create(name="red")
    plain = Plain.objects.create(name="p")
    assert router.allow_relation(team, plain) is False
    assert router.allow_relation(plain, team) is False
    assert router.allow_relation(Hit(path="/"), User(username="u")) is False


def test_relations_within_one_database_are_not_refused() -> None:
    team = Team.objects.create(name="red")
    player = Player.objects.create(team=team, name="ann")
    assert MemDBRouter().allow_relation(team, player) is None
    assert router.allow_relation(team, player) is True
    assert MemDBRouter().allow_relation(Plain(name="a"), User(username="u")) is None
