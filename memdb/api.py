"""The public operations of django-memdb: the one way in for admin, REST and commands.

Labels are ``"app_label.ModelName"`` (case-insensitive); no labels means every table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction

from . import store
from .conf import memdb_settings
from .exceptions import MemdbError, RestoreError
from .registry import (
    is_persistent,
    label_of,
    memory_models,
    model_name_of,
    persistent_models,
    policy_of,
    resolve,
)
from .restore import RestoreResult, restore_models
from .spooler import SpoolResult, flush, spool_model, stored_snapshots

__all__ = [
    "storage_view",
    "TableInfo",
    "SpoolResult",
    "RestoreResult",
    "spool",
    "restore",
    "discard",
    "flush",
    "tables",
    "storage",
    "orphans",
    "StoredSnapshot",
]


@dataclass(frozen=True)
class TableInfo:
    """What ``tables()`` reports of one memory table."""

    label: str
    app_label: str
    model_name: str
    table: str
    persistent: bool
    #: "commit", "interval" or "manual"; None for memory-only tables.
    policy: str | None
    rows: int
    #: Changed since its last snapshot (always False for memory-only tables).
    dirty: bool
    last_spooled: datetime | None
    #: Bytes stored: the snapshot and its journal deltas.
    snapshot_bytes: int | None
    #: Rows a restore would give (the latest generation's row count).
    snapshot_rows: int | None
    #: The latest stored generation: the snapshot's or its last journal delta's.
    generation: int | None
    codecs: tuple[str, ...]
    #: "ok" (restored in this store), "failed", or "none" (nothing restored).
    restore_state: str
    restore_error: str | None
    #: Where the table lives: "process" (a memory database private to this process),
    #: "host" (a file shared by the host's workers) or "server" (tables on the default
    #: database's server, shared by every host).
    store: str
    #: Set when this process looks like one of several workers of a "process" store:
    #: each has its own copy.
    warning: str | None
    #: Who led the table's last spool in this store (``host:pid``); None before one.
    leader: str | None = None


def storage_view(view: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a view that spools (``ATOMIC_REQUESTS`` must not wrap it on the default
    database: a spool inside a transaction there is refused). memdb's admin and REST
    views are marked; mark your own views that call ``spool()`` or ``flush()``.
    """
    from .spooler import storage_alias

    for alias in {storage_alias(), memdb_settings.ALIAS}:
        view = transaction.non_atomic_requests(using=alias)(view)
    return view


def spool(*labels: str, force: bool = False) -> list[SpoolResult]:
    """Write the named persistent tables (all when none are named) to ``PersistentStorage``.

    A table unchanged since its stored snapshot (same data, same codec chain) is not
    rewritten: its result says ``unchanged``. ``force`` always writes, overwriting a
    snapshot another process wrote or one that failed to restore.
    Unknown or memory-only labels raise ``UnknownTableError`` / ``NotPersistentError``
    before anything is written. Otherwise every table is tried, and failures are raised
    together afterwards as the first failure's type (``ConflictError``,
    ``ProtectedTableError``, ``SpoolError``, ``CodecError``) with ``results`` and
    ``errors`` saying which tables were spooled and which were not.
    """
    results: list[SpoolResult] = []
    errors: dict[str, MemdbError] = {}
    for model in resolve(labels, persistent_only=True):
        try:
            results.append(spool_model(model, force=force))
        except MemdbError as exc:
            errors[label_of(model)] = exc
    if errors:
        first = next(iter(errors.values()))
        message = "; ".join(str(e) for e in errors.values())
        raise type(first)(message, results=results, errors=errors) from first
    return results


def restore(*labels: str) -> list[RestoreResult]:
    """Replace the named tables (all stored ones when none are named) with their snapshots.

    The tables are replaced together, so foreign keys between them are checked against
    the restored set. Failures are raised as one ``RestoreError`` after every table was
    tried (its ``results`` and ``errors`` say which); each failed table keeps its
    snapshot and stays protected from spools.
    """
    models = resolve(labels, persistent_only=True)
    if not labels:
        models = [m for m in models if stored_snapshots(m).exists()]
    results, errors = restore_models(models)
    if errors:
        first = next(iter(errors.values()))
        message = "; ".join(str(e) for e in errors.values())
        raise RestoreError(message, results=results, errors=errors) from first
    return results


def discard(*labels: str) -> int:
    """Delete the stored snapshots of the named tables; return how many were deleted.

    This is the explicit way out for a snapshot that cannot be restored: afterwards the
    table spools again from what is in memory. A label may also name an orphaned
    snapshot (its model was removed, or is no longer persistent; see ``orphans()``).
    """
    from django.db import connections

    from .spooler import in_transaction, storage_alias

    if in_transaction(connections[storage_alias()]):
        raise MemdbError(
            f"cannot discard inside a transaction on the default database "
            f"{storage_alias()!r}: a rollback would bring the snapshots back while this "
            f"process counted them gone; discard after the block (transaction.on_commit)"
        )
    orphaned = {label.lower(): label for label in orphans()}
    named = tuple(label for label in labels if label.lower() not in orphaned)
    models = resolve(named, persistent_only=True) if named or not labels else []
    store.ensure_ready()
    state = store.current_state()
    deleted = 0
    for label in labels:
        if label.lower() in orphaned:
            app_label, model_name = orphaned[label.lower()].split(".", 1)
            deleted += _delete_snapshots(app_label=app_label, model_name=model_name)
    for model in models:
        with store.claim(state, label_of(model)) as table_state:
            deleted += _delete_snapshots(
                app_label=model._meta.app_label, model_name=model_name_of(model)
            )
            table_state.restore_error = None
            table_state.generation = 0
            table_state.pending = False
    return deleted


