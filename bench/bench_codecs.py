#!/usr/bin/env python
"""Codec benchmark of django-memdb: snapshot size, spool and restore time per codec chain.

Run from the repository root::

    .venv/bin/python bench/bench_codecs.py            # 100k rows, median of 3 runs
    .venv/bin/python bench/bench_codecs.py --quick    # 20k rows, 1 run

It configures Django itself (``settings.configure``) with a temporary SQLite file as the
default database, the models of ``bench/benchapp`` and ``memdb.configure(...)`` with a
freshly generated Fernet key, fills ``Persist3`` with varied rows, then spools and
restores it through each chain in turn and prints one table; see bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)  # the bench app (``benchapp``) and ``_setup``

from _setup import configure_django, load_line, machine_line  # noqa: E402

PERSIST = "benchapp.Persist3"
HOOK = "0.0.6 hook (json+zlib)"
BARE = "0.0.6 path, no processor"

#: (what the table calls it, codec chain); ``HOOK`` and ``BARE`` take the 0.0.6 path
#: (a store_save receiver is connected: with the compress processor, and without one).
CONFIGS: list[tuple[str, tuple[str, ...]]] = [
    ("no codec", ()),
    ("zlib", ("zlib",)),
    ("gzip", ("gzip",)),
    ("bz2", ("bz2",)),
    ("lzma", ("lzma",)),
    ("fernet", ("fernet",)),
    ("zlib+fernet", ("zlib", "fernet")),
    (HOOK, ()),
    (BARE, ()),
]

FIRST = (
    "Olivia Liam Emma Noah Amelia Oliver Ava Elijah Sophia Mateo Isabella Lucas Mia Levi "
    "Charlotte Asher Luna James Gianna Leo Aurora Grayson Harper Ezra Evelyn Luca Ella "
    "Ethan Camila Aiden Nova Wyatt Eliana Sebastian Violet Jack Hazel Muhammad Ivy Henry "
    "Lily Hudson Chloe Daniel Layla Michael Aria Elias Zoe Jonas Freya Yuki Priya Kofi"
).split()
LAST = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
    "Lopez Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson "
    "White Harris Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright "
    "Scott Torres Nguyen Hill Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell "
    "Carter Roberts Muller Schmidt Rossi Kowalski Tanaka Okafor Singh Novak Berg"
).split()


# --------------------------------------------------------------------------- the 0.0.6 hook
# The README's example (the 0.0.6 README's, with memdb's import path), connected to
# store_save / store_load for the HOOK line only.


def compress(arguments):
    "Compress data."
    from django.conf import settings

    if arguments["process"] == settings.MEMDB_PROCESS_ENCODE:
        data = arguments["data"]
        data = json.dumps(data)
        data = data.encode("utf-8")
        data = zlib.compress(data)
        arguments["data"] = data
    elif arguments["process"] == settings.MEMDB_PROCESS_DECODE:
        data = arguments["data"]
        data = zlib.decompress(data)
        data = data.decode("utf-8")
        data = json.loads(data)
        arguments["data"] = data


def callback(sender, **kwargs):
    "Just insert a hook."
    kwargs["kwargs"]["processors"].append(compress)


def no_processor(sender, **kwargs):
    """A receiver that adds no processor: the django-json path alone, for comparison."""


# --------------------------------------------------------------------------- the run


def fill(n: int, seed: int) -> None:
    """Empty ``Persist3`` and bulk-create ``n`` varied rows: a name, an int, a float."""
    from benchapp.models import Persist3

    rng = random.Random(seed)
    Persist3.objects.all().delete()
    for start in range(0, n, 50_000):
        Persist3.objects.bulk_create(
            [
                Persist3(
                    name=f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                    value=int(rng.lognormvariate(7, 2)),  # mostly small, a few huge
                    score=round(rng.gauss(500, 150), 2),  # a measurement, 2 decimals
                )
                for _ in range(min(50_000, n - start))
            ]
        )


def measure(name: str, chain: tuple[str, ...], n: int) -> dict:
    """One spool and one restore of ``Persist3`` through ``chain`` (or the 0.0.6 path)."""
    from benchapp.models import Persist3

    from memdb import api, signals
    from memdb.spooler import stored_snapshots

    receiver = {HOOK: callback, BARE: no_processor}.get(name)
    Persist3.memdb_codecs = list(chain)
    if receiver:
        signals.store_save.connect(receiver)
        signals.store_load.connect(receiver)
    try:
        # force: an unchanged table is otherwise not rewritten (its spool is a no-op).
        # One spool first, not timed, so the timed one replaces a snapshot of the same
        # chain, as it would in production, rather than the previous chain's (deleting a
        # 10 MB django-json snapshot costs the next spool tens of milliseconds).
        api.spool(PERSIST, force=True)
        gc.collect()
        t0 = time.perf_counter()
        (res,) = api.spool(PERSIST, force=True)
        spool_s = time.perf_counter() - t0
        assert not res.unchanged and res.rows == n, res
        stored = stored_snapshots(Persist3).values("format", "codecs").get()
        gc.collect()
        t0 = time.perf_counter()
        (restored,) = api.restore(PERSIST)
        restore_s = time.perf_counter() - t0
        assert restored.rows == n, restored
    finally:
        if receiver:
            signals.store_save.disconnect(receiver)
            signals.store_load.disconnect(receiver)
        Persist3.memdb_codecs = None
    return {
        "spool": spool_s,
        "restore": restore_s,
        "bytes": res.bytes,
        "format": stored["format"],
        "codecs": stored["codecs"],
    }


def run_all(n: int, runs: int) -> list[dict]:
    """Every chain once per round, ``runs`` rounds: slow drifts of machine load hit all alike."""
    from benchapp.models import Persist3

    results = {
        name: {"name": name, "all_spool": [], "all_restore": [], "bytes": set()}
        for name, _ in CONFIGS
    }
    for number in range(runs):
        print(f"  round {number + 1}/{runs}:", end="", flush=True)
        for name, chain in CONFIGS:
            m = measure(name, chain, n)
            r = results[name]
            r["all_spool"].append(m["spool"])
            r["all_restore"].append(m["restore"])
            r["bytes"].add(m["bytes"])
            r["format"], r["codecs"] = m["format"], m["codecs"]
            print(".", end="", flush=True)
        print(" done", flush=True)
    assert Persist3.objects.count() == n
    for r in results.values():
        (r["bytes"],) = r["bytes"] if len(r["bytes"]) == 1 else (max(r["bytes"]),)
        r["spool"] = statistics.median(r["all_spool"])
        r["restore"] = statistics.median(r["all_restore"])
    return list(results.values())


def print_table(results: list[dict], n: int, runs: int) -> None:
    base = results[0]
    print()
    print(
        f"Spool and restore of Persist3 ({n:,} rows: name, value, score + id) per codec chain; "
        f"seconds, median of {runs} run(s)"
    )
    print(
        "   spool = memdb.api.spool(force=True): snapshot read + serialize + codecs + sha256 "
        "+ write to the default DB file"
    )
    print(
        "   restore = memdb.api.restore: read + sha256 + codecs reversed + deserialize + "
        "table replaced in memory"
    )
    print("   x none = the figure over the no-codec figure")
    print()
    header = (
        f"   {'chain':<24} | {'snapshot bytes':>14} {'x none':>7} | {'spool s':>8} "
        f"{'x none':>7} | {'restore s':>9} {'x none':>7} | recorded on the snapshot"
    )
    print(header)
    print("   " + "-" * (len(header) - 3))
    for r in results:
        recorded = f"{r['format']}: {', '.join(r['codecs']) or '(no codecs)'}"
        print(
            f"   {r['name']:<24} | {r['bytes']:>14,} {r['bytes'] / base['bytes']:>7.3f} | "
            f"{r['spool']:>8.3f} {r['spool'] / base['spool']:>7.2f} | "
            f"{r['restore']:>9.3f} {r['restore'] / base['restore']:>7.2f} | {recorded}"
        )
    print()
    print("   every run, seconds (spool; restore):")
    for r in results:
        print(
            f"   {r['name']:<24}   {', '.join(f'{s:.3f}' for s in r['all_spool'])};  "
            f"{', '.join(f'{s:.3f}' for s in r['all_restore'])}"
        )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smaller run: 20k rows, 1 run")
    p.add_argument("--rows", type=int, help="rows in the table (default 100000, quick 20000)")
    p.add_argument("--runs", type=int, help="spools and restores per chain (default 3, quick 1)")
    p.add_argument("--seed", type=int, default=1, help="seed of the row generator (default 1)")
    p.add_argument("--db-dir", help="directory of the temporary default database")
    args = p.parse_args()
    args.rows = args.rows or (20_000 if args.quick else 100_000)
    args.runs = args.runs or (1 if args.quick else 3)
    return args


def main() -> None:
    args = parse_args()
    from cryptography.fernet import Fernet

    db_dir = tempfile.mkdtemp(prefix="memdb-bench-", dir=args.db_dir)
    try:
        configure_django(db_dir, memdb_settings={"FERNET_KEYS": [Fernet.generate_key().decode()]})
        from benchapp.models import Persist3

        from memdb import api

        print("django-memdb codec benchmark" + (" (--quick)" if args.quick else ""))
        print(machine_line())
        print(f"default database: {db_dir}/default.sqlite3")
        print(f"at start: {load_line()}")
        fill(args.rows, args.seed)
        api.spool(PERSIST)  # clean, so the interval spooler thread stays idle
        sample = Persist3.objects.order_by("pk").values_list("name", "value", "score")[:3]
        print(f"rows like: {'; '.join(str(tuple(row)) for row in sample)}")
        print()
        results = run_all(args.rows, args.runs)
        print()
        print("=" * 100)
        print(machine_line())
        print(f"at end: {load_line()} (other work on the machine adds noise to every figure)")
        print_table(results, args.rows, args.runs)
        Persist3.objects.all().delete()
        api.spool(PERSIST)
    finally:
        from memdb import policies

        policies.stop_interval()
        shutil.rmtree(db_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
