#!/usr/bin/env python3
"""Schemathesis against ``openapi.yaml`` on a live example server, authenticated as staff.

Run from anywhere with the project's virtualenv (``.ci/run`` runs it as its last step)::

    .venv/bin/python tests/live/run_schemathesis.py [extra schemathesis run options]

What it does:

1. makes a temporary directory holding a fresh SQLite default database for the example
   project (``MEMDB_EXAMPLE_DB``), so ``example/db.sqlite3`` is never touched;
2. ``migrate``, then creates a staff superuser with a DRF token and seeds a few ``Score``
   rows, spooled so the server restores them;
3. starts ``example/manage.py runserver --noreload`` on a free port of 127.0.0.1, with the
   "memdb" throttle scope raised (``MEMDB_EXAMPLE_THROTTLE``) so that spool and restore
   are not answered 429 half-way through, and waits until it answers;
4. runs ``schemathesis run openapi.yaml`` with every check (no 5xx, responses that match
   their documented schema, status code and content type, bad input rejected, auth not
   ignored, ...) in every phase, bounded by ``--max-examples`` and ``--max-time``;
5. stops the server with SIGTERM (memdb flushes on it), and exits non-zero if schemathesis
   failed, the server logged an internal error, or anything in between went wrong.

Environment: ``SCHEMATHESIS_MAX_EXAMPLES`` (default 100 per operation and phase),
``SCHEMATHESIS_MAX_TIME`` (default 150 seconds for the whole run), ``SCHEMATHESIS_SEED``
(default random; the seed used is printed so a failure can be replayed), and
``SCHEMATHESIS_KEEP=1`` to keep the temporary directory (database, server log, reports).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MANAGE = ROOT / "example" / "manage.py"
SCHEMA = ROOT / "openapi.yaml"
PYTHON = sys.executable
USERNAME = "schemathesis"

SETUP = f"""
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
from memdb import api
from shop.models import Score

user = get_user_model().objects.create_superuser({USERNAME!r}, "st@example.com", "not-used")
Score.objects.bulk_create(
    Score(player=name, points=points) for name, points in [("ada", 7), ("bo", 3), ("cy", 5)]
)
api.spool("shop.Score")
print(Token.objects.create(user=user).key)
"""


def log(message: str) -> None:
    print(f"[schemathesis run] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [PYTHON, str(MANAGE), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"manage.py {args[0]} failed with exit code {done.returncode}")
    return done.stdout


def wait_until_up(url: str, token: str, server: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    request = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the example server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                rows = {t["label"]: t["rows"] for t in json.load(response)}
                log(f"server is up: {url} answers {response.status}, tables {rows}")
                if rows.get("shop.Score") != 3:
                    raise SystemExit("the server did not restore the 3 seeded Score rows")
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.3)
    raise SystemExit(f"the example server did not answer {url} within {seconds:.0f} s")


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        log("the server did not stop on SIGTERM within 20 s; killing it")
        server.kill()
        server.wait()


def run(tmp: Path, extra: list[str]) -> int:
    """Set up, serve, run schemathesis; its exit code. ``SystemExit`` on a set-up failure."""
    max_examples = os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "100")
    max_time = os.environ.get("SCHEMATHESIS_MAX_TIME", "150")
    seed = os.environ.get("SCHEMATHESIS_SEED") or str(random.randrange(2**32))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "example.settings",
        "MEMDB_EXAMPLE_DB": str(tmp / "db.sqlite3"),
        "MEMDB_EXAMPLE_THROTTLE": "1000000/minute",
        "PYTHONUNBUFFERED": "1",
    }
    log(f"fresh default database {env['MEMDB_EXAMPLE_DB']}")
    manage(env, "migrate", "--noinput")
    token = manage(env, "shell", "-c", SETUP).strip().splitlines()[-1]
    log(f"staff superuser {USERNAME!r} with a token; 3 Score rows seeded and spooled")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with (tmp / "server.log").open("wb") as out:
        server = subprocess.Popen(
            [PYTHON, str(MANAGE), "runserver", "--noreload", f"127.0.0.1:{port}"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_up(f"{base}/memdb/tables", token, server, seconds=60)
        # Authenticate through the schema's own "tokenAuth" scheme rather than a fixed
        # header, so that schemathesis knows which credentials to leave out or spoil when
        # it checks that the API refuses calls without valid ones (ignored_auth).
        config = tmp / "schemathesis.toml"
        config.write_text(f'[auth.openapi.tokenAuth]\napi_key = "Token {token}"\n')
        command = [
            str(Path(PYTHON).with_name("schemathesis")),
            "--config-file",
            str(config),
            "run",
            str(SCHEMA),
            "--url",
            base,
            "--checks",
            "all",
            "--max-examples",
            max_examples,
            "--max-time",
            max_time,
            "--seed",
            seed,
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--report",
            "junit",
            "--report-dir",
            str(tmp / "report"),
            *extra,
        ]
        log(
            f"schemathesis: {max_examples} examples per operation, at most {max_time} s, seed {seed}"
        )
        started = time.monotonic()
        try:
            # In the temporary directory: schemathesis keeps its cache in ./.schemathesis.
            rc = subprocess.run(
                command,
                cwd=tmp,
                env={**os.environ, "NO_COLOR": "1"},
                timeout=int(max_time) + 120,
            ).returncode
        except subprocess.TimeoutExpired:
            log(f"schemathesis did not finish within {int(max_time) + 120} s")
            rc = 124
        log(f"schemathesis exit code {rc} after {time.monotonic() - started:.0f} s")
        return rc
    finally:
        stop(server)


def main(extra: list[str]) -> int:
    # A SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the server is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="memdb-schemathesis-"))
    try:
        rc = run(tmp, extra)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            log(exc.code)
        rc = exc.code if isinstance(exc.code, int) and exc.code else 1

    server_log = tmp / "server.log"
    text = server_log.read_text(errors="replace") if server_log.exists() else ""
    internal = [
        line for line in text.splitlines() if "Internal Server Error" in line or '" 500 ' in line
    ]
    if internal:
        log(f"the server logged {len(internal)} internal error(s); the end of its log:")
        print(text[-6000:])
        rc = rc or 1
    elif rc != 0:
        log("the end of the server log:")
        print(text[-3000:])
    if os.environ.get("SCHEMATHESIS_KEEP") == "1" or rc != 0:
        log(f"kept {tmp} (database, server.log, schemathesis.toml, report/)")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
