"""A large table spools and restores on the default database within a memory bound.

Issue 6, guarantee 7, at a size CI can afford: ``MEMDB_LARGE_MB`` MiB (default 64, above
MariaDB's 16 MiB ``max_allowed_packet``, so one snapshot must span several rows). One
child process fills ``testapp.AllTypes`` with random bytes and spools it, a second one
restores it at start-up (tests/live/large_child.py); both measure their peak resident
memory. bench/bench_large.py runs the same at 500 MiB on each database.
"""

from __future__ import annotations

import os

import pytest

from tests.live.large_child import MIB, RATIO_LIMIT, measure

SIZE_MIB = float(os.environ.get("MEMDB_LARGE_MB", "64"))


@pytest.mark.sqlite_store  # measures the SQLite memory database's own pages
def test_large_table_round_trips_with_peak_memory_under_the_bound(default_db: str) -> None:
    run = measure(default_db, mib=SIZE_MIB)
    print(run.describe())
    spooled, restored = run.spool, run.restore

    assert run.snapshot_bytes >= SIZE_MIB * MIB, run.describe()
    assert spooled["spooled_rows"] == spooled["rows"] > SIZE_MIB * MIB / 2000
    assert restored["restore_state"] == "ok", restored["restore_error"]
    assert restored["rows"] == spooled["rows"]
    assert restored["payload_bytes"] == spooled["payload_bytes"]
    assert restored["checksum"] == spooled["checksum"], "same rows, different values"

    assert run.spool_ratio < RATIO_LIMIT, run.describe()
    assert run.restore_ratio < RATIO_LIMIT, run.describe()
