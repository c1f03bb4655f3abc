#!/usr/bin/env python
"""Core benchmark of django-memdb: write overhead of persistence, spool and restore speed.

Run from the repository root::

    .venv/bin/python bench/bench_core.py            # full run (a few minutes)
    .venv/bin/python bench/bench_core.py --quick    # smaller run (well under a minute)

It configures Django itself (``settings.configure``) with a temporary SQLite file as the
default database, the two models of ``bench/benchapp`` and ``memdb.configure(...)``,
runs ``migrate`` for the default database, then prints two tables; see bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the bench app (``benchapp``) and ``_setup``

import _setup  # noqa: E402
from _setup import load_line, machine_line, memory_name  # noqa: E402

TARGET = 1.2  # the target for persistent / memory-only create() time
BLOCK = 100  # creates per block; the two models alternate block by block
PLAIN = "benchapp.Plain3"
PERSIST = "benchapp.Persist3"


# --------------------------------------------------------------------------- set-up


def configure_django(db_dir: str) -> None:
    _setup.configure_django(
        db_dir,
        databases={
            # Django's stock SQLite backend on a private memory database: the ORM's own
            # bulk_create speed without memdb's backend (triggers, lock retries).
            "stock": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        },
    )


class SpoolLog:
    """Records every spool (``pre_spool`` to ``post_spool``) with the thread that ran it."""

    def __init__(self) -> None:
        from memdb import signals

        self.started: dict[int, float] = {}
        self.events: list[tuple[float, float, str, str, float]] = []
        self.lock = threading.Lock()
        signals.pre_spool.connect(self.on_pre_spool, weak=False)
        signals.post_spool.connect(self.on_post_spool, weak=False)

    def on_pre_spool(self, sender, label, **kwargs) -> None:
        with self.lock:
            self.started[threading.get_ident()] = time.perf_counter()

    def on_post_spool(self, sender, label, result, **kwargs) -> None:
        end = time.perf_counter()
        with self.lock:
            start = self.started.pop(threading.get_ident(), end)
            self.events.append(
                (start, end, threading.current_thread().name, label, result.milliseconds)
            )

    def background_between(self, start: float, end: float) -> list[float]:
        """Milliseconds of each background (interval-thread) spool overlapping [start, end]."""
        with self.lock:
            return [
                ms
                for s, e, thread, _, ms in self.events
                if s <= end and e >= start and thread == "memdb-interval-spooler"
            ]


def raw() -> sqlite3.Connection:
    """A private autocommit connection to the shared memory database."""
    return sqlite3.connect(memory_name(), uri=True, isolation_level=None, check_same_thread=False)


def rows_for(model, n: int, start: int = 0) -> list:
    return [model(name=f"row-{i:07d}", value=i, score=i * 0.25) for i in range(start, start + n)]


def fill(model, n: int) -> None:
    """Empty the table and bulk-create ``n`` rows into it."""
    model.objects.all().delete()
    for start in range(0, n, 50_000):
        model.objects.bulk_create(rows_for(model, min(50_000, n - start), start))


def make_clean(model) -> None:
    """Spool now, so the interval spooler finds nothing to do until the next write."""
    from memdb import api

    api.spool(model._meta.label)


def is_dirty(label: str) -> bool:
    from memdb import api

    return api.tables(label)[0].dirty


def fmt_us(ns: float) -> str:
    return f"{ns / 1000:8.1f}"


# --------------------------------------------------------------------------- 1. create()


def timed_creates(model, n: int, out: list[int], seq: list[int]) -> None:
    create = model.objects.create
    clock = time.perf_counter_ns
    for _ in range(n):
        i = seq[0]
        seq[0] += 1
        t0 = clock()
        create(name=f"new-{i:07d}", value=i, score=i * 0.5)
        out.append(clock() - t0)


def idle_creates(model, seconds: float, out: list[int], seq: list[int]) -> None:
    """Blocks of timed creates of ``model`` for ``seconds`` (two blocks at least), GC
    collected before and off."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        blocks = 0
        while time.perf_counter() - start < seconds or blocks < 2:
            timed_creates(model, BLOCK, out, seq)
            blocks += 1
    finally:
        gc.enable()


