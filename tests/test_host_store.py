"""The host store (``MEMDB["STORE"] = "host"``): one SQLite file shared by a host's workers.

Every test here runs its workers as real processes pointed at one store file in
/dev/shm (``MEMDB_TEST_HOST_PATH``), whatever store the suite itself runs on. The whole
suite also runs on the host store (``MEMDB_TEST_STORE=host`` in ``.ci/run``): that is
the contract every store keeps; this module is what only a shared store promises.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core import checks as django_checks
from django.test.utils import override_settings

from memdb import checks as memdb_checks
from tests.children import (
    BOOT_RACE,
    COMMIT_WRITER,
    KILLED_LEADER,
    PRELUDE,
    child_env,
    example_env,
    finish_together,
    last_json,
    run,
    run_process,
    start_gunicorn,
    start_together,
)
from tests.live.run_schemathesis import SETUP, manage

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A directory on a RAM-backed file system for one test's store files."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    directory = Path(tempfile.mkdtemp(prefix="memdb-host-test-", dir=shm))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def host_env(default_db: str, path: Path, **overrides: str) -> dict[str, str]:
    """A child on the host store ``path`` (every child given the same path shares it)."""
    return child_env(
        default_db, MEMDB_TEST_STORE="host", MEMDB_TEST_HOST_PATH=str(path), **overrides
    )


def lose_host(path: Path) -> None:
    """What a reboot does to a store in /dev/shm: its files are gone."""
    for leftover in path.parent.glob(path.name + "*"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


SCORE_INFO = """
(info,) = api.tables("testapp.Score")
report(rows=rows(Score), store=info.store, warning=info.warning, leader=info.leader,
       generation=info.generation, dirty=info.dirty, restore_state=info.restore_state,
       pid=os.getpid(), hits=Hit.objects.count())
"""


def test_the_workers_of_a_host_share_the_tables(default_db: str, host_dir: Path) -> None:
    """What one worker writes, the next one reads, memory-only tables included, without
    a spool; a spool by the second builds on the first one's (no conflict)."""
    env = host_env(default_db, host_dir / "store.sqlite3")
    first = run(
        "Score.objects.create(player='a', points=1)\n"
        "api.spool('testapp.Score')\n"
        "Score.objects.create(player='b', points=2)\n"
        "Hit.objects.create(path='/')\n" + SCORE_INFO,
        env,
        migrate=True,
    )
    assert (first["store"], first["warning"], first["generation"]) == ("host", None, 1)
    second = run(SCORE_INFO, env)
    assert second["rows"] == [[1, "a", 1], [2, "b", 2]], "the unspooled row is there too"
    assert second["hits"] == 1 and second["dirty"] is True
    assert second["leader"] == f"{os.uname().nodename}:{first['pid']}"
    spooled = run("(r,) = api.spool('testapp.Score')\nreport(generation=r.generation)\n", env)
    assert spooled["generation"] == 2
    third = run(SCORE_INFO, env)
    assert (third["generation"], third["dirty"]) == (2, False)


@pytest.mark.parametrize("lost", ["everything", "the file alone"])
def test_a_lost_store_is_restored_from_storage(default_db: str, host_dir: Path, lost: str) -> None:
    """The store's files are gone (a reboot), or its database file alone (deleted by
    hand, or by a test runner making a new test database): the state database left
    beside it belongs to the old file and is not believed."""
    path = host_dir / "store.sqlite3"
    env = host_env(default_db, path)
    run(
        "Score.objects.create(player='a', points=1)\n"
        "Score.objects.create(player='b', points=2)\n"
        "api.spool('testapp.Score')\nHit.objects.create(path='/')\nreport(ok=True)\n",
        env,
        migrate=True,
    )
    if lost == "everything":
        lose_host(path)
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    after = run(SCORE_INFO, env)
    assert after["rows"] == [[1, "a", 1], [2, "b", 2]]
    assert (after["restore_state"], after["hits"], after["dirty"]) == ("ok", 0, False)


