"""Guarantee 4: every stored snapshot is consistent while threads write and spools run.

Writer threads run transactions on ``Score`` (``transaction.atomic(using="memdb")``):

- a *transfer* moves points from one account row to another;
- an *insert* takes points from an account and spreads them over 2 to 5 new rows tagged
  ``t<txn>/<rows>``, so each such row says how many rows its transaction wrote;
- a *delete* removes every row of an earlier insert and gives their points back.

Every transaction keeps the sum of all points constant, and a snapshot holding part of
one breaks the sum or a tag's row count. Meanwhile a spooler thread alternates
``api.spool(force=True)`` and ``api.flush()``.

How every stored snapshot is read, without knowing how snapshots are stored: a checker
child process, started on the same default database, waits on its stdin; after each
spool that wrote a snapshot, the spooler thread asks it to ``api.restore()`` the table
and print the rows and the generation it restored, and spools again only once it has
answered. So the checker restores exactly the snapshot just written (``Score`` has the
``manual`` policy: nothing else spools it), and the generations it reports must be
every one from the first to the last. The writers never wait for the checker.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from django.db import connections, transaction
from django.db.models import F, Sum

from memdb import api
from tests.children import PRELUDE, TIMEOUT, check_quiet, child_env, end_process, start_process
from tests.testapp.models import Score

pytestmark = [
    pytest.mark.django_db(transaction=True, databases=["default", "memdb"]),
    pytest.mark.transactional_memory,  # a transfer is two writes: one transaction
]

SEED = 4242
ACCOUNTS = 100
START = 1_000
WRITERS = 3
SPOOLS = 60

CHECKER = """
api.tables()
report(ready=True)
for line in sys.stdin:
    try:
        (result,) = api.restore("testapp.Score")
        found = list(Score.objects.values_list("player", "points"))
        report(generation=result.generation, rows=found)
    except Exception as exc:
        report(error=f"{type(exc).__name__}: {exc}")
"""


class Checker:
    """A child process that restores the stored snapshot of ``Score`` on request."""

    def __init__(self, log: Path) -> None:
        env = child_env(connections["default"].settings_dict["NAME"])
        self.log = log
        with log.open("w") as stderr:
            self.proc = start_process(PRELUDE + CHECKER, env, stderr)
        assert self.read() == {"ready": True}

    def read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=TIMEOUT)
            pytest.fail(f"the checker exited ({self.proc.returncode}):\n{self.log.read_text()}")
        return json.loads(line)

    def restore(self) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write("restore\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        end_process(self.proc)
        check_quiet(self.log.read_text())


def problems(rows: list[tuple[str, int]]) -> list[str]:
    """What is wrong with one table state: the sum, and transactions stored in part."""
    found = []
    total = sum(points for _, points in rows)
    if total != ACCOUNTS * START:
        found.append(f"the points sum to {total}, not {ACCOUNTS * START}")
    tags = Counter(player for player, _ in rows if player.startswith("t"))
    for tag, count in sorted(tags.items()):
        if count != int(tag.rsplit("/", 1)[1]):
            found.append(f"transaction {tag} has {count} rows")
    accounts = sum(1 for player, _ in rows if player.startswith("a"))
    if accounts != ACCOUNTS:
        found.append(f"{accounts} account rows, not {ACCOUNTS}")
    return found


def writer(
    number: int, stop: threading.Event, counts: Counter[str], errors: list[BaseException]
) -> None:
    rng = random.Random(SEED + number)
    accounts = list(Score.objects.filter(player__startswith="a").values_list("pk", flat=True))
    mine: list[str] = []
    i = 0
    try:
        while not stop.is_set():
            i += 1
            kind = rng.choices(["transfer", "insert", "delete"], [5, 3, 2])[0]
            if kind == "delete" and not mine:
                kind = "insert"
            with transaction.atomic(using="memdb"):
                if kind == "transfer":
                    source, target = rng.sample(accounts, 2)
                    amount = rng.randint(1, 20)
                    Score.objects.filter(pk=source).update(points=F("points") - amount)
                    Score.objects.filter(pk=target).update(points=F("points") + amount)
                elif kind == "insert":
                    rows = rng.randint(2, 5)
                    tag = f"t{number}-{i}/{rows}"
                    source = rng.choice(accounts)
                    Score.objects.filter(pk=source).update(points=F("points") - 10 * rows)
                    for _ in range(rows):
                        Score.objects.create(player=tag, points=10)
                    mine.append(tag)
                else:
                    tag = mine.pop(rng.randrange(len(mine)))
                    back = Score.objects.filter(player=tag).aggregate(s=Sum("points"))["s"]
                    Score.objects.filter(player=tag).delete()
                    target = rng.choice(accounts)
                    Score.objects.filter(pk=target).update(points=F("points") + back)
            counts[kind] += 1
    except BaseException as exc:
        errors.append(exc)
        stop.set()
    finally:
        connections.close_all()


def test_every_stored_snapshot_is_consistent_under_concurrent_transactions(
    tmp_path: Path,
) -> None:
    """Each of the ``SPOOLS`` snapshots stored while the writers run, and the last one
    after they stop, restores (in the checker) with the right sum and whole transactions."""
    started = time.monotonic()
    Score.objects.bulk_create(Score(player=f"a{n}", points=START) for n in range(ACCOUNTS))
    checker = Checker(tmp_path / "checker.log")
    checked: list[int] = []
    failures: list[str] = []
    counts: Counter[str] = Counter()
    spool_errors: list[BaseException] = []
    writer_errors: list[BaseException] = []
    stop = threading.Event()

    def check(generation: int) -> None:
        answer = checker.restore()
        if "error" in answer:
            failures.append(f"generation {generation} did not restore: {answer['error']}")
            return
        if answer["generation"] != generation:
            failures.append(f"spooled generation {generation}, restored {answer['generation']}")
        checked.append(answer["generation"])
        failures.extend(f"generation {generation}: {p}" for p in problems(answer["rows"]))

    def spooler() -> None:
        try:
            while len(checked) < SPOOLS:
                if len(checked) % 2:
                    results = api.flush()
                else:
                    results = api.spool("testapp.Score", force=True)
                for result in results:
                    if not result.unchanged:
                        check(result.generation)
        except BaseException as exc:
            spool_errors.append(exc)
        finally:
            stop.set()
            connections.close_all()

    threads = [
        threading.Thread(target=writer, args=(n, stop, counts, writer_errors))
        for n in range(WRITERS)
    ]
    threads.append(threading.Thread(target=spooler))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
            assert not thread.is_alive(), (
                f"a thread hung; {len(checked)} checks so far, failing: {failures[:3]}; "
                f"errors: {spool_errors + writer_errors}"
            )
        assert spool_errors == [] and writer_errors == []
        # The last state, spooled once writes stopped.
        (last,) = api.spool("testapp.Score", force=True)
        check(last.generation)
    finally:
        stop.set()
        checker.close()

    elapsed = time.monotonic() - started
    rows = list(Score.objects.values_list("player", "points"))
    print(
        f"{len(checked)} snapshots checked (generations {checked[0]}..{checked[-1]}), "
        f"{dict(counts)} transactions, {len(rows)} rows at the end, {elapsed:.1f} s"
    )
    assert not failures, "\n".join(failures[:10])
    assert problems(rows) == []
    assert checked == list(range(checked[0], checked[0] + len(checked))), "a snapshot unchecked"
    assert checked[0] == 1
    assert counts["insert"] and counts["delete"] and counts["transfer"]