def bench_create(args, log: SpoolLog, persist=None) -> list[dict]:
    """Part 1 for one persistent model (``Persist3`` unless ``persist`` names another of
    the same fields, as bench/bench_perf.py does for the ``manual`` policy)."""
    from benchapp.models import Persist3, Plain3

    from memdb import api

    Persist3 = persist or Persist3
    label = Persist3._meta.label
    results = []
    seq = [0]
    for size in args.sizes:
        t_fill = time.perf_counter()
        fill(Plain3, size)
        fill(Persist3, size)
        make_clean(Persist3)
        t_fill = time.perf_counter() - t_fill
        plain_pk0 = Plain3.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        persist_pk0 = Persist3.objects.order_by("-pk").values_list("pk", flat=True).first() or 0

        per_round: dict[str, list[float]] = {"idle": [], "plain": [], "persist": []}
        ratios: dict[str, list[float]] = {"idle": [], "plain": []}
        all_ns = {"idle": [], "plain": [], "persist": []}
        spools: list[float] = []
        creates_on = 0
        for _round in range(args.rounds):
            # (b) before and after (a), half each: the spooler IDLE (Persist3 clean), the
            #     memory-only model alone, as in an app without persistent tables. Its
            #     two halves bracket (a), so a drift of the machine's speed over the
            #     round cancels out of the ratio.
            assert not is_dirty(label)
            idle_ns: list[int] = []
            idle_creates(Plain3, args.window / 2, idle_ns, seq)
            Plain3.objects.filter(pk__gt=plain_pk0).delete()

            # (a) spooler ON: both models in alternating blocks (ABBA order), for a window
            #     of INTERVAL seconds so it holds about one background spool of Persist3,
            #     the steady state of a table that is written all the time.
            assert not is_dirty(label)
            plain_ns: list[int] = []
            persist_ns: list[int] = []
            gc.collect()
            gc.disable()
            start = time.perf_counter()
            k = 0
            while time.perf_counter() - start < args.window or k < 2:
                first, second = (
                    ((Plain3, plain_ns), (Persist3, persist_ns))
                    if k % 2 == 0
                    else ((Persist3, persist_ns), (Plain3, plain_ns))
                )
                timed_creates(first[0], BLOCK, first[1], seq)
                timed_creates(second[0], BLOCK, second[1], seq)
                k += 1
            end = time.perf_counter()
            gc.enable()
            creates_on += len(persist_ns)

            # back to the prefilled size, and clean, so the interval spooler is idle
            # (the explicit spool also waits for a background spool still running)
            Plain3.objects.filter(pk__gt=plain_pk0).delete()
            Persist3.objects.filter(pk__gt=persist_pk0).delete()
            make_clean(Persist3)
            spools += log.background_between(start, end)

            # (b), second half
            idle_creates(Plain3, args.window / 2, idle_ns, seq)
            Plain3.objects.filter(pk__gt=plain_pk0).delete()
            assert not is_dirty(label)

            for key, ns in (("idle", idle_ns), ("plain", plain_ns), ("persist", persist_ns)):
                per_round[key].append(statistics.fmean(ns))
                all_ns[key] += ns
            # ratios within one round (seconds apart), so slow drifts of machine load cancel
            ratios["idle"].append(per_round["persist"][-1] / per_round["idle"][-1])
            ratios["plain"].append(per_round["persist"][-1] / per_round["plain"][-1])

        row = {
            "size": size,
            "fill_s": t_fill,
            "creates": creates_on,
            "spools": spools,
            "ratio_idle": statistics.median(ratios["idle"]),
            "ratio_plain": statistics.median(ratios["plain"]),
            "ratios_idle": ratios["idle"],
            "ratios_plain": ratios["plain"],
        }
        for key in per_round:
            ns = sorted(all_ns[key])
            row[key] = {
                "mean": statistics.median(per_round[key]),  # median of per-round means
                "median": statistics.median(ns),
                "p99": ns[int(len(ns) * 0.99)],
                "max": ns[-1],
                "slow": sum(1 for x in ns if x > 5_000_000),  # > 5 ms: a stall
                "n": len(ns),
            }
        results.append(row)
        print(
            f"  size {size:>7,}: done ({creates_on:,} creates/model with the spooler on, "
            f"{len(spools)} background spools)",
            flush=True,
        )
    Plain3.objects.all().delete()
    Persist3.objects.all().delete()
    api.spool(label)
    return results


