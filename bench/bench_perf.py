#!/usr/bin/env python
"""Performance benchmark of issue 7: each of its seven targets measured in one run.

Run from the repository root::

    .venv/bin/python bench/bench_perf.py                          # full run, SQLite default DB
    .venv/bin/python bench/bench_perf.py --quick                  # smaller, under a minute
    .venv/bin/python bench/bench_perf.py --db postgresql --only 1,7

The main process configures Django itself (``bench/_setup.py``: ``settings.configure``
with the models of ``bench/benchapp`` and ``memdb.configure``) on a fresh default
database: a SQLite file in a new temporary directory, or with ``--db`` a new database on
the PostgreSQL / MariaDB server of the test suite (``tests.children.fresh_database``,
dropped at the end). Start-up, the first request after a restart and peak memory are
measured in new processes (this script run with ``--child``), each part on a default
database of its own. Every figure is printed beside its target; ratios are medians of
ratios taken side by side within one round. A summary table ends the run; the exit
status is 1 if a target failed. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (HERE, ROOT):  # ``_setup``, the bench apps; ``tests`` and ``memdb``
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _setup import load_line, machine_line, memory_name, settings_for  # noqa: E402

KINDS = ("sqlite", "postgresql", "mysql")
PARTS = (1, 2, 3, 4, 5, 6, 7)
#: The issue's targets.
COMMIT_GROWTH = 1.1  # 1: create() at 100k rows / at 1k rows, commit policy
COMMIT_FLOOR = 1.5  # 1: commit-policy create() / plain create() on the default database
FREE_WRITES = 1.1  # 2: interval and manual create() / memory-only create()
THROUGHPUT = 1.5  # 3, 4: memdb spool / restore over the raw sqlite3 baseline
FIRST_MEMORY_MS = 100.0  # 5: the first query on the memory alias, milliseconds
START_SLOWDOWN = 1.05  # 5: Django start with the app / without it
MEMORY_RATIO = 2.5  # 6: peak memory / snapshot size
BIG = "benchapp.BigRow"
CHAINS: dict[str, tuple[str, ...]] = {"no codec": (), "zlib": ("zlib",)}
#: Settings of every process here: no flush at exit (the databases are dropped first).
MEMDB_SETTINGS = {"FLUSH_ON_EXIT": False}


# --------------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One measured figure beside its target (``limit`` None: reported, no target)."""

    target: str
    what: str
    value: float
    limit: float | None
    unit: str

    @property
    def verdict(self) -> str:
        if self.limit is None:
            return "-"
        return "PASS" if self.value <= self.limit else "FAIL"

    def cells(self) -> tuple[str, str]:
        digits = 2 if self.unit == "x" else 1
        value = f"{self.value:.{digits}f}{self.unit if self.unit == 'x' else ' ' + self.unit}"
        if self.limit is None:
            return value, "(no target)"
        limit = f"{self.limit:.{digits}f}{self.unit if self.unit == 'x' else ' ' + self.unit}"
        return value, f"<= {limit}"

    def line(self) -> str:
        value, limit = self.cells()
        return f"   {self.target:<3} {self.what:<62} {value:>11}  {limit:<14} {self.verdict}"


def show(figures: list[Figure]) -> None:
    for figure in figures:
        print(figure.line())


def ratio_of(numerators: list[float], denominators: list[float]) -> float:
    """Median of the per-round ratios (rounds are seconds apart, so slow drifts cancel)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def rotated(items: list[Any], round_number: int) -> list[Any]:
    """Round ``r``'s order: rotated by ``r`` and reversed every other round."""
    k = round_number % len(items)
    order = items[k:] + items[:k]
    return order[::-1] if round_number % 2 else order


def us(ns: float) -> str:
    return f"{ns / 1000:.1f}"


# --------------------------------------------------------------------------- rows


BASE_MOMENT = datetime(2024, 1, 1, tzinfo=UTC)


def row_values(n: int, *, seed: int = 7, start: int = 0) -> Iterator[tuple[int, str, str]]:
    """``n`` rows of (integer, 40-character text, datetime) as SQLite holds them.

    The text is 40 random hex digits; the datetime is the text Django's SQLite backend
    stores (UTC, microseconds). Seeded, so every process makes the same rows.
    """
    rng = random.Random(seed + start)
    for i in range(start, start + n):
        moment = BASE_MOMENT + timedelta(seconds=i, microseconds=rng.randrange(1, 1_000_000))
        yield (
            rng.randrange(1_000_000),
            format(rng.getrandbits(160), "040x"),
            moment.replace(tzinfo=None).isoformat(" "),
        )


def model_rows(model: Any, n: int, *, start: int = 0) -> list[Any]:
    moment = datetime.fromisoformat
    return [
        model(number=number, text=text, moment=moment(at).replace(tzinfo=UTC))
        for number, text, at in row_values(n, start=start)
    ]


def raw_memory() -> sqlite3.Connection:
    """A private autocommit connection to the shared memory database."""
    return sqlite3.connect(memory_name(), uri=True, isolation_level=None, check_same_thread=False)


def fill_memory(model: Any, n: int) -> None:
    """Empty ``model``'s memory table and insert ``n`` rows, in SQL (one transaction)."""
    model.objects.exists()  # the memory database is built at its first use
    table = model._meta.db_table
    with contextlib.closing(raw_memory()) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f'DELETE FROM "{table}"')
        conn.executemany(
            f'INSERT INTO "{table}" (number, text, moment) VALUES (?, ?, ?)', row_values(n)
        )
        conn.execute("COMMIT")


# --------------------------------------------------------------------------- databases


