#!/usr/bin/env python
"""Large-table benchmark of django-memdb: a 500 MiB snapshot spooled and restored on each
default database, with the peak memory of both beside the target of 2.5x the snapshot.

Run from the repository root, naming the default databases to try (sqlite, postgresql,
mysql; the servers as for the test suite, see tests/settings.py)::

    .venv/bin/python bench/bench_large.py sqlite postgresql mysql
    .venv/bin/python bench/bench_large.py --mib 100 mysql

For each database it creates a fresh default database (``tests.children.fresh_database``),
then runs tests/live/large_child.py twice, as tests/test_large.py does at 40 MiB: one
process fills ``testapp.AllTypes`` and spools it, a new one restores it at start-up;
see bench/README.md for what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (HERE, ROOT):  # ``_setup``; ``tests`` and ``memdb``
    if path not in sys.path:
        sys.path.insert(0, path)

from _setup import load_line, machine_line  # noqa: E402

from tests.live.large_child import MIB, RATIO_LIMIT, ROW_BYTES, LargeRun  # noqa: E402

KINDS = ("sqlite", "postgresql", "mysql")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("databases", nargs="*", metavar="DB", help=f"of {', '.join(KINDS)} (sqlite)")
    p.add_argument("--mib", type=float, default=500, help="snapshot size to reach (500 MiB)")
    p.add_argument(
        "--row-bytes", type=int, default=ROW_BYTES, help=f"random bytes per row ({ROW_BYTES})"
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    p.add_argument("--db-dir", help="directory of the SQLite default database (a temp dir)")
    p.add_argument("--one", choices=KINDS, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.databases = args.databases or ["sqlite"]
    for kind in args.databases:
        if kind not in KINDS:
            p.error(f"unknown database {kind!r}: expected one of {', '.join(KINDS)}")
    return args


def run_one(kind: str, args: argparse.Namespace) -> None:
    """In a process whose settings are tests.settings for ``kind``: print one run as JSON."""
    from tests.children import fresh_database
    from tests.live.large_child import measure

    with (
        tempfile.TemporaryDirectory(dir=args.db_dir) as directory,
        fresh_database(kind, Path(directory)) as name,
    ):
        run = measure(name, mib=args.mib, row_bytes=args.row_bytes, timeout=args.timeout)
    print(json.dumps(run.as_dict()), flush=True)


def bench(kind: str, args: argparse.Namespace) -> LargeRun:
    """``run_one`` in a new process: one process reads one database's settings."""
    env = dict(
        os.environ,
        MEMDB_TEST_DB=kind,
        DJANGO_SETTINGS_MODULE="tests.settings",
        PYTHONPATH=ROOT,
    )
    command = [sys.executable, __file__, "--one", kind, "--mib", str(args.mib)]
    command += ["--row-bytes", str(args.row_bytes), "--timeout", str(args.timeout)]
    if args.db_dir:
        command += ["--db-dir", args.db_dir]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{kind}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return LargeRun(**json.loads(proc.stdout.strip().splitlines()[-1]))


def verdict(ratio: float) -> str:
    return "PASS" if ratio < RATIO_LIMIT else "FAIL"


def main() -> None:
    args = parse_args()
    if args.one:
        run_one(args.one, args)
        return
    print(machine_line())
    print(f"at start: {load_line()}")
    print(f"target: {args.mib:g} MiB snapshot, {args.row_bytes} random bytes per row\n")
    header = (
        f"{'db':<11}{'snap MiB':>9}{'rows':>9}{'chunks':>7}{'fill s':>7}{'spool s':>8}"
        f"{'restore s':>10}{'spool peak MiB':>16}{'ratio':>7}{'restore peak MiB':>18}"
        f"{'ratio':>7}{'target':>8}  rows+checksum"
    )
    lines, failed = [], False
    for kind in args.databases:
        run = bench(kind, args)
        s, r = run.spool, run.restore
        same = (r["rows"], r["checksum"], r["restore_state"]) == (s["rows"], s["checksum"], "ok")
        failed |= not same or max(run.spool_ratio, run.restore_ratio) >= RATIO_LIMIT
        lines.append(
            f"{kind:<11}{run.snapshot_bytes / MIB:>9.1f}{s['rows']:>9}"
            f"{s.get('chunks') or '-':>7}{s['fill_seconds']:>7.1f}{s['seconds']:>8.1f}"
            f"{r['seconds']:>10.1f}{run.spool_peak / MIB:>16.1f}"
            f"{run.spool_ratio:>6.2f}x{run.restore_peak / MIB:>18.1f}{run.restore_ratio:>6.2f}x"
            f"{f'< {RATIO_LIMIT}x':>8}  {'same' if same else 'DIFFERENT'} "
            f"spool {verdict(run.spool_ratio)} restore {verdict(run.restore_ratio)}"
        )
        print(f"{kind} done: {run.describe()}", flush=True)
    print()
    print(header)
    print("\n".join(lines))
    print(f"\nat end: {load_line()}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