def print_create(results: list[dict], args) -> None:
    print()
    print(
        "1. Model.objects.create() time, microseconds per call "
        f"(median of {args.rounds} per-round means; per-call median in brackets)"
    )
    print(
        "   persistent = Persist3, interval policy, spooler thread running (INTERVAL "
        f"{args.interval:g} s); memory-only = Plain3"
    )
    print(
        "   memory-only (idle): Plain3 alone while Persist3 is clean, i.e. what an app "
        "without persistent tables sees"
    )
    print(
        "   memory-only (inter.): Plain3 in the same window, blocks alternating with "
        "Persist3, so it shares the spooler's interference"
    )
    print()
    header = (
        f"   {'rows':>8} | {'memory-only (idle)':>19} | {'memory-only (inter.)':>20} | "
        f"{'persistent':>19} | {'pers/idle':>9} {'':4} | {'pers/inter.':>11} {'':4} | "
        f"{'bg spools':>9} {'ms each (median)':>16}"
    )
    print(header)
    print("   " + "-" * (len(header) - 3))
    for r in results:
        cells = []
        for key in ("idle", "plain", "persist"):
            s = r[key]
            cells.append(f"{s['mean'] / 1000:8.1f} [{s['median'] / 1000:7.1f}]")
        ratio_idle = r["ratio_idle"]
        ratio_inter = r["ratio_plain"]
        spools = r["spools"]
        print(
            f"   {r['size']:>8,} | {cells[0]:>19} | {cells[1]:>20} | {cells[2]:>19} | "
            f"{ratio_idle:>9.2f} {'PASS' if ratio_idle <= TARGET else 'FAIL':4} | "
            f"{ratio_inter:>11.2f} {'PASS' if ratio_inter <= TARGET else 'FAIL':4} | "
            f"{len(spools):>9} "
            f"{(statistics.median(spools) if spools else 0):>16.1f}"
        )
    print(
        f"   ratios: median over rounds of (persistent mean / memory-only mean) in the same "
        f"round; target: ratio <= {TARGET} at every size"
    )
    print("   per-round ratios (spread shows the machine's noise):")
    for r in results:
        print(
            f"   {r['size']:>8,} rows: pers/idle "
            + " ".join(f"{x:.2f}" for x in r["ratios_idle"])
            + ";  pers/inter. "
            + " ".join(f"{x:.2f}" for x in r["ratios_plain"])
        )
    print()
    print("   tail latency, microseconds (p99 / max) and calls over 5 ms:")
    for r in results:
        parts = []
        for key, name in (("idle", "idle"), ("plain", "inter."), ("persist", "persistent")):
            s = r[key]
            parts.append(
                f"{name} {s['p99'] / 1000:.0f} / {s['max'] / 1000:.0f} ({s['slow']} of {s['n']:,})"
            )
        print(f"   {r['size']:>8,} rows: " + ";  ".join(parts))


# --------------------------------------------------------------------------- 2. spool / restore


def timed_sql(conn: sqlite3.Connection, sql: str) -> float:
    t0 = time.perf_counter()
    conn.execute(sql)
    return time.perf_counter() - t0


def writes_during(operation) -> dict:
    """Time ``Plain3.objects.create()`` in this thread while ``operation`` runs in another."""
    from benchapp.models import Plain3

    done = threading.Event()
    span: list[float] = []

    def run() -> None:
        try:
            t0 = time.perf_counter()
            operation()
            span.append(time.perf_counter() - t0)
        finally:
            done.set()

    thread = threading.Thread(target=run, name="bench-operation")
    lat: list[int] = []
    seq = [10_000_000]
    thread.start()
    while not done.is_set():
        timed_creates(Plain3, 1, lat, seq)
    thread.join()
    Plain3.objects.all().delete()
    return {
        "seconds": span[0] if span else float("nan"),
        "creates": len(lat),
        "max_ms": max(lat) / 1e6 if lat else float("nan"),
        "mean_us": statistics.fmean(lat) / 1000 if lat else float("nan"),
    }


