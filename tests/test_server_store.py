"""The server store (``MEMDB["STORE"] = "server"``): tables on the PostgreSQL or MariaDB
server that every process of every host shares (UNLOGGED, or MEMORY).

Every test here runs its processes as real children pointed at a fresh database on the
suite's default database server (``default_db``), each on the server store, whatever
store the suite itself runs on; they are collected when that server is PostgreSQL or
MariaDB (``MEMDB_TEST_DB``, as ``.ci/run`` runs them; ``server_store`` marker). A server
that lost the tables is made the way a crash (PostgreSQL) or a restart (MariaDB) leaves
them: every UNLOGGED or MEMORY table emptied (``lose_server``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.core import checks as django_checks
from django.test.utils import override_settings

from memdb import checks as memdb_checks
from memdb import server, store
from tests.children import (
    BOOT_RACE,
    COMMIT_WRITER,
    KILLED_LEADER,
    PRELUDE,
    TIMEOUT,
    _server_connection,
    check_quiet,
    child_env,
    example_env,
    finish_together,
    last_json,
    run,
    run_process,
    start_gunicorn,
    start_process,
    start_together,
)
from tests.live.run_schemathesis import SETUP, manage

KIND = os.environ.get("MEMDB_TEST_DB", "sqlite")
server_store = pytest.mark.server_store


def server_env(default_db: str, **overrides: str) -> dict[str, str]:
    """A child on the server store of ``default_db`` (every such child shares it)."""
    return child_env(
        default_db, MEMDB_TEST_STORE="server", MEMDB_TEST_SERVER_SHARED="1", **overrides
    )


@contextmanager
def database(name: str) -> Iterator[Any]:
    """A cursor of an autocommit connection to the children's database ``name``."""
    admin = _server_connection(KIND)
    try:
        if KIND == "postgresql":
            import psycopg

            params = {k: v for k, v in admin.info.get_parameters().items() if k != "dbname"}
            conn = psycopg.connect(**params, dbname=name, autocommit=True)
        else:
            admin.select_db(name)
            conn = admin
        with conn.cursor() as cursor:
            yield cursor
        if conn is not admin:
            conn.close()
    finally:
        admin.close()