def server_default(kind: str, name: str) -> dict[str, Any]:
    """The ``DATABASES`` entry of database ``name`` on the test suite's server of ``kind``."""
    env = os.environ.get
    if kind == "sqlite":
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": name}
    if kind == "postgresql":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": env("MEMDB_TEST_DB_USER", "postgres"),
            "PASSWORD": env("MEMDB_TEST_DB_PASSWORD", ""),
            "HOST": env("MEMDB_TEST_DB_HOST", "127.0.0.1"),
            "PORT": env("MEMDB_TEST_DB_PORT", "5432"),
        }
    return {
        "ENGINE": "django.db.backends.mysql",
        "NAME": name,
        "USER": env("MEMDB_TEST_DB_USER", "root"),
        "PASSWORD": env("MEMDB_TEST_DB_PASSWORD", ""),
        "HOST": env("MEMDB_TEST_DB_HOST", "127.0.0.1"),
        "PORT": env("MEMDB_TEST_DB_PORT", "3306"),
        "OPTIONS": {"charset": "utf8mb4"},
    }


def use_pymysql(conf: dict) -> None:
    if conf["DATABASES"]["default"]["ENGINE"] == "django.db.backends.mysql":
        import pymysql

        pymysql.install_as_MySQLdb()


@contextlib.contextmanager
def fresh_default(kind: str, directory: Path) -> Iterator[dict[str, Any]]:
    """The ``DATABASES`` entry of a new, empty default database, dropped afterwards.

    ``tests.children.fresh_database`` reaches the servers with the credentials of the
    configured ``settings.DATABASES["default"]``.
    """
    from tests.children import fresh_database

    directory.mkdir(parents=True, exist_ok=True)
    with fresh_database(kind, directory) as name:
        yield server_default(kind, name)


def describe_default(db: dict[str, Any]) -> str:
    if db["ENGINE"].endswith("sqlite3"):
        return f"SQLite file {db['NAME']} (Django's defaults: rollback journal, fsync)"
    return f"{db['ENGINE'].rsplit('.', 1)[-1]} database {db['NAME']} on {db['HOST']}:{db['PORT']}"


# --------------------------------------------------------------------------- children


def run_child(kind: str, conf: dict, directory: str, *extra: str, timeout: float = 900) -> dict:
    """Run this script as ``--child kind`` with settings ``conf``; its last JSON line."""
    path = os.path.join(directory, f"child-{kind}.json")
    with open(path, "w") as out:
        json.dump(conf, out)
    # Bytecode is cached (outside the repository), as it is where an app is deployed:
    # with PYTHONDONTWRITEBYTECODE every start would compile memdb's modules again.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.path.join(directory, "pycache")
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--conf", path, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"child {kind} printed no JSON\n{proc.stdout}\n{proc.stderr}")
    return {**json.loads(lines[-1]), "wall": wall, "stderr": proc.stderr}


def report(**data: Any) -> None:
    print(json.dumps(data), flush=True)


def child_main(args: argparse.Namespace) -> None:
    with open(args.conf) as source:
        conf = json.load(source)
    use_pymysql(conf)
    if args.child == "start":
        child_start(conf)
    elif args.child == "setup":
        child_setup(conf)
    elif args.child == "spool":
        child_spool(conf, args.chain, args.rows)
    elif args.child == "restore":
        child_restore(conf)
    else:
        raise SystemExit(f"unknown child {args.child!r}")


def child_setup(conf: dict) -> None:
    """``migrate`` a fresh default database (``--run-syncdb``: the bench apps have no
    migrations; the router keeps the memory models off the default database)."""
    import django
    from django.conf import settings

    settings.configure(**conf)
    django.setup()
    from django.core.management import call_command

    call_command("migrate", database="default", run_syncdb=True, verbosity=0)
    report(ok=True)


def child_start(conf: dict) -> None:
    """Django's start (``django.setup()`` + a default-database query), then, with memdb,
    the first query on the memory alias (20 tables, empty storage)."""
    started = time.perf_counter()
    import django
    from django.conf import settings

    settings.configure(**conf)
    django.setup()
    from benchstart import models

    models.StartDefault.objects.filter(pk=1).first()
    start = time.perf_counter() - started
    first = second = count = None
    if "memdb" in conf["INSTALLED_APPS"]:
        from memdb.registry import memory_models

        count = len(memory_models())
        t0 = time.perf_counter()
        models.Start01.objects.exists()  # builds the memory database: all 20 tables
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        models.Start20.objects.exists()
        second = time.perf_counter() - t0
    report(start=start, first_memory=first, second_memory=second, memory_models=count)


def child_spool(conf: dict, chain: str, rows: int) -> None:
    """Fill ``BigRow`` with ``rows`` rows and spool it, measuring the peak resident set
    (tests/live/large_child.py's helpers: ``VmHWM``, reset through ``clear_refs``)."""
    import django
    from django.conf import settings

    from tests.live.large_child import _database_bytes, _reset_peak, _status

    settings.configure(**conf)
    django.setup()
    from benchapp.models import BigRow

    from memdb import api

    BigRow.memdb_codecs = list(CHAINS[chain])
    BigRow.objects.exists()  # build the memory database (RESTORE_ON_START is off)
    api.discard(BIG)  # the previous child's snapshot
    base = _reset_peak()
    fill_memory(BigRow, rows)
    with contextlib.closing(raw_memory()) as conn:
        table_bytes = _database_bytes(conn)
    before = _reset_peak()
    t0 = time.perf_counter()
    (result,) = api.spool(BIG, force=True)
    seconds = time.perf_counter() - t0
    report(
        seconds=seconds,
        rows=result.rows,
        bytes=result.bytes,
        chunks=result.chunks,
        table_bytes=table_bytes,
        rss_base=base,
        rss_before=before,
        peak=_status("VmHWM"),
    )


def child_restore(conf: dict) -> None:
    """A new process's start: ``django.setup()``, then the first request's query, which
    restores ``BigRow`` at the first use of the memory alias; its wait and peak memory."""
    started = time.perf_counter()
    import django
    from django.conf import settings

    from tests.live.large_child import _database_bytes, _reset_peak, _status

    settings.configure(**conf)
    django.setup()
    setup = time.perf_counter() - started
    from benchapp.models import BigRow

    from memdb import api

    before = _reset_peak()
    t0 = time.perf_counter()
    BigRow.objects.filter(pk=1).exists()
    first = time.perf_counter() - t0
    peak = _status("VmHWM")
    (info,) = api.tables(BIG)
    with contextlib.closing(raw_memory()) as conn:
        table_bytes = _database_bytes(conn)
    report(
        setup=setup,
        first_query=first,
        rss_before=before,
        peak=peak,
        rows=BigRow.objects.count(),
        table_bytes=table_bytes,
        restore_state=info.restore_state,
    )


