"""Durability under SIGKILL, checked write by write across real restarts.

A writer child writes one call at a time and prints a JSON ack line (``flush=True``)
after each call returned; the parent SIGKILLs it at a seeded random moment, then starts
the next writer, which restores at its first use of the memory alias and prints what it
restored before writing on. The parent checks that restored state against the acks it
read (lines already in the pipe when the child died count: their call had returned).

- ``commit`` (guarantee 2): every acknowledged write is there, checked one by one; the
  one write in flight at the kill (its "intent" line printed, no ack) may or may not
  be, and a transaction in flight is there whole or not at all.
- ``interval`` (guarantee 3): the restored writes are a prefix of the acknowledged ones,
  and the lost ones were acknowledged at most ``INTERVAL`` plus one spool's duration
  before the kill, with the allowance ``allowed`` explains; the figures are printed,
  and bench/bench_durability.py runs more kills and prints them beside that bound.

Other tests (tests/test_restart.py) end the writer with ``os._exit`` at a chosen point;
here the kill comes from outside, at a random instant, often in the middle of a spool.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.children import INTERVAL, PRELUDE, ROOT, TIMEOUT, check_quiet, child_env, run

SEED = 20240611

# -- a child whose JSON lines are read as they come ------------------------------------

EMIT = """
import threading
_emit_lock = threading.Lock()

def emit(**data):
    with _emit_lock:
        print(json.dumps(data), flush=True)
"""


class Child:
    """A child process whose JSON stdout lines a thread collects while it runs."""

    def __init__(self, code: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.lines: list[dict[str, Any]] = []
        self.eof = False
        self.cond = threading.Condition()
        with log.open("w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", PRELUDE + EMIT + code],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                data = json.loads(line) if line.startswith("{") else None
            except json.JSONDecodeError:  # a line cut short by the kill: never acked
                data = None
            if data is not None:
                with self.cond:
                    self.lines.append(data)
                    self.cond.notify_all()
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_for(self, predicate: Any, what: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.lines):
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    self.kill()
                    pytest.fail(
                        f"{'the child exited' if self.eof else 'timed out'} before {what}:\n"
                        f"{self.log.read_text()}"
                    )
                self.cond.wait(min(left, 0.5))

    def kill(self) -> float:
        """SIGKILL the child; return the monotonic time just before the signal."""
        killed_at = time.monotonic()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT)
        self.reader.join(timeout=TIMEOUT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return killed_at

    def of(self, key: str) -> list[dict[str, Any]]:
        with self.cond:
            return [line for line in self.lines if key in line]


# -- guarantee 2: commit ---------------------------------------------------------------

# Writes one call at a time to CommitScore (commit by its memdb_policy) and Score
# (commit by MEMDB["POLICY"]) through several write paths, printing an "intent" line
# before and an "ack" line after each call. Values are unique per write, so each update
# is visible as itself. A "block" is one atomic() of four writes on one table.
COMMIT_WRITER = """
import random
from django.db.models import F
MODELS = {{"c": CommitScore, "s": Score}}
rnd, rng = {round}, random.Random({seed})

def state():
    return {{
        k: [list(r) for r in m.objects.order_by("pk").values_list("pk", "player", "points")]
        for k, m in MODELS.items()
    }}

infos = api.tables("testapp.CommitScore", "testapp.Score")
emit(start=state(), restore_state=sorted({{i.restore_state for i in infos}}))
live = {{k: [r[0] for r in rows] for k, rows in state().items()}}

def perform(i, w):
    model = MODELS[w["m"]]
    if w["op"] == "create":
        if i % 2:
            obj = model.objects.create(player=w["player"], points=w["value"])
        else:
            obj = model(player=w["player"], points=w["value"])
            obj.save()
        live[w["m"]].append(obj.pk)
        return {{**w, "pk": obj.pk}}
    pk = w["pk"]
    if w["op"] == "update":
        if i % 3 == 0:
            obj = model.objects.get(pk=pk)
            obj.points = w["value"]
            obj.save()
        elif i % 3 == 1:
            model.objects.filter(pk=pk).update(points=w["value"])
        else:
            model.objects.filter(pk=pk).update(points=F("points") * 0 + w["value"])
    elif i % 2:
        model.objects.filter(pk=pk).delete()
    else:
        model.objects.get(pk=pk).delete()
    if w["op"] == "delete":
        live[w["m"]].remove(pk)
    return w