def query(name: str, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    with database(name) as cursor:
        cursor.execute(sql, params)
        return [tuple(row) for row in cursor.fetchall()]


def in_memory(name: str) -> list[str]:
    """The tables the server empties when it crashes (UNLOGGED) or restarts (MEMORY)."""
    if KIND == "postgresql":
        sql = "SELECT relname FROM pg_class WHERE relpersistence = 'u' AND relkind = 'r'"
    else:
        sql = (
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "DATABASE() AND engine = 'MEMORY'"
        )
    return [row[0] for row in query(name, sql)]


def lose_server(name: str) -> list[str]:
    """What a crash of PostgreSQL does to UNLOGGED tables, a restart of MariaDB to
    MEMORY tables: all of them emptied (their sequences and counters too). Returns
    their names."""
    tables = in_memory(name)
    with database(name) as cursor:
        if KIND == "postgresql":
            # One statement: a process that notices the loss at once, and restores,
            # does not see the tables emptied and their sequences restarted apart.
            names = ", ".join(f'"{t}"' for t in tables)
            cursor.execute(f"TRUNCATE {names} RESTART IDENTITY")
        else:
            for table in tables:
                cursor.execute(f"TRUNCATE TABLE `{table}`")
    return tables


def stored_generation(name: str, label: str) -> tuple[Any, ...]:
    """(latest generation, its row count) of ``label`` in storage."""
    app, model = label.split(".")
    (row,) = query(
        name,
        "SELECT generation, row_count FROM memdb_persistentstorage WHERE app_label = %s "
        "AND model_name = %s ORDER BY generation DESC LIMIT 1",
        (app, model),
    )
    return row


SCORE_INFO = """
(info,) = api.tables("testapp.Score")
report(rows=rows(Score), store=info.store, warning=info.warning, leader=info.leader,
       generation=info.generation, dirty=info.dirty, restore_state=info.restore_state,
       pid=os.getpid(), hits=Hit.objects.count())
"""


@server_store
def test_the_tables_are_unlogged_and_shared_by_every_process(default_db: str) -> None:
    """What one process writes, the next reads, memory-only tables included, without a
    spool or a restore; a spool by the second builds on the first one's."""
    env = server_env(default_db)
    first = run(
        "Score.objects.create(player='a', points=1)\n"
        "api.spool('testapp.Score')\n"
        "Score.objects.create(player='b', points=2)\n"
        "Hit.objects.create(path='/')\n" + SCORE_INFO,
        env,
        migrate=True,
    )
    assert (first["store"], first["warning"], first["generation"]) == ("server", None, 1)
    second = run(SCORE_INFO, env)
    assert second["rows"] == [[1, "a", 1], [2, "b", 2]], "the unspooled row is there too"
    assert (second["hits"], second["dirty"], second["restore_state"]) == (1, True, "none")
    assert second["leader"] == f"{os.uname().nodename}:{first['pid']}"
    spooled = run("(r,) = api.spool('testapp.Score')\nreport(generation=r.generation)\n", env)
    assert spooled["generation"] == 2
    memory = set(in_memory(default_db))
    assert "testapp_score" in memory and "memdb_persistentstorage" not in memory
    # MariaDB's MEMORY tables hold no TEXT: Hit (a TextField) is kept in InnoDB
    # (memdb.W004 says so), and still shared.
    assert ("testapp_hit" in memory) is (KIND == "postgresql")


HOST = """
import sys
role = sys.argv[1] if len(sys.argv) > 1 else ""
sys.stdin.readline()
if {writer!r}:
    Score.objects.bulk_create(Score(player=f"h-{{i}}", points=i) for i in range(50))
    Hit.objects.create(path="/from-the-first-host")
    report(wrote=50)
else:
    report(rows=len(rows(Score)), hits=list(Hit.objects.values_list("path", flat=True)))
sys.stdin.readline()
"""


@server_store
def test_two_hosts_see_the_same_rows(default_db: str) -> None:
    """Two process groups, as two hosts would run them, both up at once: what the
    first writes (no spool), the second reads at once."""
    env = server_env(default_db)
    run("report(ok=True)\n", env, migrate=True)
    hosts = [  # each a process group of its own
        start_process(PRELUDE + HOST.format(writer=writer), env, new_session=True)
        for writer in (True, False)
    ]
    try:
        writer, reader = hosts
        assert os.getpgid(writer.pid) != os.getpgid(reader.pid)
        for host in hosts:  # both start, and open the store
            assert host.stdin is not None
        answers = []
        for host in hosts:
            assert host.stdin is not None and host.stdout is not None
            host.stdin.write("go\n")
            host.stdin.flush()
            answers.append(json.loads(host.stdout.readline()))
        assert answers == [{"wrote": 50}, {"rows": 50, "hits": ["/from-the-first-host"]}]
        for host in hosts:
            out, err = host.communicate("done\n", timeout=TIMEOUT)
            assert host.returncode == 0, err
            check_quiet(err)
    finally:
        for host in hosts:
            if host.poll() is None:
                host.kill()
                host.wait()


LIVE = """
Score.objects.create(player="a", points=1)
Score.objects.create(player="b", points=2)
api.spool("testapp.Score")
report(ready=True)
sys.stdin.readline()  # the server loses the tables meanwhile
from django.db import connections
connections.close_all()
seen_first = rows(Score)
results = api.spool("testapp.Score")
(info,) = api.tables("testapp.Score")
created = Score.objects.create(player="c", points=3)
report(seen_first=seen_first, spooled=[r.generation for r in results],
       unchanged=[r.unchanged for r in results], rows=rows(Score),
       restore_state=info.restore_state)
"""


@server_store
def test_a_server_that_lost_the_tables_is_restored_never_spooled_over(
    default_db: str,
) -> None:
    """A crash empties the UNLOGGED tables under a running process: its next connection
    notices and restores them from storage, before anything is spooled; storage keeps
    the snapshot, and new rows get new keys (the sequences are set past them)."""
    env = server_env(default_db)
    run("report(ok=True)\n", env, migrate=True)
    proc = start_process(PRELUDE + LIVE, env)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert json.loads(proc.stdout.readline()) == {"ready": True}
        assert stored_generation(default_db, "testapp.Score") == (1, 2)
        assert "testapp_score" in lose_server(default_db)
        out, err = proc.communicate("go\n", timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    result = last_json(out)
    assert result["seen_first"] == [[1, "a", 1], [2, "b", 2]], err
    assert result["unchanged"] == [True], "the restored table was not spooled again"
    assert result["rows"] == [[1, "a", 1], [2, "b", 2], [3, "c", 3]]
    assert result["restore_state"] == "ok"
    assert "the server lost the memory tables; restoring them" in err
    assert stored_generation(default_db, "testapp.Score") == (1, 2)


def test_a_rebuild_by_another_thread_while_the_server_is_asked_is_never_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race a CI run met: a thread of this process notices the loss and rebuilds
    the store while another thread's check asks the server for the store's id. The
    check must not take the emptied tables for the store while their restore runs
    (it read ``recovering`` before the rebuild began, and the new id after)."""

    def state_asking_while_rebuilt() -> store.StoreState:
        state = store.StoreState(name="race")
        state.store_id = "old"

        def current_id() -> str:
            # ``recover``'s steps, in its order: the new id committed, ``recovering``
            # set, the new id taken; the restore then runs.
            state.recovering = threading.Thread(target=lambda: None)
            state.store_id = "new"
            return "new"

        monkeypatch.setattr(server, "current_id", current_id)
        return state

    assert server.lost(state_asking_while_rebuilt())
    with pytest.raises(store.StoreLost, match="testapp.Score: the server lost"):
        server.check(state_asking_while_rebuilt(), "testapp.Score")


@server_store
def test_a_spool_that_finds_the_tables_lost_restores_them_first(default_db: str) -> None:
    """The loss is noticed by a spool on a connection opened before it (the interval
    spooler's): the emptied table is not stored over its snapshot, it is restored."""
    env = server_env(default_db)
    run("report(ok=True)\n", env, migrate=True)
    source = (
        "Score.objects.create(player='a', points=1)\n"
        "api.spool('testapp.Score')\n"
        "report(ready=True)\n"
        "sys.stdin.readline()\n"
        "try:\n"
        "    api.spool('testapp.Score')\n"
        "    outcome = 'spooled'\n"
        "except Exception as exc:\n"
        "    outcome = repr(exc)\n"
        "report(outcome=outcome, rows=rows(Score))\n"
    )
    proc = start_process(PRELUDE + source, env)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline()) == {"ready": True}
        lose_server(default_db)
        out, err = proc.communicate("go\n", timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert last_json(out) == {"outcome": "spooled", "rows": [[1, "a", 1]]}
    assert stored_generation(default_db, "testapp.Score") == (1, 1)


@server_store
def test_one_process_restores_a_lost_store_the_others_wait(default_db: str) -> None:
    """Four processes start at once on a server that lost the tables: one restores
    them, the others wait for it and find the rows."""
    env = server_env(default_db)
    run(
        "Score.objects.bulk_create(Score(player=str(i), points=i) for i in range(500))\n"
        "api.spool('testapp.Score')\nreport(ok=True)\n",
        env,
        migrate=True,
    )
    lose_server(default_db)
    reports = finish_together(start_together([BOOT_RACE] * 4, env))
    assert [r["rows"] for r in reports] == [500] * 4
    assert sorted(len(r["restored"]) for r in reports) == [0, 0, 0, 1], reports


@server_store
@pytest.mark.parametrize("after", [False, True], ids=["before-storing", "after-storing"])
def test_another_process_takes_over_from_a_leader_killed_mid_spool(
    default_db: str, after: bool
) -> None:
    """The leader of a spool is SIGKILLed before or after its snapshot is stored: the
    server drops its advisory lock with its session, and the next process's spool
    neither waits, nor conflicts, nor loses a row."""
    env = server_env(default_db)
    killed = run_process(
        PRELUDE + "call_command('migrate', verbosity=0)\n" + KILLED_LEADER.format(after=after), env
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    started = time.monotonic()
    taken = run_process(
        PRELUDE + "Score.objects.create(player='c', points=3)\n"
        "(r,) = api.spool('testapp.Score')\nreport(generation=r.generation)\n",
        env,
    )
    assert taken.returncode == 0, taken.stderr
    assert time.monotonic() - started < TIMEOUT / 2
    assert last_json(taken.stdout)["generation"] == (3 if after else 2)
    assert ("taken over" in taken.stderr) is after, taken.stderr
    lose_server(default_db)
    restored = run(SCORE_INFO, env)
    assert restored["rows"] == [[1, "a", 1], [2, "b", 2], [3, "c", 3]]


LEADER_BUSY = """
import threading
from memdb import server, store
IntervalScore.objects.create(player="x", points=1)
held, release = threading.Event(), threading.Event()
def lead():  # another process leading the spool: its own session holds the lock
    with server.advisory_lock(store.current_state(), "testapp.IntervalScore", wait=True):
        held.set()
        release.wait()
threading.Thread(target=lead).start()
held.wait()
skipped = api.flush(policy="interval", skip_busy=True)
threading.Timer(0.5, release.set).start()
started = time.monotonic()
waited = api.flush(policy="interval")
report(skipped=[r.label for r in skipped], waited=[r.label for r in waited],
       seconds=time.monotonic() - started)
"""


@server_store
def test_the_interval_spooler_leaves_a_table_another_process_spools(default_db: str) -> None:
    """An interval tick skips a table whose advisory lock another session holds; a
    spool asked for (a flush without skip_busy) waits for it instead."""
    env = server_env(default_db, MEMDB_TEST_INTERVAL="60")
    result = run(LEADER_BUSY, env, migrate=True)
    assert result["skipped"] == []
    assert result["waited"] == ["testapp.IntervalScore"] and result["seconds"] >= 0.4


@server_store
def test_commit_writes_of_four_processes_at_once_all_survive(default_db: str) -> None:
    """Four processes write ``commit`` rows at once, each stored as a journal delta
    before its call returns; after the server lost the tables, every row comes back."""
    env = server_env(default_db, MEMDB_TEST_POLICY="commit")
    run("report(ok=True)\n", env, migrate=True)
    count = 40
    sources = [COMMIT_WRITER.format(count=count, number=n) for n in range(4)]
    reports = finish_together(start_together(sources, env))
    assert reports == [{"done": count}] * 4
    kinds = dict(
        query(
            default_db,
            "SELECT kind, count(*) FROM memdb_persistentstorage WHERE model_name = "
            "'CommitScore' GROUP BY kind",
        )
    )
    assert kinds.get("delta", 0) > 0, kinds
    lose_server(default_db)
    restored = run(
        "report(players=sorted(CommitScore.objects.values_list('player', flat=True)))\n", env
    )
    assert restored["players"] == sorted(f"w{n}-{i}" for n in range(4) for i in range(count))


STEADY_WRITER = """
from django.db import connections
CommitScore.objects.create(player="first", points=0)
report(ready=True)
written = 0
while not os.path.exists({stop!r}):
    CommitScore.objects.create(player=f"s-{{written}}", points=written)
    written += 1
report(written=written)
"""


# A pause after each statement that sets tracking up, so a writer's writes land between.
SLOW_TRACKING = f"""
from memdb import server
made = server._tracking_sql
pause = "SELECT pg_sleep(0.05)" if {KIND!r} == "postgresql" else "SELECT SLEEP(0.05)"
server._tracking_sql = lambda *args: [s for sql in made(*args) for s in (sql, pause)]
"""


@server_store
def test_a_process_starting_beside_a_writer_leaves_every_write_tracked(
    default_db: str, tmp_path: Path
) -> None:
    """Each process that starts sets the store's tracking up again (a deploy may have
    changed it): a writer running meanwhile keeps every write tracked, so every one of
    them is stored (the triggers used to be dropped and made again, and writes in
    between were neither counted nor journaled: lost at the next restore)."""
    env = server_env(default_db, MEMDB_TEST_POLICY="commit")
    run("report(ok=True)\n", env, migrate=True)
    stop = tmp_path / "stop"
    writer = start_process(PRELUDE + STEADY_WRITER.format(stop=str(stop)), env, stdin=None)
    try:
        assert writer.stdout is not None
        assert json.loads(writer.stdout.readline()) == {"ready": True}
        for _ in range(3):  # each opens the store: its tracking is made again, slowly
            run(SLOW_TRACKING + "report(n=CommitScore.objects.count())\n", env)
        stop.touch()
        out, err = writer.communicate(timeout=TIMEOUT)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, err
    check_quiet(err)
    written = last_json(out)["written"]
    assert written > 0
    lose_server(default_db)
    restored = run("report(n=CommitScore.objects.count())\n", env)
    assert restored == {"n": written + 1}


OPPOSITE_ORDERS = """
import threading
from django.db import connections
Score.objects.bulk_create([Score(player="x", points=0), Score(player="y", points=0)])
x, y = Score.objects.order_by("pk").values_list("pk", flat=True)
first_done, second_started, errors = threading.Event(), threading.Event(), []
def one():  # x, then y
    try:
        with transaction.atomic(using="memdb"):
            Score.objects.filter(pk=x).update(points=1)
            first_done.set()
            second_started.wait()
            time.sleep(0.3)  # the other is at its first statement now
            Score.objects.filter(pk=y).update(points=1)
    except Exception as exc:
        errors.append(repr(exc))
    finally:
        connections.close_all()
def other():  # y, then x
    first_done.wait()
    try:
        with transaction.atomic(using="memdb"):
            second_started.set()
            Score.objects.filter(pk=y).update(points=2)
            Score.objects.filter(pk=x).update(points=2)
    except Exception as exc:
        errors.append(repr(exc))
    finally:
        connections.close_all()
threads = [threading.Thread(target=one), threading.Thread(target=other)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
report(errors=errors, points=[p for _, _, p in rows(Score)])
"""


@server_store
def test_transactions_writing_rows_in_opposite_orders_do_not_deadlock(default_db: str) -> None:
    """Two transactions update two rows of one memory table in opposite orders, the
    second starting while the first holds its first row. On a plain table the second
    waits at its first row; the change counter every write statement updates must not
    add a deadlock (it did: each held a row the other wanted, and the counter row)."""
    env = server_env(default_db)
    result = run(OPPOSITE_ORDERS, env, migrate=True)
    assert result["errors"] == []
    if KIND == "postgresql":  # MariaDB's MEMORY tables have no transactions to order
        assert result["points"] == [2, 2]


@server_store
def test_a_table_an_older_deploy_made_is_brought_up_to_its_model(default_db: str) -> None:
    """The tables outlive a deploy on the server: a column the model lost is dropped,
    a field it gained is added with its default, a column of another type or
    nullability is altered to the model's, the rows are kept (the stored snapshot
    restores to the same rows, so it stays), and the next spool after a write stores
    the whole table, in its new columns."""
    env = server_env(default_db)
    run(
        "Score.objects.create(player='a', points=1)\nScore.objects.create(player='b', points=2)\n"
        "api.spool('testapp.Score')\nreport(ok=True)\n",
        env,
        migrate=True,
    )
    with database(default_db) as cursor:  # as the older code made it
        cursor.execute("ALTER TABLE testapp_score ADD COLUMN retired integer")
        cursor.execute("ALTER TABLE testapp_score DROP COLUMN points")
        # player was a CharField(max_length=5, null=True)
        if KIND == "postgresql":
            cursor.execute("ALTER TABLE testapp_score ALTER COLUMN player TYPE varchar(5)")
            cursor.execute("ALTER TABLE testapp_score ALTER COLUMN player DROP NOT NULL")
        else:
            cursor.execute("ALTER TABLE testapp_score MODIFY COLUMN player varchar(5) NULL")
    long_name = "a player named at length"
    proc = run_process(
        PRELUDE + "(r,) = api.spool('testapp.Score')\n"
        "Score.objects.filter(player='b').update(points=5)\n"
        f"Score.objects.create(player={long_name!r}, points=7)\n"
        "(s,) = api.spool('testapp.Score')\n"
        "report(rows=rows(Score), unchanged=r.unchanged, kind=s.kind, generation=s.generation)\n",
        env,
    )
    assert proc.returncode == 0, proc.stderr
    expected = [[1, "a", 0], [2, "b", 5], [3, long_name, 7]]
    assert last_json(proc.stdout) == {
        "rows": expected,
        "unchanged": True,
        "kind": "snapshot",
        "generation": 2,
    }
    assert "columns dropped: retired; added: points; changed: player; its rows kept" in proc.stderr
    schema = "current_schema()" if KIND == "postgresql" else "DATABASE()"
    player = query(
        default_db,
        "SELECT character_maximum_length, is_nullable FROM information_schema.columns "
        f"WHERE table_schema = {schema} AND table_name = 'testapp_score' "
        "AND column_name = 'player'",
    )
    assert [tuple(row) for row in player] == [(50, "NO")]
    lose_server(default_db)
    assert run(SCORE_INFO, env)["rows"] == expected


@server_store
def test_a_column_change_the_rows_do_not_allow_leaves_the_table_as_it_is(
    default_db: str,
) -> None:
    """An older deploy's column holds values the model's type cannot (text where the
    model now has an integer): the table is left as it is, its rows kept, with an error
    in the log that names the table."""
    env = server_env(default_db)
    run("Score.objects.create(player='a', points=1)\nreport(ok=True)\n", env, migrate=True)
    with database(default_db) as cursor:  # as the older code made it
        if KIND == "postgresql":
            cursor.execute("ALTER TABLE testapp_score ALTER COLUMN points TYPE varchar(10)")
        else:
            cursor.execute("ALTER TABLE testapp_score MODIFY COLUMN points varchar(10) NOT NULL")
        cursor.execute("UPDATE testapp_score SET points = 'many'")
    proc = run_process(PRELUDE + "report(rows=rows(Score))\n", env)
    assert proc.returncode == 0, proc.stderr
    assert last_json(proc.stdout) == {"rows": [[1, "a", "many"]]}
    assert "the memory table testapp_score is not as its model testapp.Score" in proc.stderr


FAILED_LOAD = """
from django.db import DatabaseError
from memdb import server
from memdb.exceptions import RestoreError
Score.objects.bulk_create(Score(player=str(i), points=i) for i in range(300))
api.spool("testapp.Score")
Score.objects.create(player="after the spool", points=1)
before = rows(Score)
original = server._insert_image
def failing(*args, **kwargs):
    original(*args, **kwargs)  # every row written, then the load fails
    raise DatabaseError("the load failed here")
server._insert_image = failing
try:
    api.restore("testapp.Score")
    outcome = "restored"
except RestoreError as exc:
    outcome = str(exc)
server._insert_image = original
report(outcome=outcome, same=rows(Score) == before, count=Score.objects.count())
"""


@server_store
def test_a_restore_that_fails_while_loading_leaves_the_table_as_it_was(default_db: str) -> None:
    """A restore fails after it wrote the rows it loads: the table keeps the rows it had
    (a transaction's rollback on PostgreSQL; on MariaDB, whose MEMORY tables have none,
    the load went to a temporary copy and the table was not touched)."""
    env = server_env(default_db)
    run("report(ok=True)\n", env, migrate=True)
    proc = run_process(PRELUDE + FAILED_LOAD, env)
    assert proc.returncode == 0, proc.stderr
    assert "restore failed: testapp.Score" in proc.stderr
    result = last_json(proc.stdout)
    assert "the load failed here" in result["outcome"], result
    assert "testapp.Score" in result["outcome"]
    assert result["same"] is True
    assert result["count"] == 301


WRITE_DURING_SPOOL = """
import threading
from memdb import server
Score.objects.bulk_create(Score(player=str(i), points=i) for i in range(300))
original = server._image_rows
joined = []
def reading(*args, **kwargs):
    if not joined:  # the first batch: a writer in another thread (its own connection)
        writer = threading.Thread(
            target=lambda: Score.objects.create(player="during the spool", points=1)
        )
        writer.start()
        writer.join(10)
        joined.append(not writer.is_alive())
    yield from original(*args, **kwargs)
server._image_rows = reading
(first,) = api.spool("testapp.Score")
server._image_rows = original
(info,) = api.tables("testapp.Score")
(second,) = api.spool("testapp.Score")
report(joined=joined, first=first.rows, dirty=info.dirty, second=second.rows)
"""


@server_store
def test_a_spool_does_not_hold_writers_back_while_it_reads_the_table(default_db: str) -> None:
    """A write to a table while a spool reads it does not wait for that read to end
    (on MariaDB the read lock is held only while the server copies the table); the
    spool stores the table as of its start, and the write leaves it dirty for the next."""
    env = server_env(default_db)
    result = run(WRITE_DURING_SPOOL, env, migrate=True)
    assert result["joined"] == [True], "the writer waited for the spool's read"
    assert result["first"] == 300
    assert result["dirty"] is True
    assert result["second"] == 301


TOO_LONG = """
from django.db import DataError
try:
    Score.objects.bulk_create([Score(player="a", points=1), Score(player="x" * 60, points=2)])
    outcome = "stored"
except DataError as exc:
    outcome = "refused"
report(outcome=outcome, cut_short=Score.objects.filter(player__startswith="xxx").count())
"""


@server_store
def test_a_value_too_long_for_its_column_is_refused_in_any_row(default_db: str) -> None:
    """A multi-row insert with a value too long for its column in its second row is an
    error on every server. MariaDB's default strictness covers only tables with
    transactions: on a MEMORY table it cut the value short with a warning."""
    env = server_env(default_db)
    assert run(TOO_LONG, env, migrate=True) == {"outcome": "refused", "cut_short": 0}


WRITE_DURING_RESTORE = """
import threading
from memdb import server
Score.objects.bulk_create(Score(player=str(i), points=i) for i in range(300))
api.spool("testapp.Score")
original = server._insert_image
joined = []
def loading(*args, **kwargs):
    if not joined:  # a write to the restored table, by another thread (its own connection)
        writer = threading.Thread(
            target=lambda: Score.objects.create(player="during the load", points=1)
        )
        writer.start()
        writer.join(10)
        joined.append(not writer.is_alive())
    return original(*args, **kwargs)
server._insert_image = loading
api.restore("testapp.Score")
server._insert_image = original
report(joined=joined, rows=Score.objects.count(),
       during=Score.objects.filter(player="during the load").count())
"""


@server_store
def test_a_restore_does_not_hold_writers_back_while_it_loads(default_db: str) -> None:
    """A write to a table while a restore loads its snapshot does not wait for the
    load (it goes into a temporary table); the restore then replaces the table's rows
    with the snapshot's, that write's included in none of them."""
    env = server_env(default_db)
    result = run(WRITE_DURING_RESTORE, env, migrate=True)
    assert result["joined"] == [True], "the writer waited for the restore's load"
    assert result["rows"] == 300
    assert result["during"] == 0


def index_types(name: str) -> dict[tuple[str, str], str]:
    """``{(table, index): type}`` of every index of the models' MEMORY tables (MariaDB;
    the store's own tables are looked up by equal keys alone)."""
    rows = query(
        name,
        "SELECT s.table_name, s.index_name, s.index_type FROM information_schema.statistics s "
        "JOIN information_schema.tables t ON t.table_schema = s.table_schema "
        "AND t.table_name = s.table_name WHERE s.table_schema = DATABASE() "
        "AND t.engine = 'MEMORY' AND s.table_name NOT LIKE 'memdb%%'",
    )
    return {(table, index): kind for table, index, kind in rows}


ORDERED_PLAN = """
from django.db import connections
with connections["memdb"].cursor() as cursor:
    if connections["memdb"].vendor == "postgresql":
        cursor.execute("SET enable_seqscan = off")  # can it use a key at all?
        cursor.execute("EXPLAIN SELECT id FROM testapp_score ORDER BY id LIMIT 1")
        plan = " ".join(row[0] for row in cursor.fetchall())
    else:
        cursor.execute("EXPLAIN SELECT id FROM testapp_score ORDER BY id LIMIT 1")
        plan = cursor.fetchone()[3]
report(rows=Score.objects.count(), first=Score.objects.first().player, plan=plan)
"""


@server_store
def test_ordered_reads_of_memory_tables_use_their_keys(default_db: str) -> None:
    """An ordered read (``first()``, a top ten, the admin's pages) of a memory table
    uses its key on every server. MariaDB's MEMORY tables get HASH keys unless asked
    otherwise, which find equal values only: every key is made a BTREE, in a table an
    older deploy made too, rows kept."""
    env = server_env(default_db)
    run(
        "Score.objects.bulk_create(Score(player=str(i), points=i) for i in range(20))\n"
        "report(ok=True)\n",
        env,
        migrate=True,
    )
    if KIND == "postgresql":  # btree keys are all PostgreSQL makes for these models
        result = run(ORDERED_PLAN, env)
        assert "Index Only Scan using testapp_score_pkey" in result.pop("plan"), result
        assert result == {"rows": 20, "first": "0"}
        return
    types = index_types(default_db)
    assert ("testapp_score", "PRIMARY") in types
    assert ("testapp_team", "name") in types, types  # a unique=True column's key
    assert set(types.values()) == {"BTREE"}, types
    with database(default_db) as cursor:  # as an older deploy made it
        cursor.execute(
            "ALTER TABLE testapp_score DROP PRIMARY KEY, ADD PRIMARY KEY USING HASH (id)"
        )
        cursor.execute("EXPLAIN SELECT id FROM testapp_score ORDER BY id LIMIT 1")
        assert cursor.fetchone()[3] == "ALL"  # the HASH key cannot order: a whole scan
    assert index_types(default_db)[("testapp_score", "PRIMARY")] == "HASH"
    assert run(ORDERED_PLAN, env) == {"rows": 20, "first": "0", "plan": "index"}
    assert set(index_types(default_db).values()) == {"BTREE"}


QUERIES = """
from django.db import connections
from django.test.utils import CaptureQueriesContext
Hit.objects.create(path="/warm-up")
CommitScore.objects.create(player="warm-up", points=0)
with CaptureQueriesContext(connections["memdb"]) as hit:
    Hit.objects.create(path="/")
with CaptureQueriesContext(connections["memdb"]) as score:
    CommitScore.objects.create(player="a", points=1)
report(hit=[q["sql"][:30] for q in hit.captured_queries],
       score=len(score.captured_queries),
       stored=PersistentStorage.objects.filter(model_name="CommitScore").count())
"""


@server_store
def test_a_write_to_a_table_without_the_commit_policy_asks_nothing_more(default_db: str) -> None:
    """Every question to the server is a round trip: a write to a table that is not
    ``commit``-policy makes none beside its own statement; a write to one asks once
    which ``commit`` tables are dirty (one query for all of them), then spools."""
    env = server_env(default_db, MEMDB_TEST_POLICY="commit")
    result = run(QUERIES, env, migrate=True)
    assert len(result["hit"]) == 1 and result["hit"][0].startswith("INSERT INTO")
    assert result["score"] == 2, "the INSERT and one dirty check"
    assert result["stored"] >= 2


PRIVATE = """
from django.db import connections
from memdb import server

asked = []
real = type(server.private()).is_usable
type(server.private()).is_usable = lambda self: asked.append(1) or real(self)
first = server.private()
CommitScore.objects.create(player="a", points=1)  # a commit write: many uses of it
in_a_write = len(asked)

try:  # an error on it, the server still there: asked once, kept
    server.private().cursor().execute("SELECT * FROM no_such_table")
except Exception:
    pass
kept = server.private() is first and len(asked) == in_a_write + 1

server.close_all()  # closed under it: opened anew
reopened = server.private() is not first

server.IDLE_CHECK = 0.2
dropped = server.private()
with dropped.cursor() as cursor:
    cursor.execute("SELECT pg_backend_pid()" if dropped.vendor == "postgresql"
                   else "SELECT CONNECTION_ID()")
    (session,) = cursor.fetchone()
with connections["default"].cursor() as cursor:  # the server ends that session
    cursor.execute("SELECT pg_terminate_backend(%s)" if dropped.vendor == "postgresql"
                   else "KILL %s", [session])
time.sleep(0.3)  # idle for longer than IDLE_CHECK: asked, found gone, opened anew
CommitScore.objects.create(player="b", points=2)
report(in_a_write=in_a_write, kept=kept, reopened=reopened,
       replaced=server.private() is not dropped, rows=rows(CommitScore))
"""


@server_store
def test_the_private_connection_asks_the_server_only_after_an_error_or_a_pause(
    default_db: str,
) -> None:
    """memdb's own connection asked the server whether it still answered (a ``SELECT 1``,
    a round trip) at each use, seven times per ``commit`` write. It asks after an error
    on it, or once it sat unused a while: a session the server ended meanwhile is
    replaced before the next write, which succeeds."""
    result = run(PRIVATE, server_env(default_db), migrate=True)
    assert result == {
        "in_a_write": 0,
        "kept": True,
        "reopened": True,
        "replaced": True,
        "rows": [[1, "a", 1], [2, "b", 2]],
    }


TRUNCATED = """
from django.db import connections
CommitScore.objects.create(player="a", points=1)
CommitScore.objects.create(player="b", points=2)
with connections["memdb"].cursor() as cursor:
    cursor.execute("TRUNCATE testapp_commitscore")
api.flush()
CommitScore.objects.create(player="c", points=3)
kinds = list(PersistentStorage.objects.filter(model_name="CommitScore")
             .order_by("generation").values_list("kind", flat=True))
report(kinds=kinds)
"""


@server_store
def test_a_truncate_is_stored_as_a_whole_snapshot(default_db: str) -> None:
    """TRUNCATE names no rows for a delta: the next spool stores the whole table, and
    deltas follow it again."""
    env = server_env(default_db, MEMDB_TEST_POLICY="commit")
    result = run(TRUNCATED, env, migrate=True)
    assert result["kinds"][-2:] == ["snapshot", "delta"], result
    lose_server(default_db)
    restored = run(
        "report(players=list(CommitScore.objects.order_by('pk')"
        ".values_list('player', flat=True)))\n",
        env,
    )
    assert restored["players"] == ["c"]


CODECS = """
from django.db import models as m
Score.objects.bulk_create(Score(player="é" * (i % 7), points=i) for i in range(300))
(r,) = api.spool("testapp.Score")
report(codecs=list(PersistentStorage.objects.get(model_name="Score").codecs))
"""


@server_store
def test_codecs_and_every_field_type_round_trip_through_the_server(default_db: str) -> None:
    """Snapshots of the server store are the same SQLite images as the other stores',
    through any codec chain: stored with zlib and fernet, restored after a loss."""
    from cryptography.fernet import Fernet

    env = server_env(
        default_db,
        MEMDB_TEST_CODECS="zlib,fernet",
        MEMDB_TEST_FERNET_KEYS=Fernet.generate_key().decode(),
    )
    assert run(CODECS, env, migrate=True)["codecs"] == ["zlib", "fernet"]
    lose_server(default_db)
    restored = run(
        "report(n=Score.objects.count(), s=sum(Score.objects.values_list('points', flat=True)))\n",
        env,
    )
    assert restored == {"n": 300, "s": sum(range(300))}


# -- checks -------------------------------------------------------------------------


@pytest.mark.django_db(databases=[])
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_check_names_a_server_store_without_a_server() -> None:
    """``STORE = "server"`` with an alias that is not a server engine (a SQLite
    default database: ``configure`` adds no alias for it) is an error that says why."""
    from django.conf import settings

    sqlite = {"memdb": {**settings.DATABASES["memdb"], "ENGINE": "memdb.backends.sqlite3"}}
    overrides = {
        "MEMDB": {**settings.MEMDB, "STORE": "server"},
        "DATABASES": {**settings.DATABASES, **sqlite},
    }
    with override_settings(**overrides):
        messages = [m for m in memdb_checks.check_settings() if m.id == "memdb.E013"]
    (error,) = messages
    assert isinstance(error, django_checks.Error)
    assert "not a server store engine" in error.msg and "PostgreSQL" in (error.hint or "")


def test_configure_puts_a_server_store_on_the_default_database() -> None:
    import memdb

    settings: dict[str, Any] = {
        "MEMDB": {"STORE": "server"},
        "DATABASES": {
            "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "HOST": "db"}
        },
    }
    memdb.configure(settings)
    assert settings["DATABASES"]["memdb"] == {
        "ENGINE": "memdb.backends.postgresql",
        "NAME": "app",
        "HOST": "db",
        "TEST": {"MIGRATE": False, "MIRROR": "default"},
    }
    sqlite: dict[str, Any] = {
        "MEMDB": {"STORE": "server"},
        "DATABASES": {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x"}},
    }
    memdb.configure(sqlite)
    assert "memdb" not in sqlite["DATABASES"], "E013 says why"


# -- gunicorn ------------------------------------------------------------------------


@server_store
def test_gunicorn_workers_read_back_each_others_writes(tmp_path: Path, default_db: str) -> None:
    """The example on the server store, served by gunicorn with 4 workers: each request
    on a new connection counts a hit, and every answer shows every hit so far, whichever
    worker wrote it; no worker warns."""
    env = example_env(
        tmp_path,
        MEMDB_EXAMPLE_STORE="server",
        MEMDB_EXAMPLE_SERVER=KIND,
        MEMDB_EXAMPLE_SERVER_DB=default_db,
    )
    manage(env, "migrate", "--noinput")
    token = manage(env, "shell", "-c", SETUP).strip().splitlines()[-1]
    log = tmp_path / "gunicorn.log"
    server, port = start_gunicorn(
        env, log, "--access-logfile", "-", "--access-logformat", "served-by %(p)s %(r)s"
    )
    base = f"http://127.0.0.1:{port}"

    def tables_request() -> urllib.request.Request:
        return urllib.request.Request(
            base + "/memdb/tables", headers={"Authorization": f"Token {token}"}
        )

    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(tables_request(), timeout=10) as response:
                    start = {t["label"]: t for t in json.load(response)}["shop.Hit"]["rows"]
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
                continue
            break
        counts = []
        for _ in range(24):
            urllib.request.urlopen(base + "/", timeout=10).close()  # one Hit
            with urllib.request.urlopen(tables_request(), timeout=10) as response:
                tables = {t["label"]: t for t in json.load(response)}
            assert tables["shop.Hit"]["store"] == "server"
            assert tables["shop.Hit"]["warning"] is None
            assert tables["shop.Score"]["rows"] == 3
            counts.append(tables["shop.Hit"]["rows"] - start)
        assert counts == list(range(1, 25)), counts
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    text = log.read_text()
    pids = {line.split()[1] for line in text.splitlines() if line.startswith("served-by ")}
    assert len(pids) >= 2, f"one worker served every request:\n{text}"
    assert "worker processes" not in text, text
