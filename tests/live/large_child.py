"""A large table spooled and restored in new processes, with their peak memory measured.

Issue 6, guarantee 7: a big snapshot spools and restores on every default database with
peak memory under 2.5 times the snapshot size. ``measure`` (used by tests/test_large.py
and bench/bench_large.py) runs this module twice as a child process
(``python -m tests.live.large_child``) on one default database:

1. ``spool``: migrate, fill ``testapp.AllTypes`` in SQL until the memory database holds
   ``--mib`` MiB (each row copies one template row with ``--row-bytes`` random bytes in
   its BinaryField, so codecs cannot shrink it), then ``api.spool(force=True)``;
2. ``restore``: a new process restores the snapshot at its first use of the memory alias.

Peak memory is the kernel's high-water mark of the child's resident set (``VmHWM``),
reset by writing 5 to ``/proc/self/clear_refs`` just before the operation. The ratios
compare what memdb holds at the peak, the table itself included, with the snapshot size:
for the spool, peak minus the resident set before the table was filled; for the
restore, peak minus the resident set after ``django.setup()`` and before the first use
of the memory alias. Both children print one JSON line; ``measure`` returns them as a
``LargeRun``. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import subprocess
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from typing import Any

MIB = 1024 * 1024
LABEL = "testapp.AllTypes"
#: Target of issue 6: peak memory of a spool or restore under this many snapshot sizes.
RATIO_LIMIT = 2.5
#: Random bytes per filled row, and the rows inserted per statement while filling.
ROW_BYTES = 1000
FILL_BATCH_BYTES = 8 * MIB


# -- measuring, in the children ----------------------------------------------------------


def _status(key: str) -> int:
    """A ``/proc/self/status`` figure (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak() -> int:
    """Collect garbage, reset the high-water mark to the current resident set; return it."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return _status("VmRSS")


def _row_crc(*values: Any) -> int:
    crc = 0
    for value in values:
        data = value if isinstance(value, bytes) else repr(value).encode()
        crc = zlib.crc32(data, crc)
    return crc


def _table_figures(conn: sqlite3.Connection, model: Any) -> dict[str, int]:
    """Rows, a checksum of every column of every row (ids included) and the memory
    database's size in use, all read in SQL on ``conn``."""
    from memdb.store import quote

    columns = ", ".join(quote(f.column) for f in model._meta.concrete_fields)
    payload = quote(model._meta.get_field("blob").column)
    conn.create_function("memdb_large_crc", -1, _row_crc, deterministic=True)
    rows, checksum, payload_bytes = conn.execute(
        f"SELECT count(*), coalesce(sum(memdb_large_crc({columns})), 0), "
        f"coalesce(sum(length({payload})), 0) FROM {quote(model._meta.db_table)}"
    ).fetchone()
    return {
        "rows": rows,
        "checksum": checksum,
        "payload_bytes": payload_bytes,
        "table_bytes": _database_bytes(conn),
    }


def _database_bytes(conn: sqlite3.Connection) -> int:
    """Pages in use in the memory database: the big table and a few near-empty ones."""
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return int((pages - free) * page_size)


def _template_row(model: Any) -> int:
    """One ordinary row made by the ORM; the fill copies its other columns."""
    import datetime
    import uuid
    from decimal import Decimal

    return model.objects.create(
        small=1,
        integer=2,
        big=3,
        pos_small=4,
        pos_int=5,
        pos_big=6,
        floating=0.5,
        decimal=Decimal("1.2345"),
        flag=True,
        maybe=None,
        char="large table",
        text="a row of the large-table test",
        slug="large",
        email="large@example.com",
        url="https://example.com/large",
        day=datetime.date(2024, 1, 2),
        moment=datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),
        clock=datetime.time(3, 4, 5),
        span=datetime.timedelta(seconds=1),
        uuid=uuid.UUID(int=7),
        blob=b"",
        doc={"large": True},
        ip="192.0.2.1",
        nothing=None,
    ).pk


