#!/usr/bin/env python
"""Durability benchmark: how much the ``interval`` policy loses to a SIGKILL, measured.

Run from the repository root::

    .venv/bin/python bench/bench_durability.py                      # SQLite, a few minutes
    .venv/bin/python bench/bench_durability.py --quick              # under a minute
    .venv/bin/python bench/bench_durability.py --db postgresql      # or mysql (MariaDB)

For each table size and each kind of writer, a fresh default database and ``--kills``
writer children (``INTERVAL_WRITER`` of tests/test_durability.py, settings
tests/settings.py, model ``IntervalScore`` with the ``interval`` policy): each writes one
row per call, printing an ack with the time the call returned, and is SIGKILLed after a
seeded random time of 3 to 6 intervals; the next child restores, and its rows say which
acknowledged writes survived. The loss window of a kill is the time from the oldest
lost write's ack to the kill; the "worst instant" is the loss a kill at the worst moment
of that writer's run would have caused, from the times of its spools. Both are printed
beside the bound the issue states, ``INTERVAL`` plus one spool's duration (the slowest
spool of that run).

Writers: ``steady`` creates a row every 2 ms (as tests/test_durability.py); ``tight``
creates rows back to back; ``busy`` runs back-to-back transactions, each a create and
two milliseconds of work.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)  # ``_setup``
sys.path.insert(1, ROOT)  # ``tests``, and ``memdb`` when it is not installed

WRITERS = {
    "steady": {"pause": 0.002, "busy": False},
    "tight": {"pause": 0.0, "busy": False},
    "busy": {"pause": 0.0, "busy": True},
}


@contextlib.contextmanager
def fresh_database(kind: str) -> Iterator[str]:
    """The NAME of a new, empty default database of ``kind``, dropped afterwards."""
    from tests.children import fresh_database as fresh

    with (
        tempfile.TemporaryDirectory(prefix="memdb-bench-") as directory,
        fresh(kind, Path(directory)) as name,
    ):
        yield name


def seconds(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} / {max(values):.3f}"


def main() -> None:
    args = parse_args()
    os.environ["MEMDB_TEST_DB"] = args.db
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    import django

    django.setup()
    from _setup import load_line, machine_line

    from tests.children import child_env, run
    from tests.test_durability import interval_kills

    interval = args.interval
    sizes = [int(s) for s in args.sizes.split(",")]
    writers = args.writers.split(",")
    print(machine_line())
    print(load_line())
    print(
        f"default database: {args.db}; INTERVAL {interval} s; {args.kills} kills per line, "
        f"each after {3 * interval:.1f} to {6 * interval:.1f} s of writing; seed {args.seed}"
    )
    print("times in seconds, median / max over the kills\n")
    header = (
        f"{'rows':>8}  {'writer':<7} {'writes/s':>8}  {'spools/tick':>11}  {'spool':>13}  "
        f"{'loss window':>13}  "
        f"{'worst instant':>13}  {'INTERVAL+spool':>14}  {'over it':>7}"
    )
    print(header)
    print("-" * len(header))
    details = []
    with tempfile.TemporaryDirectory(prefix="memdb-bench-logs-") as logs:
        for size in sizes:
            for writer in writers:
                started = time.monotonic()
                with fresh_database(args.db) as name:
                    env = child_env(name, MEMDB_TEST_INTERVAL=str(interval))
                    run("report(ok=True)\n", env, migrate=True)
                    kills = interval_kills(
                        env,
                        Path(logs),
                        kills=args.kills,
                        fill=size,
                        seed=args.seed + size,
                        run_for=(3 * interval, 6 * interval),
                        **WRITERS[writer],
                    )
                bounds = [interval + k.spool for k in kills]
                over = sum(k.window > b for k, b in zip(kills, bounds))
                rate = statistics.median(k.acked / k.ran for k in kills)
                per_tick = sum(k.spools for k in kills) / sum(k.ran / interval for k in kills)
                print(
                    f"{size:>8}  {writer:<7} {rate:>8.0f}  {per_tick:>11.2f}  "
                    f"{seconds([k.spool for k in kills]):>13}  "
                    f"{seconds([k.window for k in kills]):>13}  "
                    f"{seconds([k.worst for k in kills]):>13}  "
                    f"{seconds(bounds):>14}  {over:>3}/{len(kills):<3}",
                    flush=True,
                )
                details.append(
                    f"{size:>8}  {writer:<7} windows "
                    + " ".join(f"{k.window:.3f}" for k in kills)
                    + "; worst instants "
                    + " ".join(f"{k.worst:.3f}" for k in kills)
                    + f"; {time.monotonic() - started:.0f} s"
                )
    print("\nper kill:")
    print("\n".join(details))
    print(load_line())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 kills, INTERVAL 0.2 s")
    p.add_argument(
        "--db",
        default=os.environ.get("MEMDB_TEST_DB", "sqlite"),
        choices=["sqlite", "postgresql", "mysql"],
        help="the default database (servers as in tests/settings.py); default $MEMDB_TEST_DB "
        "or sqlite",
    )
    p.add_argument("--kills", type=int, help="kills per table size and writer (default 8)")
    p.add_argument("--interval", type=float, help="MEMDB['INTERVAL'] in seconds (default 1.0)")
    p.add_argument(
        "--sizes", default="0,200000", help="rows in the table before the writes (default 0,200000)"
    )
    p.add_argument(
        "--writers", default="steady,tight,busy", help="writers, of steady, tight, busy (all)"
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the kill times (default 1)")
    args = p.parse_args()
    if args.kills is None:
        args.kills = 3 if args.quick else 8
    if args.interval is None:
        args.interval = 0.2 if args.quick else 1.0
    unknown = set(args.writers.split(",")) - set(WRITERS)
    if unknown:
        p.error(f"unknown writers: {', '.join(sorted(unknown))}")
    return args


if __name__ == "__main__":
    main()
