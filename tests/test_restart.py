"""A restart is a real restart: rows written in one Python process, read in a new one.

Every test starts child processes (``python -c``) on a default database of its own: a
fresh SQLite file, or a fresh PostgreSQL / MariaDB database when ``MEMDB_TEST_DB`` says
so. The first child migrates, writes and ends (cleanly, by ``os._exit`` or by SIGTERM);
the second restores at its first use of the memory alias and prints what it sees. The
pytest process itself never touches a database apart from creating and dropping those.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.children import (
    INTERVAL,
    MIGRATE,
    PRELUDE,
    ROOT,
    TIMEOUT,
    check_quiet,
    child_env,
    last_json,
    read,
    run,
    stop,
    wait_for,
)

# -- commit: durable when the write call returns ---------------------------------------


def test_commit_policy_rows_survive_os_exit_right_after_the_write(default_db: str) -> None:
    """Every write path spools before it returns: nothing waits for atexit or a flush."""
    env = child_env(default_db, MEMDB_TEST_FLUSH_ON_EXIT="1")
    written = run(
        """
for i in range(3):
    CommitScore.objects.create(player=f"p{i}", points=i)
CommitScore.objects.bulk_create([CommitScore(player="b1", points=10), CommitScore(player="b2")])
CommitScore.objects.filter(player="p1").update(points=11)
CommitScore.objects.filter(player="p2").delete()
obj, _ = CommitScore.objects.update_or_create(player="b2", defaults={"points": 20})
CommitScore.objects.create(player="last", points=99)
report(rows=rows(CommitScore))
os._exit(0)
""",
        env,
        migrate=True,
    )
    assert written["rows"] == [
        [1, "p0", 0],
        [2, "p1", 11],
        [4, "b1", 10],
        [5, "b2", 20],
        [6, "last", 99],
    ]
    restored = read("CommitScore", env)
    assert restored["rows"] == written["rows"]
    assert restored["restore_state"] == "ok"


@pytest.mark.transactional_memory
def test_commit_policy_atomic_block_survives_os_exit_right_after_it(default_db: str) -> None:
    """The outermost ``atomic()`` spools as it exits; a rolled-back block leaves nothing."""
    env = child_env(default_db)
    written = run(
        """
with transaction.atomic(using="memdb"):
    for i in range(5):
        CommitScore.objects.create(player=f"a{i}", points=i)
    with transaction.atomic(using="memdb"):
        CommitScore.objects.filter(player="a0").update(points=100)
try:
    with transaction.atomic(using="memdb"):
        CommitScore.objects.create(player="rolled back")
        raise RuntimeError
except RuntimeError:
    pass
report(rows=rows(CommitScore))
os._exit(0)
""",
        env,
        migrate=True,
    )
    assert [r[1:] for r in written["rows"]] == [
        ["a0", 100],
        ["a1", 1],
        ["a2", 2],
        ["a3", 3],
        ["a4", 4],
    ]
    restored = read("CommitScore", env)
    assert restored["rows"] == written["rows"]
    assert restored["restore_state"] == "ok"


# -- interval: durable within one interval ---------------------------------------------


def test_interval_policy_rows_survive_os_exit_once_an_interval_passed(default_db: str) -> None:
    """The background spooler stores the rows by itself; the crash comes after it did."""
    env = child_env(default_db)
    written = run(
        """
for i in range(20):
    IntervalScore.objects.create(player=f"i{i}", points=i)
started = time.monotonic()
deadline = started + 10
while time.monotonic() < deadline:
    (info,) = api.tables("testapp.IntervalScore")
    if not info.dirty and info.snapshot_rows == 20:
        break
    time.sleep(0.02)
