"""The child process of the crash harness (``tests/crash_harness.py``): it gets SIGKILLed.

Two ways to start it, with the environment of ``tests.children.child_env``::

    python tests/live/crash_child.py zygote        # reads commands on stdin, forks per command
    python tests/live/crash_child.py run '<json>'  # runs one command in this interpreter

The zygote sets Django up once and then forks one child per command, as gunicorn does
with ``--preload``: it never opens a database itself, so every forked child opens the
default database and builds (and restores) its memory database from nothing, exactly as
a freshly started interpreter does, without paying Django's start-up for each of the
hundreds of kills. ``run`` is the plain fresh interpreter, for comparison.

Everything a child has to say is one JSON line on stdout with ``ev`` (the event) and
``pid``, printed and flushed at once, so whatever it printed before SIGKILL reached the
parent. The zygote adds ``forked`` and ``exit`` lines for its children.

The table is ``testapp.Score`` in *versions*: version ``v`` has ``rows(v) = base + step
* v`` rows with ids 1..rows(v), every row ``points = v`` and ``player = "v<v>-<id>"``;
version 0 is the empty table. ``fingerprint`` measures the table with SQL so that a mix
of two versions, a missing or extra row, or a wrong value is seen.

Commands (``role`` and its keys):

- ``spooler`` (``base``, ``step``, ``spools``: 0 for no limit): report what the first use
  of the memory database restored (``ready``), then rewrite the table to the next version
  and ``api.spool`` it, again and again, with ``spool`` before each spool, ``write`` at the
  spool's first query on the default database and ``spooled`` when it returned;
  ``sabotage`` (``discard`` or ``torn``) makes the second spool break the promise on
  purpose and the child SIGKILL itself, to show that the harness notices;
- ``restorer`` (``hold``: seconds to stay up afterwards): ``start``, then the first use of
  the memory database (which restores), marking ``query`` (first default-database query),
  ``pre_restore`` and ``post_restore`` as they happen, then ``restored`` with the
  fingerprint; ``sabotage`` spools half the rows back and SIGKILLs itself;
- ``meta``: the stored snapshot's ``generation``, ``checksum``, ``row_count`` and
  ``size``, read from ``PersistentStorage`` without opening the memory database.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

LABEL = "testapp.Score"
#: A child gives up after this long on its own, should its parent have died.
LIFETIME = 120.0


def emit(ev: str, **data: Any) -> None:
    """One JSON line in one ``write(2)``: a SIGKILL never leaves half a line in the pipe."""
    line = json.dumps({"ev": ev, "pid": os.getpid(), "t": time.time(), **data}) + "\n"
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), line.encode())


def rows_of(version: int, base: int, step: int) -> int:
    return 0 if version == 0 else base + step * version


def _table() -> str:
    from tests.testapp.models import Score

    return Score._meta.db_table


def player_sql(version: str, key: str) -> str:
    """SQL for the player a row of a version has, ``v<version>-<key>``, in the memory
    database's words (MariaDB's ``||`` is OR)."""
    from django.db import connections

    if connections["memdb"].vendor == "mysql":
        return f"CONCAT('v', {version}, '-', {key})"
    return f"'v' || {version} || '-' || {key}"


def fingerprint() -> dict[str, Any]:
    """The table measured in one SQL statement (on Django's memory connection)."""
    from django.db import connections

    memory = connections["memdb"]
    expected = player_sql("points", "id")  # the player each row should have
    with memory.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), min(id), max(id), min(points), max(points), "
            f"coalesce(sum(CASE WHEN player <> {expected} THEN 1 ELSE 0 END), 0) "
            f"FROM {memory.ops.quote_name(_table())}"
        )
        count, min_id, max_id, min_v, max_v, bad = cursor.fetchone()
    return {
        "count": count,
        "min_id": min_id,
        "max_id": max_id,
        "min_version": min_v,
        "max_version": max_v,
        "bad_players": int(bad),  # a Decimal on MariaDB
    }


def table_info() -> dict[str, Any]:
    from memdb import api

    (info,) = api.tables(LABEL)
    return {
        "restore_state": info.restore_state,
        "restore_error": info.restore_error,
        "generation": info.generation,
        "snapshot_rows": info.snapshot_rows,
    }


def rewrite(have: int, new: int, base: int, step: int) -> None:
    """Turn the table (ids 1..``have``) into version ``new``, in one transaction."""
    from django.db import connections, transaction

    table = _table()
    want = rows_of(new, base, step)
    with transaction.atomic(using="memdb"), connections["memdb"].cursor() as cursor:
        cursor.execute(
            f'UPDATE "{table}" SET points = %s, player = {player_sql("%s", "id")}', [new, new]
        )
        if want > have:
            if connections["memdb"].vendor == "mysql":  # its default stops at 1,000
                cursor.execute("SET SESSION max_recursive_iterations = %s", [want])
            cursor.execute(
                f'INSERT INTO "{table}" (id, player, points) '
                "WITH RECURSIVE k(i) AS (SELECT %s UNION ALL SELECT i + 1 FROM k WHERE i < %s) "
                f"SELECT i, {player_sql('%s', 'i')}, %s FROM k",
                [have + 1, want, new, new],
            )
        elif want < have:
            cursor.execute(f'DELETE FROM "{table}" WHERE id > %s', [want])


