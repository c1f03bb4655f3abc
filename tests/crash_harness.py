"""SIGKILL at random points of spools and restores, then check what the next process finds.

Shared by ``tests/test_crash.py`` (bounded, in CI on every database) and
``bench/bench_crash.py`` (longer runs). The children are ``tests/live/crash_child.py``;
its docstring describes the table's *versions* and the events a child prints.

``Launcher`` starts children: forked from a zygote that has set Django up (as gunicorn
``--preload`` does; each child still opens the default database and builds and restores
its memory database from nothing), or, with ``fresh=True``, as a new interpreter.

``spool_crashes`` (guarantee 1 of issue 6): each child restores, then rewrites the table
to the next version and spools it, again and again, until the parent SIGKILLs it at a
random moment (seeded): mostly timed from the start of a spool, or of its first query on
the default database, over about one spool's duration, sometimes anywhere in the cycle.
The next child must restore exactly one complete version, the last one whose spool
returned before the kill or the one whose spool was under way, and the stored snapshot
must never go missing once one was complete.

``restore_kills`` (guarantee 5): a large snapshot is stored; children are SIGKILLed
while their start-up restore runs, spread over its measured duration; after each kill
the stored snapshot's generation, checksum, row count and size must be unchanged, and a
last child must restore it whole.
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.children import ROOT, TIMEOUT, child_env, run

CHILD = ROOT / "tests" / "live" / "crash_child.py"

#: Where a kill landed, from the last event the child printed before it.
PHASES = {
    None: "start-up and restore",
    "ready": "rewriting the table between spools",
    "spooled": "rewriting the table between spools",
    "spool": "spool: before the default database (reading the table)",
    "write": "spool: on the default database",
}
IN_SPOOL = ("spool", "write")


class HarnessError(AssertionError):
    """A child did not behave as the protocol says (timed out, died on its own, ...)."""


@dataclass
class Event:
    ev: str
    at: float  # time.monotonic() when the parent read it
    data: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


class Child:
    """One child process: its events as they arrive, and its end."""

    def __init__(self, pid: int, fresh: bool) -> None:
        self.pid = pid
        self.fresh = fresh
        self.events: list[Event] = []
        self.status: int | None = None
        self.cond = threading.Condition()

    def add(self, event: Event) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def ended(self, status: int) -> None:
        with self.cond:
            self.status = status
            self.cond.notify_all()

    def wait_for(self, ev: str, nth: int = 1, timeout: float = TIMEOUT) -> Event:
        """The ``nth`` event named ``ev``, waiting for it."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [e for e in self.events if e.ev == ev]
                if len(found) >= nth:
                    return found[nth - 1]
                if self.status is not None:
                    raise HarnessError(
                        f"child {self.pid} exited ({self.status}) before {ev!r} #{nth}; "
                        f"it said {[e.ev for e in self.events]}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError(f"child {self.pid}: no {ev!r} #{nth} within {timeout} s")
                self.cond.wait(left)

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.status is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError(f"child {self.pid} did not end within {timeout} s")
                self.cond.wait(left)
            return self.status

    def kill(self) -> list[Event]:
        """SIGKILL it; return everything it printed before it died."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it ended by itself: its status says how
        return self.killed()

    def killed(self) -> list[Event]:
        """Wait until it dies of SIGKILL; return everything it printed before."""
        status = self.wait_exit()
        if status != -signal.SIGKILL:
            raise HarnessError(f"child {self.pid} ended with {status}, not by a SIGKILL")
        return list(self.events)

    def finish(self) -> list[Event]:
        """Wait for a child that ends by itself, which must succeed."""
        status = self.wait_exit()
        if status != 0:
            raise HarnessError(f"child {self.pid} failed (exit {status}); see its stderr")
        return list(self.events)


def _parse(line: str) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "ev" in data and "pid" in data else None


class Launcher:
    """Starts children on one default database; their stderr goes to ``log``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.stderr = open(log, "ab")  # noqa: SIM115 - closed in close()
        self.children: dict[int, Child] = {}
        self.forks: list[int] = []
        self.lock = threading.Condition()
        self.zygote = subprocess.Popen(
            [sys.executable, str(CHILD), "zygote"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            bufsize=1,
        )
        self.reader = threading.Thread(target=self._read_zygote, daemon=True)
        self.reader.start()

    def _child(self, pid: int, fresh: bool = False) -> Child:
        with self.lock:
            child = self.children.get(pid)
            if child is None:
                child = self.children[pid] = Child(pid, fresh)
            return child

    def _read_zygote(self) -> None:
        assert self.zygote.stdout is not None
        for line in self.zygote.stdout:
            data = _parse(line)
            if data is None:
                continue
            at = time.monotonic()
            if data["ev"] == "forked":
                with self.lock:
                    self.forks.append(data["child"])
                    self.lock.notify_all()
            elif data["ev"] == "exit":
                self._child(data["child"]).ended(data["status"])
            else:
                self._child(data["pid"]).add(Event(data["ev"], at, data))

    def start(self, command: dict[str, Any], *, fresh: bool = False) -> Child:
        """Start one child running ``command`` (see ``crash_child``); one at a time."""
        if fresh:
            proc = subprocess.Popen(
                [sys.executable, str(CHILD), "run", json.dumps(command)],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self.stderr,
                text=True,
                bufsize=1,
            )
            child = self._child(proc.pid, fresh=True)

            def read() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:
                    data = _parse(line)
                    if data is not None:
                        child.add(Event(data["ev"], time.monotonic(), data))
                child.ended(proc.wait())

            threading.Thread(target=read, daemon=True).start()
            return child
        if self.zygote.poll() is not None:
            raise HarnessError(f"the zygote exited ({self.zygote.returncode}); see {self.log}")
        assert self.zygote.stdin is not None
        with self.lock:
            seen = len(self.forks)
            self.zygote.stdin.write(json.dumps(command) + "\n")
            self.zygote.stdin.flush()
            if not self.lock.wait_for(lambda: len(self.forks) > seen, TIMEOUT):
                raise HarnessError(f"the zygote forked no child within {TIMEOUT} s")
            pid = self.forks[seen]
        return self._child(pid)

    def stderr_problems(self, context: int = 40) -> str:
        """'' if the children's stderr holds no traceback and no memdb message; else a
        line that says how many it holds, and the first one with ``context`` lines after
        it (the whole log can be megabytes: it is in ``self.log``)."""
        self.stderr.flush()
        lines = self.log.read_text(errors="replace").splitlines()
        hits = [n for n, line in enumerate(lines) if "Traceback" in line or "memdb:" in line]
        if not hits:
            return ""
        first = "\n".join(lines[hits[0] : hits[0] + context])
        return (
            f"the children's stderr ({self.log}) holds {len(hits)} lines with a traceback "
            f"or a memdb message; the first, at line {hits[0] + 1}:\n{first}"
        )

    def close(self) -> None:
        if self.zygote.stdin is not None and not self.zygote.stdin.closed:
            self.zygote.stdin.close()
        try:
            self.zygote.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.zygote.kill()
            self.zygote.wait(timeout=TIMEOUT)
        self.reader.join(timeout=TIMEOUT)
        self.stderr.close()


@contextmanager
def launcher(db_name: str, log: Path, **env: str) -> Iterator[Launcher]:
    """Migrate the default database ``db_name``, then start children on it."""
    child_environment = child_env(db_name, **env)
    run("report(migrated=True)\n", child_environment, migrate=True)
    started = Launcher(child_environment, log)
    try:
        yield started
    finally:
        started.close()


def rows_of(version: int, base: int, step: int) -> int:
    """Rows of a version of the table (as ``crash_child.rows_of``)."""
    return 0 if version == 0 else base + step * version


def _sleep_until(moment: float) -> None:
    left = moment - time.monotonic()
    if left > 0:
        time.sleep(left)


# -- guarantee 1: SIGKILL during spools -----------------------------------------------


@dataclass
class SpoolCrashReport:
    base: int
    step: int
    seed: int
    kills: int = 0
    fresh_kills: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    #: Kills after a spool had started and before it returned: was its snapshot there?
    in_flight_committed: int = 0
    in_flight_lost: int = 0
    spools: int = 0
    spool_ms: list[float] = field(default_factory=list)
    restored: list[int] = field(default_factory=list)
    last_version: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def in_spool(self) -> int:
        return sum(self.phases[PHASES[p]] for p in IN_SPOOL)

    @property
    def on_default_db(self) -> int:
        return self.phases[PHASES["write"]]

    def lines(self) -> list[str]:
        ms = sorted(self.spool_ms) or [0.0]
        out = [
            f"table: rows(v) = {self.base} + {self.step} * v; seed {self.seed}",
            f"kills: {self.kills} ({self.fresh_kills} of them of a fresh interpreter, the rest "
            f"forked from a zygote) in {self.seconds:.1f} s",
            f"completed spools: {self.spools}, median {statistics.median(ms):.1f} ms, "
            f"max {ms[-1]:.1f} ms",
            "where the kills landed:",
        ]
        for phase in dict.fromkeys(PHASES.values()):
            out.append(f"  {self.phases[phase]:5d}  {phase}")
        out += [
            f"kills inside a spool: {self.in_spool} ({self.on_default_db} while it was on the "
            f"default database)",
            f"  the interrupted spool's snapshot was found by the next process: "
            f"{self.in_flight_committed}; the previous one was: {self.in_flight_lost}",
            f"versions restored: {len(self.restored)}, distinct {len(set(self.restored))}, "
            f"last {self.last_version} ({rows_of(self.last_version, self.base, self.step)} rows)",
            f"failures: {len(self.failures)}",
        ]
        out += [f"  {failure}" for failure in self.failures]
        return out


def _restored_version(ready: Event, base: int, step: int) -> tuple[int, str | None]:
    """The version the table holds, and what is wrong with it (None: a complete version)."""
    count = ready["count"]
    if count == 0:
        return 0, None
    low, high = ready["min_version"], ready["max_version"]
    if low != high:
        return high, f"torn: rows of versions {low} to {high} mixed ({count} rows)"
    problems = []
    if ready["bad_players"]:
        problems.append(f"{ready['bad_players']} rows with a wrong player")
    expected = rows_of(high, base, step)
    if count != expected or ready["min_id"] != 1 or ready["max_id"] != expected:
        problems.append(
            f"{count} rows with ids {ready['min_id']}..{ready['max_id']}, "
            f"version {high} has ids 1..{expected}"
        )
    return high, ("torn: " + "; ".join(problems)) if problems else None


class SpoolCrashes:
    """Follows what the children spooled and checks what each new one restores."""

    def __init__(self, report: SpoolCrashReport) -> None:
        self.report = report
        self.confirmed = 0  # the last version whose spool returned
        self.in_flight: int | None = None  # a version whose spool started and did not return
        self.ever_stored = False
        self.starts = 0
        # Durations the children measured, to aim the kills.
        self.spool_s: list[float] = []
        self.write_s: list[float] = []
        self.cycle_s: list[float] = []

    def check_ready(self, ready: Event) -> None:
        """What a new child restored: exactly one complete version, the right one."""
        report = self.report
        version, torn = _restored_version(ready, report.base, report.step)
        where = f"start {self.starts} (after {report.kills} kills): restored version {version}"
        if torn:
            report.failures.append(f"{where}: {torn}")
        allowed = {self.confirmed} | ({self.in_flight} if self.in_flight is not None else set())
        if version not in allowed:
            report.failures.append(
                f"{where}, expected {' or '.join(map(str, sorted(allowed)))} (the last spool "
                f"that returned was version {self.confirmed})"
            )
        least = rows_of(self.confirmed, report.base, report.step)
        if ready["count"] < least:
            report.failures.append(
                f"{where}: {ready['count']} rows, fewer than the {least} rows of version "
                f"{self.confirmed}, whose spool returned last"
            )
        if self.ever_stored and ready["restore_state"] != "ok":
            report.failures.append(
                f"{where}: restore state {ready['restore_state']!r} "
                f"({ready['restore_error']}): the stored snapshot went missing or broke"
            )
        elif version and ready["generation"] != version:
            report.failures.append(f"{where}: generation {ready['generation']}")
        if self.in_flight is not None:
            if version == self.in_flight:
                report.in_flight_committed += 1
            else:
                report.in_flight_lost += 1
        report.restored.append(version)
        report.last_version = version
        self.confirmed = max(self.confirmed, version)
        self.in_flight = None
        self.ever_stored = self.ever_stored or version > 0

    def absorb(self, events: list[Event]) -> None:
        """Everything one child printed before it died."""
        self.starts += 1
        ready = next((e for e in events if e.ev == "ready"), None)
        if ready is None:
            return  # killed while restoring: the next child must find the same
        self.check_ready(ready)
        report = self.report
        spools = [e for e in events if e.ev == "spool"]
        done = {e["v"]: e for e in events if e.ev == "spooled"}
        for event in done.values():
            report.spools += 1
            report.spool_ms.append(event["ms"])
            self.spool_s.append(event["ms"] / 1000)
            if event["rows"] != rows_of(event["v"], report.base, report.step) or (
                event["generation"] != event["v"]
            ):
                report.failures.append(
                    f"start {self.starts}: the spool of version {event['v']} says "
                    f"{event['rows']} rows, generation {event['generation']}"
                )
            self.confirmed = event["v"]
            self.ever_stored = True
        for write in (e for e in events if e.ev == "write"):
            if write["v"] in done:
                self.write_s.append(done[write["v"]]["t"] - write["t"])
        for first, second in zip(spools, spools[1:]):
            self.cycle_s.append(second["t"] - first["t"])
        if spools and spools[-1]["v"] not in done:
            self.in_flight = spools[-1]["v"]

    def aim(self, child: Child, rng: random.Random) -> float:
        """When to kill ``child``: mostly within a spool, sometimes anywhere in the cycle."""
        spool = statistics.median(self.spool_s) if self.spool_s else 0.05
        write = statistics.median(self.write_s) if self.write_s else spool / 2
        cycle = statistics.median(self.cycle_s) if self.cycle_s else 3 * spool
        pick, nth = rng.random(), rng.randint(1, 2)
        if pick < 0.6:
            return child.wait_for("spool", nth).at + rng.uniform(0, 1.25 * spool)
        if pick < 0.8:
            return child.wait_for("write", nth).at + rng.uniform(0, 1.25 * write)
        return child.wait_for("ready").at + rng.uniform(0, 2.5 * cycle)


def spool_crashes(
    start: Launcher,
    *,
    kills: int,
    seed: int,
    base: int,
    step: int,
    fresh_every: int = 0,
    progress: Callable[[str], None] | None = None,
) -> SpoolCrashReport:
    """SIGKILL ``kills`` spooler children at random moments; see the module docstring.

    Every ``fresh_every``-th child is a new interpreter (0: none). The report's
    ``failures`` list every broken promise; protocol trouble raises ``HarnessError``.
    """
    rng = random.Random(seed)
    report = SpoolCrashReport(base=base, step=step, seed=seed)
    crashes = SpoolCrashes(report)
    began = time.monotonic()
    command = {"role": "spooler", "base": base, "step": step}
    for number in range(1, kills + 1):
        fresh = bool(fresh_every) and number % fresh_every == 0
        child = start.start(command, fresh=fresh)
        _sleep_until(crashes.aim(child, rng))
        events = child.kill()
        report.kills += 1
        report.fresh_kills += fresh
        printed = [e for e in events if e.ev in PHASES]
        report.phases[PHASES[printed[-1].ev if printed else None]] += 1
        crashes.absorb(events)
        if progress and number % 10 == 0:
            progress(f"{number}/{kills} kills, {time.monotonic() - began:.1f} s")
    # One more start, killed by nobody: it must restore what the last kill left.
    crashes.absorb(start.start({**command, "spools": 1}).finish())
    report.seconds = time.monotonic() - began
    return report


def sabotaged_spools(start: Launcher, sabotage: str, *, base: int = 1000) -> SpoolCrashReport:
    """The checks of ``spool_crashes`` against a child that breaks the promise on purpose.

    The child spools once, then replaces its snapshot the wrong way and SIGKILLs itself
    half way (``crash_child`` ``sabotage``): the report's failures must say so.
    """
    report = SpoolCrashReport(base=base, step=1, seed=0)
    crashes = SpoolCrashes(report)
    command = {"role": "spooler", "base": base, "step": 1, "sabotage": sabotage}
    events = start.start(command).killed()
    report.kills += 1
    crashes.absorb(events)
    crashes.absorb(start.start({**command, "sabotage": None, "spools": 1}).finish())
    return report


# -- guarantee 5: SIGKILL during the restore at start-up ------------------------------

RESTORE_PHASES = {
    "start": "start-up, before the default database",
    "query": "reading PersistentStorage, before pre_restore",
    "pre_restore": "restoring: from pre_restore (fetch, verify, decode, load)",
    "post_restore": "after post_restore, before the first query returned",
}


@dataclass
class RestoreKillReport:
    rows: int
    seed: int
    snapshot: dict[str, Any] = field(default_factory=dict)
    restore_ms: float = 0.0
    kills: int = 0
    fresh_kills: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def mid_restore(self) -> int:
        return sum(self.phases[p] for p in RESTORE_PHASES.values())

    def lines(self) -> list[str]:
        snap = self.snapshot
        out = [
            f"snapshot: {self.rows} rows, {snap.get('size', 0)} bytes, generation "
            f"{snap.get('generation')}; an uninterrupted restore took {self.restore_ms:.0f} ms "
            f"(from the child's start to post_restore); seed {self.seed}",
            f"kills: {self.kills} ({self.fresh_kills} of a fresh interpreter) in "
            f"{self.seconds:.1f} s; where they landed:",
        ]
        for phase in [*RESTORE_PHASES.values(), "after the restore"]:
            out.append(f"  {self.phases[phase]:5d}  {phase}")
        out.append(f"failures: {len(self.failures)}")
        out += [f"  {failure}" for failure in self.failures]
        return out


def _stored(start: Launcher) -> list[dict[str, Any]]:
    """The stored snapshot rows of the table (generation, checksum, row_count, size)."""
    events = start.start({"role": "meta"}).finish()
    meta = next(e for e in events if e.ev == "meta")
    if meta["memory_opened"]:
        raise HarnessError("reading PersistentStorage opened the memory database")
    return meta["snapshots"]


class RestoreKills:
    """A stored snapshot, and checks that restoring children leave it as it is."""

    def __init__(self, start: Launcher, report: RestoreKillReport) -> None:
        self.start = start
        self.report = report
        command = {"role": "spooler", "base": report.rows, "step": 0, "spools": 1}
        seeded = start.start(command).finish()
        self.version = next(e for e in seeded if e.ev == "done")["v"]
        (self.before,) = _stored(start)
        report.snapshot = self.before

    def check_stored(self, what: str) -> None:
        after = _stored(self.start)
        if after != [self.before]:
            self.report.failures.append(f"{what}: stored {after}, before {self.before}")

    def check_whole(self, child: Child, what: str) -> None:
        restored = child.wait_for("restored")
        found, torn = _restored_version(restored, self.report.rows, 0)
        if torn or found != self.version or restored["restore_state"] != "ok":
            self.report.failures.append(
                f"{what}: restored version {found} ({torn or 'complete'}), state "
                f"{restored['restore_state']!r} {restored['restore_error'] or ''}; "
                f"expected version {self.version} whole"
            )


def restore_kills(
    start: Launcher, *, kills: int, seed: int, rows: int, hold: float = 0.0
) -> RestoreKillReport:
    """Store a ``rows``-row snapshot, SIGKILL ``kills`` restoring children; see the docstring.

    The kills are spread evenly (with seeded jitter) over the measured duration of one
    uninterrupted restore (from the child's first line to ``post_restore``); every other
    child is a new interpreter. ``hold`` keeps the last child up that long after its
    restore (longer than ``INTERVAL`` shows that an
    interval spooler finds nothing to spool).
    """
    rng = random.Random(seed)
    report = RestoreKillReport(rows=rows, seed=seed)
    began = time.monotonic()
    checks = RestoreKills(start, report)

    measured = start.start({"role": "restorer"})
    measured.finish()
    duration = measured.wait_for("post_restore").at - measured.wait_for("start").at
    report.restore_ms = duration * 1000
    checks.check_whole(measured, "the uninterrupted restore")

    for number in range(kills):
        fresh = number % 2 == 1
        child = start.start({"role": "restorer", "hold": TIMEOUT}, fresh=fresh)
        begun = child.wait_for("start")
        _sleep_until(begun.at + duration * (number + rng.random()) / kills)
        phase = RESTORE_PHASES.get(child.kill()[-1].ev, "after the restore")
        report.kills += 1
        report.fresh_kills += fresh
        report.phases[phase] += 1
        checks.check_stored(f"kill {number + 1} ({phase})")

    last = start.start({"role": "restorer", "hold": hold})
    events = last.finish()
    checks.check_whole(last, "the restore after the kills")
    held = next((e for e in events if e.ev == "held"), None)
    if held is not None and held["generation"] != checks.before["generation"]:
        report.failures.append(f"a spool ran after the restore: {events[-1].data}")
    checks.check_stored("after the last restore")
    report.seconds = time.monotonic() - began
    return report


def sabotaged_restore(start: Launcher, *, rows: int = 1000) -> RestoreKillReport:
    """The checks of ``restore_kills`` against a child that shrinks the snapshot, as 0.0.6 did."""
    report = RestoreKillReport(rows=rows, seed=0)
    checks = RestoreKills(start, report)
    start.start({"role": "restorer", "sabotage": True}).killed()
    report.kills += 1
    checks.check_stored("after the sabotaged restore")
    last = start.start({"role": "restorer"})
    last.finish()
    checks.check_whole(last, "the restore after it")
    return report