def test_a_start_that_could_not_read_storage_leaves_the_restore_to_the_next(
    default_db: str, host_dir: Path, tmp_path: Path
) -> None:
    """The first worker of a new store cannot read storage (its database is down, or
    not migrated yet): it restores nothing, and does not mark the store restored, so
    the next worker does restore it."""
    path = host_dir / "store.sqlite3"
    env = host_env(default_db, path)
    run(
        "Score.objects.create(player='a', points=1)\napi.spool('testapp.Score')\nreport(ok=True)\n",
        env,
        migrate=True,
    )
    lose_host(path)
    unreadable = {**env, "MEMDB_TEST_DB_NAME": str(tmp_path / "not-migrated.sqlite3")}
    if os.environ.get("MEMDB_TEST_DB", "sqlite") != "sqlite":
        unreadable["MEMDB_TEST_DB_NAME"] = default_db + "_missing"  # no such database
    first = run_process(PRELUDE + "report(rows=rows(Score))\n", unreadable)
    assert "cannot read PersistentStorage" in first.stderr or first.returncode != 0, first.stderr
    after = run(SCORE_INFO, env)
    assert after["rows"] == [[1, "a", 1]] and after["restore_state"] == "ok"


REPLACED = """
import subprocess
Score.objects.create(player="a", points=1)
for leftover in ({files!r}):
    if os.path.exists(leftover):
        os.unlink(leftover)
# Another process opens the store: a new file, and the state beside it is made anew.
subprocess.run([sys.executable, "-c", "import django; django.setup(); "
                "from tests.testapp.models import Score; Score.objects.count()"], check=True)
try:
    api.spool("testapp.Score")
except Exception as exc:
    report(error=str(exc))
else:
    report(error=None)
"""


def test_a_process_whose_store_file_was_replaced_is_told_to_restart(
    default_db: str, host_dir: Path
) -> None:
    """The store file is deleted under a running worker and a new one made by another:
    the old worker's spools would record state for a file that is not the one they
    read, so they are refused with a clear error instead."""
    path = host_dir / "store.sqlite3"
    files = [f"{path}{suffix}" for suffix in ("", "-wal", "-shm")]
    env = host_env(default_db, path)
    run("report(ok=True)\n", env, migrate=True)
    done = run_process(PRELUDE + REPLACED.format(files=files), env)
    assert done.returncode == 0, done.stderr
    error = last_json(done.stdout)["error"]
    assert error and "was replaced since this process opened it" in error


@pytest.mark.parametrize("keep", [False, True])
def test_a_store_left_by_an_earlier_boot(default_db: str, host_dir: Path, keep: bool) -> None:
    """A HOST_PATH on disk outlives a reboot: its file is emptied and restored from
    storage, or with HOST_KEEP_ON_REBOOT kept as it was (its unspooled row too)."""
    path = host_dir / "store.sqlite3"
    env = host_env(default_db, path, MEMDB_TEST_HOST_KEEP="1" if keep else "0")
    run(
        "Score.objects.create(player='a', points=1)\napi.spool('testapp.Score')\n"
        "Score.objects.create(player='unspooled', points=2)\nreport(ok=True)\n",
        env,
        migrate=True,
    )
    state = sqlite3.connect(path.parent / (path.name + ".memdb") / "state.sqlite3")
    with state:
        state.execute("UPDATE memdb_meta SET value = 'an-earlier-boot' WHERE key = 'boot'")
    state.close()
    after = run(SCORE_INFO, env)
    if keep:
        assert after["rows"] == [[1, "a", 1], [2, "unspooled", 2]]
        assert (after["generation"], after["dirty"]) == (1, True)
    else:
        assert after["rows"] == [[1, "a", 1]]
        assert (after["restore_state"], after["dirty"]) == ("ok", False)


def test_one_worker_restores_the_store_the_others_wait(default_db: str, host_dir: Path) -> None:
    """Four workers start at once on a new store: one restores it, the others wait for
    it and find the rows."""
    path = host_dir / "store.sqlite3"
    env = host_env(default_db, path)
    run(
        "Score.objects.bulk_create(Score(player=str(i), points=i) for i in range(500))\n"
        "api.spool('testapp.Score')\nreport(ok=True)\n",
        env,
        migrate=True,
    )
    lose_host(path)
    reports = finish_together(start_together([BOOT_RACE] * 4, env))
    assert [r["rows"] for r in reports] == [500] * 4
    assert sorted(len(r["restored"]) for r in reports) == [0, 0, 0, 1], reports


