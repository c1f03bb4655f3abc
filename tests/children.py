"""Child processes for the restart and reliability tests: a real restart is a new process.

``default_db`` gives each test a default database of its own (a fresh SQLite file, or a
fresh PostgreSQL / MariaDB database when ``MEMDB_TEST_DB`` says so, dropped afterwards;
``fresh_database`` does the same outside pytest, for the benchmarks);
``child_env`` points a child at it; ``run`` runs code in a new Python process and returns
the last JSON line it printed. The pytest process itself never touches that database
apart from creating and dropping it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60
INTERVAL = 0.2

PRELUDE = """
import json, os, sys, time
import django
django.setup()
from django.core.management import call_command
from django.db import transaction
from memdb import api
from memdb.models import PersistentStorage
from tests.testapp.models import CommitScore, Hit, IntervalScore, Score

def rows(model):
    return [list(r) for r in model.objects.order_by("pk").values_list("pk", "player", "points")]

def report(**data):
    print(json.dumps(data), flush=True)
"""

MIGRATE = "call_command('migrate', verbosity=0)\n"

READ = """
seen = rows({model})
(info,) = api.tables("testapp.{model}")
report(rows=seen, restore_state=info.restore_state, restore_error=info.restore_error)
"""


# -- the default database of the children ---------------------------------------------


def _server_connection(kind: str) -> Any:
    from django.conf import settings

    db = settings.DATABASES["default"]
    host, user, password = db.get("HOST") or "127.0.0.1", db.get("USER"), db.get("PASSWORD")
    if kind == "postgresql":
        import psycopg

        return psycopg.connect(
            host=host,
            port=db.get("PORT") or 5432,
            user=user,
            password=password or None,
            dbname="postgres",
            autocommit=True,
        )
    import pymysql

    return pymysql.connect(
        host=host,
        port=int(db.get("PORT") or 3306),
        user=user,
        password=password or "",
        charset="utf8mb4",
        autocommit=True,
    )


@contextmanager
def fresh_database(kind: str, directory: Path) -> Iterator[str]:
    """The NAME of a new default database of ``kind``, dropped afterwards.

    ``kind`` is sqlite (a file in ``directory``), postgresql or mysql; the servers are
    reached with the credentials of ``settings.DATABASES["default"]``.
    """
    if kind == "sqlite":
        yield str(directory / "default.sqlite3")
        return
    name = f"memdb_restart_{uuid.uuid4().hex[:12]}"
    if kind == "postgresql":
        create = f'CREATE DATABASE "{name}"'
        drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    else:
        create = f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"
        drop = f"DROP DATABASE IF EXISTS `{name}`"
    conn = _server_connection(kind)
    try:
        with conn.cursor() as cursor:
            cursor.execute(create)
        yield name
    finally:
        with conn.cursor() as cursor:
            if kind == "postgresql":
                cursor.execute(drop)
            else:
                # And the children's own server stores (tests/settings.py).
                cursor.execute("SHOW DATABASES LIKE %s", [f"{name}\\_p%"])
                for own in [name, *(own for (own,) in cursor.fetchall())]:
                    _drop_mariadb_database(cursor, own)
        conn.close()


def _drop_mariadb_database(cursor: Any, name: str) -> None:
    """Drop a MariaDB database once the server has ended every session on it.

    A child that just exited left its sessions to the server to end ("Aborted
    connection"), and a DROP DATABASE that raced that once left a backup file of a
    trigger's (``<table>.TRG-``) that the server no longer knows, so that the database
    cannot be dropped ("Directory not empty"). Should that happen anyway, the database
    is left behind, named on stderr: every one has a name of its own.
    """
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        cursor.execute("SELECT count(*) FROM information_schema.processlist WHERE db = %s", [name])
        if not cursor.fetchone()[0]:
            break
        time.sleep(0.05)
    try:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    except Exception as exc:
        if getattr(exc, "args", (None,))[0] != 1010:  # ER_DB_DROP_RMDIR
            raise
        print(f"\nMariaDB could not drop the test database {name}: {exc}", file=sys.stderr)


@pytest.fixture
def default_db(tmp_path: Path) -> Iterator[str]:
    """The NAME of a fresh default database for the children, dropped afterwards."""
    with fresh_database(os.environ.get("MEMDB_TEST_DB", "sqlite"), tmp_path) as name:
        yield name


# -- child processes --------------------------------------------------------------------


def child_env(db_name: str, **overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        MEMDB_TEST_DB_NAME=db_name,
        MEMDB_TEST_POLICY="manual",
        MEMDB_TEST_INTERVAL=str(INTERVAL),
        MEMDB_TEST_FLUSH_ON_EXIT="0",
    )
    env.update(overrides)
    return env


def last_json(stdout: str) -> Any:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"the child printed no JSON:\n{stdout}"
    return json.loads(lines[-1])


def check_quiet(stderr: str) -> None:
    """No traceback and no memdb error or warning (failed restore, failed spool)."""
    assert "Traceback" not in stderr and "memdb:" not in stderr, stderr


def run_process(source: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``source`` in a new Python process to its end, capturing its output."""
    return subprocess.run(
        [sys.executable, "-c", source],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def start_process(
    source: str,
    env: dict[str, str],
    stderr: Any = subprocess.PIPE,
    *,
    stdin: Any = subprocess.PIPE,
    new_session: bool = False,
) -> subprocess.Popen[str]:
    """Start ``source`` in a new Python process that talks JSON lines over its pipes
    (``new_session``: in a process group of its own, as another host's would be)."""
    return subprocess.Popen(
        [sys.executable, "-c", source],
        cwd=ROOT,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=new_session,
    )


def end_process(proc: subprocess.Popen[str]) -> None:
    """Close the stdin of a ``start_process`` child and wait for it (killing it if it
    does not end by itself), then close its stdout."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        proc.stdout.close()


def run(code: str, env: dict[str, str], *, migrate: bool = False, returncode: int = 0) -> Any:
    """Run ``code`` in a new Python process; return the last JSON line it printed."""
    proc = run_process(PRELUDE + (MIGRATE if migrate else "") + code, env)
    assert proc.returncode == returncode, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    check_quiet(proc.stderr)
    return last_json(proc.stdout)


def read(model: str, env: dict[str, str]) -> Any:
    """What a new process sees of ``model`` after restoring at first use."""
    return run(READ.format(model=model), env)


def wait_for(predicate: Any, what: str, proc: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"the child exited ({proc.returncode}) before {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[Any]) -> int:
    """SIGTERM the child and wait for it (killing it if it does not go)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        raise


# -- several children at once, and the example under gunicorn ------------------------


def start_together(sources: list[str], env: dict[str, str]) -> list[subprocess.Popen[str]]:
    """Start one child per source (``PRELUDE`` first); each should wait at
    ``sys.stdin.readline()`` once set up, so ``finish_together`` lets them go at once."""
    workers = [start_process(PRELUDE + source, env) for source in sources]
    time.sleep(1.0)  # each has set Django up and waits at its stdin
    return workers


def finish_together(workers: list[subprocess.Popen[str]]) -> list[Any]:
    """Let ``start_together``'s children go, wait for them; their last JSON lines."""
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=2 * TIMEOUT)
        assert worker.returncode == 0, err
        check_quiet(err)
        reports.append(last_json(out))
    return reports


def example_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of the example project on a fresh SQLite file in ``tmp_path``."""
    return {
        **{k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY"},
        "DJANGO_SETTINGS_MODULE": "example.settings",
        "MEMDB_EXAMPLE_DB": str(tmp_path / "db.sqlite3"),
        "MEMDB_EXAMPLE_THROTTLE": "1000000/minute",
        "PYTHONPATH": str(ROOT / "example"),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def start_gunicorn(
    env: dict[str, str], log: Path, *args: str, workers: int = 4
) -> tuple[subprocess.Popen[bytes], int]:
    """The example served by gunicorn with ``workers`` workers on a free port, its
    output in ``log``; ``(server, port)``. Stop it with ``stop``."""
    from tests.live.run_schemathesis import MANAGE, free_port

    port = free_port()
    with log.open("wb") as out:
        server = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("gunicorn")),
                "--workers",
                str(workers),
                "--bind",
                f"127.0.0.1:{port}",
                "--chdir",
                str(MANAGE.parent),
                *args,
                "example.wsgi",
            ],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return server, port


# -- scripts of the shared-store tests (host and server store alike) ------------------

# Four of these start at once on a store that lost its tables: which of them restored?
BOOT_RACE = """
from memdb import signals
restored = []
signals.post_restore.connect(lambda sender, **kw: restored.append(kw["label"]), weak=False)
sys.stdin.readline()  # all start at once
report(rows=len(rows(Score)), restored=restored)
"""

# A spool's leader SIGKILLed before or after (``after``) its snapshot is stored.
KILLED_LEADER = """
import signal
from memdb import spooler
Score.objects.create(player="a", points=1)
api.spool("testapp.Score")
Score.objects.create(player="b", points=2)
real = spooler.write_snapshot
def die(*args, **kwargs):
    if {after!r}:
        real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
spooler.write_snapshot = die
api.spool("testapp.Score", force=True)
"""

# One of several ``commit`` writers let go at once.
COMMIT_WRITER = """
sys.stdin.readline()
for i in range({count}):
    CommitScore.objects.create(player="w{number}-" + str(i), points=i)
report(done={count})
"""
