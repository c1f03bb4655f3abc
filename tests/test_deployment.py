"""The process store warns when this process is one of several workers (issue 8).

``memdb.deployment`` counts sibling workers (same parent, same command line) and reads
``WEB_CONCURRENCY``; ``api.tables()`` and ``GET /memdb/tables`` report the store and the
warning, and the log says it once at start-up. The last test serves the example with
gunicorn and 4 workers, as a real deployment would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from memdb import api, deployment
from tests.children import example_env, start_gunicorn
from tests.live.run_schemathesis import SETUP, manage

#: The process store's warning; the host store's shared workers: tests/test_host_store.py.
pytestmark = pytest.mark.process_store

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def test_web_concurrency_counts_as_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert deployment.worker_count() == 1
    assert deployment.process_store_warning() is None
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert deployment.worker_count() == 3
    warning = deployment.process_store_warning()
    assert warning is not None
    assert "one of 3 worker processes" in warning and "own copy" in warning
    monkeypatch.setenv("WEB_CONCURRENCY", "many")  # not a number: ignored
    assert deployment.worker_count() == 1


FORKING_SERVER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    from memdb import deployment

    go_read, go_write = os.pipe()  # the parent writes one byte per worker: count now
    out_read, out_write = os.pipe()  # the workers' counts
    end_read, end_write = os.pipe()  # closed by the parent once all counted: exit
    children = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            os.read(go_read, 1)
            os.write(out_write, str(deployment.sibling_workers()).encode() + b"\\n")
            os.close(end_write)
            os.read(end_read, 1)  # EOF once the parent closed its end
            os._exit(0)
        children.append(pid)
    os.write(go_write, b"xxx")
    counts = b""
    while counts.count(b"\\n") < 3:
        counts += os.read(out_read, 64)
    os.close(end_write)
    for pid in children:
        os.waitpid(pid, 0)
    print(counts.decode(), flush=True)
    """
)


def test_forked_workers_count_each_other() -> None:
    """Three workers forked by one parent (a pre-forking server's shape) each count
    three; the parent, whose parent has other children, counts itself alone."""
    done = subprocess.run(
        [PYTHON, "-c", FORKING_SERVER.format(root=str(ROOT))],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY"},
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["3", "3", "3"], done.stdout
    assert deployment.sibling_workers() == 1  # this test process


@pytest.mark.django_db(transaction=True, databases=["default", "memdb"])
def test_tables_report_the_store_and_the_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert {(t.store, t.warning) for t in api.tables()} == {("process", None)}

    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    infos = api.tables()
    assert infos and all(t.store == "process" for t in infos)
    assert all(t.warning and "one of 4 worker processes" in t.warning for t in infos)

    staff = get_user_model().objects.create_user("staff", password="pw", is_staff=True)
    client = APIClient()
    client.force_authenticate(staff)
    answer = client.get("/memdb/tables")
    assert answer.status_code == 200
    assert {(t["store"], "one of 4 worker processes" in t["warning"]) for t in answer.json()} == {
        ("process", True)
    }


def get_tables(url: str, token: str) -> list[dict]:
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_gunicorn_with_four_workers_shows_the_warning(tmp_path: Path) -> None:
    """The example served by gunicorn with 4 workers: every worker that answers says
    it is one of 4 with its own copy, and each logged it at start-up."""
    env = example_env(tmp_path)
    manage(env, "migrate", "--noinput")
    token = manage(env, "shell", "-c", SETUP).strip().splitlines()[-1]
    log = tmp_path / "gunicorn.log"
    server, port = start_gunicorn(env, log)
    url = f"http://127.0.0.1:{port}/memdb/tables"
    try:
        warnings: dict[str, str] = {}
        deadline = time.monotonic() + 60
        # Connections are spread over the workers by the kernel; ask until at least two
        # different workers answered (each names its pid in the warning).
        while len(warnings) < 2 and time.monotonic() < deadline:
            assert server.poll() is None, log.read_text()
            try:
                tables = get_tables(url, token)
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
                continue
            score = next(t for t in tables if t["label"] == "shop.Score")
            assert score["rows"] == 3 and score["store"] == "process"
            warning = score["warning"]
            assert warning and "one of 4 worker processes" in warning, tables
            pid = warning.split("(pid ")[1].split(",")[0]
            warnings[pid] = warning
        assert len(warnings) >= 2, f"only {sorted(warnings)} answered:\n{log.read_text()}"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    text = log.read_text()
    started = [line for line in text.splitlines() if "worker processes" in line]
    assert len(started) >= len(warnings), text
