"""Every write path marks a persistent table dirty; reads and rolled-back writes do not.

Each test starts from a clean table (just spooled), checks that, writes one way, and
checks the table became dirty. Score has the manual policy, so nothing spools it behind
the test's back.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connections, transaction
from django.db.models import F

from memdb import api
from tests.testapp.models import Hit, Player, Score, Tag, Team

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])


def dirty(label: str) -> bool:
    (info,) = api.tables(label)
    return info.dirty


@pytest.fixture
def clean() -> Callable[..., None]:
    """Spool the named tables and check they are clean."""

    def make_clean(*labels: str) -> None:
        api.spool(*labels)
        for label in labels:
            assert dirty(label) is False, label

    return make_clean


@pytest.fixture
def score(clean: Callable[..., None]) -> Score:
    obj = Score.objects.create(player="ann", points=1)
    Score.objects.create(player="bob", points=2)
    clean("testapp.Score")
    return obj


def test_save_insert(clean: Callable[..., None]) -> None:
    clean("testapp.Score")
    Score(player="ann").save()
    assert dirty("testapp.Score")


def test_save_update(score: Score) -> None:
    score.points = 10
    score.save()
    assert dirty("testapp.Score")


def test_save_update_fields(score: Score) -> None:
    score.points = 11
    score.save(update_fields=["points"])
    assert dirty("testapp.Score")


def test_delete(score: Score) -> None:
    score.delete()
    assert dirty("testapp.Score")


def test_create(clean: Callable[..., None]) -> None:
    clean("testapp.Score")
    Score.objects.create(player="ann")
    assert dirty("testapp.Score")


def test_bulk_create(clean: Callable[..., None]) -> None:
    clean("testapp.Score")
    Score.objects.bulk_create([Score(player=f"p{i}") for i in range(50)])
    assert dirty("testapp.Score")


def test_bulk_update(score: Score) -> None:
    objs = list(Score.objects.all())
    for obj in objs:
        obj.points += 5
    assert Score.objects.bulk_update(objs, ["points"]) == 2
    assert dirty("testapp.Score")


def test_queryset_update(score: Score) -> None:
    assert Score.objects.filter(player="bob").update(points=F("points") + 1) == 1
    assert dirty("testapp.Score")


def test_queryset_delete(score: Score) -> None:
    assert Score.objects.filter(player="bob").delete()[0] == 1
    assert dirty("testapp.Score")


def test_get_or_create_create_branch(score: Score) -> None:
    obj, created = Score.objects.get_or_create(player="cid", defaults={"points": 3})
    assert created
    assert dirty("testapp.Score")


def test_get_or_create_get_branch_is_a_read(score: Score) -> None:
    obj, created = Score.objects.get_or_create(player="ann")
    assert not created and obj == score
    assert dirty("testapp.Score") is False


def test_update_or_create_update_branch(score: Score) -> None:
    obj, created = Score.objects.update_or_create(player="ann", defaults={"points": 99})
    assert not created and obj.pk == score.pk
    assert dirty("testapp.Score")


def test_update_or_create_create_branch(score: Score) -> None:
    obj, created = Score.objects.update_or_create(player="dee", defaults={"points": 4})
    assert created
    assert dirty("testapp.Score")


def test_raw_sql_through_the_alias(score: Score) -> None:
    with connections["memdb"].cursor() as cursor:
        cursor.execute(
            f"UPDATE {Score._meta.db_table} SET points = points * 2 WHERE id = %s", [score.pk]
        )
        assert cursor.rowcount == 1
    assert dirty("testapp.Score")


def test_raw_sql_insert_through_the_alias(clean: Callable[..., None]) -> None:
    clean("testapp.Score")
    with connections["memdb"].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {Score._meta.db_table} (player, points) VALUES (%s, %s)", ["raw", 7]
        )
    assert dirty("testapp.Score")


def test_many_to_many_add_and_remove(clean: Callable[..., None]) -> None:
    team = Team.objects.create(name="red")
    player = Player.objects.create(team=team, name="ann")
    tag = Tag.objects.create(name="fast")
    through = "testapp.Player_tags"
    clean("testapp.Team", "testapp.Player", "testapp.Tag", through)

    player.tags.add(tag)
    assert dirty(through)
    # The M2M link touches the link table only.
    assert not any(dirty(label) for label in ("testapp.Team", "testapp.Player", "testapp.Tag"))

    clean(through)
    player.tags.remove(tag)
    assert dirty(through)


def test_cascade_delete_marks_the_related_table(clean: Callable[..., None]) -> None:
    team = Team.objects.create(name="red")
    Player.objects.create(team=team, name="ann")
    clean("testapp.Team", "testapp.Player")
    team.delete()
    assert dirty("testapp.Team") and dirty("testapp.Player")


def test_reads_do_not_mark_dirty(score: Score) -> None:
    list(Score.objects.all())
    Score.objects.filter(points__gt=0).count()
    Score.objects.get(pk=score.pk)
    Score.objects.filter(player="nobody").update(points=0)
    Score.objects.filter(player="nobody").delete()
    with connections["memdb"].cursor() as cursor:
        cursor.execute(f"SELECT * FROM {Score._meta.db_table}")
        cursor.fetchall()
    assert dirty("testapp.Score") is False


@pytest.mark.transactional_memory
def test_rolled_back_atomic_leaves_the_table_clean(score: Score) -> None:
    with pytest.raises(RuntimeError):
        with transaction.atomic(using="memdb"):
            Score.objects.create(player="temp")
            Score.objects.filter(pk=score.pk).update(points=50)
            raise RuntimeError("roll back")
    assert dirty("testapp.Score") is False
    assert Score.objects.count() == 2


@pytest.mark.transactional_memory
def test_rolled_back_savepoint_keeps_the_outer_write(score: Score) -> None:
    with transaction.atomic(using="memdb"):
        Score.objects.filter(pk=score.pk).update(points=50)
        with pytest.raises(RuntimeError):
            with transaction.atomic(using="memdb"):
                Score.objects.create(player="temp")
                raise RuntimeError("roll back the savepoint")
    assert dirty("testapp.Score")
    assert not Score.objects.filter(player="temp").exists()


def test_writes_to_one_table_do_not_mark_another(clean: Callable[..., None]) -> None:
    clean("testapp.Score", "testapp.Legacy")
    Score.objects.create(player="ann")
    assert dirty("testapp.Score")
    assert dirty("testapp.Legacy") is False


def test_memory_only_tables_are_never_dirty() -> None:
    Hit.objects.create(path="/")
    assert dirty("testapp.Hit") is False


def test_spool_makes_a_dirty_table_clean(score: Score) -> None:
    Score.objects.create(player="x")
    assert dirty("testapp.Score")
    api.spool("testapp.Score")
    assert dirty("testapp.Score") is False


def test_restore_makes_the_table_clean(score: Score) -> None:
    Score.objects.create(player="x")
    assert dirty("testapp.Score")
    api.restore("testapp.Score")
    assert dirty("testapp.Score") is False
    assert Score.objects.count() == 2