for i in range({max_ops}):
    m, r = rng.choice("cs"), rng.random()
    kinds = (
        ["create"] if len(live[m]) < 5 or r < 0.4
        else ["update"] if r < 0.7
        else ["delete"] if r < 0.85
        else ["create", "update", "create", "delete"]
    )
    targets = iter(rng.sample(live[m], 2) if kinds != ["create"] else [])
    plan = []
    for j, kind in enumerate(kinds):
        w = {{"m": m, "op": kind}}
        if kind != "delete":
            w["value"] = rnd * 1_000_000 + i * 10 + j
        if kind == "create":
            w["player"] = f"r{{rnd}}-{{i}}-{{j}}"
        else:
            w["pk"] = next(targets)
        plan.append(w)
    emit(intent=i, plan=plan)
    if len(plan) == 1:
        done = [perform(i, plan[0])]
    else:
        with transaction.atomic(using="memdb"):
            done = [perform(i, w) for w in plan]
    emit(ack=i, writes=done)
"""

Key = tuple[str, int]  # (model key, pk)
Row = tuple[str, int]  # (player, points)


def as_state(start: dict[str, list[list[Any]]]) -> dict[Key, Row]:
    return {(m, pk): (player, points) for m, rows in start.items() for pk, player, points in rows}


def apply(state: dict[Key, Row], writes: list[dict[str, Any]]) -> dict[Key, Row]:
    new = dict(state)
    for w in writes:
        key = (w["m"], w["pk"])
        if w["op"] == "create":
            new[key] = (w["player"], w["value"])
        elif w["op"] == "update":
            new[key] = (new[key][0], w["value"])
        else:
            del new[key]
    return new


def check_commit_round(
    before: dict[Key, Row], lines: list[dict[str, Any]], restored: dict[Key, Row]
) -> int:
    """Check each acknowledged write of one killed writer against what was restored.

    ``before`` is what the writer started from. The call in flight at the kill (an
    intent without an ack) may be restored or not, but whole. Returns the number of
    acknowledged writes checked.
    """
    acks = [line for line in lines if "ack" in line]
    acked = {a["ack"] for a in acks}
    pending = [line for line in lines if "intent" in line and line["intent"] not in acked]
    assert len(pending) <= 1, f"more than one call in flight: {pending}"
    expected = before
    for ack in acks:
        expected = apply(expected, ack["writes"])
    outcome, in_flight = "no call in flight", expected
    if pending:
        plan = pending[0]["plan"]
        by_player = {(k[0], row[0]): k[1] for k, row in restored.items()}
        writes = []
        for w in plan:
            if w["op"] == "create":
                # Its pk is known only if it was restored.
                if (w["m"], w["player"]) not in by_player:
                    break
                w = {**w, "pk": by_player[(w["m"], w["player"])]}
            writes.append(w)
        else:
            in_flight = apply(expected, writes)
        if restored == in_flight:
            outcome, expected = f"the call in flight {plan} was restored", in_flight
        else:
            outcome = f"the call in flight {plan} was not restored"
    # One by one: every acked write's effect, unless a later acked write replaced it.
    last: dict[Key, int] = {}
    for ack in acks:
        for w in ack["writes"]:
            last[(w["m"], w["pk"])] = ack["ack"]
    checked = 0
    for ack in acks:
        for w in ack["writes"]:
            key, checked = (w["m"], w["pk"]), checked + 1
            what = f"acknowledged write {ack['ack']} {w} ({outcome})"
            if last[key] != ack["ack"]:
                what += f", later written by acknowledged call {last[key]}"
            if key in expected:
                assert restored.get(key) == expected[key], (
                    f"{what}: expected {expected[key]} after the restart, got {restored.get(key)}"
                )
            else:
                assert key not in restored, f"{what}: deleted, but restored as {restored[key]}"
    extra = {k: v for k, v in restored.items() if k not in expected}
    missing = {k: v for k, v in expected.items() if restored.get(k) != v}
    assert not extra and not missing, (
        f"{outcome}; restored but not written: {extra}; written but not restored: {missing}"
    )
    return checked


def test_commit_policy_every_acknowledged_write_survives_sigkill(
    default_db: str, tmp_path: Path
) -> None:
    """Guarantee 2: writers killed at random moments, each acknowledged write checked.

    Three kill rounds of 70 to 90 acknowledged calls (the exact number and the delay
    before the kill are seeded); the next writer is the restart that restores and
    checks, the last one only reads. At least 200 acknowledged writes are checked.
    """
    env = child_env(default_db, MEMDB_TEST_POLICY="commit")
    run("report(ok=True)\n", env, migrate=True)
    rng = random.Random(SEED)
    rounds, checked, figures = 3, 0, []
    before: dict[Key, Row] = {}
    previous: list[dict[str, Any]] = []
    started = time.monotonic()
    for number in range(rounds + 1):
        last = number == rounds
        code = COMMIT_WRITER.format(
            round=number, seed=SEED + number, max_ops=0 if last else 100_000
        )
        child = Child(code, env, tmp_path / f"commit-{number}.log")
        child.wait_for(lambda lines: any("start" in line for line in lines), "its start line")
        (start,) = child.of("start")
        restored = as_state(start["start"])
        if number:
            assert start["restore_state"] == ["ok"], start
            checked += check_commit_round(before, previous, restored)
        if last:
            assert child.proc.wait(timeout=TIMEOUT) == 0, child.log.read_text()
            child.reader.join(TIMEOUT)
            check_quiet(child.log.read_text())
            break
        kill_after = rng.randint(70, 90)
        child.wait_for(
            lambda lines, n=kill_after: sum("ack" in line for line in lines) >= n,
            f"{kill_after} acks",
        )
        time.sleep(rng.uniform(0, 0.01))
        child.kill()
        check_quiet(child.log.read_text())
        figures.append(len(child.of("ack")))
        before, previous = restored, list(child.lines)
    elapsed = time.monotonic() - started
    print(
        f"commit: {checked} acknowledged writes checked over {rounds} kills, "
        f"acks per kill {figures}, {elapsed:.1f} s"
    )
    assert checked >= 200


# -- guarantee 3: interval -------------------------------------------------------------

# Fills IntervalScore once (spooled before the writes start), prints the writes of
# earlier rounds it restored, then writes one row per call, printing an ack with the
# time the call returned, a line when a spool of the table begins (pre_spool, before it
# reads the table) and one after it with its duration.
# A "busy" writer holds each write's transaction open for two milliseconds of work.
INTERVAL_WRITER = """
from memdb import signals
rnd, fill, pause, busy = {round}, {fill}, {pause}, {busy}

