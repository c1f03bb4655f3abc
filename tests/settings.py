"""Settings for the test suite. The default database comes from the environment:

MEMDB_TEST_DB=sqlite (default) | postgresql | mysql; PostgreSQL and MariaDB are reached
on 127.0.0.1 (MEMDB_TEST_DB_HOST/PORT/USER/PASSWORD/NAME override).
"""

import os
import tempfile

import memdb

SECRET_KEY = "memdb-tests"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "tests.testapp",
]

_kind = os.environ.get("MEMDB_TEST_DB", "sqlite")
_env = os.environ.get
if _kind == "sqlite":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _env(
                "MEMDB_TEST_DB_NAME", os.path.join(os.path.dirname(__file__), "default.sqlite3")
            ),
            # A file, not Django's default shared-cache memory database: background
            # spools then wait on SQLite's busy timeout like they would in production.
            "TEST": {
                "NAME": _env(
                    "MEMDB_TEST_DB_TEST_NAME",
                    os.path.join(tempfile.gettempdir(), f"memdb-test-{os.getpid()}.sqlite3"),
                )
            },
            "OPTIONS": {"timeout": 20},
        }
    }
elif _kind == "postgresql":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _env("MEMDB_TEST_DB_NAME", "test"),
            "USER": _env("MEMDB_TEST_DB_USER", "postgres"),
            "PASSWORD": _env("MEMDB_TEST_DB_PASSWORD", ""),
            "HOST": _env("MEMDB_TEST_DB_HOST", "127.0.0.1"),
            "PORT": _env("MEMDB_TEST_DB_PORT", "5432"),
            "TEST": {"NAME": _env("MEMDB_TEST_DB_TEST_NAME")},
        }
    }
elif _kind == "mysql":
    import pymysql

    pymysql.install_as_MySQLdb()
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": _env("MEMDB_TEST_DB_NAME", "test"),
            "USER": _env("MEMDB_TEST_DB_USER", "root"),
            "PASSWORD": _env("MEMDB_TEST_DB_PASSWORD", ""),
            "HOST": _env("MEMDB_TEST_DB_HOST", "127.0.0.1"),
            "PORT": _env("MEMDB_TEST_DB_PORT", "3306"),
            "OPTIONS": {"charset": "utf8mb4"},
            "TEST": {"NAME": _env("MEMDB_TEST_DB_TEST_NAME"), "CHARSET": "utf8mb4"},
        }
    }
else:
    raise RuntimeError(f"MEMDB_TEST_DB={_kind!r}: expected sqlite, postgresql or mysql")

MEMDB = {
    "POLICY": os.environ.get("MEMDB_TEST_POLICY", "manual"),
    "INTERVAL": float(os.environ.get("MEMDB_TEST_INTERVAL", "0.2")),
    "FLUSH_ON_EXIT": os.environ.get("MEMDB_TEST_FLUSH_ON_EXIT", "0") == "1",
    "LOCK_TIMEOUT": 20.0,
}

memdb.configure(globals())