def bench_spool_restore(args) -> list[dict]:
    from benchapp.models import Persist3
    from django.db import connections

    from memdb import api

    table = Persist3._meta.db_table
    stock = connections["stock"]
    if table not in stock.introspection.table_names():
        with stock.schema_editor() as editor:
            editor.create_model(Persist3)
    results = []
    for n, runs in args.big:
        Persist3.objects.all().delete()
        api.spool(PERSIST)
        objs = rows_for(Persist3, n)
        gc.collect()
        t0 = time.perf_counter()
        Persist3.objects.bulk_create(objs)
        t_orm = time.perf_counter() - t0
        # the same rows through Django's stock SQLite backend, for comparison
        for obj in objs:
            obj.pk = None
            obj._state.adding, obj._state.db = True, None
        gc.collect()
        t0 = time.perf_counter()
        Persist3.objects.using("stock").bulk_create(objs)
        t_stock = time.perf_counter() - t0
        Persist3.objects.using("stock").all().delete()
        del objs
        assert Persist3.objects.count() == n
        # the first spool makes the table clean, so the interval thread stays idle below
        api.spool(PERSIST)

        spool_s, nbytes = [], 0
        for _ in range(runs):
            gc.collect()
            t0 = time.perf_counter()
            # force: an unchanged table is otherwise not rewritten (its spool is a no-op)
            (res,) = api.spool(PERSIST, force=True)
            assert not res.unchanged
            spool_s.append(time.perf_counter() - t0)
            nbytes = res.bytes

        restore_s = []
        for _ in range(runs):
            gc.collect()
            t0 = time.perf_counter()
            (res,) = api.restore(PERSIST)
            restore_s.append(time.perf_counter() - t0)
            assert res.rows == n
        assert Persist3.objects.count() == n

        # Writes to *another* memory table (Plain3) while Persist3 spools or restores in
        # a second thread: the longest create() shows how long the other table is held up.
        during = {"spool": writes_during(lambda: api.spool(PERSIST, force=True))}
        during["restore"] = writes_during(lambda: api.restore(PERSIST))

        # SQLite's own floor, in the same memory database: a copy of the table
        # (what a spool's read does) and an INSERT ... SELECT into a table of the same
        # schema without triggers (what a restore's load does).
        conn = raw()
        try:
            schema = conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
            ).fetchone()[0]
            ctas, insel = [], []
            for _ in range(runs):
                conn.execute("DROP TABLE IF EXISTS bench_copy")
                ctas.append(timed_sql(conn, f"CREATE TABLE bench_copy AS SELECT * FROM {table}"))
                conn.execute("DROP TABLE bench_copy")
                conn.execute(schema.replace(f'"{table}"', "bench_copy", 1))
                insel.append(timed_sql(conn, f"INSERT INTO bench_copy SELECT * FROM {table}"))
                conn.execute("DROP TABLE bench_copy")
        finally:
            conn.close()

        results.append(
            {
                "n": n,
                "runs": runs,
                "spool": statistics.median(spool_s),
                "restore": statistics.median(restore_s),
                "bytes": nbytes,
                "ctas": statistics.median(ctas),
                "insel": statistics.median(insel),
                "orm": t_orm,
                "stock": t_stock,
                "all_spool": spool_s,
                "all_restore": restore_s,
                "during": during,
            }
        )
        print(f"  {n:>9,} rows: done", flush=True)
    Persist3.objects.all().delete()
    api.spool(PERSIST)
    return results


