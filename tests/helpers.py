"""Small readers shared by the test modules."""

from __future__ import annotations

from typing import Any

from memdb import api
from memdb.models import PersistentStorage
from tests.testapp.models import Score


def stored(model: type) -> PersistentStorage:
    """The stored snapshot row of ``model``."""
    return PersistentStorage.objects.get(
        app_label=model._meta.app_label, model_name=model._meta.object_name
    )


def fingerprint(model: type) -> tuple[Any, ...]:
    """Everything of a stored snapshot a failed restore must leave as it was."""
    s = stored(model)
    return (s.pk, bytes(s.data), s.checksum, s.size, s.generation, s.codecs, s.format)


def info(label: str) -> api.TableInfo:
    (result,) = api.tables(label)
    return result


def scores() -> list[tuple[int, str, int]]:
    return list(Score.objects.order_by("pk").values_list("pk", "player", "points"))
