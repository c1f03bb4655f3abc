"""Guarantee 6: two processes, one default database, one table: a spool based on an older
generation is refused, on every surface, unless forced; nothing is silently overwritten.

Worker children ``A`` and ``B`` each keep their own memory database on one fresh default
database and take orders on stdin (code to run, one JSON line each). The refused spools
are tried on every surface *inside the refused process*, since the conflict is that
process's memory against storage: ``memdb.api.spool``, ``POST /memdb/spool`` and the
admin's "Spool now" through ``django.test.Client`` as a staff user, ``memdb_spool``
through ``execute_from_command_line`` (the code path of ``manage.py``, exit status
included), and the ``memdb`` logger of ``api.flush()``. Each refusal must name the
process that wrote the stored snapshot (host:pid). After each step a third child ``C``
restores the table (``api.restore``) and must see exactly the winner's rows.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.children import PRELUDE, TIMEOUT, child_env, end_process, read, run, start_process

WORKER = """
import contextlib, io, logging, socket, traceback
from django.core.management import execute_from_command_line
from django.db import connection
from django.test import Client
from django.test.utils import setup_test_environment
from memdb.exceptions import MemdbError

setup_test_environment()
ME = f"{socket.gethostname()}:{os.getpid()}"
LABEL = "testapp.Score"

def staff_client():
    from django.contrib.auth.models import User
    client = Client()
    client.force_login(User.objects.get(username="staff"))
    return client

def write(*players):
    for p in players:
        Score.objects.create(player=p, points=len(p))
    report(rows=rows(Score))

def spool_api(force=False):
    try:
        (result,) = api.spool(LABEL, force=force)
    except MemdbError as exc:
        return report(error=type(exc).__name__, message=str(exc))
    report(generation=result.generation, unchanged=result.unchanged)

def spool_rest(force=False):
    body = {"tables": [LABEL]}
    if force:
        body["force"] = True
    response = staff_client().post(
        "/memdb/spool", data=json.dumps(body), content_type="application/json"
    )
    report(status=response.status_code, body=response.json())

def spool_admin():
    pk = Score.objects.values_list("pk", flat=True).first()
    response = staff_client().post(
        "/admin/testapp/score/",
        {"action": "memdb_spool_now", "_selected_action": [str(pk)], "index": "0"},
        follow=True,
    )
    found = [[m.level_tag, str(m)] for m in response.context["messages"]]
    report(status=response.status_code, messages=found)

def spool_command(*args):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            execute_from_command_line(["manage.py", "memdb_spool", LABEL, *args])
        except SystemExit as exc:
            code = exc.code
    report(code=code, stdout=out.getvalue(), stderr=err.getvalue())

def flush_logged():
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append([record.levelname, record.getMessage()])
    logger = logging.getLogger("memdb")
    logger.addHandler(handler)
    try:
        results = api.flush()
    finally:
        logger.removeHandler(handler)
    report(spooled=[r.generation for r in results], log=records)

def spool_paused(seconds):
    # api.spool, stopped for ``seconds`` inside its storage transaction just before its
    # first INSERT there (after its generation check), with a "paused" line printed.
    def pause(execute, sql, params, many, context):
        if not pause.done and sql.lstrip().upper().startswith("INSERT") and "memdb_" in sql:
            pause.done = True
            report(paused=True)
            time.sleep(seconds)
        return execute(sql, params, many, context)

    pause.done = False
    with connection.execute_wrapper(pause):
        spool_api()

def restore():
    (result,) = api.restore(LABEL)
    report(generation=result.generation, rows=rows(Score))

def storage():
    report(snapshots=[[s.label, s.generation, s.written_by] for s in api.storage()])

api.tables()
report(ready=True, me=ME)
for line in sys.stdin:
    try:
        exec(json.loads(line), globals())
    except Exception as exc:
        report(error=type(exc).__name__, message=str(exc), traceback=traceback.format_exc())
"""

SETUP = """
from django.contrib.auth.models import User
User.objects.create_superuser("staff", "staff@example.com", "staff-password")
report(ok=True)
"""


class Worker:
    """A child process that runs one order at a time and answers with one JSON line."""

    def __init__(self, name: str, env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("w") as stderr:
            self.proc = start_process(PRELUDE + WORKER, env, stderr)
        self.me = f"{socket.gethostname()}:{self.proc.pid}"

    def wait_ready(self) -> None:
        ready = self.read()
        assert ready == {"ready": True, "me": self.me}, ready

    def read(self) -> Any:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(timeout=TIMEOUT)
                pytest.fail(
                    f"worker {self.name} exited ({self.proc.returncode}):\n{self.log.read_text()}"
                )
            if line.startswith("{"):
                return json.loads(line)

    def __call__(self, code: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(code) + "\n")
        self.proc.stdin.flush()
        answer = self.read()
        assert "traceback" not in answer, f"worker {self.name}: {answer['traceback']}"
        return answer

    def close(self) -> None:
        end_process(self.proc)
        assert "Traceback" not in self.log.read_text(), self.log.read_text()


@pytest.fixture
def workers(default_db: str, tmp_path: Path) -> Any:
    env = child_env(default_db)
    run(SETUP, env, migrate=True)
    started: list[Worker] = []

    def start(*names: str) -> list[Worker]:
        """Start the workers together, then wait until each is ready."""
        new = [Worker(name, env, tmp_path) for name in names]
        started.extend(new)
        for worker in new:
            worker.wait_ready()
        return new

    try:
        yield start, env
    finally:
        for worker in started:
            worker.close()


def players(rows: list[list[Any]]) -> list[str]:
    return [row[1] for row in rows]


def assert_refused_everywhere(loser: Worker, winner: Worker, generation: int) -> None:
    """Every surface refuses ``loser``'s spool and names ``winner`` as the writer."""
    said = f"generation {generation}, written by {winner.me}"

    answer = loser("spool_api()")
    assert answer["error"] == "ConflictError", answer
    assert said in answer["message"], answer

    answer = loser("spool_rest()")
    assert answer["status"] == 409, answer
    assert answer["body"]["code"] == "conflict", answer
    assert said in answer["body"]["detail"], answer

    answer = loser("spool_admin()")
    assert answer["status"] == 200, answer
    errors = [text for level, text in answer["messages"] if level == "error"]
    assert len(errors) == 1 and errors[0].startswith("Not spooled: "), answer
    assert said in errors[0], answer
    assert not [m for m in answer["messages"] if m[0] == "success"], answer

    answer = loser("spool_command()")
    assert answer["code"] != 0, answer
    assert said in answer["stderr"], answer
    assert "CommandError: not spooled: testapp.Score" in answer["stderr"], answer

    answer = loser("flush_logged()")
    assert answer["spooled"] == [], answer
    assert "ERROR" in [level for level, _ in answer["log"]], answer
    assert all(said in text for _, text in answer["log"]), answer