@pytest.mark.parametrize("after", [False, True], ids=["before-storing", "after-storing"])
def test_a_worker_takes_over_from_a_leader_killed_mid_spool(
    default_db: str, host_dir: Path, after: bool
) -> None:
    """The leader of a spool is SIGKILLed before or after its snapshot is stored, before
    it recorded the outcome: the next worker's spool neither conflicts nor loses a row."""
    path = host_dir / "store.sqlite3"
    env = host_env(default_db, path)
    killed = run_process(
        PRELUDE + "call_command('migrate', verbosity=0)\n" + KILLED_LEADER.format(after=after), env
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    taken = run_process(
        PRELUDE + "Score.objects.create(player='c', points=3)\n"
        "(r,) = api.spool('testapp.Score')\nreport(generation=r.generation)\n",
        env,
    )
    assert taken.returncode == 0, taken.stderr
    assert last_json(taken.stdout)["generation"] == (3 if after else 2)
    assert ("taken over" in taken.stderr) is after, taken.stderr
    lose_host(path)
    restored = run(SCORE_INFO, env)
    assert restored["rows"] == [[1, "a", 1], [2, "b", 2], [3, "c", 3]]


LEADER_BUSY = """
import fcntl, threading
from memdb import store
(IntervalScore.objects.create(player="x", points=1))
lock = os.path.join(store.aux_dir(store.current_name()), "testapp.IntervalScore.lock")
fd = os.open(lock, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)  # as another worker leading its spool would
skipped = api.flush(policy="interval", skip_busy=True)
threading.Timer(0.5, lambda: os.close(fd)).start()
started = time.monotonic()
waited = api.flush(policy="interval")
report(skipped=[r.label for r in skipped], waited=[r.label for r in waited],
       seconds=time.monotonic() - started)
"""


def test_the_interval_spooler_leaves_a_table_another_worker_spools(
    default_db: str, host_dir: Path
) -> None:
    """An interval tick skips a table whose spool lock another process holds; a spool
    asked for (here a flush without skip_busy) waits for it instead."""
    env = host_env(default_db, host_dir / "store.sqlite3", MEMDB_TEST_INTERVAL="60")
    result = run(LEADER_BUSY, env, migrate=True)
    assert result["skipped"] == []
    assert result["waited"] == ["testapp.IntervalScore"] and result["seconds"] >= 0.4


def test_commit_writes_of_four_workers_at_once_all_survive(default_db: str, host_dir: Path) -> None:
    """Four workers write ``commit`` rows at once; every acknowledged row is stored,
    which a new host restores."""
    path = host_dir / "store.sqlite3"
    env = host_env(default_db, path, MEMDB_TEST_POLICY="commit")
    run("report(ok=True)\n", env, migrate=True)
    count = 40
    sources = [COMMIT_WRITER.format(count=count, number=n) for n in range(4)]
    reports = finish_together(start_together(sources, env))
    assert reports == [{"done": count}] * 4
    lose_host(path)
    restored = run(
        "report(players=sorted(CommitScore.objects.values_list('player', flat=True)))\n", env
    )
    assert restored["players"] == sorted(f"w{n}-{i}" for n in range(4) for i in range(count))


def test_a_table_whose_columns_changed_is_made_again_with_its_rows(
    default_db: str, host_dir: Path
) -> None:
    """A store kept across a deploy that changed a model (here: a column the model no
    longer has): the table is made again from the model in place, its rows kept, the
    unspooled one too; the log says so, and the next spool stores the whole table."""
    path = host_dir / "store.sqlite3"
    env = host_env(default_db, path)
    run(
        "Score.objects.create(player='a', points=1)\napi.spool('testapp.Score')\n"
        "Score.objects.create(player='unspooled', points=2)\n"
        "Hit.objects.create(path='/')\nreport(ok=True)\n",
        env,
        migrate=True,
    )
    with sqlite3.connect(path) as conn:  # the model as an older deploy had it
        conn.execute("ALTER TABLE testapp_score ADD COLUMN retired TEXT")
    after = run_process(
        PRELUDE
        + SCORE_INFO.replace("report(", "(r,) = api.spool('testapp.Score')\nreport(kind=r.kind, ")
        + "report(columns=[c.name for c in __import__('django.db', fromlist=['x'])"
        ".connections['memdb'].introspection.get_table_description("
        "__import__('django.db', fromlist=['x']).connections['memdb'].cursor(), 'testapp_score')])\n",
        env,
    )
    assert after.returncode == 0, after.stderr
    assert "testapp_score was not as its model" in after.stderr, after.stderr
    first, second = [json.loads(line) for line in after.stdout.splitlines() if line.startswith("{")]
    assert first["rows"] == [[1, "a", 1], [2, "unspooled", 2]] and first["hits"] == 1
    assert (first["kind"], first["generation"]) == ("snapshot", 1)
    assert second["columns"] == ["id", "player", "points"]
    quiet = run(SCORE_INFO, env)  # made once: the next start finds it as its model makes it
    assert (quiet["generation"], quiet["dirty"]) == (2, False)


RELATED = """
from tests.testapp.models import Player, Tag, Team
team = Team.objects.create(name="reds")
boss = Player.objects.create(team=team, name="boss")
player = Player.objects.create(team=team, mentor=boss, name="p")
player.tags.add(Tag.objects.create(name="fast"))
report(ok=True)
"""

RELATED_AFTER = """
from django.db import connections
from tests.testapp.models import Player, Tag, Team
team = Team.objects.get(name="reds")
Player.objects.create(team=team, name="new", mentor=Player.objects.get(name="boss"))
Player.objects.get(name="new").tags.add(Tag.objects.get(name="fast"))
with connections["memdb"].cursor() as cursor:
    cursor.execute("PRAGMA foreign_key_check")
    broken = cursor.fetchall()
    cursor.execute("SELECT sql FROM sqlite_master WHERE sql LIKE '%memdb_new_%'")
    leftovers = cursor.fetchall()
(info,) = api.tables("testapp.Player")
report(players=sorted(Player.objects.values_list("name", "team__name", "mentor__name")),
       tags=sorted(Player.objects.filter(tags__name="fast").values_list("name", flat=True)),
       broken=broken, leftovers=leftovers, dirty=info.dirty)
"""


def test_tables_with_foreign_keys_and_many_to_many_are_made_again_whole(
    default_db: str, host_dir: Path
) -> None:
    """Both ends of a foreign key (and of a many-to-many) made again: rows, keys and
    links kept, the other tables still reference the right table, writes are tracked,
    and the next start finds nothing to make again."""
    path = host_dir / "store.sqlite3"
    env = host_env(default_db, path)
    run(RELATED, env, migrate=True)
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE testapp_team ADD COLUMN retired TEXT")
        conn.execute("ALTER TABLE testapp_player ADD COLUMN retired TEXT")
    after = run_process(PRELUDE + RELATED_AFTER, env)
    assert after.returncode == 0, after.stderr
    assert after.stderr.count("made again, its rows kept") == 2, after.stderr
    report = last_json(after.stdout)
    assert report["players"] == [
        ["boss", "reds", None],
        ["new", "reds", "boss"],
        ["p", "reds", "boss"],
    ]
    assert report["tags"] == ["new", "p"]
    assert (report["broken"], report["leftovers"], report["dirty"]) == ([], [], True)
    again = run(
        "report(n=Player.objects.count())\n".replace(
            "Player", "__import__('tests.testapp.models', fromlist=['x']).Player"
        ),
        env,
    )
    assert again == {"n": 3}


def test_an_index_an_older_deploy_made_is_dropped(default_db: str, host_dir: Path) -> None:
    path = host_dir / "store.sqlite3"
    env = host_env(default_db, path)
    run("Score.objects.create(player='a', points=1)\nreport(ok=True)\n", env, migrate=True)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE UNIQUE INDEX old_unique_points ON testapp_score (points)")
    after = run_process(PRELUDE + "Score.objects.create(player='b', points=1)\n" + SCORE_INFO, env)
    assert after.returncode == 0, after.stderr
    assert last_json(after.stdout)["rows"] == [[1, "a", 1], [2, "b", 1]]


def test_a_new_field_without_default_leaves_the_table_and_says_why(
    default_db: str, host_dir: Path
) -> None:
    """The model has a field the kept table lacks, with no default to fill its rows:
    the table is left as it is (nothing lost) and the log names the field."""
    path = host_dir / "store.sqlite3"
    env = host_env(default_db, path)
    run("Score.objects.create(player='a', points=1)\nreport(ok=True)\n", env, migrate=True)
    with sqlite3.connect(path) as conn:  # an older deploy's model had no 'player'
        conn.execute("ALTER TABLE testapp_score DROP COLUMN player")
    after = run_process(PRELUDE + "report(n=Score.objects.values('points').count())\n", env)
    assert after.returncode == 0, after.stderr
    assert "new field 'player' has no default" in after.stderr, after.stderr
    assert last_json(after.stdout) == {"n": 1}


KILLED_DELTA = """
import signal
from memdb import spooler
CommitScore.objects.create(player="a", points=1)
CommitScore.objects.create(player="b", points=2)
real = spooler.write_delta
def die(*args, **kwargs):
    real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
spooler.write_delta = die
CommitScore.objects.create(player="c", points=3)
"""


def test_a_compaction_by_another_worker_keeps_the_dead_leaders_name(
    default_db: str, host_dir: Path
) -> None:
    """A leader stores a delta and is killed; another worker's compaction folds it
    into a snapshot before anyone spools again. The snapshot keeps the dead writer's
    name, so the next spool takes over instead of failing with a conflict for good."""
    path = host_dir / "store.sqlite3"
    env = host_env(default_db, path, MEMDB_TEST_POLICY="commit")
    killed = run_process(PRELUDE + "call_command('migrate', verbosity=0)\n" + KILLED_DELTA, env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    compacted = run(
        "from memdb import journal\nreport(generation=journal.compact(CommitScore))\n",
        env,
    )
    assert compacted["generation"] == 3
    taken = run_process(
        PRELUDE + "CommitScore.objects.create(player='d', points=4)\nreport(ok=True)\n", env
    )
    assert taken.returncode == 0 and "taken over" in taken.stderr, taken.stderr
    lose_host(path)
    restored = run(
        "report(players=list(CommitScore.objects.values_list('player', flat=True)))\n", env
    )
    assert restored["players"] == ["a", "b", "c", "d"]


FORKED = """
from memdb import policies
IntervalScore.objects.create(player="parent", points=0)  # the parent opens the store
pid = os.fork()
if pid == 0:
    IntervalScore.objects.create(player="child", points=1)
    api.spool("testapp.IntervalScore", force=True)
    running = policies._interval is not None and policies._interval.is_alive()
    os._exit(0 if running else 4)
_, status = os.waitpid(pid, 0)
(info,) = api.tables("testapp.IntervalScore")
report(child=pid, status=os.waitstatus_to_exitcode(status), rows=info.rows,
       snapshot_rows=info.snapshot_rows, leader=info.leader)
"""


FORK_WHILE_LOCKED = """
import threading
from memdb import store
held, release = threading.Event(), threading.Event()
def hold():
    with store._states_lock:
        held.set()
        release.wait(10)
threading.Thread(target=hold).start()
held.wait()
pid = os.fork()
if pid == 0:
    store.state_for("file:memdb_fork_test?mode=memory&cache=shared")  # hung before
    os._exit(0)
deadline = time.monotonic() + 5
status = None
while status is None and time.monotonic() < deadline:
    done, code = os.waitpid(pid, os.WNOHANG)
    status = os.waitstatus_to_exitcode(code) if done else None
    time.sleep(0.02)
if status is None:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
release.set()
report(status=status)
"""


def test_a_fork_while_another_thread_holds_the_store_registry_lock_does_not_hang(
    default_db: str,
) -> None:
    """A lock another thread of the parent held at the fork would stay held for good
    in the child: the child makes it anew."""
    assert run(FORK_WHILE_LOCKED, child_env(default_db)) == {"status": 0}


def test_a_worker_forked_after_the_store_was_opened_works_on_its_own_connections(
    default_db: str, host_dir: Path
) -> None:
    """gunicorn --preload with a parent that used memdb: the forked worker opens its own
    SQLite connections, spools, and runs an interval spooler of its own."""
    env = host_env(default_db, host_dir / "store.sqlite3", MEMDB_TEST_POLICY="interval")
    result = run(FORKED, env, migrate=True)
    assert result["status"] == 0, f"exit {result['status']}: 4 is no interval spooler"
    assert (result["rows"], result["snapshot_rows"]) == (2, 2)
    assert result["leader"] == f"{os.uname().nodename}:{result['child']}"


# -- system checks ------------------------------------------------------------------


def _check(memdb: dict, databases: dict | None = None) -> list[django_checks.CheckMessage]:
    from django.conf import settings

    overrides = {"MEMDB": {**settings.MEMDB, **memdb}}
    if databases is not None:
        overrides["DATABASES"] = {**settings.DATABASES, **databases}
    with override_settings(**overrides):
        return [m for m in memdb_checks.check_settings() if m.id.startswith("memdb.")]


@pytest.mark.django_db(databases=[])
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_checks_name_a_bad_store_and_a_host_store_that_is_not_a_file() -> None:
    from django.conf import settings

    (error,) = [m for m in _check({"STORE": "cluster"}) if m.id == "memdb.E013"]
    assert "'cluster'" in error.msg
    memory = {"memdb": {**settings.DATABASES["memdb"], "NAME": "file:x?mode=memory&cache=shared"}}
    (error,) = [m for m in _check({"STORE": "host"}, memory) if m.id == "memdb.E004"]
    assert "not a database file" in error.msg and "HOST_PATH" in (error.hint or "")


@pytest.mark.django_db(databases=[])
@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_check_warns_when_the_host_store_is_on_disk(tmp_path: Path) -> None:
    from django.conf import settings

    shm = memdb_checks._filesystem_of("/dev/shm")
    on_disk = memdb_checks._filesystem_of(str(tmp_path))
    if on_disk in ("tmpfs", "ramfs") or shm is None:
        pytest.skip(f"{tmp_path} is on {on_disk}: no disk to warn about here")
    disk = {"memdb": {**settings.DATABASES["memdb"], "NAME": str(tmp_path / "s.sqlite3")}}
    (warning,) = [m for m in _check({"STORE": "host"}, disk) if m.id == "memdb.W003"]
    assert on_disk in warning.msg and "/dev/shm" in (warning.hint or "")
    ram = {"memdb": {**settings.DATABASES["memdb"], "NAME": "/dev/shm/s.sqlite3"}}
    assert not [m for m in _check({"STORE": "host"}, ram) if m.id in ("memdb.W003", "memdb.E004")]


# -- gunicorn ------------------------------------------------------------------------


def test_gunicorn_workers_read_back_each_others_writes(tmp_path: Path, host_dir: Path) -> None:
    """The example on the host store, served by gunicorn with 4 workers: each request
    on a new connection (spread over the workers by the kernel) counts a hit, and every
    answer shows every hit so far, whichever worker wrote it; no worker warns."""
    env = example_env(
        tmp_path,
        MEMDB_EXAMPLE_STORE="host",
        MEMDB_EXAMPLE_HOST_PATH=str(host_dir / "example.sqlite3"),
    )
    manage(env, "migrate", "--noinput")
    token = manage(env, "shell", "-c", SETUP).strip().splitlines()[-1]
    lose_host(host_dir / "example.sqlite3")  # the set-up's own store: a fresh start
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
                urllib.request.urlopen(tables_request(), timeout=10).close()
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
            assert tables["shop.Hit"]["store"] == "host" and tables["shop.Hit"]["warning"] is None
            assert tables["shop.Score"]["rows"] == 3
            counts.append(tables["shop.Hit"]["rows"])
        assert counts == list(range(1, 25)), counts
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    text = log.read_text()
    pids = {line.split()[1] for line in text.splitlines() if line.startswith("served-by ")}
    assert len(pids) >= 2, f"one worker served every request:\n{text}"
    assert "worker processes" not in text, text
