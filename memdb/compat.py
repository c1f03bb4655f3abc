"""The 0.0.6 processor hooks (``store_save`` / ``store_load``) as a stage of the pipeline.

When a receiver is connected to ``store_save``, a table is serialized the way 0.0.6 did
it, as JSON-ready data in Django's serialization format (a list of ``{"model", "pk",
"fields"}``), handed to the receivers and their processors, and stored as bytes in the
``django-json`` format; the processors are recorded on the snapshot by name
(``processor:module.function``), before the byte codecs. On restore, ``store_load``
collects the processors again; they must be the recorded ones, by name, in order (a
name read from storage is never imported). The decoded rows are turned back into a
one-table SQLite image, so loading them is the same bulk copy as for any snapshot.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import warnings
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core import serializers
from django.core.serializers.json import DjangoJSONEncoder

from . import signals, store
from .codecs import PROCESSOR_PREFIX
from .conf import memdb_settings
from .exceptions import CodecError, RestoreError, SpoolError
from .registry import ModelType, model_name_of

FORMAT = "django-json"

Processor = Callable[[dict[str, Any]], Any]


class _Encoder(DjangoJSONEncoder):
    """Django's JSON encoder, except that datetimes and times keep their microseconds
    (it cuts them to milliseconds, so a restore would change the stored values)."""

    def default(self, o: Any) -> Any:
        if isinstance(o, datetime.datetime) or (isinstance(o, datetime.time) and not o.tzinfo):
            text = o.isoformat()
            return text.removesuffix("+00:00") + "Z" if text.endswith("+00:00") else text
        return super().default(o)


def hooks_connected() -> bool:
    """True when a ``store_save`` receiver may add processors (the 0.0.6 path is needed)."""
    return signals.store_save.has_listeners(object)


def processor_name(processor: Processor) -> str:
    module = getattr(processor, "__module__", None) or "?"
    name = getattr(processor, "__qualname__", None) or type(processor).__qualname__
    return f"{PROCESSOR_PREFIX}{module}.{name}"


def _arguments(model: ModelType, data: Any, process: str) -> dict[str, Any]:
    return {
        "data": data,
        "application": model._meta.app_label,
        "model": model_name_of(model),
        "database": memdb_settings.ALIAS,
        "processors": [],
        "process": process,
    }


def _run(processors: list[Processor], arguments: dict[str, Any], label: str, error: type) -> None:
    for processor in processors:
        try:
            processor(arguments)
        except Exception as exc:
            raise error(
                f"{label}: processor {processor_name(processor)[len(PROCESSOR_PREFIX) :]!r} "
                f"failed to {arguments['process']}: {store.describe(exc)}"
            ) from exc


def encode(model: ModelType, conn: sqlite3.Connection) -> tuple[int, int, bytes, list[str]]:
    """``(seq, rows, payload, processor names)`` of ``model``'s table, the 0.0.6 way."""
    label = model._meta.label
    seq = store.read_seq(conn, model._meta.db_table)
    queryset = model._base_manager.using(memdb_settings.ALIAS).order_by("pk")
    data = json.loads(json.dumps(serializers.serialize("python", queryset), cls=_Encoder))
    process = getattr(settings, "MEMDB_PROCESS_ENCODE", signals.MEMDB_PROCESS_ENCODE)
    arguments = _arguments(model, data, process)
    signals.store_save.send(object, kwargs=arguments)
    processors = list(arguments["processors"])
    _run(processors, arguments, label, SpoolError)
    payload = arguments["data"]
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    elif not isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            payload = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise SpoolError(
                f"{label}: the store_save processors left data that is neither bytes, str "
                f"nor JSON-ready ({exc})"
            ) from exc
    return seq, len(data), bytes(payload), [processor_name(p) for p in processors]


def decode(model: ModelType, payload: bytes, recorded: list[str]) -> bytes:
    """The one-table SQLite image of a ``django-json`` payload (codecs already undone)."""
    label = model._meta.label
    process = getattr(settings, "MEMDB_PROCESS_DECODE", signals.MEMDB_PROCESS_DECODE)
    arguments = _arguments(model, payload, process)
    signals.store_load.send(object, kwargs=arguments)
    processors = list(arguments["processors"])
    supplied = [processor_name(p) for p in processors]
    if supplied != recorded:
        raise RestoreError(
            f"{label}: the snapshot was saved through processors {_names(recorded)}, but the "
            f"store_load receivers supplied {_names(supplied)}; connect the same hooks"
        )
    _run(processors, arguments, label, RestoreError)
    data = arguments["data"]
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data).decode("utf-8")
        if isinstance(data, str):
            data = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RestoreError(
            f"{label}: after the processors the snapshot is not JSON ({exc}); "
            f"processors {_names(recorded)}"
        ) from exc
    if not isinstance(data, list):
        raise RestoreError(f"{label}: the decoded snapshot is not a list of rows")
    return _image(model, data)


def _names(names: list[str]) -> str:
    return "[" + ", ".join(n[len(PROCESSOR_PREFIX) :] for n in names) + "]" if names else "none"


def _image(model: ModelType, rows: list[Any]) -> bytes:
    """Rows in Django's serialization format as a one-table SQLite image.

    The image holds the columns the snapshot has values for, so a field added since is
    left to restore's column mapping (its default, NULL, or a clear error), exactly as
    for a ``sqlite-table`` snapshot.
    """
    label = model._meta.label
    stored = {name for row in rows if isinstance(row, dict) for name in row.get("fields", {})}
    every = [f for f in model._meta.local_concrete_fields if f.column]
    fields = [f for f in every if f.primary_key or f.name in stored or not rows]
    known = {f.name for f in model._meta.get_fields()} | {f.attname for f in every}
    dropped = sorted(stored - known)
    if dropped:
        from .restore import SchemaDriftWarning

        warnings.warn(
            f"{label}: the snapshot has field(s) {', '.join(dropped)} that the model no "
            f"longer has; their values are dropped",
            SchemaDriftWarning,
            stacklevel=2,
        )
        store.logger.warning("memdb: %s: dropped snapshot field(s) %s", label, ", ".join(dropped))
    connection = store.image_connection()
    try:
        objects = [
            item.object
            for item in serializers.deserialize(
                "python", rows, using=memdb_settings.ALIAS, ignorenonexistent=True
            )
        ]
        values = [
            [f.get_db_prep_save(getattr(obj, f.attname), connection) for f in fields]
            for obj in objects
        ]
    except Exception as exc:
        raise RestoreError(f"{label}: the snapshot's rows do not fit the model ({exc})") from exc
    image = sqlite3.connect(":memory:")
    try:
        table = store.quote(model._meta.db_table)
        columns = ", ".join(store.quote(str(f.column)) for f in fields)
        image.execute(f"CREATE TABLE {table} ({columns})")
        image.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(fields))})", values)
        image.commit()
        return image.serialize()
    except sqlite3.Error as exc:  # pragma: no cover - values come from Django's own prep
        raise CodecError(f"{label}: cannot rebuild the table from the snapshot ({exc})") from exc
    finally:
        image.close()
