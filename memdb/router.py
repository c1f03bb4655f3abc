"""The database router that sends memory models to the memory alias and nothing else there."""

from __future__ import annotations

from typing import Any

from .conf import memdb_settings
from .registry import is_memory_model


class MemDBRouter:
    """Reads, writes and schema of tagged models go to ``MEMDB["ALIAS"]``; all else never does.

    The memory tables are created from the current models at first use of the alias
    (the database is new in every process), so migrations of memory models are never
    applied to the default database. ``allow_migrate`` still answers True on the memory
    alias so that ``flush``, ``loaddata`` and the test runner see these tables.
    """

    def db_for_read(self, model: Any, **hints: Any) -> str | None:
        return memdb_settings.ALIAS if is_memory_model(model) else None

    db_for_write = db_for_read

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        if is_memory_model(type(obj1)) != is_memory_model(type(obj2)):
            return False
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        model = hints.get("model")
        if model is None and model_name is not None:
            from django.apps import apps

            try:
                model = apps.get_model(app_label, model_name)
            except LookupError:
                model = None
        if model is not None and is_memory_model(model):
            return db == memdb_settings.ALIAS
        if db == memdb_settings.ALIAS:
            return False
        return None