# --------------------------------------------------------------------------- 1. commit


class Compactions:
    """Times each background journal compaction (wraps ``memdb.journal.compact``, which
    the compaction thread calls; memdb itself is unchanged)."""

    def __init__(self) -> None:
        from memdb import journal

        self.events: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        original = journal.compact

        def timed(model: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(model)
            finally:
                with self.lock:
                    self.events.append((model._meta.label, time.perf_counter() - t0))

        journal.compact = timed

    def wait(self) -> None:
        """Wait for the compactions still running."""
        for thread in threading.enumerate():
            if thread.name.startswith("memdb-compact-"):
                thread.join()

    def take(self) -> list[tuple[str, float]]:
        with self.lock:
            events, self.events = self.events, []
        return events


def timed_row_creates(model: Any, n: int, seq: list[int]) -> list[int]:
    """``n`` ``model.objects.create()`` calls, nanoseconds each (GC off while timed)."""
    values = [
        (number, text, datetime.fromisoformat(at).replace(tzinfo=UTC))
        for number, text, at in row_values(n, start=10_000_000 + seq[0])
    ]
    seq[0] += n
    create = model.objects.create
    clock = time.perf_counter_ns
    out = []
    gc.collect()
    gc.disable()
    try:
        for number, text, moment in values:
            t0 = clock()
            create(number=number, text=text, moment=moment)
            out.append(clock() - t0)
    finally:
        gc.enable()
    return out


def part1(args: argparse.Namespace, kind: str) -> list[Figure]:
    """Commit-policy create() at 1k and 100k rows, and a plain create() on the default DB.

    Each round runs three phases of ``--creates`` calls, one model each, in a rotating
    order: ``CommitSmall`` (1k rows), ``CommitBig`` (100k rows), ``DefaultRow``. After
    a phase its new rows are deleted (untimed) and the compactions it started are
    waited for, so each phase pays for the compactions its own writes cause.
    """
    from benchapp.models import CommitBig, CommitSmall, DefaultRow, MemRow

    from memdb import api

    small, big = 1_000, args.commit_rows
    compactions = Compactions()
    t0 = time.perf_counter()
    for model, n in ((CommitSmall, small), (CommitBig, big)):
        fill_memory(model, n)
        api.spool(model._meta.label)
    DefaultRow.objects.all().delete()
    DefaultRow.objects.bulk_create(model_rows(DefaultRow, small))
    print(f"  filled {small:,} and {big:,} rows in {time.perf_counter() - t0:.1f} s", flush=True)
    phases = {
        "commit, 1k rows": CommitSmall,
        f"commit, {big // 1000}k rows": CommitBig,
        f"plain, default DB ({kind})": DefaultRow,
        "memory only (no storage)": MemRow,
    }
    means: dict[str, list[float]] = {name: [] for name in phases}
    calls: dict[str, list[int]] = {name: [] for name in phases}
    folded: dict[str, list[float]] = {name: [] for name in phases}
    kinds: dict[str, dict[str, int]] = {name: {} for name in phases}
    spools = SpoolKinds()
    seq = [0]
    for round_number in range(args.rounds):
        for name in rotated(list(phases), round_number):
            model = phases[name]
            pk0 = model.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
            spools.take()
            ns = timed_row_creates(model, args.creates, seq)
            compactions.wait()
            folded[name] += [s for _, s in compactions.take()]
            for key, count in spools.take().items():
                kinds[name][key] = kinds[name].get(key, 0) + count
            model.objects.filter(pk__gt=pk0).delete()
            compactions.wait()
            compactions.take()
            means[name].append(statistics.fmean(ns))
            calls[name] += ns
        print(f"  round {round_number + 1} of {args.rounds} done", flush=True)
    spools.close()
    names = list(phases)
    print()
    print(
        f"1. Commit policy: Model.objects.create(), microseconds ({args.rounds} rounds x "
        f"{args.creates} calls per model; mean = median of the per-round means)"
    )
    print(
        f"   {'model':<28} {'mean':>8} {'median':>8} {'p99':>8} {'max':>8}  "
        f"spools by kind; background compactions"
    )
    for name in names:
        ns = sorted(calls[name])
        done = folded[name]
        note = (
            f"{len(done)}, {statistics.median(done) * 1000:.0f} ms each (median)" if done else "0"
        )
        print(
            f"   {name:<28} {us(statistics.median(means[name])):>8} "
            f"{us(statistics.median(ns)):>8} {us(ns[int(len(ns) * 0.99)]):>8} "
            f"{us(ns[-1]):>8}  {kinds[name] or '-'}; {note}"
        )
    growth = [m / s for m, s in zip(means[names[1]], means[names[0]], strict=True)]
    floor = [m / s for m, s in zip(means[names[1]], means[names[2]], strict=True)]
    print(f"   per-round ratios, {names[1]} / 1k: " + " ".join(f"{x:.2f}" for x in growth))
    print(f"   per-round ratios, {names[1]} / plain: " + " ".join(f"{x:.2f}" for x in floor))
    figures = [
        Figure(
            "1a",
            f"commit create() at {big // 1000}k rows / at 1k rows",
            statistics.median(growth),
            COMMIT_GROWTH,
            "x",
        ),
        Figure(
            "1b",
            f"commit create() at {big // 1000}k rows / plain create() on {kind}",
            statistics.median(floor),
            COMMIT_FLOOR,
            "x",
        ),
        Figure(
            "1b'",
            f"commit create() at 1k rows / plain create() on {kind}",
            ratio_of(means[names[0]], means[names[2]]),
            COMMIT_FLOOR,
            "x",
        ),
        # Any design that writes the memory table and then commits on the default
        # database pays at least a memory-only create() plus a plain one.
        Figure(
            '1b"',
            f"floor of 1b: (memory-only + plain create()) / plain, {kind}",
            statistics.median(
                (m + p) / p for m, p in zip(means[names[3]], means[names[2]], strict=True)
            ),
            None,
            "x",
        ),
    ]
    figures.append(
        Figure(
            "1b*",
            f"bare durable write, no memdb code / plain create(), {kind}",
            bare_durable_write(args, DefaultRow),
            None,
            "x",
        )
    )
    show(figures)
    commit_latency(DefaultRow)
    for model in (CommitSmall, CommitBig):
        model.objects.all().delete()
    return figures


def bare_durable_write(args: argparse.Namespace, plain: Any) -> float:
    """What the design's durable write costs with none of memdb's code around it; the
    median per-round ratio to a plain ``create()`` of ``plain`` (no target).

    Each write: a ``create()`` on Django's stock SQLite backend (``stock``, a private
    ``:memory:``) into a table whose trigger counts it and records its key in a journal
    table, as memdb's do; the journal's count and its rows (two queries); JSON and a
    SHA-256 of them; the delta's guarded ``INSERT`` into ``PersistentStorage``, the very
    statement memdb sends (``spooler._delta_statement``, bound on the server); and the
    DELETE of the stored keys. No dirty check, claim, gate, transaction, codec, signal
    or bookkeeping: less than any implementation of the design can do.
    """
    import hashlib

    from benchapp.models import MemRow
    from django.db import connection, connections
    from django.utils import timezone

    from memdb import spooler
    from memdb.models import PersistentStorage

    stock = connections["stock"]
    if MemRow._meta.db_table not in stock.introspection.table_names():
        with stock.schema_editor() as editor:
            editor.create_model(MemRow)
    table = MemRow._meta.db_table
    stock.ensure_connection()
    raw = stock.connection
    raw.executescript(
        f"""
        CREATE TABLE bare_journal (pk INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
        CREATE TABLE bare_changes (seq INTEGER NOT NULL, rows INTEGER NOT NULL);
        INSERT INTO bare_changes VALUES (0, 0);
        CREATE TRIGGER bare_insert AFTER INSERT ON "{table}" BEGIN
            UPDATE bare_changes SET seq = seq + 1, rows = rows + 1;
            INSERT INTO bare_journal (pk, seq) VALUES (NEW.id, (SELECT seq FROM bare_changes))
            ON CONFLICT (pk) DO UPDATE SET seq = excluded.seq;
        END;
        """
    )
    app, name = "bench_perf", "BareDurableWrite"
    now = timezone.now()
    PersistentStorage.objects.create(
        app_label=app,
        model_name=name,
        kind=PersistentStorage.KIND_SNAPSHOT,
        format="bare",
        format_version=1,
        codecs=[],
        key_ids=[],
        row_count=0,
        size=0,
        checksum="",
        chunk_count=0,
        generation=1,
        written_by="bench",
        created_at=now,
        updated_at=now,
    )
    sql, _fields = spooler._delta_statement(connection)
    same = spooler._prepared(connection, (app, name, "delta", "bare", 1, [], [], "bench"))
    generation = [1]
    create = MemRow.objects.using("stock").create

    def durable_write(number: int, text: str, moment: datetime) -> None:
        create(number=number, text=text, moment=moment)
        seq, rows, _changed = raw.execute(
            "SELECT seq, rows, (SELECT count(*) FROM bare_journal) FROM bare_changes"
        ).fetchone()
        found = raw.execute(
            f'SELECT j.pk, t.* FROM bare_journal j LEFT JOIN "{table}" t ON t.id = j.pk'
        ).fetchall()
        payload = json.dumps([r[1:] for r in found], separators=(",", ":"), default=str).encode()
        g = generation[0]
        own = (rows, len(payload), hashlib.sha256(payload).hexdigest(), 0, payload, g + 1, now)
        params = [*same, *spooler._prepared(connection, own, len(same)), app, name, g]
        with spooler.bound_cursor(connection) as cursor:
            cursor.execute(sql, [*params, app, name, g])
            assert cursor.rowcount == 1, "the bare delta was not stored"
        generation[0] = g + 1
        raw.execute("DELETE FROM bare_journal WHERE seq <= ?", (seq,))

    bare = argparse.Namespace(objects=argparse.Namespace(create=durable_write))
    means: dict[str, list[float]] = {"bare": [], "plain": []}
    pk0 = plain.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    seq = [50_000_000]
    try:
        for round_number in range(args.rounds):
            for side in rotated(["bare", "plain"], round_number):
                model = bare if side == "bare" else plain
                means[side].append(statistics.fmean(timed_row_creates(model, args.creates, seq)))
    finally:
        raw.executescript(
            "DROP TRIGGER bare_insert; DROP TABLE bare_journal; DROP TABLE bare_changes;"
        )
        MemRow.objects.using("stock").all().delete()
        PersistentStorage.objects.filter(app_label=app, model_name=name).delete()
        plain.objects.filter(pk__gt=pk0).delete()
    ratios = [b / p for b, p in zip(means["bare"], means["plain"], strict=True)]
    print(
        f"   bare durable write {us(statistics.median(means['bare']))}, plain create() "
        f"{us(statistics.median(means['plain']))} (medians of round means); per-round "
        f"ratios: " + " ".join(f"{x:.2f}" for x in ratios)
    )
    return statistics.median(ratios)


#: Idle pauses before a timed INSERT in ``commit_latency``, milliseconds.
PAUSES_MS = (0.0, 0.5, 1.5, 3.0)


def commit_latency(model: Any, calls: int = 300) -> None:
    """One INSERT and its commit on the default database, by how long the connection
    was idle before it (no figure, no target).

    On a server, a write's commit can take longer when the server was idle a while
    before it (the machine wakes it): every microsecond a commit-policy create() spends
    before its delta reaches the server then costs more than a microsecond. Raw SQL
    through Django's cursor, ``calls`` per pause, in rotating order; mean microseconds.
    """
    from django.db import connection

    table = connection.ops.quote_name(model._meta.db_table)
    sql = f"INSERT INTO {table} (number, text, moment) VALUES (%s, %s, %s)"
    moment = datetime(2024, 1, 1)  # naive: raw SQL, as every backend takes it
    times: dict[float, list[float]] = {pause: [] for pause in PAUSES_MS}
    with connection.cursor() as cursor:
        for round_number in range(3):
            for pause in rotated(list(PAUSES_MS), round_number):
                for i in range(calls // 3):
                    if pause:
                        time.sleep(pause / 1000)
                    t0 = time.perf_counter_ns()
                    cursor.execute(sql, (i, "x" * 40, moment))
                    times[pause].append(time.perf_counter_ns() - t0)
    model.objects.filter(text="x" * 40).delete()
    cells = "; ".join(
        f"after {pause:g} ms idle {us(statistics.fmean(times[pause]))}" for pause in PAUSES_MS
    )
    print(f"   one INSERT + commit on the default database, raw SQL, microseconds: {cells}")


class SpoolKinds:
    """Counts the spools (``snapshot`` / ``delta``) by kind, from ``post_spool``."""

    def __init__(self) -> None:
        from memdb import signals

        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        signals.post_spool.connect(self.on_post_spool, weak=False, dispatch_uid="bench-perf")

    def on_post_spool(self, sender: Any, label: str, result: Any, **kwargs: Any) -> None:
        with self.lock:
            self.counts[result.kind] = self.counts.get(result.kind, 0) + 1

    def take(self) -> dict[str, int]:
        with self.lock:
            counts, self.counts = self.counts, {}
        return counts

    def close(self) -> None:
        from memdb import signals

        signals.post_spool.disconnect(dispatch_uid="bench-perf")


# --------------------------------------------------------------------------- 2. interval, manual


def part2(args: argparse.Namespace) -> list[Figure]:
    """bench_core's part 1 (create() of a persistent model beside the memory-only
    ``Plain3``) for ``Persist3`` (interval) and ``Manual3`` (manual)."""
    import bench_core
    from benchapp.models import Manual3, Persist3

    from memdb.conf import memdb_settings

    core_args = argparse.Namespace(
        sizes=args.sizes, rounds=args.rounds, window=float(memdb_settings.INTERVAL)
    )
    log = bench_core.SpoolLog()
    runs = {}
    for policy, model in (("interval", Persist3), ("manual", Manual3)):
        print(f"  {policy} ({model._meta.label}):", flush=True)
        runs[policy] = bench_core.bench_create(core_args, log, persist=model)
    print()
    print(
        "2. interval and manual create() beside a memory-only model, microseconds "
        f"(bench_core part 1: {args.rounds} rounds, median of the per-round means)"
    )
    print(
        "   idle = Plain3 alone while the persistent table is clean; inter. = Plain3 in "
        "blocks alternating with the persistent model"
    )
    print(
        f"   {'policy':<9} {'rows':>8} {'idle':>8} {'inter.':>8} {'persistent':>10} "
        f"{'pers/inter.':>11} {'bg spools':>9} {'pers. p99/max ms':>17}"
    )
    figures = []
    for policy, results in runs.items():
        for r in results:
            print(
                f"   {policy:<9} {r['size']:>8,} {us(r['idle']['mean']):>8} "
                f"{us(r['plain']['mean']):>8} {us(r['persist']['mean']):>10} "
                f"{r['ratio_plain']:>11.2f} {len(r['spools']):>9} "
                f"{r['persist']['p99'] / 1e6:>8.2f}/{r['persist']['max'] / 1e6:<8.1f}"
            )
            figures.append(
                Figure(
                    "2",
                    f"{policy} create() / memory-only (idle), {r['size']:,} rows",
                    r["ratio_idle"],
                    FREE_WRITES,
                    "x",
                )
            )
    show(figures)
    return figures


# --------------------------------------------------------------------------- 3, 4. spool, restore


def raw_spool(table: str) -> tuple[float, bytes]:
    """The baseline: select every row, JSON-encode, zlib level 1; seconds and bytes."""
    with contextlib.closing(raw_memory()) as conn:
        t0 = time.perf_counter()
        rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
        blob = zlib.compress(json.dumps(rows, separators=(",", ":")).encode(), 1)
        return time.perf_counter() - t0, blob


def raw_restore(table: str, blob: bytes) -> float:
    """The baseline: decompress, decode, ``executemany`` into a plain (trigger-less) table
    of the same schema in the same memory database; seconds."""
    copy = "bench_raw_restore"
    with contextlib.closing(raw_memory()) as conn:
        schema = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()[0]
        conn.execute(f"DROP TABLE IF EXISTS {copy}")
        conn.execute(schema.replace(f'"{table}"', copy, 1))
        try:
            t0 = time.perf_counter()
            rows = json.loads(zlib.decompress(blob))
            marks = ", ".join("?" for _ in rows[0])
            conn.execute("BEGIN")
            conn.executemany(f"INSERT INTO {copy} VALUES ({marks})", rows)
            conn.execute("COMMIT")
            seconds = time.perf_counter() - t0
            assert conn.execute(f"SELECT count(*) FROM {copy}").fetchone()[0] == len(rows)
            return seconds
        finally:
            conn.execute(f"DROP TABLE {copy}")


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """Garbage collected before the block, and the collector off during it."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def timed(func: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Seconds of one call (GC off), and its result."""
    with no_gc():
        t0 = time.perf_counter()
        result = func(*args, **kwargs)
        return time.perf_counter() - t0, result


def part34(args: argparse.Namespace) -> tuple[list[Figure], dict[str, float]]:
    """Spool and restore of ``BigRow`` (``--rows``) with each chain, beside the raw
    baseline, in rotating order within each round."""
    from benchapp.models import BigRow

    from memdb import api

    table = BigRow._meta.db_table
    t0 = time.perf_counter()
    fill_memory(BigRow, args.rows)
    print(f"  filled {args.rows:,} rows in {time.perf_counter() - t0:.1f} s", flush=True)
    stored: tuple[str, ...] | None = None
    spool: dict[str, list[float]] = {"raw": [], **{c: [] for c in CHAINS}}
    restore: dict[str, list[float]] = {"raw": [], **{c: [] for c in CHAINS}}
    size: dict[str, int] = {}
    for round_number in range(args.big_rounds):
        for name in rotated(["raw", *CHAINS], round_number):
            if name == "raw":
                with no_gc():
                    seconds, blob = raw_spool(table)
                spool["raw"].append(seconds)
                size["raw"] = len(blob)
                with no_gc():
                    restore["raw"].append(raw_restore(table, blob))
                del blob
                continue
            BigRow.memdb_codecs = list(CHAINS[name])
            if stored != CHAINS[name]:
                api.spool(BIG, force=True)  # replace the other chain's snapshot untimed
                stored = CHAINS[name]
            seconds, (result,) = timed(api.spool, BIG, force=True)
            assert result.kind == "snapshot" and result.rows == args.rows, result
            spool[name].append(seconds)
            size[name] = result.bytes
            seconds, (result,) = timed(api.restore, BIG)
            assert result.rows == args.rows, result
            restore[name].append(seconds)
        print(f"  round {round_number + 1} of {args.big_rounds} done", flush=True)
    BigRow.memdb_codecs = None
    n = args.rows
    print()
    print(
        f"3, 4. Spool and restore of a {n:,}-row table (integer, 40-character text, "
        f"datetime), seconds, median of {args.big_rounds} rounds"
    )
    print(
        "   raw = sqlite3 baseline in this process: spool = SELECT all rows + json.dumps + "
        "zlib level 1; restore = zlib decompress + json.loads + executemany into a "
        "trigger-less table (GC off while timed, both sides)"
    )
    print(f"   {'':<9} {'spool s':>8} {'rows/s':>11} {'restore s':>9} {'rows/s':>11} {'bytes':>12}")
    for name in spool:
        s, r = statistics.median(spool[name]), statistics.median(restore[name])
        print(f"   {name:<9} {s:>8.3f} {n / s:>11,.0f} {r:>9.3f} {n / r:>11,.0f} {size[name]:>12,}")
    print(
        "   per-round spool ratios: "
        + "; ".join(
            f"{c} " + " ".join(f"{a / b:.2f}" for a, b in zip(spool[c], spool["raw"], strict=True))
            for c in CHAINS
        )
    )
    print(
        "   per-round restore ratios: "
        + "; ".join(
            f"{c} "
            + " ".join(f"{a / b:.2f}" for a, b in zip(restore[c], restore["raw"], strict=True))
            for c in CHAINS
        )
    )
    figures = [
        Figure(
            "3", f"spool ({c}) / raw baseline", ratio_of(spool[c], spool["raw"]), THROUGHPUT, "x"
        )
        for c in CHAINS
    ] + [
        Figure(
            "4",
            f"restore ({c}) / raw baseline",
            ratio_of(restore[c], restore["raw"]),
            THROUGHPUT,
            "x",
        )
        for c in CHAINS
    ]
    want = set(args.only)
    figures = [f for f in figures if int(f.target) in want]
    show(figures)
    baseline = {
        "spool": statistics.median(spool["raw"]),
        "restore": statistics.median(restore["raw"]),
    }
    return figures, baseline


# --------------------------------------------------------------------------- 4 (start), 6


def part46(
    args: argparse.Namespace, kind: str, db_dir: str, baseline: dict[str, float] | None
) -> list[Figure]:
    """New processes on a default database of their own: per chain, one fills ``BigRow``
    and spools it, then ``--restores`` new processes restore it at their first query."""
    want = set(args.only)
    directory = os.path.join(db_dir, "part46")
    runs: dict[str, dict[str, Any]] = {}
    with fresh_default(kind, Path(directory)) as default:
        base = settings_for(directory, default=default, memdb_settings=MEMDB_SETTINGS)
        conf = {**base, "MEMDB": {**base["MEMDB"], "RESTORE_ON_START": False}}
        run_child("setup", conf, directory)
        for chain in CHAINS:
            spooled = run_child(
                "spool", conf, directory, "--chain", chain, "--rows", str(args.rows)
            )
            restores = [run_child("restore", base, directory) for _ in range(args.restores)]
            for r in restores:
                assert r["rows"] == args.rows and r["restore_state"] == "ok", r
            runs[chain] = {"spool": spooled, "restores": restores}
            print(f"  {chain}: spooled and restored in new processes", flush=True)
    mib = 1024 * 1024
    figures = []
    print()
    if 4 in want:
        print(
            f"4. The first request after a start that restores the {args.rows:,}-row table "
            f"(new processes, median of {args.restores})"
        )
        for chain, run in runs.items():
            first = statistics.median(r["first_query"] for r in run["restores"])
            setup = statistics.median(r["setup"] for r in run["restores"])
            each = ", ".join(f"{r['first_query']:.3f}" for r in run["restores"])
            print(
                f"   {chain}: django.setup() {setup:.3f} s, first query {first:.3f} s "
                f"(each: {each})"
            )
            if baseline is not None:
                figures.append(
                    Figure(
                        "4",
                        f"first query after start ({chain}), s (<= 1.5 x raw restore)",
                        first,
                        THROUGHPUT * baseline["restore"],
                        "s",
                    )
                )
            else:
                figures.append(
                    Figure("4", f"first query after start ({chain}), s", first, None, "s")
                )
        show(figures)
    if 6 in want:
        memory = []
        image = runs["no codec"]["spool"]["bytes"]  # the SQLite image a codec then shrinks
        print(
            "6. Peak memory of the spool and of the restore at start-up (new processes; "
            "tests/live/large_child.py's measure: VmHWM after clear_refs, the table included)"
        )
        print(
            f"   the snapshot size is the image before codecs ({image / mib:.1f} MiB, the "
            "no-codec snapshot); with zlib the stored size is printed beside it"
        )
        for chain, run in runs.items():
            s = run["spool"]
            spool_peak = s["peak"] - s["rss_base"]
            restore_peak = statistics.median(r["peak"] - r["rss_before"] for r in run["restores"])
            print(
                f"   {chain}: stored {s['bytes'] / mib:.1f} MiB in {s['chunks']} chunks, memory "
                f"database {s['table_bytes'] / mib:.1f} MiB; spool {s['seconds']:.2f} s, peak "
                f"{spool_peak / mib:.1f} MiB (table {(s['rss_before'] - s['rss_base']) / mib:.1f}"
                f" + spool {(s['peak'] - s['rss_before']) / mib:.1f}); restore peak "
                f"{restore_peak / mib:.1f} MiB, the restored table included"
            )
            for what, peak in (("spool", spool_peak), ("restore", restore_peak)):
                memory.append(
                    Figure(
                        "6",
                        f"{what} peak / snapshot size ({chain})",
                        peak / image,
                        MEMORY_RATIO,
                        "x",
                    )
                )
                if s["bytes"] != image:
                    memory.append(
                        Figure(
                            "6",
                            f"{what} peak / stored size ({chain}; the table alone is "
                            f"{s['table_bytes'] / s['bytes']:.1f}x)",
                            peak / s["bytes"],
                            None,
                            "x",
                        )
                    )
        show(memory)
        figures += memory
    return figures


# --------------------------------------------------------------------------- 5. start-up


def part5(args: argparse.Namespace, kind: str, db_dir: str) -> list[Figure]:
    """New processes with ``benchstart`` (20 memory models), with memdb and without it,
    interleaved, on a default database of their own with empty storage."""
    directory = os.path.join(db_dir, "part5")
    apps = ("benchstart.apps.BenchStartConfig",)
    with fresh_default(kind, Path(directory)) as default:
        with_app = settings_for(directory, default=default, apps=apps)
        without = settings_for(directory, default=default, apps=apps, use_memdb=False)
        run_child("setup", with_app, directory)
        for conf in (with_app, without):  # untimed: fills the bytecode cache
            run_child("start", conf, directory)
        runs: dict[str, list[dict]] = {"without": [], "with": []}
        for i in range(args.starts):
            for name in rotated(["without", "with"], i):
                runs[name].append(
                    run_child("start", with_app if name == "with" else without, directory)
                )
    (memory_models,) = {r["memory_models"] for r in runs["with"]}
    start = {name: [r["start"] * 1000 for r in rs] for name, rs in runs.items()}
    first = [r["first_memory"] * 1000 for r in runs["with"]]
    second = [r["second_memory"] * 1000 for r in runs["with"]]
    wall = {name: [r["wall"] * 1000 for r in rs] for name, rs in runs.items()}
    print()
    print(
        f"5. Start-up, new processes ({args.starts} of each, interleaved), milliseconds: "
        "median (min-max)"
    )
    for name in ("without", "with"):
        values = start[name]
        print(
            f"   Django start (django.setup() + default-DB query), {name} memdb: "
            f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}); "
            f"whole process {statistics.median(wall[name]):.0f}"
        )
    print(
        f"   first query on the memory alias ({memory_models} memory models, empty storage): "
        f"{statistics.median(first):.1f} ({min(first):.1f}-{max(first):.1f}); the next "
        f"one {statistics.median(second):.2f}"
    )
    figures = [
        Figure(
            "5",
            f"first memory-alias query, {memory_models} memory models, ms",
            statistics.median(first),
            FIRST_MEMORY_MS,
            "ms",
        ),
        Figure(
            "5",
            "Django start with memdb / without (medians)",
            statistics.median(start["with"]) / statistics.median(start["without"]),
            START_SLOWDOWN,
            "x",
        ),
    ]
    show(figures)
    return figures