report(rows=rows(IntervalScore), waited=time.monotonic() - started, dirty=info.dirty)
os._exit(0)
""",
        env,
        migrate=True,
    )
    assert not written["dirty"], f"no interval spool within {written['waited']:.1f} s"
    assert len(written["rows"]) == 20
    restored = read("IntervalScore", env)
    assert restored["rows"] == written["rows"]
    assert restored["restore_state"] == "ok"


def test_interval_policy_crash_loses_at_most_the_last_interval(default_db: str) -> None:
    """``os._exit`` in the middle of steady writes: the restored rows are a prefix of
    those written, and only rows of the last interval (plus the spool's own time) are
    missing. A crash during a spool leaves the previous snapshot readable."""
    env = child_env(default_db)
    written = run(
        """
stamps = []
started = time.monotonic()
i = 0
while time.monotonic() - started < 2.0:
    IntervalScore.objects.create(player=f"w{i}", points=i)
    stamps.append(time.monotonic())
    i += 1
    time.sleep(0.005)
report(rows=rows(IntervalScore), stamps=stamps, exited=time.monotonic())
os._exit(0)
""",
        env,
        migrate=True,
    )
    rows, stamps, exited = written["rows"], written["stamps"], written["exited"]
    assert len(rows) == len(stamps) > 50
    restored = read("IntervalScore", env)
    kept = restored["rows"]
    assert kept, "no interval spool at all in 2 s"
    assert restored["restore_state"] == "ok"
    assert kept == rows[: len(kept)], "the restored rows are not a prefix of the written ones"
    lost = stamps[len(kept) :]
    slack = 0.5
    if lost:
        assert exited - lost[0] <= INTERVAL + slack, (
            f"lost {len(lost)} rows written over the last {exited - lost[0]:.2f} s "
            f"(interval {INTERVAL} s)"
        )


# -- manual: spool on request, flush at a clean exit -----------------------------------

WRITE_SCORES = """
for i in range(4):
    Score.objects.create(player=f"m{i}", points=i)
Score.objects.filter(player="m3").update(points=33)
"""


@pytest.mark.parametrize("how", ["api", "command"])
def test_manual_policy_spool_then_exit(default_db: str, how: str) -> None:
    """``api.spool()`` or ``memdb_spool`` stores the rows; the exit itself flushes nothing."""
    env = child_env(default_db)
    spool = "api.spool()" if how == "api" else "call_command('memdb_spool', verbosity=0)"
    written = run(
        WRITE_SCORES + spool + "\nreport(rows=rows(Score))\nos._exit(0)\n", env, migrate=True
    )
    assert len(written["rows"]) == 4
    restored = read("Score", env)
    assert restored["rows"] == written["rows"]
    assert restored["restore_state"] == "ok"


def test_manual_policy_clean_exit_flushes(default_db: str) -> None:
    """With ``FLUSH_ON_EXIT`` the atexit handler spools the dirty table."""
    env = child_env(default_db, MEMDB_TEST_FLUSH_ON_EXIT="1")
    written = run(WRITE_SCORES + "report(rows=rows(Score))\n", env, migrate=True)
    assert len(written["rows"]) == 4
    restored = read("Score", env)
    assert restored["rows"] == written["rows"]
    assert restored["restore_state"] == "ok"


@pytest.mark.parametrize("idle", ["sleep", "stdin"])
def test_manual_policy_sigterm_while_idle_flushes(
    default_db: str, tmp_path: Path, idle: str
) -> None:
    """SIGTERM to an idle process (asleep, or blocked reading stdin) exits through the
    memdb handler, which flushes and then dies of SIGTERM, as the default action would."""
    env = child_env(default_db, MEMDB_TEST_FLUSH_ON_EXIT="1")
    wait = "time.sleep(120)" if idle == "sleep" else "sys.stdin.readline()"
    source = (
        PRELUDE + MIGRATE + WRITE_SCORES + "report(rows=rows(Score))\nprint('ready', flush=True)\n"
    ) + wait
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", source],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
        try:
            wait_for(lambda: "ready" in out.read_text().splitlines(), "'ready'", proc, err)
            time.sleep(0.1)  # into the sleep or the read, past the print
            returncode = stop(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=TIMEOUT)
            assert proc.stdin is not None
            proc.stdin.close()
    assert returncode == -signal.SIGTERM, err.read_text()
    check_quiet(err.read_text())
    written = last_json(out.read_text())
    assert len(written["rows"]) == 4
    restored = read("Score", env)
    assert restored["rows"] == written["rows"]
    assert restored["restore_state"] == "ok"


def test_manual_policy_clean_exit_without_flush_loses_the_rows(default_db: str) -> None:
    """The control for the two tests above: without ``FLUSH_ON_EXIT`` and without a
    spool, nothing is stored, so it is the flush that saved the rows there."""
    env = child_env(default_db, MEMDB_TEST_FLUSH_ON_EXIT="0")
    written = run(WRITE_SCORES + "report(rows=rows(Score))\n", env, migrate=True)
    assert len(written["rows"]) == 4
    restored = read("Score", env)
    assert restored["rows"] == []
    assert restored["restore_state"] == "none"


# -- the development server -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """``django-admin runserver --noreload`` on a free port, its output in files."""

    def __init__(self, env: dict[str, str], logs: Path, threading: bool) -> None:
        self.port = free_port()
        self.log = logs
        args = ["runserver", "--noreload", f"127.0.0.1:{self.port}"]
        if not threading:
            args.append("--nothreading")
        with logs.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "django", *args],
                cwd=ROOT,
                env={**env, "DJANGO_SETTINGS_MODULE": "tests.restart_settings"},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __enter__(self) -> Server:
        try:
            wait_for(self.listening, "the server to listen", self.proc, self.log)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, str]:
        try:
            with self.opener.open(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def counts(self, path: str, n: int) -> list[int]:
        answers = [self.get(path) for _ in range(n)]
        for status, body in answers:
            assert status == 200, f"{path}: {status} {body}\n{self.log.read_text()}"
        return [json.loads(body)["count"] for _, body in answers]

    def stop(self) -> None:
        self.returncode = stop(self.proc)


@pytest.mark.parametrize("threading", [True, False], ids=["threading", "nothreading"])
def test_runserver_requests_keep_the_memory_database(
    default_db: str, tmp_path: Path, threading: bool
) -> None:
    """Regression for 0.0.6: with ``CONN_MAX_AGE=0`` Django closes the connection after
    every request, and 0.0.6's memory database vanished with it, so the second request
    got a 500 "no such table". Each request here writes a row and must see all before it.
    Then the server is stopped with SIGTERM and started again: the memory-only table
    starts empty and the ``commit``-policy table is restored."""
    env = child_env(default_db)
    run("report(ok=True)\n", env, migrate=True)
    logs = tmp_path / "server.log"
    with Server(env, logs, threading) as server:
        assert server.counts("/hit/", 5) == [1, 2, 3, 4, 5]
        assert server.counts("/score/", 3) == [1, 2, 3]
    assert server.returncode == -signal.SIGTERM, logs.read_text()
    with Server(env, logs, threading) as server:
        assert server.counts("/hit/", 2) == [1, 2]
        assert server.counts("/score/", 2) == [4, 5]
    check_quiet(logs.read_text())
    restored = read("CommitScore", env)
    assert [r[1:] for r in restored["rows"]] == [["web", n] for n in range(1, 6)]