def _fill(conn: sqlite3.Connection, model: Any, target: int, row_bytes: int) -> None:
    """Insert copies of a template row with random payloads until the database holds
    ``target`` bytes, a recursive CTE per batch: no per-row Python."""
    from memdb.store import quote

    table = quote(model._meta.db_table)
    pk = model._meta.pk.column
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    template = conn.execute(
        f"SELECT {', '.join(quote(f.column) for f in fields)} FROM {table} WHERE {quote(pk)} = ?",
        (_template_row(model),),
    ).fetchone()
    exprs, params = [], []
    for field, value in zip(fields, template, strict=True):
        if field.name == "blob":
            exprs.append("randomblob(?)")
            params.append(row_bytes)
        else:
            exprs.append("?")
            params.append(value)
    batch = max(1, FILL_BATCH_BYTES // row_bytes)
    sql = (
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        f"INSERT INTO {table} ({', '.join(quote(f.column) for f in fields)}) "
        f"SELECT {', '.join(exprs)} FROM n"
    )
    while _database_bytes(conn) < target:
        conn.execute(sql, (batch, *params))


def _report(**data: Any) -> None:
    print(json.dumps(data), flush=True)


def spool_child(mib: float, row_bytes: int) -> None:
    import django

    django.setup()
    from django.core.management import call_command

    from memdb import api, store
    from tests.testapp.models import AllTypes

    call_command("migrate", verbosity=0)
    base = _reset_peak()
    started = time.perf_counter()
    with store.raw_connection() as conn:
        _fill(conn, AllTypes, int(mib * MIB), row_bytes)
        fill_seconds = time.perf_counter() - started
        table = _table_figures(conn, AllTypes)
    before = _reset_peak()
    started = time.perf_counter()
    (result,) = api.spool(LABEL, force=True)
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")
    _report(
        **table,
        fill_seconds=fill_seconds,
        snapshot_bytes=result.bytes,
        spooled_rows=result.rows,
        chunks=getattr(result, "chunks", None),
        seconds=seconds,
        rss_base=base,
        rss_before=before,
        peak=peak,
    )


def restore_child() -> None:
    import django

    django.setup()
    from memdb import api, store
    from tests.testapp.models import AllTypes

    before = _reset_peak()
    started = time.perf_counter()
    AllTypes.objects.exists()  # the first use of the memory alias: restore at start
    seconds = time.perf_counter() - started
    peak = _status("VmHWM")
    (info,) = api.tables(LABEL)
    with store.raw_connection() as conn:
        table = _table_figures(conn, AllTypes)
    _report(
        **table,
        restore_state=info.restore_state,
        restore_error=info.restore_error,
        seconds=seconds,
        rss_before=before,
        peak=peak,
    )


# -- driving the children, in the test or the benchmark ----------------------------------


@dataclass(frozen=True)
class LargeRun:
    """The figures of one spool child and the restore child after it."""

    spool: dict[str, Any]
    restore: dict[str, Any]

    @property
    def snapshot_bytes(self) -> int:
        return int(self.spool["snapshot_bytes"])

    @property
    def spool_peak(self) -> int:
        """What the spooling process held at its peak beyond Python and Django: the
        table and the spool's own memory."""
        return int(self.spool["peak"] - self.spool["rss_base"])

    @property
    def restore_peak(self) -> int:
        """What the restoring process held at its peak beyond Python and Django: the
        restored table and the restore's own memory."""
        return int(self.restore["peak"] - self.restore["rss_before"])

    @property
    def spool_ratio(self) -> float:
        return self.spool_peak / self.snapshot_bytes

    @property
    def restore_ratio(self) -> float:
        return self.restore_peak / self.snapshot_bytes

    def describe(self) -> str:
        s, r, mib = self.spool, self.restore, MIB
        return (
            f"snapshot {self.snapshot_bytes / mib:.1f} MiB, {s['rows']} rows "
            f"(table {s['table_bytes'] / mib:.1f} MiB, filled in {s['fill_seconds']:.1f} s); "
            f"spool {s['seconds']:.1f} s, peak {self.spool_peak / mib:.1f} MiB = "
            f"{self.spool_ratio:.2f}x (table {(s['rss_before'] - s['rss_base']) / mib:.1f} "
            f"+ spool {(s['peak'] - s['rss_before']) / mib:.1f}); "
            f"restore {r['seconds']:.1f} s, peak {self.restore_peak / mib:.1f} MiB = "
            f"{self.restore_ratio:.2f}x (restored table {r['table_bytes'] / mib:.1f} MiB); "
            f"target < {RATIO_LIMIT}x"
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _child(args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    from tests.children import ROOT, check_quiet, last_json

    proc = subprocess.run(
        [sys.executable, "-m", "tests.live.large_child", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{args[0]}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    check_quiet(proc.stderr)
    return dict(last_json(proc.stdout))


def measure(
    db_name: str, *, mib: float, row_bytes: int = ROW_BYTES, timeout: float = 600
) -> LargeRun:
    """Fill and spool a ``mib`` MiB table in one child, restore it in another."""
    from tests.children import child_env

    env = child_env(db_name)
    spool = _child(["spool", "--mib", str(mib), "--row-bytes", str(row_bytes)], env, timeout)
    restore = _child(["restore"], env, timeout)
    return LargeRun(spool=spool, restore=restore)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    spool = sub.add_parser("spool", help="fill the table and spool it")
    spool.add_argument("--mib", type=float, required=True)
    spool.add_argument("--row-bytes", type=int, default=ROW_BYTES)
    sub.add_parser("restore", help="restore at the first use of the memory alias")
    args = parser.parse_args()
    if args.step == "spool":
        spool_child(args.mib, args.row_bytes)
    else:
        restore_child()


if __name__ == "__main__":
    main()
