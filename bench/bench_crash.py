#!/usr/bin/env python
"""SIGKILL during spools and restores, longer than CI runs it (issue 6, guarantees 1 and 5).

Run from the repository root with the dev virtualenv::

    .venv/bin/python bench/bench_crash.py                       # SQLite, 300 kills
    .venv/bin/python bench/bench_crash.py --db all --kills 1000  # each database in turn
    .venv/bin/python bench/bench_crash.py --quick                # a small run, for a look

It runs the harness of ``tests/test_crash.py`` (``tests/crash_harness.py``, children in
``tests/live/crash_child.py``) on a fresh default database (a SQLite file in a temporary
directory, or a new PostgreSQL / MariaDB database on 127.0.0.1, dropped at the end) with
the test suite's settings, so it needs what the tests need. Two parts per database:

1. spools of ``testapp.Score`` (version v has ``--base`` + ``--step`` * v rows) SIGKILLed
   ``--kills`` times at seeded random moments, most of them aimed inside a spool; after
   each kill the next process must restore exactly one complete version, the last one
   whose spool returned or the one under way, and never lose the stored snapshot;
2. a ``--restore-rows`` snapshot whose restore at start-up is SIGKILLed
   ``--restore-kills`` times, spread over its duration, per ``--policies``: the stored
   snapshot (generation, checksum, row count, size) must stay as it was and the next
   start must restore it whole.

It prints what it tried (where each kill landed, in which phase of a spool or restore)
and what survived (versions restored, which snapshot the next process found), and every
failure with the start it happened at. Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("sqlite", "postgresql", "mysql")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--db", default="sqlite", help="sqlite, postgresql, mysql, a comma list or all"
    )
    parser.add_argument("--kills", type=int, default=300, help="SIGKILLs during spools (300)")
    parser.add_argument("--base", type=int, default=300_000, help="rows of the table (300000)")
    parser.add_argument("--step", type=int, default=100, help="rows added per version (100)")
    parser.add_argument(
        "--fresh-every",
        type=int,
        default=10,
        help="every Nth child a new interpreter (10; 0 never)",
    )
    parser.add_argument(
        "--restore-kills", type=int, default=20, help="SIGKILLs during restores, per policy (20)"
    )
    parser.add_argument(
        "--restore-rows",
        type=int,
        default=1_000_000,
        help="rows of the restored snapshot (1000000)",
    )
    parser.add_argument(
        "--policies", default="manual,interval,commit", help="policies of the restore part"
    )
    parser.add_argument("--seed", type=int, default=20260601)
    parser.add_argument(
        "--quick", action="store_true", help="30 kills of a 100k-row table, 6 restore kills"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.kills, args.base, args.restore_kills, args.restore_rows = 30, 100_000, 6, 300_000
    return args


def run_one(kind: str, args: argparse.Namespace) -> bool:
    """Both parts on one database, in this process; True if nothing failed."""
    os.environ["MEMDB_TEST_DB"] = kind
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from _setup import load_line, machine_line

    from tests.children import INTERVAL, fresh_database
    from tests.crash_harness import launcher, restore_kills, spool_crashes

    print(f"== {kind} | {machine_line()}")
    print(load_line(), flush=True)
    ok = True
    with tempfile.TemporaryDirectory(prefix="memdb-crash-") as tmp:
        directory = Path(tmp)
        began = time.monotonic()
        with fresh_database(kind, directory) as db, launcher(db, directory / "spool.log") as start:
            report = spool_crashes(
                start,
                kills=args.kills,
                seed=args.seed,
                base=args.base,
                step=args.step,
                fresh_every=args.fresh_every,
                progress=lambda line: print("  ..", line, flush=True),
            )
            problems = start.stderr_problems()
        print(f"-- 1. SIGKILL during spools ({time.monotonic() - began:.1f} s wall)")
        print("\n".join(report.lines()))
        if problems:
            print(problems)
        ok = ok and not report.failures and not problems
        for policy in [p for p in args.policies.split(",") if p]:
            began = time.monotonic()
            sub = directory / policy
            sub.mkdir()
            with (
                fresh_database(kind, sub) as db,
                launcher(db, sub / "restore.log", MEMDB_TEST_POLICY=policy) as start,
            ):
                restored = restore_kills(
                    start,
                    kills=args.restore_kills,
                    seed=args.seed,
                    rows=args.restore_rows,
                    hold=3 * INTERVAL,
                )
                problems = start.stderr_problems()
            wall = time.monotonic() - began
            print(
                f"-- 2. SIGKILL during the restore at start-up, policy {policy} ({wall:.1f} s wall)"
            )
            print("\n".join(restored.lines()))
            if problems:
                print(problems)
            ok = ok and not restored.failures and not problems
    print(load_line())
    print(f"== {kind}: {'no failures' if ok else 'FAILED'}", flush=True)
    return ok


def main(argv: list[str]) -> int:
    args = parse(argv)
    kinds = KINDS if args.db == "all" else tuple(k for k in args.db.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        sys.exit(f"--db: unknown {', '.join(sorted(unknown))}; expected {', '.join(KINDS)} or all")
    if len(kinds) == 1:
        return 0 if run_one(kinds[0], args) else 1
    # The test settings read MEMDB_TEST_DB once: one process per database.
    rest, skip = [], False
    for arg in argv:
        if not skip and arg != "--db" and not arg.startswith("--db="):
            rest.append(arg)
        skip = arg == "--db"
    failed = []
    for kind in kinds:
        code = subprocess.call([sys.executable, __file__, "--db", kind, *rest], cwd=ROOT)
        if code:
            failed.append(kind)
    print(f"failed on: {', '.join(failed)}" if failed else "no failures on any database")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
