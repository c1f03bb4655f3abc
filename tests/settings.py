"""Settings for the test suite. The default database comes from the environment:

MEMDB_TEST_DB=sqlite (default) | postgresql | mysql; PostgreSQL and MariaDB are reached
on 127.0.0.1 (MEMDB_TEST_DB_HOST/PORT/USER/PASSWORD/NAME override), without TLS: each
transactional test connects anew, and TLS cost 70 ms a connection with PyMySQL (which
loads the system's certificates each time), a fifth of an empty test's time
(MEMDB_TEST_DB_TLS=1 asks for it: sslmode "prefer", PyMySQL's default). The restart tests
set MEMDB_TEST_POLICY, _INTERVAL, _FLUSH_ON_EXIT, _CODECS and _FERNET_KEYS for their
child processes.
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
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.admin",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "tests.testapp",
]
# Sessions and authentication for the REST tests (tests/test_rest_api.py).
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
# The admin (tests/test_admin.py, tests/test_admin_browser.py).
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
# Logins in the admin and REST tests: Django's default hasher takes a third of a second
# a password here, by design.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STATIC_URL = "static/"
ROOT_URLCONF = "tests.urls"
# As the example project: sessions (CSRF enforced on POST), tokens and basic auth. No
# throttle rate: tests that throttle set DEFAULT_THROTTLE_RATES themselves.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
# Swagger UI for the browser test, served from the sidecar package (no CDN).
SPECTACULAR_SETTINGS = {
    "TITLE": "django-memdb control API",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

_kind = os.environ.get("MEMDB_TEST_DB", "sqlite")
_env = os.environ.get
_tls = _env("MEMDB_TEST_DB_TLS") == "1"  # see the docstring
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
            "OPTIONS": {} if _tls else {"sslmode": "disable"},
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
            "OPTIONS": {
                "charset": "utf8mb4",
                **({} if _tls else {"ssl_disabled": True}),
            },
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
# Comma-separated; only set when given, so the defaults stay those of memdb.
if _env("MEMDB_TEST_CODECS"):
    MEMDB["CODECS"] = _env("MEMDB_TEST_CODECS", "").split(",")
if _env("MEMDB_TEST_FERNET_KEYS"):
    MEMDB["FERNET_KEYS"] = _env("MEMDB_TEST_FERNET_KEYS", "").split(",")
# MEMDB_TEST_STORE=host: every process gets its own host store file (so a child process
# started by a test is a new host, as after a reboot; MEMDB_TEST_HOST_PATH names one file
# for processes that share it) in one directory per test run,
# which child processes inherit and the run removes at its end (tests/conftest.py).
if _env("MEMDB_TEST_STORE", "process") == "host":
    if not _env("MEMDB_TEST_HOST_DIR") and not _env("MEMDB_TEST_HOST_PATH"):
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        os.environ["MEMDB_TEST_HOST_DIR"] = tempfile.mkdtemp(prefix="memdb-test-host-", dir=shm)
    MEMDB["STORE"] = "host"
    MEMDB["HOST_KEEP_ON_REBOOT"] = _env("MEMDB_TEST_HOST_KEEP", "0") == "1"
    MEMDB["HOST_PATH"] = _env("MEMDB_TEST_HOST_PATH") or os.path.join(
        os.environ["MEMDB_TEST_HOST_DIR"], f"{os.getpid()}.sqlite3"
    )  # a child given its file makes no directory: nobody would remove it

# MEMDB_TEST_STORE=server: the memory tables are UNLOGGED (PostgreSQL) or MEMORY
# (MariaDB) tables on the default database's server. A child process a test starts gets
# a server store of its own (a schema, or a database, named after its pid: as if the
# server had lost the tables since the last process), so a restart loses the memory
# tables as with the other stores; MEMDB_TEST_SERVER_SHARED=1 (tests/test_server_store.py)
# keeps every child on the one store of its database.
if _env("MEMDB_TEST_STORE") == "server":
    MEMDB["STORE"] = "server"

memdb.configure(globals())

if MEMDB.get("STORE") == "server" and _kind == "mysql":
    # A MEMORY table holds at most the max_heap_table_size of the session that made it
    # (16 MiB by default): the crash harness's 300,000 rows need more (README).
    DATABASES["memdb"]["OPTIONS"] = {
        **DATABASES["memdb"].get("OPTIONS", {}),
        "init_command": "SET SESSION max_heap_table_size = 1073741824",
    }

from tests.server_stores import own_server_store, wants_own_server_store  # noqa: E402

if wants_own_server_store():
    own_server_store(DATABASES["memdb"], _kind)