def spooling(sender, label, **kwargs):
    if label == "testapp.IntervalScore":
        emit(began=time.monotonic())

def spooled(sender, label, result, **kwargs):
    if label == "testapp.IntervalScore" and not result.unchanged:
        emit(spool=result.milliseconds / 1000, t=time.monotonic())

signals.pre_spool.connect(spooling, weak=False)
signals.post_spool.connect(spooled, weak=False)
rows = IntervalScore.objects.count()
(info,) = api.tables("testapp.IntervalScore")
if fill and not rows:
    IntervalScore.objects.bulk_create(
        IntervalScore(player=f"fill-{{n}}", points=n) for n in range(fill)
    )
    api.spool("testapp.IntervalScore")
kept = IntervalScore.objects.filter(player__startswith="w").order_by("pk")
emit(start=list(kept.values_list("player", flat=True)), rows=rows,
     restore_state=info.restore_state)
for i in range({max_ops}):
    if busy:
        with transaction.atomic(using="memdb"):
            IntervalScore.objects.create(player=f"w{{rnd}}-{{i}}", points=i)
            time.sleep(0.002)
    else:
        IntervalScore.objects.create(player=f"w{{rnd}}-{{i}}", points=i)
    emit(ack=i, t=time.monotonic())
    if pause:
        time.sleep(pause)
