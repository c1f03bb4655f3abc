"""Settings of the example project: SQLite files, no server, memdb wired in at the end.

Environment variables exist for test runs (tests/live/run_schemathesis.py, the store
tests) and are unset normally: ``MEMDB_EXAMPLE_DB``, the path of the default SQLite
database instead of ``example/db.sqlite3``; ``MEMDB_EXAMPLE_SERVER`` (postgresql or
mysql) and ``MEMDB_EXAMPLE_SERVER_DB``, a database on that server at 127.0.0.1 as the
default database instead; ``MEMDB_EXAMPLE_THROTTLE``, the
rate of the "memdb" throttle scope instead of ``120/minute``; ``MEMDB_EXAMPLE_STORE``
and ``MEMDB_EXAMPLE_HOST_PATH`` (below).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "django-insecure-example-only-never-use-in-production"
DEBUG = True
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "example.wsgi.application"

# The default database holds Django's own tables and memdb's PersistentStorage
# (the snapshots of the persistent memory tables).
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("MEMDB_EXAMPLE_DB") or BASE_DIR / "db.sqlite3",
    }
}
if os.environ.get("MEMDB_EXAMPLE_SERVER") == "postgresql":  # the server store's tests
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ["MEMDB_EXAMPLE_SERVER_DB"],
        "HOST": "127.0.0.1",
        "USER": "postgres",
    }
elif os.environ.get("MEMDB_EXAMPLE_SERVER") == "mysql":
    import pymysql

    pymysql.install_as_MySQLdb()
    DATABASES["default"] = {
        "ENGINE": "django.db.backends.mysql",
        "NAME": os.environ["MEMDB_EXAMPLE_SERVER_DB"],
        "HOST": "127.0.0.1",
        "USER": "root",
        "OPTIONS": {"charset": "utf8mb4"},
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"memdb": {"handlers": ["console"], "level": "INFO"}},
}

# The REST control surface at /memdb/ (memdb_api): staff only. Deploy scripts use a
# token (manage.py drf_create_token <user>) or basic auth; browsers their session.
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # POST /memdb/spool and /memdb/restore share this scope (MEMDB["API_THROTTLE_SCOPE"]).
    "DEFAULT_THROTTLE_RATES": {"memdb": os.environ.get("MEMDB_EXAMPLE_THROTTLE") or "120/minute"},
}
SPECTACULAR_SETTINGS = {
    "TITLE": "django-memdb control API",
    "DESCRIPTION": "See and drive the in-memory tables of a django-memdb project.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Persistent memory tables are spooled by a background thread every INTERVAL seconds
# (and once more when the server stops cleanly).
MEMDB = {
    "POLICY": "interval",
    "INTERVAL": 1.0,
    # "host" shares the memory tables between the workers of a server (gunicorn
    # --workers 4) through a file in /dev/shm, "server" between every process of every
    # host on the default database's PostgreSQL server; the default, "process", gives
    # each process its own. MEMDB_EXAMPLE_STORE and MEMDB_EXAMPLE_HOST_PATH exist for tests.
    "STORE": os.environ.get("MEMDB_EXAMPLE_STORE") or "process",
}
if os.environ.get("MEMDB_EXAMPLE_HOST_PATH"):
    MEMDB["HOST_PATH"] = os.environ["MEMDB_EXAMPLE_HOST_PATH"]

import memdb  # noqa: E402

memdb.configure(globals())  # adds the "memdb" app, the "memdb" database alias and the router
