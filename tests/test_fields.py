"""Every concrete field type round-trips exactly through spool, wipe and restore."""

from __future__ import annotations

import datetime
import uuid
from decimal import Decimal
from typing import Any

import pytest
from django.db import connections, models
from django.test.utils import override_settings

from memdb import api
from tests.testapp.models import AllTypes, Player, Tag, Team

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])

UTC = datetime.UTC
PLUS_5_30 = datetime.timezone(datetime.timedelta(hours=5, minutes=30))

ROWS: list[dict[str, Any]] = [
    {
        "small": -32768,
        "integer": -(2**31),
        "big": -(2**63),
        "pos_small": 0,
        "pos_int": 0,
        "pos_big": 0,
        "floating": 5e-324,
        "decimal": Decimal("-99999999.9999"),
        "flag": False,
        "maybe": None,
        "char": "",
        "text": "",
        "slug": "a",
        "email": "a@b.co",
        "url": "http://a.b",
        "day": datetime.date(1, 1, 1),
        "moment": datetime.datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        "clock": datetime.time(0, 0, 0, 1),
        "span": -datetime.timedelta(days=999_999, microseconds=1),
        "uuid": uuid.UUID(int=0),
        "blob": b"\x00",
        "doc": "a JSON string, ü",
        "ip": "0.0.0.0",
        "nothing": None,
    },
    {
        "small": 32767,
        "integer": 2**31 - 1,
        "big": 2**63 - 1,
        "pos_small": 32767,
        "pos_int": 2**31 - 1,
        "pos_big": 2**63 - 1,
        "floating": 1.7976931348623157e308,
        "decimal": Decimal("99999999.9999"),
        "flag": True,
        "maybe": True,
        "char": "Grüße, 日本語 😀 \"'\\ %_",
        "text": "line 1\nline 2\r\n\ttab \u2028 \U0001f680" + "x" * 10_000,
        "slug": "snail-case_ünïcode",
        "email": "ünïcode@例え.テスト",
        "url": "https://例え.テスト/päth?q=😀#frag",
        "day": datetime.date(9999, 12, 31),
        "moment": datetime.datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC),
        "clock": datetime.time(23, 59, 59, 999_999),
        "span": datetime.timedelta(days=999_999, seconds=86_399, microseconds=999_999),
        "uuid": uuid.UUID("f" * 32),
        "blob": bytes(range(256)) + b"\x00\x00end\x00",
        "doc": {
            "ünï": ["😀", None, 1.5, -0.0001, 10**20, True, False, {"nested": [[], {}]}],
            "none": None,
            "float": 3.141592653589793,
        },
        "ip": "2001:db8::8a2e:370:7334",
        "nothing": "ñ",
    },
    {
        "small": 0,
        "integer": 1,
        "big": 0,
        "pos_small": 1,
        "pos_int": 1,
        "pos_big": 1,
        "floating": -2.2250738585072014e-308,
        "decimal": Decimal("0.0001"),
        "flag": True,
        "maybe": False,
        "char": "x" * 100,
        "text": "\x01 control \x7f",
        "slug": "0",
        "email": "x@y.z",
        "url": "ftp://x",
        "day": datetime.date(2000, 2, 29),
        "moment": datetime.datetime(2031, 6, 15, 8, 0, 0, 123_456, tzinfo=PLUS_5_30),
        "clock": datetime.time(12, 0),
        "span": datetime.timedelta(0),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "blob": b"",
        "doc": [1, "two", [3.0], {"4": None}],
        "ip": "::ffff:192.0.2.1",
        "nothing": "",
    },
]


def field_values(instance: models.Model) -> dict[str, Any]:
    values = {}
    for field in instance._meta.concrete_fields:
        value = field.value_from_object(instance)
        values[field.attname] = bytes(value) if isinstance(value, memoryview) else value
    return values


def spool_wipe_restore(*model_classes: type[models.Model]) -> None:
    labels = [m._meta.label for m in model_classes]
    results = api.spool(*labels)
    assert {r.label for r in results} == set(labels)
    for model in reversed(model_classes):
        model.objects.all().delete()
        assert not model.objects.exists()
    restored = api.restore(*labels)
    assert {r.label: r.rows for r in restored} == {r.label: r.rows for r in results}