"""


@dataclass
class Kill:
    """One interval writer killed: what it acknowledged and what the next start restored."""

    acked: int
    kept: int
    #: Seconds from the oldest lost write's ack to the kill (0 when nothing was lost).
    window: float
    #: Slowest spool of the table the writer reported before the kill, in seconds.
    spool: float
    #: The longest loss a kill at the worst instant of this writer's run would have
    #: caused, from its spools' times: up to the end of each spool, since the start of
    #: the one before (the writes it read last are at most that old).
    worst: float
    #: Rows of the table at the restart.
    rows: int
    #: Seconds from the first ack to the kill.
    ran: float
    #: Spools of the table in that time.
    spools: int
    #: Spools of the table that began after the first ack and ended before the kill:
    #: each of them stored some of this writer's writes.
    full_spools: int


def worst_window(first_ack: float, spools: list[dict[str, Any]], killed: float) -> float:
    spools = [s for s in spools if s["t"] > first_ack]
    if not spools:
        return killed - first_ack
    starts = [s["t"] - s["spool"] for s in spools]
    worst = spools[0]["t"] - first_ack
    for start, after in zip(starts, spools[1:]):
        worst = max(worst, after["t"] - start)
    return max(worst, killed - starts[-1])


def full_spools(lines: list[dict[str, Any]], since: float) -> int:
    """Spools (a ``began`` line, then its ``spool`` line) that began after ``since``."""
    began, count = None, 0
    for line in lines:
        if "began" in line:
            began = line["began"]
        elif "spool" in line and began is not None:
            count, began = count + (began > since), None
    return count


def interval_kills(
    env: dict[str, str],
    logs: Path,
    *,
    kills: int,
    fill: int,
    seed: int,
    pause: float = 0.002,
    busy: bool = False,
    run_for: tuple[float, float] = (0.6, 1.2),
) -> list[Kill]:
    """``kills`` interval writers, each SIGKILLed after a seeded random time of writing,
    or once a spool that began after its first write has ended, whichever is later.

    The database must be migrated and hold no IntervalScore rows. Each restart checks
    that the restored writes of the killed writer are a prefix of those it
    acknowledged (plus perhaps the one in flight) and that earlier rounds' rows are all
    there. Also used by bench/bench_durability.py.
    """
    rng = random.Random(seed)
    results: list[Kill] = []
    previous: dict[str, Any] = {}
    kept_before: list[str] = []
    for number in range(kills + 1):
        last = number == kills
        code = INTERVAL_WRITER.format(
            round=number, fill=fill, pause=pause, busy=busy, max_ops=0 if last else 10**8
        )
        child = Child(code, env, logs / f"interval-{number}.log")
        child.wait_for(lambda lines: any("start" in line for line in lines), "its start line")
        (start,) = child.of("start")
        if number:
            restored = start["start"]
            # "none": no spool at all yet, so nothing to restore.
            assert start["restore_state"] == "ok" or not (restored or kept_before or fill), start
            assert restored[: len(kept_before)] == kept_before, "rows of an earlier writer lost"
            mine = restored[len(kept_before) :]
            acks = previous["acks"]
            written = [f"w{number - 1}-{n}" for n in range(len(acks) + 1)]
            assert mine == written[: len(mine)], (
                f"the restored writes are not a prefix of the acknowledged ones (and the one "
                f"in flight): ...{mine[-3:]}, acknowledged ...{written[-4:-1]}"
            )
            lost = acks[len(mine) :]
            spools = [line for line in previous["lines"] if "spool" in line]
            results.append(
                Kill(
                    acked=len(acks),
                    kept=min(len(mine), len(acks)),
                    window=previous["killed"] - lost[0]["t"] if lost else 0.0,
                    spool=max((s["spool"] for s in spools), default=0.0),
                    worst=worst_window(acks[0]["t"], spools, previous["killed"]),
                    rows=start["rows"],
                    ran=previous["killed"] - acks[0]["t"],
                    spools=sum(s["t"] > acks[0]["t"] for s in spools),
                    full_spools=full_spools(previous["lines"], acks[0]["t"]),
                )
            )
            kept_before = restored
        if last:
            assert child.proc.wait(timeout=TIMEOUT) == 0, child.log.read_text()
            child.reader.join(TIMEOUT)
            check_quiet(child.log.read_text())
            break
        child.wait_for(lambda lines: any("ack" in line for line in lines), "its first write")
        kill_at = time.monotonic() + rng.uniform(*run_for)
        # Never before a spool of its own writes has ended: a kill before that loses
        # everything it wrote, which says nothing of the interval (on a slow day the
        # server store's first spool of a large table outlasts the whole run).
        first = child.of("ack")[0]["t"]
        child.wait_for(lambda lines, t=first: full_spools(lines, t) > 0, "a spool of its writes")
        time.sleep(max(0.0, kill_at - time.monotonic()))
        killed = child.kill()
        check_quiet(child.log.read_text())
        previous = {
            "acks": child.of("ack"),
            "lines": list(child.lines),
            "killed": killed,
        }
    return results


#: Scheduling delays allowed on top: two CPUs shared by the writer, its spooler thread,
#: the parent and whatever else the machine runs.
NOISE = 0.25


def allowed(kill: Kill) -> float:
    """The loss the interval policy may cause, generously (see the test's docstring)."""
    return INTERVAL + 2 * kill.spool + NOISE


def describe(kills: list[Kill]) -> str:
    windows = [k.window for k in kills]
    return (
        f"INTERVAL {INTERVAL} s, {kills[-1].rows} rows at the last restart, "
        f"{len(kills)} kills: "
        f"loss windows {', '.join(f'{w:.3f}' for w in windows)} s "
        f"(median {statistics.median(windows):.3f}); worst instants "
        f"{', '.join(f'{k.worst:.3f}' for k in kills)} s; slowest spools "
        f"{', '.join(f'{k.spool:.3f}' for k in kills)} s; allowed "
        f"{', '.join(f'{allowed(k):.3f}' for k in kills)} s; acked/kept "
        f"{[(k.acked, k.kept) for k in kills]}"
    )


@pytest.mark.parametrize("fill", [0, 50_000], ids=["small", "large"])
def test_interval_policy_loses_at_most_an_interval_and_a_spool(
    default_db: str, tmp_path: Path, fill: int
) -> None:
    """Guarantee 3: a steady writer (one create every 2 ms) killed at random moments,
    each after a spool of its own writes has ended.

    Each kill's loss window (from the oldest lost write's ack to the kill), and the
    worst one a kill could have caused at any instant of the run, stay within
    ``allowed``: ``INTERVAL`` plus a spool (the guarantee), plus one more spool (a
    write that just missed the read of a spool in progress waits for it to end, then
    for the interval and the next spool), plus ``NOISE``. The figures are printed;
    bench/bench_durability.py prints more kills beside INTERVAL plus one spool.
    """
    env = child_env(default_db)
    run("report(ok=True)\n", env, migrate=True)
    started = time.monotonic()
    kills = interval_kills(env, tmp_path, kills=2, fill=fill, seed=SEED + fill)
    print(f"interval, {describe(kills)}; {time.monotonic() - started:.1f} s")
    for number, kill in enumerate(kills):
        # Each writer ran until a spool that began after its first write had ended.
        assert kill.full_spools and kill.kept, f"kill {number}: {describe(kills)}"
        limit = allowed(kill)
        assert kill.window <= limit, (
            f"kill {number}: lost writes acknowledged {kill.window:.3f} s before the kill "
            f"(allowed {limit:.3f} s)"
        )
        assert kill.worst <= limit, (
            f"writer {number}: a kill at the worst instant would have lost {kill.worst:.3f} s "
            f"of writes (allowed {limit:.3f} s)"
        )


def test_interval_policy_busy_writer_loses_at_most_an_interval_and_a_spool(
    default_db: str, tmp_path: Path
) -> None:
    """Guarantee 3 with a busy writer: back-to-back transactions of a create and two
    milliseconds of work, with the same allowance as the steady writer's test.

    Regression: SQLite's shared cache keeps no queue of lock waiters, and the interval
    spooler, finding the table locked at almost every tick, skipped it; the loss grew
    to many intervals (1.3 to 2.5 s here, with nothing stored at all in some runs)."""
    env = child_env(default_db)
    run("report(ok=True)\n", env, migrate=True)
    kills = interval_kills(
        env, tmp_path, kills=1, fill=0, seed=SEED, pause=0.0, busy=True, run_for=(2.5, 2.5)
    )
    print(f"interval, busy writer, {describe(kills)}")
    (kill,) = kills
    assert kill.worst <= allowed(kill), (
        f"a kill at the worst instant would have lost {kill.worst:.3f} s of writes "
        f"(allowed {allowed(kill):.3f} s); this kill lost {kill.window:.3f} s"
    )