def print_spool_restore(results: list[dict]) -> None:
    print()
    print("2. Spool and restore of Persist3 (3 columns + id), seconds (median of the runs)")
    print(
        "   spool = memdb.api.spool (snapshot read + serialize + sha256 + write to the "
        "default DB file, fsync included)"
    )
    print(
        "   restore = memdb.api.restore (read blob + sha256 + deserialize + DELETE + "
        "INSERT ... SELECT)"
    )
    print()
    header = (
        f"   {'rows':>9} | {'operation':<44} | {'runs':>4} | {'seconds':>8} | "
        f"{'rows/s':>11} | {'x floor':>7}"
    )
    print(header)
    print("   " + "-" * (len(header) - 3))
    for r in results:
        n = r["n"]
        lines = [
            ("memdb spool", r["spool"], r["runs"], r["ctas"]),
            ("  SQLite floor: CREATE TABLE .. AS SELECT", r["ctas"], r["runs"], None),
            ("memdb restore", r["restore"], r["runs"], r["insel"]),
            ("  SQLite floor: INSERT INTO copy SELECT", r["insel"], r["runs"], None),
            ("ORM bulk_create of the same rows", r["orm"], 1, r["insel"]),
            ("  same, Django's stock SQLite backend", r["stock"], 1, r["insel"]),
        ]
        for name, secs, runs, floor in lines:
            xf = f"{secs / floor:7.1f}" if floor else f"{'':7}"
            print(f"   {n:>9,} | {name:<44} | {runs:>4} | {secs:8.3f} | {n / secs:>11,.0f} | {xf}")
        for op, d in r["during"].items():
            print(
                f"   {n:>9,} | while a {op} ran in another thread ({d['seconds']:.3f} s), "
                f"{d['creates']:,} Plain3 creates: mean {d['mean_us']:.0f} us, "
                f"longest {d['max_ms']:.0f} ms"
            )
        print(
            f"   {n:>9,} | snapshot size: {r['bytes']:,} bytes ({r['bytes'] / n:.1f} bytes/row); "
            f"spool runs {', '.join(f'{s:.3f}' for s in r['all_spool'])} s; "
            f"restore runs {', '.join(f'{s:.3f}' for s in r['all_restore'])} s"
        )
        print("   " + "-" * (len(header) - 3))


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smaller run: 2 rounds, 100k only")
    p.add_argument("--rounds", type=int, help="rounds per table size (default 5, quick 2)")
    p.add_argument(
        "--window",
        type=float,
        help="seconds of the spooler-on phase of each round (default: INTERVAL, 1.0)",
    )
    p.add_argument(
        "--sizes",
        help="comma-separated table sizes of part 1 (default 0,10000,100000)",
    )
    p.add_argument("--db-dir", help="directory of the temporary default database")
    p.add_argument("--skip-create", action="store_true", help="skip part 1")
    p.add_argument("--skip-spool", action="store_true", help="skip part 2")
    args = p.parse_args()
    args.sizes = (
        tuple(int(x) for x in args.sizes.split(",")) if args.sizes else (0, 10_000, 100_000)
    )
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.big = ((100_000, 1),) if args.quick else ((100_000, 3), (1_000_000, 2))
    return args


def main() -> None:
    args = parse_args()
    db_dir = tempfile.mkdtemp(prefix="memdb-bench-", dir=args.db_dir)
    try:
        configure_django(db_dir)
        from memdb.conf import memdb_settings

        args.interval = float(memdb_settings.INTERVAL)
        args.window = args.window or args.interval
        print("django-memdb core benchmark" + (" (--quick)" if args.quick else ""))
        print(machine_line())
        print(f"default database: {db_dir}/default.sqlite3; memory database: {memory_name()}")
        print(f"at start: {load_line()}")
        log = SpoolLog()
        from benchapp.models import Plain3

        Plain3.objects.exists()  # first use: builds the memory schema, starts the spooler
        assert any(t.name == "memdb-interval-spooler" for t in threading.enumerate())

        create_results = spool_results = None
        if not args.skip_create:
            print("\nrunning part 1 (create) ...", flush=True)
            create_results = bench_create(args, log)
        if not args.skip_spool:
            print("\nrunning part 2 (spool / restore) ...", flush=True)
            spool_results = bench_spool_restore(args)
        print()
        print("=" * 100)
        print(machine_line())
        print(f"at end: {load_line()} (other work on the machine adds noise to every figure)")
        if create_results:
            print_create(create_results, args)
        if spool_results:
            print_spool_restore(spool_results)
    finally:
        from memdb import policies

        policies.stop_interval()
        shutil.rmtree(db_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