def sabotaged_spool(sabotage: str, have: int, version: int) -> None:
    """Replace the snapshot the wrong way, then die half way (the harness's own test).

    ``discard``: delete the stored snapshot before writing the next one. ``torn``: spool
    the table half rewritten to the next version.
    """
    from django.db import connections, transaction

    from memdb import api

    new = version + 1
    if sabotage == "torn":
        with transaction.atomic(using="memdb"), connections["memdb"].cursor() as cursor:
            cursor.execute(
                f'UPDATE "{_table()}" SET points = %s, player = {player_sql("%s", "id")} '
                "WHERE id <= %s",
                [new, new, have // 2],
            )
    emit("spool", v=new)
    if sabotage == "discard":
        api.discard(LABEL)
    elif sabotage == "torn":
        api.spool(LABEL)
    else:
        raise ValueError(f"unknown sabotage {sabotage!r}")
    os.kill(os.getpid(), signal.SIGKILL)


def role_spooler(base: int, step: int, spools: int = 0, sabotage: str | None = None) -> None:
    from django.db import connections

    from memdb import api

    found = fingerprint()  # the first use of the memory database: it restores
    emit("ready", **found, **table_info())
    version, have = found["max_version"] or 0, found["count"]
    marked = {"on": False, "done": False}

    def mark_write(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if marked["on"] and not marked["done"]:
            marked["done"] = True
            emit("write", v=version)
        return execute(sql, params, many, context)

    deadline = time.monotonic() + LIFETIME
    done = 0
    while time.monotonic() < deadline and (not spools or done < spools):
        if sabotage and done == 1:
            sabotaged_spool(sabotage, have, version)
        rewrite(have, version + 1, base, step)
        version += 1
        have = rows_of(version, base, step)
        emit("spool", v=version)
        marked.update(on=True, done=False)
        started = time.perf_counter()
        with connections["default"].execute_wrapper(mark_write):
            (result,) = api.spool(LABEL)
        marked["on"] = False
        emit(
            "spooled",
            v=version,
            generation=result.generation,
            rows=result.rows,
            bytes=result.bytes,
            ms=round((time.perf_counter() - started) * 1000, 3),
        )
        done += 1
    emit("done", v=version)


def role_restorer(hold: float = 0.0, sabotage: bool = False) -> None:
    from django.db import connections

    from memdb import signals

    seen = {"query": False}

    def mark_query(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if not seen["query"]:
            seen["query"] = True
            emit("query")
        return execute(sql, params, many, context)

    def pre(**kwargs: Any) -> None:
        emit("pre_restore")

    def post(**kwargs: Any) -> None:
        emit("post_restore", rows=kwargs["result"].rows)

    signals.pre_restore.connect(pre, weak=False)
    signals.post_restore.connect(post, weak=False)
    emit("start")
    started = time.perf_counter()
    with connections["default"].execute_wrapper(mark_query):
        found = fingerprint()
    ms = round((time.perf_counter() - started) * 1000, 3)
    emit("restored", ms=ms, **found, **table_info())
    if sabotage:
        # What 0.0.6 did: the stored snapshot ends up holding part of the rows.
        from memdb import api
        from tests.testapp.models import Score

        Score.objects.filter(id__gt=found["count"] // 2).delete()
        api.spool(LABEL)
        os.kill(os.getpid(), signal.SIGKILL)
    if hold:
        time.sleep(hold)
        emit("held", **table_info())


def role_meta() -> None:
    from memdb import store
    from memdb.models import PersistentStorage

    app_label, model_name = LABEL.split(".")
    snapshots = list(
        PersistentStorage.objects.filter(app_label=app_label, model_name=model_name)
        .order_by("generation")
        .values("generation", "checksum", "row_count", "size")
    )
    emit("meta", snapshots=snapshots, memory_opened=store.used_in_this_process())


ROLES = {"spooler": role_spooler, "restorer": role_restorer, "meta": role_meta}


def perform(command: dict[str, Any]) -> None:
    command = dict(command)
    ROLES[command.pop("role")](**command)


def setup() -> None:
    import django

    django.setup()


def new_host() -> None:
    """With the host store (MEMDB_TEST_STORE=host), a forked child gets a store file of
    its own, as a fresh interpreter does: each start is a new host (its memory lost
    with the killed one), which is what the harness's promises are about."""
    from django.conf import settings

    if settings.MEMDB.get("STORE") == "host" and not os.environ.get("MEMDB_TEST_HOST_PATH"):
        alias = settings.MEMDB.get("ALIAS", "memdb")
        directory = os.environ["MEMDB_TEST_HOST_DIR"]
        settings.DATABASES[alias]["NAME"] = os.path.join(directory, f"{os.getpid()}.sqlite3")
    from tests.server_stores import own_server_store, wants_own_server_store

    if wants_own_server_store():  # the same for the server store: a store of its own
        alias = settings.MEMDB.get("ALIAS", "memdb")
        own_server_store(settings.DATABASES[alias], os.environ.get("MEMDB_TEST_DB", "sqlite"))


def zygote() -> None:
    """Fork one child per command line on stdin; report each child's pid and its end."""
    setup()
    from memdb import store

    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        if store.used_in_this_process():  # pragma: no cover - a harness bug
            raise RuntimeError("the zygote opened the memory database: children would inherit it")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                new_host()
                perform(command)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        emit("forked", child=pid)
        _, status = os.waitpid(pid, 0)
        emit("exit", child=pid, status=os.waitstatus_to_exitcode(status))


def main(argv: list[str]) -> None:
    if argv[1:2] == ["zygote"]:
        zygote()
    elif argv[1:2] == ["run"] and len(argv) == 3:
        setup()
        perform(json.loads(argv[2]))
    else:
        sys.exit(f"usage: {argv[0]} zygote | run '<json command>'")


if __name__ == "__main__":
    main(sys.argv)
