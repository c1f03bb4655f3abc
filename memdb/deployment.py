"""Does this process look like one of several workers of one server?

The process store (the only one so far) is private to one process: under a pre-forking
server with several workers (gunicorn, uWSGI) each worker has its own copy of every
memory table. ``api.tables()`` and ``GET /memdb/tables`` say so, and so does the log at
start-up. Two signs count, read on each call (they are cheap):

- sibling workers: other processes with the same parent and the same command line as
  this one (how a pre-forking server's workers look; Linux ``/proc``);
- ``WEB_CONCURRENCY`` above 1 (gunicorn's default worker count, set by many hosts; a
  one-off ``manage.py`` command run with it set says so too).

A server running as PID 1 (in a container) counts the same: its workers' parent is 1.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def _command_line(pid: int | str) -> bytes | None:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None


def _parent_of(pid: str) -> int | None:
    try:
        stat = (PROC / pid / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def sibling_workers() -> int:
    """How many processes (this one included) share this one's parent and command line;
    1 where ``/proc`` cannot tell."""
    me = _command_line(os.getpid())
    parent = os.getppid()
    if me is None:
        return 1
    count = 0
    for entry in PROC.iterdir():
        if entry.name.isdigit() and _parent_of(entry.name) == parent:
            if _command_line(entry.name) == me:
                count += 1
    return max(count, 1)


def worker_count() -> int:
    """The number of worker processes this one seems to be one of."""
    try:
        concurrency = int(os.environ.get("WEB_CONCURRENCY", "") or 1)
    except ValueError:
        concurrency = 1
    return max(sibling_workers(), concurrency)


def process_store_warning() -> str | None:
    """The warning for a process store in a multi-process deployment, or None."""
    workers = worker_count()
    if workers <= 1:
        return None
    return (
        f"this process looks like one of {workers} worker processes (pid {os.getpid()}, "
        f"parent {os.getppid()}): with the 'process' store each worker has its own copy "
        f"of every memory table, they do not see each other's writes, and spools of the "
        f"same table conflict. Serve with one process and threads (e.g. gunicorn "
        f"--workers 1 --threads 8), or use MEMDB['STORE'] = 'host'; see the README, "
        f"'Stores: one process, one host, or every host'"
    )
