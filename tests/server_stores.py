"""A server store of its own for a test process (``MEMDB_TEST_STORE=server``).

With the server store the memory tables outlive a process: they live on the database
server. The restart and crash tests start a new process to stand for a restart that
lost the memory tables, so each such process gets a store of its own on the server, as
if the server had lost the tables since the last one: a schema named after its pid
(PostgreSQL, through the connection's ``search_path``) or a database (MariaDB), made
here and dropped with the test's database (``tests.children.fresh_database``).
"""

from __future__ import annotations

import os
from typing import Any


def own_server_store(memory: dict[str, Any], kind: str) -> None:
    """Point the memory alias's settings ``memory`` at a store of this process's own."""
    pid = os.getpid()
    if kind == "postgresql":
        import psycopg

        schema = f"memdb_p{pid}"
        with psycopg.connect(
            host=memory.get("HOST") or "127.0.0.1",
            port=memory.get("PORT") or 5432,
            user=memory.get("USER"),
            password=memory.get("PASSWORD") or None,
            dbname=memory["NAME"],
            autocommit=True,
        ) as conn:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        memory["OPTIONS"] = {**memory.get("OPTIONS", {}), "options": f"-c search_path={schema}"}
        return
    import pymysql

    name = f"{memory['NAME']}_p{pid}"
    conn = pymysql.connect(
        host=memory.get("HOST") or "127.0.0.1",
        port=int(memory.get("PORT") or 3306),
        user=memory.get("USER"),
        password=memory.get("PASSWORD") or "",
        autocommit=True,
    )
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
    memory["NAME"] = name


def wants_own_server_store() -> bool:
    """A child process of a server-store run, unless told to share its database's store."""
    env = os.environ.get
    return (
        env("MEMDB_TEST_STORE") == "server"
        and bool(env("MEMDB_TEST_DB_NAME"))  # a child: the test runner's own process has none
        and env("MEMDB_TEST_SERVER_SHARED", "0") != "1"
    )


def on_mariadb_server_store() -> bool:
    """This run keeps the memory tables on MariaDB's server store: ``MEMORY`` tables,
    which have neither transactions nor foreign keys and cannot hold TEXT, BLOB or JSON
    columns (their models stay in InnoDB, memdb.W004)."""
    from django.conf import settings

    return settings.MEMDB.get("STORE") == "server" and settings.DATABASES["default"][
        "ENGINE"
    ].endswith("mysql")
