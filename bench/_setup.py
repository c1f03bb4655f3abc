"""Set-up shared by the benchmarks: Django configured in-process, machine description.

Each benchmark calls ``configure_django`` once: a SQLite file in ``db_dir`` as the
default database, the models of ``bench/benchapp``, ``memdb.configure(...)`` and
``migrate`` for the default database. ``settings_for`` gives the same settings as a dict,
for a benchmark that configures other default databases or child processes itself.
"""

from __future__ import annotations

import os
import platform
import sqlite3
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # the bench app: ``benchapp``
if ROOT not in sys.path:
    sys.path.insert(1, ROOT)  # ``memdb`` when it is not installed


def settings_for(
    db_dir: str,
    *,
    memdb_settings: dict | None = None,
    databases: dict | None = None,
    default: dict | None = None,
    apps: tuple[str, ...] = ("benchapp.apps.BenchAppConfig",),
    use_memdb: bool = True,
) -> dict:
    """The settings the benchmarks configure, as a dict for ``settings.configure``.

    The default database is a SQLite file in ``db_dir`` unless ``default`` gives its
    ``DATABASES`` entry; ``databases`` adds aliases next to it. ``use_memdb=False``
    leaves ``memdb.configure`` out: the same project without the app.
    """
    conf: dict = {
        "DEBUG": False,
        "USE_TZ": True,
        "SECRET_KEY": "bench",
        "INSTALLED_APPS": list(apps),
        "DATABASES": {
            "default": default
            or {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": os.path.join(db_dir, "default.sqlite3"),
            },
            **(databases or {}),
        },
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
        "LOGGING_CONFIG": None,
    }
    if use_memdb:
        import memdb

        if memdb_settings is not None:
            conf["MEMDB"] = dict(memdb_settings)
        memdb.configure(conf)
    return conf


def configure_django(
    db_dir: str, *, memdb_settings: dict | None = None, databases: dict | None = None
) -> None:
    """``settings.configure`` + ``django.setup()`` + ``migrate`` of the default database.

    ``memdb_settings`` becomes ``settings.MEMDB``; ``databases`` adds aliases next to
    the default one (``memdb.configure`` adds the memory alias).
    """
    import django
    from django.conf import settings

    settings.configure(**settings_for(db_dir, memdb_settings=memdb_settings, databases=databases))
    django.setup()

    from django.core.management import call_command

    call_command("migrate", database="default", verbosity=0)


def machine_line() -> str:
    import django

    return (
        f"python {platform.python_version()} | Django {django.get_version()} | "
        f"sqlite {sqlite3.sqlite_version} | cpus {os.cpu_count()} | "
        f"{platform.machine()} {platform.system()} {platform.release()}"
    )


def load_line() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        return "load average: unknown"
    return f"load average (1/5/15 min): {one:.2f} {five:.2f} {fifteen:.2f}"


def memory_name() -> str:
    """The URI of the shared memory database (``DATABASES[MEMDB["ALIAS"]]["NAME"]``)."""
    from django.db import connections

    from memdb.conf import memdb_settings

    return connections[memdb_settings.ALIAS].settings_dict["NAME"]
