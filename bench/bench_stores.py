#!/usr/bin/env python
"""The two stores side by side: ``process`` (a memory database per process) and ``host``
(one WAL SQLite file on /dev/shm shared by the host's workers), beside a regular table on
the default database.

Run from the repository root::

    .venv/bin/python bench/bench_stores.py            # full run, about 75 seconds
    .venv/bin/python bench/bench_stores.py --quick    # about 30 seconds

Settings are configured once per Django process, so every measurement runs in a new
process (this script with ``--child``) that prints JSON; the parent runs the two stores'
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
from datetime import UTC, datetime, timedelta
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _path in (HERE, ROOT):  # ``_setup`` and the bench app; ``memdb``
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _setup import load_line, machine_line, settings_for  # noqa: E402

STORES = ("process", "host")
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


def conf_for(db_dir: str, store: str, host_path: str) -> dict:
    return settings_for(db_dir, memdb_settings=store_settings(store, host_path))


def remove_host_files(path: str) -> None:
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        if os.path.exists(name):
            os.remove(name)
    shutil.rmtree(f"{path}.memdb", ignore_errors=True)


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
        settings.configure(**json.load(source))
    django.setup()


def child_setup(args: argparse.Namespace) -> None:
    """``migrate --run-syncdb`` a default database (the bench app has no migrations);
    the parent copies the file for every other child."""
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
    """The parent's temporary files: default databases in ``work``, host stores in ``shm``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = tempfile.mkdtemp(prefix="memdb-stores-", dir=args.db_dir)
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.shm = tempfile.mkdtemp(prefix="memdb-stores-", dir=shm)
        self.template = os.path.join(self.work, "template")
        self.count = 0

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.shm, ignore_errors=True)

    def setup_template(self) -> None:
        os.makedirs(self.template)
        conf = conf_for(self.template, "process", "")
        run_child(self.work, "setup", conf)

    def fresh(self, store: str) -> tuple[dict, str]:
        """Settings for a new child: a copy of the migrated default database and, for
        the host store, a host file of its own."""
        self.count += 1
        db_dir = os.path.join(self.work, f"db{self.count}")
        os.makedirs(db_dir)
        shutil.copy(
            os.path.join(self.template, "default.sqlite3"), os.path.join(db_dir, "default.sqlite3")
        )
        host_path = os.path.join(self.shm, f"store{self.count}.sqlite3")
        return conf_for(db_dir, store, host_path), host_path

    def round_child(self, store: str) -> dict:
        a = self.args
        conf, host_path = self.fresh(store)
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
            remove_host_files(host_path)

    def writers(self, store: str, count: int) -> dict:
        """``count`` processes creating memory-only rows at once for ``window`` seconds."""
        conf, host_path = self.fresh(store)
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
                    raise RuntimeError("a writer did not start")
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
            remove_host_files(host_path)
        seconds = max(r["seconds"] for r in results)
        return {
            "rate": sum(r["creates"] for r in results) / seconds,
            "p99": max(r["p99"] for r in results),
            "max": max(r["max"] for r in results),
        }


def us(ns: float) -> str:
    return f"{ns / 1000:.1f} µs"


def x(value: float) -> str:
    return f"{value:.2f}x"


def per_round(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def part123(run: Run) -> None:
    a = run.args
    results: dict[str, list[dict]] = {store: [] for store in STORES}
    for r in range(a.rounds):
        order = STORES if r % 4 in (0, 3) else STORES[::-1]  # ABBA
        for store in order:
            print(f"   round {r + 1}/{a.rounds}: {store} store ...", flush=True)
            results[store].append(run.round_child(store))
    proc, host = results["process"], results["host"]

    def series(rows: list[dict], *path: str) -> list[float]:
        out = []
        for row in rows:
            value: Any = row
            for key in path:
                value = value[key]
            out.append(value)
        return out

    # The regular table was timed in both children of a round: the round's figure is
    # their mean.
    def regular(*path: str) -> list[float]:
        return [(p + h) / 2 for p, h in zip(series(proc, *path), series(host, *path))]

    print()
    print(
        f"1. Model.objects.create(), mean time per call ({a.creates} calls per memory model "
        f"and {a.regular_creates} regular per round, in blocks taking turns; median of "
        f"{a.rounds} round means)"
    )
    head = (
        f"   {'':<34} {'process':>10} {'host':>10} {'regular':>11} "
        f"{'host/process':>13} {'regular/process':>16}"
    )
    print(head)
    reg_w = regular("writes", "regular")
    host_ratios = {}
    for name, title in (
        ("memory", "memory-only (MemRow)"),
        ("manual", "persistent, manual policy (BigRow)"),
    ):
        p = series(proc, "writes", name)
        h = series(host, "writes", name)
        host_ratios[name] = [b / c for b, c in zip(h, p)]
        print(
            f"   {title:<34} {us(median(p)):>10} {us(median(h)):>10} {us(median(reg_w)):>11} "
            f"{x(ratio_of(h, p)):>13} {x(ratio_of(reg_w, p)):>16}"
        )
    print(
        "   regular = DefaultRow on the default SQLite file (journal mode delete, fsync per commit)"
    )
    for name, values in host_ratios.items():
        print(f"   per-round host/process, {name}: {per_round(values)}")

    print()
    print(
        f"2. Reads on {a.read_rows:,} rows, mean time per call ({a.reads} get() and "
        f"{max(1, a.reads // 10)} count() per round; median of {a.rounds} rounds)"
    )
    print(head)
    for op, title in (("get", "get(pk=...)"), ("count", "filter(number__lt=...).count()")):
        p = series(proc, "reads", f"memory_{op}")
        h = series(host, "reads", f"memory_{op}")
        g = regular("reads", f"regular_{op}")
        print(
            f"   {title:<34} {us(median(p)):>10} {us(median(h)):>10} {us(median(g)):>11} "
            f"{x(ratio_of(h, p)):>13} {x(ratio_of(g, p)):>16}"
        )
    print("   memory side: MemRow (memory only); regular: DefaultRow on the default database")

    print()
    print(
        f"3. Spool and restore of BigRow at {a.big_rows:,} rows (api.spool(force=True), "
        f"api.restore; median of {a.rounds} runs, one per round)"
    )
    print(f"   {'':<34} {'process':>10} {'host':>10} {'host/process':>13}")
    for op in ("spool", "restore"):
        p = series(proc, op)
        h = series(host, op)
        print(
            f"   {op:<34} {median(p):>8.3f} s {median(h):>8.3f} s {x(ratio_of(h, p)):>13}"
            f"   ({a.big_rows / median(p):,.0f} / {a.big_rows / median(h):,.0f} rows/s)"
        )
    for op in ("spool", "restore"):
        values = [b / c for b, c in zip(series(host, op), series(proc, op))]
        print(f"   per-round host/process, {op}: {per_round(values)}")


def part4(run: Run) -> None:
    a = run.args
    counts = (1, a.writers)
    trials = [(store, n) for store in STORES for n in counts]
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
    for store in STORES:
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


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer rounds and calls (about 30 s)")
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
        print("django-memdb stores: process vs host" + (" (--quick)" if args.quick else ""))
        print(machine_line())
        print(load_line())
        print(
            f"default databases: SQLite files in {run.work}; host store files in {run.shm}; "
            f"a new process (and copy of the default database) per store per round"
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