def test_every_field_type_round_trips_exactly() -> None:
    created = [AllTypes.objects.create(**row) for row in ROWS]
    before = [field_values(AllTypes.objects.get(pk=obj.pk)) for obj in created]

    spool_wipe_restore(AllTypes)

    after = [field_values(obj) for obj in AllTypes.objects.order_by("pk")]
    assert after == before
    for row, values in zip(ROWS, after):
        for name, expected in row.items():
            got = values[name]
            if name == "ip" and expected.startswith("::ffff:"):
                expected = "::ffff:192.0.2.1"
            assert got == expected, name
            assert type(got) is type(expected), name
    # An aware datetime keeps its instant, whatever offset it was created with.
    assert after[2]["moment"] == datetime.datetime(2031, 6, 15, 2, 30, 0, 123_456, tzinfo=UTC)


@pytest.mark.sqlite_store
def test_types_as_stored_by_sqlite_are_unchanged() -> None:
    """Compare the raw values SQLite holds, not only what the ORM makes of them."""
    for row in ROWS:
        AllTypes.objects.create(**row)
    table = AllTypes._meta.db_table

    def raw() -> list[tuple[Any, ...]]:
        with connections["memdb"].cursor() as cursor:
            cursor.execute(
                f'SELECT *, typeof("decimal"), typeof("flag") FROM "{table}" ORDER BY id'
            )
            return cursor.fetchall()

    before = raw()
    spool_wipe_restore(AllTypes)
    assert raw() == before


@override_settings(USE_TZ=False)
def test_naive_datetimes_round_trip_without_time_zone_support() -> None:
    moments = [
        datetime.datetime(2024, 3, 10, 2, 30, 0, 654_321),
        datetime.datetime(1, 1, 1, 0, 0),
        datetime.datetime(9999, 12, 31, 23, 59, 59, 999_999),
    ]
    for number, moment in enumerate(moments):
        AllTypes.objects.create(**{**ROWS[number], "moment": moment})

    spool_wipe_restore(AllTypes)

    got = list(AllTypes.objects.order_by("pk").values_list("moment", flat=True))
    assert got == moments
    assert all(value.tzinfo is None for value in got)


def test_foreign_keys_self_reference_and_many_to_many_round_trip() -> None:
    red = Team.objects.create(name="red")
    blue = Team.objects.create(name="blue ✓")
    fast, slow = Tag.objects.create(name="fast"), Tag.objects.create(name="slow")
    coach = Player.objects.create(team=red, name="coach")
    ann = Player.objects.create(team=red, name="ann", mentor=coach)
    bob = Player.objects.create(team=blue, name="bob", mentor=ann)
    ann.tags.add(fast, slow)
    bob.tags.add(slow)
    # Gaps in primary keys must survive too.
    Player.objects.create(team=blue, name="gone").delete()
    dan = Player.objects.create(team=blue, name="dan")

    def picture() -> list[tuple[Any, ...]]:
        return [
            (
                p.pk,
                p.name,
                p.team_id,
                p.team.name,
                p.mentor_id,
                p.mentor.name if p.mentor else None,
                sorted(t.name for t in p.tags.all()),
            )
            for p in Player.objects.select_related("team", "mentor").order_by("pk")
        ]

    before = picture()
    assert before[-1][0] == dan.pk != before[-2][0] + 1
    through = Player.tags.through
    through_before = sorted(through.objects.values_list("id", "player_id", "tag_id"))

    spool_wipe_restore(Team, Tag, Player, through)

    assert picture() == before
    assert sorted(through.objects.values_list("id", "player_id", "tag_id")) == through_before
    assert list(red.players.order_by("pk")) == [coach, ann]
    assert list(slow.player_set.order_by("pk")) == [ann, bob]
    # New rows continue after the restored keys rather than reusing them.
    assert Player.objects.create(team=red, name="eve").pk > dan.pk
