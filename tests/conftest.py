"""Shared fixtures.

Tests that spool or restore run as transactional tests on both databases: spool and
restore use a private connection to the memory database and refuse to run inside
``atomic()`` there, which a ``TestCase`` would wrap every test in. memdb's per-process
state (what each table's snapshot generation is, whether its restore failed) outlives
the table flush between such tests, so ``memdb_fresh_state`` gives each of them the
state of a freshly started process with no snapshots.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.test.utils import override_settings

from memdb import policies, store
from memdb.models import PersistentStorage
from memdb.registry import memory_models
from memdb.spooler import storage_alias
from tests.server_stores import on_mariadb_server_store

# MariaDB's MEMORY tables (the server store there) have neither transactions nor foreign
# keys: a rollback leaves their rows, so no test on them starts clean by itself.
MEMORY_TRANSACTIONS = not on_mariadb_server_store()


def _marked_databases(request: pytest.FixtureRequest, *, transactional: bool) -> list[str]:
    """The databases the test's ``django_db`` mark opens: none without a mark, or when
    ``transactional`` and the test is not."""
    marker = request.node.get_closest_marker("django_db")
    if marker is None or (transactional and not marker.kwargs.get("transaction", False)):
        return []
    databases = marker.kwargs.get("databases") or ["default"]
    return list(settings.DATABASES) if databases == "__all__" else list(databases)


def _on_memdb(request: pytest.FixtureRequest, *, transactional: bool) -> bool:
    alias = settings.MEMDB.get("ALIAS", "memdb")
    return alias in _marked_databases(request, transactional=transactional)


@contextmanager
def interval_stopped() -> Iterator[None]:
    """The interval spooler is stopped inside, and started again after if it was running."""
    was_running = policies._interval is not None and policies._interval.is_alive()
    policies.stop_interval()
    try:
        yield
    finally:
        if was_running:
            policies.process_started()


def reset_memdb() -> None:
    """Empty every memory table, mark it clean, drop all snapshots and forget table state.

    The interval spooler is stopped while this runs (so no spool of the old contents can
    land afterwards) and started again if it was running.
    """
    with interval_stopped(), store.raw_connection() as conn:

        def wipe() -> dict[str, int]:
            for model in reversed(memory_models()):  # children first
                conn.execute(f"DELETE FROM {store.quote(model._meta.db_table)}")
            return {m._meta.label: store.read_seq(conn, m._meta.db_table) for m in memory_models()}

        if store.current_state().kind == "server":
            from memdb import server

            server.empty(memory_models())  # TRUNCATE: no per-row work
            seqs = {m._meta.label: store.read_seq(conn, m._meta.db_table) for m in memory_models()}
        else:
            seqs = store.run_locked_transaction(conn, wipe, immediate=True)
        PersistentStorage.objects.using(storage_alias()).all().delete()
        store.reset_tables(store.current_state(), seqs)


@pytest.fixture(autouse=True)
def memdb_fresh_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Transactional tests on the memory alias start (and end) like a new process.

    Ending clean matters too: the flush pytest-django runs after a transactional test
    would otherwise leave interval tables dirty, and the interval spooler would store
    a snapshot into the next test.
    """
    if _on_memdb(request, transactional=True):
        request.getfixturevalue("_django_db_helper")
        reset_memdb()
        yield
        reset_memdb()
    elif not MEMORY_TRANSACTIONS and _on_memdb(request, transactional=False):
        # The test's rollback will not empty MEMORY tables: empty them before it writes.
        reset_memdb()
        yield
    elif request.node.get_closest_marker("django_db") is None:
        # No database access: the interval spooler would fail to read the tables (and
        # log it) if it ticked now.
        with interval_stopped():
            yield
    else:
        yield


#: Per database: the content types and permissions that migrate made (``_quick_post_flush``).
_POST_MIGRATE_ROWS: dict[str, tuple[list[Any], list[Any]]] = {}


@pytest.fixture(scope="session", autouse=True)
def _quick_post_flush() -> Iterator[None]:
    """After the flush that ends each transactional test, the content types and
    permissions come back as two bulk inserts of the rows migrate made, instead of
    Django's post_migrate handlers, which query app by app: 150 to 270 ms a test (on
    SQLite, PostgreSQL and MariaDB), a third of a suite's time. The rows are the same,
    and so are their ids. They are read at the start of the first transactional test on
    each database (``_remember_post_migrate_rows``); until then Django's handlers run."""
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType
    from django.core.management.commands import flush

    original = flush.emit_post_migrate_signal

    def emit_post_migrate_signal(verbosity: int, interactive: bool, db: str, **kwargs: Any) -> None:
        if db not in _POST_MIGRATE_ROWS or kwargs:
            original(verbosity, interactive, db, **kwargs)
            return
        content_types, permissions = _POST_MIGRATE_ROWS[db]
        ContentType.objects.using(db).bulk_create(content_types)
        Permission.objects.using(db).bulk_create(permissions)

    flush.emit_post_migrate_signal = emit_post_migrate_signal
    truncate = _delete_rather_than_truncate()
    yield
    flush.emit_post_migrate_signal = original
    truncate()