def _delete_snapshots(**lookup: str) -> int:
    """Delete the matching snapshots and their chunks; return how many snapshots."""
    from .models import PersistentStorage, SnapshotChunk
    from .spooler import storage_alias

    alias = storage_alias()
    with transaction.atomic(using=alias):
        snapshots = PersistentStorage.objects.using(alias).filter(**lookup)
        SnapshotChunk.objects.using(alias).filter(snapshot__in=snapshots).delete()
        return snapshots.delete()[0]


def orphans() -> list[str]:
    """Labels of stored snapshots no persistent memory model claims any more.

    Left by an app or model removed (or made memory-only) since it was spooled. They are
    never restored nor changed; ``discard()`` takes their labels to delete them.
    """
    from .models import PersistentStorage
    from .spooler import storage_alias

    known = {(m._meta.app_label, model_name_of(m)) for m in persistent_models()}
    stored = (
        PersistentStorage.objects.using(storage_alias())
        .values_list("app_label", "model_name")
        .distinct()
        .order_by("app_label", "model_name")
    )
    return [f"{app}.{name}" for app, name in stored if (app, name) not in known]


def tables(*labels: str) -> list[TableInfo]:
    """Stats of the named memory tables (all when none are named)."""
    models = resolve(labels, persistent_only=False) if labels else memory_models()
    store.ensure_ready()
    state = store.current_state()
    from .models import PersistentStorage
    from .spooler import storage_alias

    # Per table, what a restore would give: the latest generation (snapshot or journal
    # delta) with its row count and time, and the bytes of the snapshot and journal.
    snapshots: dict[tuple[str, str], dict[str, Any]] = {}
    for row in (
        PersistentStorage.objects.using(storage_alias())
        .order_by("generation")
        .values(
            "app_label",
            "model_name",
            "kind",
            "size",
            "row_count",
            "generation",
            "codecs",
            "updated_at",
        )
    ):
        key = (row["app_label"], row["model_name"])
        total = snapshots.get(key, {}).get("size", 0) + row["size"]
        codecs = row["codecs"] if row["kind"] == PersistentStorage.KIND_SNAPSHOT else None
        snapshots[key] = {
            **row,
            "size": total,
            "codecs": codecs if codecs is not None else snapshots.get(key, {}).get("codecs"),
        }
    with store.raw_connection(state.name) as conn:
        seqs = {m._meta.db_table: store.read_seq(conn, m._meta.db_table) for m in models}
        counts = {m._meta.db_table: store.count_rows(conn, m._meta.db_table) for m in models}
    table_states = state.table_states()
    from .deployment import process_store_warning

    warning = process_store_warning() if state.kind == "process" else None
    infos = []
    for model in models:
        persistent = is_persistent(model)
        snap = snapshots.get((model._meta.app_label, model_name_of(model)))
        table_state = table_states.get(label_of(model))
        restore_error = table_state.restore_error if table_state else None
        if restore_error:
            restore_state = "failed"
        elif table_state and table_state.restored:
            restore_state = "ok"
        else:
            restore_state = "none"
        infos.append(
            TableInfo(
                label=label_of(model),
                app_label=model._meta.app_label,
                model_name=model_name_of(model),
                table=model._meta.db_table,
                persistent=persistent,
                policy=policy_of(model) if persistent else None,
                rows=counts[model._meta.db_table],
                dirty=persistent
                and seqs[model._meta.db_table] != (table_state.spooled_seq if table_state else 0),
                last_spooled=snap["updated_at"] if snap else None,
                snapshot_bytes=snap["size"] if snap else None,
                snapshot_rows=snap["row_count"] if snap else None,
                generation=snap["generation"] if snap else None,
                codecs=tuple(snap["codecs"] or ()) if snap else (),
                restore_state=restore_state,
                restore_error=restore_error,
                store=state.kind,
                warning=warning,
                leader=table_state.leader if persistent and table_state else None,
            )
        )
    return infos


@dataclass(frozen=True)
class StoredSnapshot:
    """What ``storage()`` reports of one ``PersistentStorage`` row (never its data)."""

    label: str
    kind: str
    format: str
    rows: int
    bytes: int
    codecs: tuple[str, ...]
    generation: int
    written_by: str
    created: datetime
    updated: datetime
    #: How many SnapshotChunk rows hold it.
    chunks: int = 0
    #: No persistent memory model claims it any more (see ``orphans()``).
    orphaned: bool = False


def storage() -> list[StoredSnapshot]:
    """Every stored snapshot, by table, without reading the snapshot data."""
    from .models import PersistentStorage
    from .spooler import storage_alias

    rows = (
        PersistentStorage.objects.using(storage_alias())
        .order_by("app_label", "model_name", "kind", "generation")
        .values(
            "app_label",
            "model_name",
            "kind",
            "format",
            "row_count",
            "size",
            "codecs",
            "generation",
            "written_by",
            "created_at",
            "updated_at",
            "chunk_count",
        )
    )
    orphaned = set(orphans())
    return [
        StoredSnapshot(
            label=f"{row['app_label']}.{row['model_name']}",
            kind=row["kind"],
            format=row["format"],
            rows=row["row_count"],
            bytes=row["size"],
            codecs=tuple(row["codecs"] or ()),
            generation=row["generation"],
            written_by=row["written_by"],
            created=row["created_at"],
            updated=row["updated_at"],
            chunks=row["chunk_count"],
            orphaned=f"{row['app_label']}.{row['model_name']}" in orphaned,
        )
        for row in rows
    ]
