"""Which models live in memory, and how a label (``app_label.ModelName``) finds one."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.db import models

from .conf import POLICIES, memdb_settings
from .exceptions import NotPersistentError, UnknownTableError
from .mixins import InMemoryDB

ModelType = type[models.Model]


def is_memory_model(model: Any) -> bool:
    """True for tagged models and for the auto-created M2M tables between them."""
    if not isinstance(model, type):
        return False
    if issubclass(model, InMemoryDB):
        return True
    meta = getattr(model, "_meta", None)
    if meta is not None and meta.auto_created:
        owner = meta.auto_created
        return isinstance(owner, type) and issubclass(owner, InMemoryDB)
    return False


def is_persistent(model: ModelType) -> bool:
    """Auto-created M2M tables persist when their owning model does."""
    owner = model._meta.auto_created or model
    return bool(getattr(owner, "memdb_persistent", False))


def policy_of(model: ModelType) -> str:
    owner = model._meta.auto_created or model
    policy = getattr(owner, "memdb_policy", None) or memdb_settings.POLICY
    return policy if policy in POLICIES else memdb_settings.POLICY


def label_of(model: ModelType) -> str:
    return model._meta.label


def model_name_of(model: ModelType) -> str:
    """The class name, as in the label (``Player_tags`` for an auto-created M2M table)."""
    return model.__name__


def database_delete_keys(model: ModelType) -> list[Any]:
    """The keys of ``model`` whose ``on_delete`` the database runs itself (Django 6.1's
    ``DB_CASCADE``, ``DB_SET_NULL``, ``DB_SET_DEFAULT``); none before Django 6.1."""
    from django.db.models import deletion

    actions = getattr(deletion, "DatabaseOnDelete", None)
    if actions is None:
        return []
    return [
        field
        for field in model._meta.local_concrete_fields
        if field.related_model is not None
        and isinstance(getattr(field.remote_field, "on_delete", None), actions)
    ]


def memory_models() -> list[ModelType]:
    """Every memory model, auto-created M2M tables included, parents before children."""
    found = [m for m in apps.get_models(include_auto_created=True) if is_memory_model(m)]
    return _parents_first(found)


def persistent_models() -> list[ModelType]:
    return [m for m in memory_models() if is_persistent(m)]


def _parents_first(found: list[ModelType]) -> list[ModelType]:
    """Order models so that a foreign key's target comes before the model holding it."""
    ordered: list[ModelType] = []
    seen: set[ModelType] = set()

    def visit(model: ModelType, stack: tuple[ModelType, ...]) -> None:
        if model in seen or model in stack:
            return
        for field in model._meta.concrete_fields:
            target = field.related_model if field.is_relation else None
            if isinstance(target, type) and target in found and target is not model:
                visit(target, stack + (model,))
        seen.add(model)
        ordered.append(model)

    for model in found:
        visit(model, ())
    return ordered


def get_model(label: str) -> ModelType:
    """The memory model named ``label`` ("app_label.ModelName", case-insensitive)."""
    wanted = label.strip().lower()
    for model in memory_models():
        if label_of(model).lower() == wanted:
            return model
    raise UnknownTableError(
        f"{label!r} is not a memory table; expected 'app_label.ModelName' of a model "
        f"tagged InMemoryDB or PersistentInMemoryDB"
    )


def resolve(labels: tuple[str, ...], *, persistent_only: bool) -> list[ModelType]:
    """Models for ``labels`` (all of them when empty), parents first."""
    if not labels:
        return persistent_models() if persistent_only else memory_models()
    chosen = {get_model(label) for label in labels}
    if persistent_only:
        for model in chosen:
            if not is_persistent(model):
                raise NotPersistentError(
                    f"{label_of(model)} is memory-only (InMemoryDB): it has no snapshot; "
                    f"tag it PersistentInMemoryDB to spool and restore it"
                )
    return [m for m in memory_models() if m in chosen]
