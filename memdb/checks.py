"""System checks for every misconfiguration memdb can see without a database query."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core import checks

from . import ENGINE, ROUTER
from .conf import DEFAULTS, POLICIES, STORES, memdb_settings

E001 = "memdb.E001"  # memory alias missing from DATABASES
E002 = "memdb.E002"  # router missing from DATABASE_ROUTERS
E003 = "memdb.E003"  # memory alias uses another engine
E004 = "memdb.E004"  # memory alias NAME is not a named shared-cache memory database
E005 = "memdb.E005"  # relation between a memory model and a default-database model
E006 = "memdb.E006"  # MEMDB["POLICY"] or a model's memdb_policy is not a policy
E007 = "memdb.E007"  # MEMDB["INTERVAL"] or MEMDB["LOCK_TIMEOUT"] is not a positive number
E008 = "memdb.E008"  # unknown codec in MEMDB["CODECS"] or a model's memdb_codecs
E009 = "memdb.E009"  # the fernet codec is used but MEMDB["FERNET_KEYS"] is empty
E010 = "memdb.E010"  # MEMDB["FERNET_KEYS"] holds an invalid key
E011 = "memdb.E011"  # the fernet codec is used but cryptography is not installed
E012 = "memdb.E012"  # MEMDB["CHUNK_SIZE"] is not a positive whole number of bytes
E013 = "memdb.E013"  # MEMDB["STORE"] is not a store
W001 = "memdb.W001"  # unknown key in MEMDB
W002 = "memdb.W002"  # test runner would replay migrations on the memory alias
W003 = "memdb.W003"  # the host store's file is not on a RAM-backed file system
W004 = "memdb.W004"  # a field a MariaDB MEMORY table cannot hold (the table is kept in InnoDB)
W005 = "memdb.W005"  # a database delete action (DB_CASCADE) on a MariaDB MEMORY table


@checks.register("memdb")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    alias = memdb_settings.ALIAS
    database = settings.DATABASES.get(alias)
    if database is None:
        errors.append(
            checks.Error(
                f"DATABASES has no entry for the memory alias {alias!r}.",
                hint="Call memdb.configure(globals()) at the end of settings, or add "
                f"DATABASES[{alias!r}] = {{'ENGINE': {ENGINE!r}, ...}} (see the README); "
                "MEMDB['ALIAS'] names the alias.",
                id=E001,
            )
        )
    elif memdb_settings.STORE == "server":
        errors.extend(_check_server(alias, database))
    else:
        if database.get("ENGINE") != ENGINE:
            errors.append(
                checks.Error(
                    f"DATABASES[{alias!r}]['ENGINE'] is {database.get('ENGINE')!r}, not "
                    f"the in-memory engine {ENGINE!r}.",
                    hint=f"Set DATABASES[{alias!r}]['ENGINE'] = {ENGINE!r}.",
                    id=E003,
                )
            )
        name = str(database.get("NAME") or "")
        if memdb_settings.STORE == "host":
            errors.extend(_check_host_name(alias, name))
        elif not (name.startswith("file:") and "mode=memory" in name and "cache=shared" in name):
            errors.append(
                checks.Error(
                    f"DATABASES[{alias!r}]['NAME'] is {name!r}, not a named shared-cache "
                    "memory database: each connection would get its own empty database.",
                    hint=f"Use memdb.memory_database_name({alias!r}), i.e. "
                    f"'file:memdb_{alias}?mode=memory&cache=shared', or set "
                    f"MEMDB['STORE'] = 'host' for a database file shared by the host's workers.",
                    id=E004,
                )
            )
        test_settings: Any = database.get("TEST") or {}
        if test_settings.get("MIGRATE", True) is not False:
            errors.append(
                checks.Warning(
                    f"DATABASES[{alias!r}]['TEST']['MIGRATE'] is not False: the test runner "
                    "would replay migrations on tables memdb already built from the models.",
                    hint=f"Set DATABASES[{alias!r}]['TEST'] = {{'MIGRATE': False}}.",
                    id=W002,
                )
            )
    if ROUTER not in getattr(settings, "DATABASE_ROUTERS", []):
        errors.append(
            checks.Error(
                f"{ROUTER!r} is not in DATABASE_ROUTERS: memory models would be stored "
                "in the default database.",
                hint=f"Add {ROUTER!r} to the start of DATABASE_ROUTERS.",
                id=E002,
            )
        )
    if memdb_settings.STORE not in STORES:
        errors.append(
            checks.Error(
                f"MEMDB['STORE'] is {memdb_settings.STORE!r}, not one of {', '.join(STORES)}.",
                hint="Set MEMDB['STORE'] to 'process' (the default), 'host' or 'server'.",
                id=E013,
            )
        )
    policy = memdb_settings.POLICY
    if policy not in POLICIES:
        errors.append(
            checks.Error(
                f"MEMDB['POLICY'] is {policy!r}, not one of {', '.join(POLICIES)}.",
                hint="Set MEMDB['POLICY'] to 'commit', 'interval' or 'manual'.",
                id=E006,
            )
        )
    for key in ("INTERVAL", "LOCK_TIMEOUT"):
        value = getattr(memdb_settings, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            errors.append(
                checks.Error(
                    f"MEMDB[{key!r}] is {value!r}; it must be a positive number of seconds.",
                    hint=f"Set MEMDB[{key!r}] to e.g. {DEFAULTS[key]}.",
                    id=E007,
                )
            )
    chunk = memdb_settings.CHUNK_SIZE
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1024:
        errors.append(
            checks.Error(
                f"MEMDB['CHUNK_SIZE'] is {chunk!r}; it must be a whole number of bytes, "
                f"at least 1024.",
                hint=f"Set MEMDB['CHUNK_SIZE'] to e.g. {DEFAULTS['CHUNK_SIZE']} (4 MiB).",
                id=E012,
            )
        )
    for key in memdb_settings.unknown_keys:
        errors.append(
            checks.Warning(
                f"MEMDB has an unknown key {key!r}; it is ignored.",
                hint=f"Known keys: {', '.join(sorted(DEFAULTS))}.",
                id=W001,
            )
        )
    errors.extend(_codec_errors("MEMDB['CODECS']", memdb_settings.CODECS, None))
    errors.extend(_fernet_errors())
    return errors


def _fernet_errors() -> list[checks.CheckMessage]:
    from .codecs import configured_names

    keys = memdb_settings.FERNET_KEYS
    used = "fernet" in configured_names()
    if not used and not keys:
        return []
    try:
        from cryptography.fernet import Fernet
    except ImportError:
        if not used:
            return []
        return [
            checks.Error(
                "The 'fernet' codec is configured but the cryptography package is not installed.",
                hint="pip install 'django-memdb[crypto]'.",
                id=E011,
            )
        ]
    errors: list[checks.CheckMessage] = []
    if used and not keys:
        errors.append(
            checks.Error(
                "The 'fernet' codec is configured but MEMDB['FERNET_KEYS'] is empty: no "
                "snapshot could be encrypted or decrypted.",
                hint="Set MEMDB['FERNET_KEYS'] = [key], newest first; make a key with "
                "cryptography.fernet.Fernet.generate_key().",
                id=E009,
            )
        )
    for number, key in enumerate(keys):
        try:
            Fernet(key)
        except (ValueError, TypeError) as exc:
            errors.append(
                checks.Error(
                    f"MEMDB['FERNET_KEYS'][{number}] is not a valid Fernet key ({exc}).",
                    hint="A key is 32 url-safe base64-encoded bytes, as made by "
                    "cryptography.fernet.Fernet.generate_key(); the value itself is not shown.",
                    id=E010,
                )
            )
    return errors


@checks.register(checks.Tags.models, "memdb")
def check_models(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from django.apps import apps
    from django.db.models import Model

    from .registry import is_memory_model

    errors: list[checks.CheckMessage] = []
    models: list[type[Model]] = (
        apps.get_models()
        if app_configs is None
        else [model for config in app_configs for model in config.get_models()]
    )
    for model in models:
        memory = is_memory_model(model)
        for field in model._meta.get_fields(include_hidden=False):
            if (
                not (field.is_relation and field.concrete or field.many_to_many)
                or field.auto_created
            ):
                continue
            target = field.related_model
            if not isinstance(target, type) or is_memory_model(target) == memory:
                continue
            where = "a memory model" if memory else "a default-database model"
            other = "a default-database model" if memory else "a memory model"
            errors.append(
                checks.Error(
                    f"{model._meta.label}.{field.name} relates {where} to {other} "
                    f"({target._meta.label}); the two live in different databases, so the "
                    "relation cannot be enforced or joined.",
                    hint=f"Tag {target._meta.label} like {model._meta.label}, or store the "
                    "key in a plain field (e.g. IntegerField) instead of a relation.",
                    obj=field,
                    id=E005,
                )
            )
        if not memory:
            continue
        policy = getattr(model, "memdb_policy", None)
        if policy is not None and policy not in POLICIES:
            errors.append(
                checks.Error(
                    f"{model._meta.label}.memdb_policy is {policy!r}, not one of "
                    f"{', '.join(POLICIES)}.",
                    hint="Set memdb_policy to 'commit', 'interval', 'manual' or None.",
                    obj=model,
                    id=E006,
                )
            )
        codecs = getattr(model, "memdb_codecs", None)
        if codecs is not None:
            errors.extend(_codec_errors(f"{model._meta.label}.memdb_codecs", codecs, model))
        errors.extend(_memory_engine_warnings(model))
    return errors


def _memory_engine_warnings(model: Any) -> list[checks.CheckMessage]:
    """On a MariaDB server store: each field a ``MEMORY`` table cannot hold.

    A column type there depends on the server's version, which Django reads from the
    server once per connection: this check connects to the memory alias's database.
    """
    from django.db import connections

    from . import SERVER_ENGINES
    from .server import unfit_fields

    alias = memdb_settings.ALIAS
    database = settings.DATABASES.get(alias, {})
    if memdb_settings.STORE != "server" or database.get("ENGINE") != SERVER_ENGINES.get(
        "django.db.backends.mysql"
    ):
        return []
    return _database_action_warnings(model) + [
        checks.Warning(
            f"{model._meta.label}.{f.name} ({type(f).__name__}) cannot live in a MariaDB "
            f"MEMORY table, which holds no TEXT, BLOB or JSON column: the table "
            f"{model._meta.db_table} is kept in InnoDB on the server instead (shared and "
            "restored like the others, but written to disk).",
            hint="Give it a bounded type (a CharField with max_length is a VARCHAR) to keep "
            "the table in memory, or silence memdb.W004 if InnoDB suits it.",
            obj=f,
            id=W004,
        )
        for f in unfit_fields(model, connections[alias])
    ]


def _database_action_warnings(model: Any) -> list[checks.CheckMessage]:
    """On a MariaDB server store: each key whose ``on_delete`` the database would run
    (Django 6.1's ``DB_CASCADE``, ``DB_SET_NULL``, ``DB_SET_DEFAULT``), which a
    ``MEMORY`` table, having no foreign keys, never runs."""
    from .registry import database_delete_keys

    return [
        checks.Warning(
            f"{model._meta.label}.{f.name} has on_delete={f.remote_field.on_delete}, which "
            "the database runs itself; MariaDB MEMORY tables have no foreign keys, so a "
            f"delete of a {f.related_model._meta.label} row would leave the rows of "
            f"{model._meta.db_table} pointing at it as they are.",
            hint="Use the ORM's own (models.CASCADE, models.SET_NULL), or silence "
            "memdb.W005 if both tables are kept in InnoDB (memdb.W004).",
            obj=f,
            id=W005,
        )
        for f in database_delete_keys(model)
    ]


def _codec_errors(where: str, names: Any, obj: Any) -> list[checks.CheckMessage]:
    from .codecs import as_chain, get_codec
    from .exceptions import CodecError

    errors: list[checks.CheckMessage] = []
    for name in as_chain(names):
        try:
            get_codec(name)
        except CodecError as exc:
            errors.append(
                checks.Error(
                    f"{where} names codec {name!r}: {exc}",
                    hint="Use a built-in codec name (zlib, gzip, bz2, lzma, fernet), a "
                    "registered one, or the import path of a codec class.",
                    obj=obj,
                    id=E008,
                )
            )
    return errors


def _check_server(alias: str, database: dict[str, Any]) -> list[checks.CheckMessage]:
    """The ``server`` store's alias must use a server engine, on the default's server."""
    from . import SERVER_ENGINES

    engine = database.get("ENGINE")
    if engine not in SERVER_ENGINES.values():
        default = settings.DATABASES.get("default", {}).get("ENGINE")
        return [
            checks.Error(
                f"MEMDB['STORE'] is 'server' but DATABASES[{alias!r}]['ENGINE'] is "
                f"{engine!r}, not a server store engine "
                f"({', '.join(SERVER_ENGINES.values())}).",
                hint="The server store keeps the tables on the default database's "
                "PostgreSQL server: make the default database PostgreSQL and let "
                "memdb.configure() add the alias"
                + (f" (the default database is {default!r})." if default else "."),
                id=E013,
            )
        ]
    return []


def _check_host_name(alias: str, name: str) -> list[checks.CheckMessage]:
    """The ``host`` store's NAME must be a file, ideally on a RAM-backed file system."""
    from .store import host_path

    if not name or "mode=memory" in name or name == ":memory:":
        return [
            checks.Error(
                f"MEMDB['STORE'] is 'host' but DATABASES[{alias!r}]['NAME'] is {name!r}, "
                "not a database file: the host's workers would not share it.",
                hint=f"Let memdb.configure() set it (MEMDB['HOST_PATH'] names the file), or set "
                f"DATABASES[{alias!r}]['NAME'] to a path such as '/dev/shm/{alias}.sqlite3'.",
                id=E004,
            )
        ]
    path = host_path(name)
    fs = _filesystem_of(os.path.dirname(os.path.abspath(path)))
    if fs is not None and fs not in ("tmpfs", "ramfs"):
        return [
            checks.Warning(
                f"The host store's file {path!r} is on a {fs} file system, not in memory: "
                "its writes go to disk.",
                hint="Put it on a RAM-backed file system such as /dev/shm (MEMDB['HOST_PATH']).",
                id=W003,
            )
        ]
    return []


def _filesystem_of(directory: str) -> str | None:
    """The type of the file system ``directory`` is on (Linux), or None if unknown."""
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return None
    best: tuple[str, str] | None = None
    for point, fs in mounts:
        inside = directory == point or directory.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[0])):
            best = (point, fs)
    return best[1] if best else None
