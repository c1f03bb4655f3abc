"""django-memdb: keep chosen Django models in an in-memory database.

``memdb.configure(globals())`` at the end of a settings module wires everything up;
see the README for the fully manual way. Importing this package must stay cheap and
free of Django model imports, because settings modules import it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import MutableMapping
from typing import Any

__all__ = [
    "configure",
    "memory_database_name",
    "host_database_path",
    "PROCESS_ENCODE",
    "PROCESS_DECODE",
]
__version__ = "0.1.0"

#: Values of the 0.0.6 ``MEMDB_PROCESS_ENCODE`` / ``MEMDB_PROCESS_DECODE`` settings.
PROCESS_ENCODE = "encode"
PROCESS_DECODE = "decode"

ENGINE = "memdb.backends.sqlite3"
ROUTER = "memdb.router.MemDBRouter"
#: The engine of the ``server`` store's alias for each default database engine.
SERVER_ENGINES = {
    "django.db.backends.postgresql": "memdb.backends.postgresql",
    "django.db.backends.mysql": "memdb.backends.mysql",
}


def memory_database_name(alias: str) -> str:
    """The URI of the named shared-cache SQLite memory database used for ``alias``.

    The name is what lets every connection of the process (one per thread) share one
    database, where a plain ``:memory:`` would give each connection its own.
    """
    return f"file:memdb_{alias}?mode=memory&cache=shared"


def host_database_path(settings: MutableMapping[str, Any], alias: str = "memdb") -> str:
    """The file of the ``host`` store: ``MEMDB["HOST_PATH"]``, or one named after the
    alias and the default database (so two projects on one host never share one) in
    ``/dev/shm``, a RAM-backed file system (the temporary directory where there is none).
    """
    path = dict(settings.get("MEMDB", {})).get("HOST_PATH")
    if path:
        return str(path)
    default = dict(settings.get("DATABASES", {}).get("default", {}))
    identity = repr([default.get(k) for k in ("ENGINE", "NAME", "HOST", "PORT")])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return os.path.join(directory, f"django-memdb-{alias}-{digest}.sqlite3")


def configure(settings: MutableMapping[str, Any], *, alias: str = "memdb") -> None:
    """Add the memdb app, the memory database alias and the router to ``settings``.

    Call it as ``memdb.configure(globals())`` at the end of a settings module. It only
    adds what is missing, so an explicit ``DATABASES[alias]`` entry or router order wins.
    The alias is the store ``MEMDB["STORE"]`` names: a memory database of each process
    (``process``, the default), a file shared by the host's workers (``host``), or
    ``UNLOGGED`` tables on the default database's PostgreSQL server (``server``; with
    another default database no alias is added, and check ``memdb.E013`` says why).
    """
    apps = list(settings.get("INSTALLED_APPS", []))
    if "memdb" not in apps and "memdb.apps.MemDBConfig" not in apps:
        apps.append("memdb")
    settings["INSTALLED_APPS"] = apps

    databases = settings.setdefault("DATABASES", {})
    # The memory schema is built from the models at first use, not by migrations; the
    # test runner must not replay them either.
    kind = dict(settings.get("MEMDB", {})).get("STORE", "process")
    default = dict(databases.get("default", {}))
    if kind == "server" and default.get("ENGINE") in SERVER_ENGINES:
        # The default database's own server and database: the tables are made there,
        # UNLOGGED, and the test runner uses the default's test database for them.
        entry = {
            **{k: v for k, v in default.items() if k not in ("ENGINE", "TEST")},
            "TEST": {"MIGRATE": False, "MIRROR": "default"},
        }
        databases.setdefault(alias, {**entry, "ENGINE": SERVER_ENGINES[default["ENGINE"]]})
    elif kind == "host":
        path = host_database_path(settings, alias)
        stem, suffix = os.path.splitext(path)
        entry = {"NAME": path, "TEST": {"MIGRATE": False, "NAME": f"{stem}-test{suffix}"}}
    else:
        entry = {"NAME": memory_database_name(alias), "TEST": {"MIGRATE": False}}
    if kind != "server":
        databases.setdefault(alias, {"ENGINE": ENGINE, **entry})

    routers = list(settings.get("DATABASE_ROUTERS", []))
    if ROUTER not in routers:
        routers.insert(0, ROUTER)
    settings["DATABASE_ROUTERS"] = routers

    memdb_settings = dict(settings.get("MEMDB", {}))
    if alias != "memdb":
        memdb_settings.setdefault("ALIAS", alias)
    settings["MEMDB"] = memdb_settings
    settings.setdefault("MEMDB_PROCESS_ENCODE", PROCESS_ENCODE)
    settings.setdefault("MEMDB_PROCESS_DECODE", PROCESS_DECODE)