@pytest.fixture(autouse=True)
def _remember_post_migrate_rows(request: pytest.FixtureRequest) -> None:
    """Read the rows ``_quick_post_flush`` puts back, before the first transactional
    test on a database changes anything (the database is as migrate, or the last
    flush and Django's handlers, left it)."""
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType
    from django.db import router

    missing = [
        alias
        for alias in _marked_databases(request, transactional=True)
        if alias not in _POST_MIGRATE_ROWS
        and router.allow_migrate_model(alias, ContentType)
        and router.allow_migrate_model(alias, Permission)
    ]
    if not missing:
        return
    request.getfixturevalue("_django_db_helper")
    for alias in missing:
        _POST_MIGRATE_ROWS[alias] = (
            list(ContentType.objects.using(alias).order_by("pk")),
            list(Permission.objects.using(alias).order_by("pk")),
        )


def _delete_rather_than_truncate() -> Callable[[], None]:
    """On PostgreSQL, that flush empties the default database's tables with ``DELETE``
    rather than ``TRUNCATE``, which makes new files for every table: 165 ms a test, for
    tables of a few rows. Django's foreign keys there are deferred, so the order does
    not matter. Returns what puts ``TRUNCATE`` back."""
    if connections["default"].vendor != "postgresql":
        return lambda: None
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def sql_flush(
        self: Any,
        style: Any,
        tables: Any,
        *,
        reset_sequences: bool = False,
        allow_cascade: bool = False,
    ) -> list[str]:
        if self.connection.alias != "default" or reset_sequences or allow_cascade:
            return truncate(
                self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade
            )
        return [f"DELETE FROM {style.SQL_FIELD(self.quote_name(table))};" for table in tables]

    DatabaseOperations.sql_flush = sql_flush  # type: ignore[method-assign]

    def restore() -> None:
        DatabaseOperations.sql_flush = truncate  # type: ignore[method-assign]

    return restore


@pytest.fixture(scope="session", autouse=True)
def _close_server_store(django_db_setup: None) -> Iterator[None]:
    """On the server store, memdb's own connections are closed before the test
    databases are dropped (a database with sessions open cannot be)."""
    yield
    if settings.MEMDB.get("STORE") == "server":
        from memdb import server

        policies.stop_interval()
        server.close_all()


@pytest.fixture
def memdb_override() -> Callable[..., AbstractContextManager[Any]]:
    """``with memdb_override(CODECS=["zlib"]):`` overrides keys of ``settings.MEMDB``."""

    def override(**keys: Any) -> AbstractContextManager[Any]:
        return override_settings(MEMDB={**settings.MEMDB, **keys})

    return override


# The fresh default database of the child-process tests (tests/children.py).
from tests.children import default_db  # noqa: E402,F401


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out what this run cannot run; the summary counts them as deselected:
    with MEMDB_TEST_STORE=host or server, the tests about the process store alone
    (marked ``process_store``); with the server store, those about the SQLite stores
    (``sqlite_store``), and on MariaDB those that need transactions or foreign keys on
    the memory tables (``transactional_memory``); the tests of the server store
    (marked ``server_store``: they need PostgreSQL or MariaDB, and run in the process
    store's run of each)."""
    import os

    left_out = set()
    if settings.MEMDB.get("STORE", "process") != "process":
        left_out.add("process_store")
    if settings.MEMDB.get("STORE") == "server":
        left_out.add("sqlite_store")
    if not MEMORY_TRANSACTIONS:
        left_out.add("transactional_memory")
    # The server store's tests start children with settings of their own, whatever the
    # store of this run: they run once per database, in its process-store run.
    if os.environ.get("MEMDB_TEST_DB", "sqlite") not in ("postgresql", "mysql") or (
        settings.MEMDB.get("STORE", "process") != "process"
    ):
        left_out.add("server_store")
    other = [item for item in items if any(item.get_closest_marker(m) for m in left_out)]
    if other:
        config.hook.pytest_deselected(items=other)
        items[:] = [item for item in items if item not in other]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove the host store files of a MEMDB_TEST_STORE=host run (tests/settings.py)."""
    import os
    import shutil

    directory = os.environ.get("MEMDB_TEST_HOST_DIR")
    if (
        directory
        and settings.MEMDB.get("STORE") == "host"
        and not hasattr(session.config, "workerinput")
    ):
        shutil.rmtree(directory, ignore_errors=True)