def assert_stored(reader: Worker, generation: int, writer: Worker, rows: list[str]) -> None:
    """Storage holds ``writer``'s snapshot, and a restore gives exactly its rows."""
    answer = reader("storage()")
    assert answer["snapshots"] == [["testapp.Score", generation, writer.me]], answer
    answer = reader("restore()")
    assert answer["generation"] == generation, answer
    assert players(answer["rows"]) == rows, answer


def test_the_older_generation_is_refused_on_every_surface_unless_forced(workers: Any) -> None:
    start, env = workers
    a, b, c = start("A", "B", "C")

    # Both start on empty storage; A stores first.
    a_rows = players(a("write('a1', 'a2', 'a3')")["rows"])
    b_rows = players(b("write('b1', 'b2')")["rows"])
    assert a("spool_api()") == {"generation": 1, "unchanged": False}
    assert_stored(c, 1, a, a_rows)
    assert_refused_everywhere(b, a, 1)
    assert_stored(c, 1, a, a_rows)

    # B overwrites with force (the API); now A is the one behind.
    assert b("spool_api(force=True)") == {"generation": 2, "unchanged": False}
    assert_stored(c, 2, b, b_rows)
    a_rows = players(a("write('a4')")["rows"])
    assert_refused_everywhere(a, b, 2)
    assert_stored(c, 2, b, b_rows)

    # A overwrites with memdb_spool --force.
    answer = a("spool_command('--force')")
    assert answer["code"] == 0, answer
    assert "generation 3" in answer["stdout"], answer
    assert_stored(c, 3, a, a_rows)

    # B, behind again, overwrites through the REST API with "force": true.
    b_rows = players(b("write('b3')")["rows"])
    answer = b("spool_api()")
    assert answer["error"] == "ConflictError" and f"written by {a.me}" in answer["message"]
    answer = b("spool_rest(force=True)")
    assert answer["status"] == 200, answer
    assert answer["body"]["results"][0]["generation"] == 4, answer
    assert_stored(c, 4, b, b_rows)

    # The way out without force: A restores B's rows, writes on top, spools.
    assert players(a("restore()")["rows"]) == b_rows
    a_rows = players(a("write('a5')")["rows"])
    assert a_rows == [*b_rows, "a5"]
    assert a("spool_api()") == {"generation": 5, "unchanged": False}
    assert_stored(c, 5, a, a_rows)

    # A new process restores the last winner's rows at start.
    restored = read("Score", env)
    assert restored["restore_state"] == "ok"
    assert players(restored["rows"]) == a_rows


def test_simultaneous_spools_store_one_and_refuse_the_other(
    workers: Any,
) -> None:
    """Two spools based on the same generation, at the same moment: A's spool is paused
    for a second inside its storage transaction, just after its generation check, while
    B spools. Exactly one may be stored, one generation up; the other is refused with a
    ConflictError naming the winner, and a restore gives the winner's rows."""
    start, env = workers
    a, b, c = start("A", "B", "C")
    a("write('a0')")
    assert a("spool_api()")["generation"] == 1
    assert b("restore()")["generation"] == 1
    rows = {"A": players(a("write('a1')")["rows"]), "B": players(b("write('b1')")["rows"])}

    assert a("spool_paused(1.0)") == {"paused": True}
    outcomes = {"B": b("spool_api()"), "A": a.read()}
    stored = c("storage()")["snapshots"]
    winners = [name for name, outcome in outcomes.items() if "generation" in outcome]
    assert len(winners) == 1, (
        f"spool outcomes {outcomes}; storage now {stored}, and a restore gives "
        f"{players(c('restore()')['rows'])}: a stored snapshot was overwritten"
    )
    (winner,) = winners
    loser = "B" if winner == "A" else "A"
    by_name = {"A": a, "B": b}
    refused = outcomes[loser]
    assert refused.get("error") == "ConflictError", outcomes
    assert f"written by {by_name[winner].me}" in refused["message"], outcomes
    assert_stored(c, 2, by_name[winner], rows[winner])