# --------------------------------------------------------------------------- 7. reads


def part7(args: argparse.Namespace, kind: str) -> list[Figure]:
    """``get(pk=...)`` and a filtered ``count()``: memory model, the same rows on the
    default database, and Django's stock SQLite backend on a private ``:memory:``."""
    from benchapp.models import DefaultRow, MemRow
    from django.db import connections

    stock = connections["stock"]
    if MemRow._meta.db_table not in stock.introspection.table_names():
        with stock.schema_editor() as editor:
            editor.create_model(MemRow)
    n = args.read_rows
    memory_name, stock_name = "memory (memdb)", "stock SQLite :memory:"
    places = {
        memory_name: MemRow.objects.using("memdb"),
        f"default DB ({kind})": DefaultRow.objects.all(),
        stock_name: MemRow.objects.using("stock"),
    }
    pks = {}
    for name, qs in places.items():
        qs.all().delete()
        qs.model.objects.using(qs.db).bulk_create(model_rows(qs.model, n))
        pks[name] = list(qs.order_by("pk").values_list("pk", flat=True))
    rng = random.Random(11)
    picks = [rng.randrange(n) for _ in range(args.reads)]
    threshold = 500_000
    times: dict[tuple[str, str], list[float]] = {}
    for round_number in range(args.rounds):
        for name in rotated(list(places), round_number):
            qs = places[name]
            keys = [pks[name][i] for i in picks]
            gc.collect()
            gc.disable()
            try:
                t0 = time.perf_counter_ns()
                for pk in keys:
                    qs.get(pk=pk)
                t1 = time.perf_counter_ns()
                for _ in range(args.reads // 10):
                    qs.filter(number__lt=threshold).count()
                t2 = time.perf_counter_ns()
            finally:
                gc.enable()
            times.setdefault((name, "get"), []).append((t1 - t0) / len(keys))
            times.setdefault((name, "count"), []).append((t2 - t1) / (args.reads // 10))
        # Writes of a memory-only model beside the commit tables of part 1, against the
        # stock backend's (the default database's file would time its fsync).
        for name in rotated([memory_name, stock_name], round_number):
            model, db = places[name].model, places[name].db
            rows = model_rows(model, args.reads // 4, start=n)
            gc.collect()
            gc.disable()
            try:
                t0 = time.perf_counter_ns()
                for row in rows:
                    model.objects.using(db).create(
                        number=row.number, text=row.text, moment=row.moment
                    )
                t1 = time.perf_counter_ns()
            finally:
                gc.enable()
            times.setdefault((name, "create"), []).append((t1 - t0) / len(rows))
            places[name].filter(pk__gt=pks[name][-1]).delete()
    expected = places["memory (memdb)"].filter(number__lt=threshold).count()
    for qs in places.values():
        assert qs.filter(number__lt=threshold).count() == expected
    print()
    print(
        f"7. Reads on {n:,} rows, microseconds per call (mean of {args.reads} get() / "
        f"{args.reads // 10} count() calls per round, median of {args.rounds} rounds)"
    )
    print(f"   {'':<24} {'get(pk=...)':>12} {'filter(number__lt=...).count()':>31}")
    for name in places:
        g = statistics.median(times[(name, "get")])
        c = statistics.median(times[(name, "count")])
        print(f"   {name:<24} {us(g):>12} {us(c):>31}")
    print(
        f"   create() of a memory-only model, {args.reads // 4} per round: memdb "
        f"{us(statistics.median(times[(memory_name, 'create')]))}, stock "
        f"{us(statistics.median(times[(stock_name, 'create')]))}"
    )
    memory, default, _ = list(places)
    figures = [
        Figure(
            "7",
            "create(): memdb backend (commit tables beside) / stock SQLite backend",
            ratio_of(times[(memory, "create")], times[(stock_name, "create")]),
            None,
            "x",
        )
    ]
    for op in ("get", "count"):
        figures.append(
            Figure(
                "7",
                f"{op}(): default DB ({kind}) time / memory time",
                ratio_of(times[(default, op)], times[(memory, op)]),
                None,
                "x",
            )
        )
        figures.append(
            Figure(
                "7",
                f"{op}(): memdb backend / stock SQLite backend, both in memory",
                ratio_of(times[(memory, op)], times[(stock_name, op)]),
                None,
                "x",
            )
        )
    show(figures)
    for qs in places.values():
        qs.all().delete()
    return figures


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    p.add_argument("--only", help="comma-separated target numbers to run (1-7; default all)")
    p.add_argument(
        "--db",
        choices=KINDS,
        default="sqlite",
        help="the default database: a SQLite file (default) or a fresh database on the "
        "test suite's server (tests/settings.py's credentials, MEMDB_TEST_DB_* overrides)",
    )
    p.add_argument("--rounds", type=int, help="rounds of parts 1, 2 and 7 (5; quick 2)")
    p.add_argument("--creates", type=int, help="create() calls per model per round in part 1")
    p.add_argument("--rows", type=int, help="rows of the spooled table (1,000,000; quick 100k)")
    p.add_argument("--db-dir", help="directory of the temporary files (a new temp dir)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--conf", help=argparse.SUPPRESS)
    p.add_argument("--chain", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return args
    quick = args.quick
    args.only = sorted({int(x) for x in args.only.split(",")}) if args.only else list(PARTS)
    if not set(args.only) <= set(PARTS):
        p.error(f"--only takes numbers from {PARTS}")
    args.rounds = args.rounds or (2 if quick else 5)
    args.creates = args.creates or (150 if quick else 400)
    args.rows = args.rows or (100_000 if quick else 1_000_000)
    args.commit_rows = 100_000
    args.sizes = (0, 10_000) if quick else (0, 10_000, 100_000)
    args.big_rounds = 1 if quick else 3
    args.restores = 1 if quick else 3
    args.starts = 3 if quick else 10
    args.read_rows = 10_000
    args.reads = 500 if quick else 2000
    return args


def main() -> int:
    args = parse_args()
    if args.child:
        child_main(args)
        return 0
    db_dir = tempfile.mkdtemp(prefix="memdb-perf-", dir=args.db_dir)
    figures: list[Figure] = []
    started = time.perf_counter()
    try:
        figures = run_all(args, db_dir)
    finally:
        shutil.rmtree(db_dir, ignore_errors=True)
    print()
    print("=" * 100)
    print(
        f"Summary ({'--quick, ' if args.quick else ''}default DB {args.db}; "
        f"{time.perf_counter() - started:.0f} s; {load_line()})"
    )
    print(f"   {'':<3} {'figure':<62} {'measured':>11}  {'target':<14} verdict")
    show(figures)
    return 1 if any(f.verdict == "FAIL" for f in figures) else 0


def run_all(args: argparse.Namespace, db_dir: str) -> list[Figure]:
    import django
    from django.conf import settings

    conf = settings_for(
        db_dir,
        default=server_default(args.db, "postgres" if args.db == "postgresql" else ""),
        memdb_settings=MEMDB_SETTINGS,
        databases={"stock": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    )
    use_pymysql(conf)
    settings.configure(**conf)
    figures: list[Figure] = []
    with fresh_default(args.db, Path(db_dir, "main")) as default:
        settings.DATABASES["default"].update(default)
        django.setup()
        from django.core.management import call_command
        from django.db import connections

        from memdb import policies

        try:
            call_command("migrate", database="default", run_syncdb=True, verbosity=0)
            print(
                "django-memdb performance benchmark, issue 7" + (" (--quick)" if args.quick else "")
            )
            print(machine_line())
            print(f"default database: {describe_default(settings.DATABASES['default'])}")
            print(f"memory database: {memory_name()}; parts {','.join(map(str, args.only))}")
            print(f"at start: {load_line()}")
            want = set(args.only)
            if 1 in want:
                print("\nrunning part 1 (commit-policy create) ...", flush=True)
                figures += part1(args, args.db)
            if 2 in want:
                print("\nrunning part 2 (interval and manual create) ...", flush=True)
                figures += part2(args)
            baseline = None
            if want & {3, 4}:
                print("\nrunning parts 3 and 4 (spool and restore) ...", flush=True)
                found, baseline = part34(args)
                figures += found
            if want & {4, 6}:
                print(
                    "\nrunning parts 4 and 6 (restarts, peak memory: new processes) ...", flush=True
                )
                figures += part46(args, args.db, db_dir, baseline)
            if 5 in want:
                print("\nrunning part 5 (start-up: new processes) ...", flush=True)
                figures += part5(args, args.db, db_dir)
            if 7 in want:
                print("\nrunning part 7 (reads) ...", flush=True)
                figures += part7(args, args.db)
        finally:
            policies.stop_interval()
            connections.close_all()
    order = {str(n): n for n in PARTS}
    return sorted(figures, key=lambda f: order.get(f.target.rstrip("ab'*\""), 0))


if __name__ == "__main__":
    sys.exit(main())
