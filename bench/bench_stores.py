#!/usr/bin/env python
"""The stores side by side: ``process`` (a memory database per process) and ``host``
(one WAL SQLite file on /dev/shm shared by the host's workers), beside a regular table on
the default database; with ``--db postgresql`` or ``--db mysql`` the default database is
a new database on that server and the ``server`` store (memory tables on that server,
shared by every process) is a third store.

Run from the repository root::

    .venv/bin/python bench/bench_stores.py                   # full run, about 75 seconds
    .venv/bin/python bench/bench_stores.py --quick           # about 30 seconds
    .venv/bin/python bench/bench_stores.py --db postgresql   # + the server store

Settings are configured once per Django process, so every measurement runs in a new
process (this script with ``--child``) that prints JSON; the parent runs the stores'
children one after the other in each round, in ABBA order, and prints medians and ratios.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (HERE, ROOT):  # ``_setup`` and the bench app; ``memdb``
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _setup import load_line, machine_line, settings_for  # noqa: E402

KINDS = ("sqlite", "postgresql", "mysql")
HEAP = "max_heap_table_size = 1073741824"  # 1 GiB, on the bench's MariaDB sessions
STORES = ("process", "host")  # and "server" when the default database is on a server
BLOCK = 100  # creates per block; the three models take turns block by block
#: Every process here: no spool at exit (the databases are thrown away).
MEMDB_SETTINGS = {"FLUSH_ON_EXIT": False}
MEMORY = "benchapp.MemRow"  # memory only
MANUAL = "benchapp.BigRow"  # persistent, ``manual`` policy: no spooler runs
REGULAR = "benchapp.DefaultRow"  # a plain model on the default database
BASE_MOMENT = datetime(2024, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- helpers


def report(**data: Any) -> None:
    print(json.dumps(data), flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def ratio_of(numerators: list[float], denominators: list[float]) -> float:
    """Median of the per-round ratios (the two sides ran seconds apart in each round)."""
    return median([a / b for a, b in zip(numerators, denominators, strict=True)])


def make_rows(model: Any, n: int, start: int = 0) -> list[Any]:
    rng = random.Random(start)
    return [
        model(
            number=rng.randrange(1_000_000),
            text=f"{rng.getrandbits(160):040x}",
            moment=BASE_MOMENT + timedelta(seconds=i),
        )
        for i in range(start, start + n)
    ]


def bulk_fill(model: Any, n: int) -> None:
    model.objects.all().delete()
    for start in range(0, n, 20_000):
        model.objects.bulk_create(make_rows(model, min(20_000, n - start), start))


def store_settings(store: str, host_path: str) -> dict:
    memdb = dict(MEMDB_SETTINGS, STORE=store)
    if store == "host":
        memdb["HOST_PATH"] = host_path
    return memdb


def conf_for(db_dir: str, store: str, host_path: str, default: dict | None = None) -> dict:
    return settings_for(db_dir, memdb_settings=store_settings(store, host_path), default=default)


def remove_host_files(path: str) -> None:
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        if os.path.exists(name):
            os.remove(name)
    shutil.rmtree(f"{path}.memdb", ignore_errors=True)


# --------------------------------------------------------------------------- servers


def server_default(kind: str, name: str) -> dict:
    """The ``DATABASES`` entry of database ``name`` on the server of ``kind`` (the test
    suite's servers, as bench_perf.py: MEMDB_TEST_DB_HOST/PORT/USER/PASSWORD override)."""
    env = os.environ.get
    entry = {
        "NAME": name,
        "HOST": env("MEMDB_TEST_DB_HOST", "127.0.0.1"),
        "PASSWORD": env("MEMDB_TEST_DB_PASSWORD", ""),
    }
    if kind == "postgresql":
        user, port = env("MEMDB_TEST_DB_USER", "postgres"), env("MEMDB_TEST_DB_PORT", "5432")
        return {"ENGINE": "django.db.backends.postgresql", "USER": user, "PORT": port, **entry}
    user, port = env("MEMDB_TEST_DB_USER", "root"), env("MEMDB_TEST_DB_PORT", "3306")
    return {
        "ENGINE": "django.db.backends.mysql",
        "USER": user,
        "PORT": port,
        # MEMORY tables hold at most max_heap_table_size bytes (16 MiB by default: about
        # 85k rows of BigRow); the session's value when a table is made is its limit.
        "OPTIONS": {"charset": "utf8mb4", "init_command": f"SET SESSION {HEAP}"},
        **entry,
    }


def server_connection(kind: str) -> Any:
    """An autocommit connection to the server itself, to create and drop databases."""
    db = server_default(kind, "")
    if kind == "postgresql":
        import psycopg

        return psycopg.connect(
            host=db["HOST"],
            port=int(db["PORT"]),
            user=db["USER"],
            password=db["PASSWORD"] or None,
            dbname="postgres",
            autocommit=True,
        )
    import pymysql

    return pymysql.connect(
        host=db["HOST"],
        port=int(db["PORT"]),
        user=db["USER"],
        password=db["PASSWORD"],
        charset="utf8mb4",
        autocommit=True,
    )


def server_sql(conn: Any, sql: str) -> list[tuple]:
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        return list(cursor.fetchall()) if cursor.description else []
    finally:
        cursor.close()


def server_line(kind: str, conn: Any) -> str:
    """The server's version and what a commit of a regular table waits for."""
    if kind == "postgresql":
        names = ("fsync", "synchronous_commit")
        values = [server_sql(conn, f"SHOW {n}")[0][0] for n in names]
        version = server_sql(conn, "SHOW server_version")[0][0]
        return f"PostgreSQL {version}; " + ", ".join(f"{n} {v}" for n, v in zip(names, values))
    names = ("innodb_flush_log_at_trx_commit", "sync_binlog", "max_heap_table_size")
    wanted = ", ".join(f"'{n}'" for n in names)
    rows = dict(server_sql(conn, f"SHOW VARIABLES WHERE Variable_name IN ({wanted})"))
    version = server_sql(conn, "SELECT VERSION()")[0][0]
    settings = ", ".join(f"{n} {rows.get(n)}" for n in names)
    return f"MariaDB {version}; {settings} (the bench's sessions: {HEAP})"


# --------------------------------------------------------------------------- children


def child_env(work: str) -> dict:
    # Bytecode cached outside the repository, so a child does not compile memdb again.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = os.path.join(work, "pycache")
    return env


def child_command(kind: str, conf_path: str, *extra: str) -> list[str]:
    return [sys.executable, __file__, "--child", kind, "--conf", conf_path, *extra]


def write_conf(work: str, name: str, conf: dict) -> str:
    path = os.path.join(work, f"{name}.json")
    with open(path, "w") as out:
        json.dump(conf, out)
    return path


def last_json(proc_stdout: str, what: str, stderr: str) -> dict:
    lines = [line for line in proc_stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"child {what} printed no JSON\n{proc_stdout}\n{stderr}")
    return json.loads(lines[-1])


def run_child(work: str, kind: str, conf: dict, *extra: str, timeout: float = 600) -> dict:
    path = write_conf(work, f"child-{kind}", conf)
    proc = subprocess.run(
        child_command(kind, path, *extra),
        cwd=ROOT,
        env=child_env(work),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return last_json(proc.stdout, kind, proc.stderr)


def django_up(conf_path: str) -> None:
    import django
    from django.conf import settings

    with open(conf_path) as source:
        conf = json.load(source)
    if conf["DATABASES"]["default"]["ENGINE"] == "django.db.backends.mysql":
        import pymysql

        pymysql.install_as_MySQLdb()  # before Django loads the MySQL backend
    settings.configure(**conf)
    django.setup()


def child_setup(args: argparse.Namespace) -> None:
    """``migrate --run-syncdb`` a default database (the bench app has no migrations);
    the parent copies the file (SQLite) or the database (PostgreSQL: a template; MariaDB:
    the tables) for every other child."""
    django_up(args.conf)
    from django.core.management import call_command

    call_command("migrate", database="default", run_syncdb=True, verbosity=0)
    report(ok=True)


def timed_creates(model: Any, n: int, out: list[int], seq: list[int]) -> None:
    create = model.objects.create
    clock = time.perf_counter_ns
    for _ in range(n):
        i = seq[0]
        seq[0] += 1
        moment = BASE_MOMENT + timedelta(seconds=i)
        t0 = clock()
        create(number=i, text=f"{i:040x}", moment=moment)
        out.append(clock() - t0)


def child_round(args: argparse.Namespace) -> None:
    """One round of one store: creates, reads, spool and restore (parts 1 to 3)."""
    django_up(args.conf)
    from django.apps import apps

    from memdb import api

    models = {name: apps.get_model(label) for name, label in _models().items()}
    seq = [0]
    # Warm up: the first query builds the memory database; a few untimed creates each.
    for model in models.values():
        timed_creates(model, 20, [], seq)
        model.objects.all().delete()

    # 1. create(): the three models in blocks of BLOCK, the order rotating every block.
    #    The regular model's creates wait for an fsync each, so it takes fewer per turn.
    ns: dict[str, list[int]] = {name: [] for name in models}
    names = list(models)
    turns = max(1, args.creates // BLOCK)
    sizes = {"memory": BLOCK, "manual": BLOCK, "regular": max(1, args.regular_creates // turns)}
    gc.collect()
    gc.disable()
    try:
        for turn in range(turns):
            k = turn % len(names)
            for name in names[k:] + names[:k]:
                timed_creates(models[name], sizes[name], ns[name], seq)
    finally:
        gc.enable()
    writes = {name: statistics.fmean(values) for name, values in ns.items()}

    # 2. Reads on read_rows rows: memory-only model and the regular one.
    reads: dict[str, float] = {}
    rng = random.Random(11)
    threshold = 500_000
    for name in ("memory", "regular"):
        model = models[name]
        bulk_fill(model, args.read_rows)
        pks = list(model.objects.order_by("pk").values_list("pk", flat=True))
        keys = [pks[rng.randrange(len(pks))] for _ in range(args.reads)]
        counts = max(1, args.reads // 10)
        qs = model.objects.all()
        qs.get(pk=keys[0])
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            for pk in keys:
                qs.get(pk=pk)
            t1 = time.perf_counter_ns()
            for _ in range(counts):
                qs.filter(number__lt=threshold).count()
            t2 = time.perf_counter_ns()
        finally:
            gc.enable()
        reads[f"{name}_get"] = (t1 - t0) / len(keys)
        reads[f"{name}_count"] = (t2 - t1) / counts
        model.objects.all().delete()

    # 3. Spool and restore of the persistent (manual) model at big_rows rows.
    big = models["manual"]
    bulk_fill(big, args.big_rows)
    label = big._meta.label
    gc.collect()
    t0 = time.perf_counter()
    spooled = api.spool(label, force=True)[0]
    t1 = time.perf_counter()
    api.restore(label)
    t2 = time.perf_counter()
    rows = big.objects.count()
    assert rows == args.big_rows, rows
    report(
        writes=writes,
        reads=reads,
        spool=t1 - t0,
        restore=t2 - t1,
        snapshot_bytes=spooled.bytes,
    )


def _models() -> dict[str, str]:
    return {"memory": MEMORY, "manual": MANUAL, "regular": REGULAR}


def child_writer(args: argparse.Namespace) -> None:
    """Part 4: memory-only creates from the moment the parent says go until its end time."""
    django_up(args.conf)
    from django.apps import apps

    model = apps.get_model(MEMORY)
    seq = [args.worker * 100_000_000]
    timed_creates(model, 20, [], seq)  # builds (or joins) the memory database
    with open(f"{args.signal}.ready{args.worker}", "w"):
        pass
    go = f"{args.signal}.go"
    while not os.path.exists(go):
        time.sleep(0.001)
    time.sleep(0.005)  # the parent writes the file in one go; let it finish
    with open(go) as source:
        start, end = json.load(source)
    while time.time() < start:
        time.sleep(0.0005)
    out: list[int] = []
    gc.collect()
    gc.disable()
    try:
        while time.time() < end:
            timed_creates(model, 10, out, seq)
    finally:
        gc.enable()
    out.sort()
    report(
        creates=len(out),
        seconds=time.time() - start,
        p99=out[int(len(out) * 0.99)] if out else 0,
        max=out[-1] if out else 0,
    )


# --------------------------------------------------------------------------- parent


class Run:
    """The parent's temporary files: default databases in ``work`` (SQLite) or on the
    server (``--db``: databases ``bench_stores_<id>_<n>``), host stores in ``shm``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.kind = args.db
        self.stores = STORES if self.kind == "sqlite" else (*STORES, "server")
        self.work = tempfile.mkdtemp(prefix="memdb-stores-", dir=args.db_dir)
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.shm = tempfile.mkdtemp(prefix="memdb-stores-", dir=shm)
        self.template = os.path.join(self.work, "template")
        self.count = 0
        self.server = None if self.kind == "sqlite" else server_connection(self.kind)
        self.prefix = f"bench_stores_{uuid.uuid4().hex[:8]}"
        self.databases: list[str] = []  # made on the server, not dropped yet
        self.server_info = "" if self.server is None else server_line(self.kind, self.server)
        self.regular_note, self.server_note = {
            "sqlite": (
                "regular = DefaultRow on the default SQLite file (journal mode delete, fsync "
                "per commit)",
                "",
            ),
            "postgresql": (
                "regular = DefaultRow on the default PostgreSQL database (a logged table: "
                "commit settings on the server line); server = UNLOGGED tables in it",
                "UNLOGGED; each write's trigger also updates the table's one counter row",
            ),
            "mysql": (
                "regular = DefaultRow on the default MariaDB database (InnoDB: commit "
                "settings on the server line); server = MEMORY tables in it",
                "MEMORY engine: a table lock per write, one writer at a time",
            ),
        }[self.kind]

    def close(self) -> None:
        for name in list(self.databases):
            self.drop(name)
        if self.server is not None:
            self.server.close()
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.shm, ignore_errors=True)

    def default(self, name: str) -> dict | None:
        return None if self.kind == "sqlite" else server_default(self.kind, name)

    def create(self, name: str, template: str | None = None) -> None:
        """A new database on the server; a copy of ``template`` if given (PostgreSQL
        copies it whole; on MariaDB its tables are made again, rows and all)."""
        self.databases.append(name)
        if self.kind == "postgresql":
            copy = f' TEMPLATE "{template}"' if template else ""
            server_sql(self.server, f'CREATE DATABASE "{name}"{copy}')
            return
        server_sql(self.server, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        if template:
            for (table,) in server_sql(self.server, f"SHOW TABLES FROM `{template}`"):
                server_sql(
                    self.server, f"CREATE TABLE `{name}`.`{table}` LIKE `{template}`.`{table}`"
                )
                server_sql(
                    self.server,
                    f"INSERT INTO `{name}`.`{table}` SELECT * FROM `{template}`.`{table}`",
                )

    def drop(self, name: str) -> None:
        if self.kind == "postgresql":
            server_sql(self.server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            server_sql(self.server, f"DROP DATABASE IF EXISTS `{name}`")
        self.databases.remove(name)

    def setup_template(self) -> None:
        os.makedirs(self.template)
        if self.kind != "sqlite":
            self.create(f"{self.prefix}_template")
        conf = conf_for(self.template, "process", "", self.default(f"{self.prefix}_template"))
        run_child(self.work, "setup", conf)

    def fresh(self, store: str) -> tuple[dict, str, str | None]:
        """Settings for a new child: a copy of the migrated default database and, for
        the host store, a host file of its own; the server database to drop after."""
        self.count += 1
        db_dir = os.path.join(self.work, f"db{self.count}")
        os.makedirs(db_dir)
        host_path = os.path.join(self.shm, f"store{self.count}.sqlite3")
        if self.kind == "sqlite":
            shutil.copy(
                os.path.join(self.template, "default.sqlite3"),
                os.path.join(db_dir, "default.sqlite3"),
            )
            return conf_for(db_dir, store, host_path), host_path, None
        name = f"{self.prefix}_{self.count}"
        self.create(name, template=f"{self.prefix}_template")
        return conf_for(db_dir, store, host_path, self.default(name)), host_path, name

    def discard(self, host_path: str, database: str | None) -> None:
        remove_host_files(host_path)
        if database is not None:
            self.drop(database)

    def round_child(self, store: str) -> dict:
        a = self.args
        conf, host_path, database = self.fresh(store)
        try:
            return run_child(
                self.work,
                "round",
                conf,
                *("--creates", str(a.creates), "--regular-creates", str(a.regular_creates)),
                *("--read-rows", str(a.read_rows)),
                *("--reads", str(a.reads), "--big-rows", str(a.big_rows)),
            )
        finally:
            self.discard(host_path, database)

    def writers(self, store: str, count: int) -> dict:
        """``count`` processes creating memory-only rows at once for ``window`` seconds."""
        conf, host_path, database = self.fresh(store)
        conf_path = write_conf(self.work, f"writers-{self.count}", conf)
        signal = os.path.join(self.work, f"signal{self.count}")
        procs = [
            subprocess.Popen(
                child_command("writer", conf_path, "--worker", str(i), "--signal", signal),
                cwd=ROOT,
                env=child_env(self.work),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(count)
        ]
        try:
            deadline = time.time() + 120
            while not all(os.path.exists(f"{signal}.ready{i}") for i in range(count)):
                if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs):
                    raise RuntimeError(f"a writer did not start{exits(procs)}")
                time.sleep(0.01)
            start = time.time() + 0.1
            tmp = f"{signal}.go.tmp"
            with open(tmp, "w") as out:
                json.dump([start, start + self.args.window], out)
            os.rename(tmp, f"{signal}.go")
            results = []
            for proc in procs:
                stdout, stderr = proc.communicate(timeout=120)
                if proc.returncode != 0:
                    raise RuntimeError(f"writer: exit {proc.returncode}\n{stdout}\n{stderr}")
                results.append(last_json(stdout, "writer", stderr))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            self.discard(host_path, database)
        seconds = max(r["seconds"] for r in results)
        return {
            "rate": sum(r["creates"] for r in results) / seconds,
            "p99": max(r["p99"] for r in results),
            "max": max(r["max"] for r in results),
        }


def exits(procs: list[subprocess.Popen]) -> str:
    """What the writers that ended with an error printed (the others are killed)."""
    out = []
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        elif proc.returncode != 0:
            stdout, stderr = proc.communicate()
            out.append(f"\nwriter: exit {proc.returncode}\n{stdout}\n{stderr}")
    return "".join(out)


def us(ns: float) -> str:
    return f"{ns / 1000:.1f} µs"


def x(value: float) -> str:
    return f"{value:.2f}x"


def per_round(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def series(rows: list[dict], *path: str) -> list[float]:
    out = []
    for row in rows:
        value: Any = row
        for key in path:
            value = value[key]
        out.append(value)
    return out


def ratio_head(store: str) -> tuple[str, int]:
    """The title of a ``store``/process ratio column and its width."""
    title = f"{store}/process"
    return title, max(13, len(title) + 1)


def part123(run: Run) -> None:
    a = run.args
    stores = run.stores
    others = stores[1:]  # each compared with the process store
    results: dict[str, list[dict]] = {store: [] for store in stores}
    for r in range(a.rounds):
        order = stores if r % 4 in (0, 3) else stores[::-1]  # ABBA
        for store in order:
            print(f"   round {r + 1}/{a.rounds}: {store} store ...", flush=True)
            results[store].append(run.round_child(store))
    proc = results["process"]

    # The regular table was timed in every child of a round: the round's figure is
    # their mean.
    def regular(*path: str) -> list[float]:
        rounds = zip(*(series(results[store], *path) for store in stores), strict=True)
        return [statistics.fmean(values) for values in rounds]

    stores_head = " ".join(f"{store:>10}" for store in stores)
    ratios_head = " ".join(f"{t:>{w}}" for t, w in map(ratio_head, others))
    head = f"   {'':<34} {stores_head} {'regular':>11} {ratios_head} {'regular/process':>16}"

    def row(title: str, path: tuple[str, ...], regular_path: tuple[str, ...]) -> None:
        values = {store: series(results[store], *path) for store in stores}
        p, g = values["process"], regular(*regular_path)
        cells = " ".join(f"{us(median(values[store])):>10}" for store in stores)
        ratios = " ".join(
            f"{x(ratio_of(values[store], p)):>{ratio_head(store)[1]}}" for store in others
        )
        print(f"   {title:<34} {cells} {us(median(g)):>11} {ratios} {x(ratio_of(g, p)):>16}")

    print()
    print(
        f"1. Model.objects.create(), mean time per call ({a.creates} calls per memory model "
        f"and {a.regular_creates} regular per round, in blocks taking turns; median of "
        f"{a.rounds} round means)"
    )
    print(head)
    names = (("memory", "memory-only (MemRow)"), ("manual", "persistent, manual policy (BigRow)"))
    for name, title in names:
        row(title, ("writes", name), ("writes", "regular"))
    print(f"   {run.regular_note}")
    for store in others:
        for name, _ in names:
            values = series(results[store], "writes", name)
            ratios = [b / c for b, c in zip(values, series(proc, "writes", name))]
            print(f"   per-round {store}/process, {name}: {per_round(ratios)}")

    print()
    print(
        f"2. Reads on {a.read_rows:,} rows, mean time per call ({a.reads} get() and "
        f"{max(1, a.reads // 10)} count() per round; median of {a.rounds} rounds)"
    )
    print(head)
    for op, title in (("get", "get(pk=...)"), ("count", "filter(number__lt=...).count()")):
        row(title, ("reads", f"memory_{op}"), ("reads", f"regular_{op}"))
    print("   memory side: MemRow (memory only); regular: DefaultRow on the default database")

    print()
    print(
        f"3. Spool and restore of BigRow at {a.big_rows:,} rows (api.spool(force=True), "
        f"api.restore; median of {a.rounds} runs, one per round)"
    )
    print(f"   {'':<34} {stores_head} {ratios_head}")
    for op in ("spool", "restore"):
        values = {store: series(results[store], op) for store in stores}
        p = values["process"]
        cells = " ".join(f"{median(values[store]):>8.3f} s" for store in stores)
        ratios = " ".join(
            f"{x(ratio_of(values[store], p)):>{ratio_head(store)[1]}}" for store in others
        )
        rates = " / ".join(f"{a.big_rows / median(values[store]):,.0f}" for store in stores)
        print(f"   {op:<34} {cells} {ratios}   ({rates} rows/s)")
    for store in others:
        for op in ("spool", "restore"):
            ratios = [b / c for b, c in zip(series(results[store], op), series(proc, op))]
            print(f"   per-round {store}/process, {op}: {per_round(ratios)}")


def part4(run: Run) -> None:
    a = run.args
    counts = (1, a.writers)
    trials = [(store, n) for store in run.stores for n in counts]
    results: dict[tuple[str, int], list[dict]] = {t: [] for t in trials}
    for r in range(a.write_rounds):
        order = trials if r % 2 == 0 else trials[::-1]
        for store, n in order:
            print(
                f"   round {r + 1}/{a.write_rounds}: {store} store, {n} writer(s) ...", flush=True
            )
            results[(store, n)].append(run.writers(store, n))
    print()
    print(
        f"4. Memory-only creates from {a.writers} processes at once vs 1 (MemRow, "
        f"{a.window:.0f} s window; median of {a.write_rounds} rounds; {os.cpu_count()} cpus)"
    )
    n = a.writers
    print(
        f"   {'':<14} {'1 writer':>12} {f'{n} writers':>12} {f'{n}/1':>6} "
        f"{f'p99 call (1 / {n})':>20} {f'max call (1 / {n})':>20}"
    )
    for store in run.stores:
        one, many = results[(store, 1)], results[(store, n)]
        rate1 = [t["rate"] for t in one]
        rate_n = [t["rate"] for t in many]
        p99 = f"{median([t['p99'] for t in one]) / 1e6:.2f} / {median([t['p99'] for t in many]) / 1e6:.2f} ms"
        worst = (
            f"{max(t['max'] for t in one) / 1e6:.1f} / {max(t['max'] for t in many) / 1e6:.1f} ms"
        )
        print(
            f"   {store + ' store':<14} {median(rate1):>9,.0f}/s {median(rate_n):>9,.0f}/s "
            f"{ratio_of(rate_n, rate1):>5.2f}x {p99:>20} {worst:>20}"
        )
    print(
        "   creates/s summed over the processes; the process store gives each process its "
        "own database, the host store one file with one writer at a time"
    )
    if "server" in run.stores:
        print(f"   the server store: one table on the server for all, {run.server_note}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and calls (about 30 s)")
    p.add_argument(
        "--db",
        choices=KINDS,
        default="sqlite",
        help="the default database: a SQLite file (default), or a new database on the "
        "PostgreSQL / MariaDB server of the test suite, which adds the server store "
        "(MEMDB_TEST_DB_HOST/PORT/USER/PASSWORD override the credentials)",
    )
    p.add_argument("--rounds", type=int, help="rounds of parts 1-3 (5; --quick 3)")
    p.add_argument("--creates", type=int, help="create() calls per model per round (1500; 600)")
    p.add_argument(
        "--regular-creates",
        type=int,
        help="create() calls of the regular model per round (150; 60)",
    )
    p.add_argument("--read-rows", type=int, default=10_000, help="rows of part 2 (10000)")
    p.add_argument("--reads", type=int, help="get() calls per round (2000; 1000)")
    p.add_argument("--big-rows", type=int, default=100_000, help="rows of part 3 (100000)")
    p.add_argument("--writers", type=int, default=4, help="processes of part 4 (4)")
    p.add_argument("--write-rounds", type=int, help="rounds of part 4 (3; 1)")
    p.add_argument("--window", type=float, help="seconds each part-4 trial writes (2; 1)")
    p.add_argument("--skip-writers", action="store_true", help="leave part 4 out")
    p.add_argument("--db-dir", help="where the default databases go (a new temporary dir)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--conf", help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--signal", help=argparse.SUPPRESS)
    args = p.parse_args()
    q = args.quick
    defaults = {
        "rounds": 3 if q else 5,
        "creates": 600 if q else 1500,
        "regular_creates": 60 if q else 150,
        "reads": 1000 if q else 2000,
        "write_rounds": 1 if q else 3,
        "window": 1.0 if q else 2.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> int:
    args = parse_args()
    if args.child:
        {"setup": child_setup, "round": child_round, "writer": child_writer}[args.child](args)
        return 0
    started = time.perf_counter()
    run = Run(args)
    try:
        print(
            "django-memdb stores: " + " vs ".join(run.stores) + (" (--quick)" if args.quick else "")
        )
        print(machine_line())
        print(load_line())
        if run.kind == "sqlite":
            print(
                f"default databases: SQLite files in {run.work}; host store files in "
                f"{run.shm}; a new process (and copy of the default database) per store per "
                f"round"
            )
        else:
            db = server_default(run.kind, "")
            print(f"server: {run.server_info}")
            print(
                f"default databases: new databases {run.prefix}_<n> on {db['HOST']}:"
                f"{db['PORT']}, each a copy of {run.prefix}_template, dropped after use; "
                f"host store files in {run.shm}; a new process (and database) per store "
                f"per round"
            )
        run.setup_template()
        print("\nrunning parts 1-3 (creates, reads, spool/restore) ...", flush=True)
        part123(run)
        if not args.skip_writers:
            print("\nrunning part 4 (concurrent writers) ...", flush=True)
            part4(run)
    finally:
        run.close()
    print()
    print(f"{time.perf_counter() - started:.0f} s; at end: {load_line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
