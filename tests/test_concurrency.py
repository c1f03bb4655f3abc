"""Threads share one memory database, wait for each other's locks, and keep the data."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connections, transaction
from django.db.models import F

from memdb import api, store
from tests.testapp.models import Hit, IntervalScore, Score

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "memdb"])

THREADS = 4
WRITES = 500


def run_threads(target: Callable[[int], Any], count: int = THREADS) -> list[BaseException]:
    """Run ``target(n)`` in ``count`` threads started together; return what they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def body(number: int) -> None:
        try:
            barrier.wait()
            target(number)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=body, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive(), "a writer thread hung"
    return errors


def test_concurrent_writes_see_no_lock_errors() -> None:
    counter = Score.objects.create(player="counter", points=0)
    per_thread_updates = WRITES // 10

    def writer(number: int) -> None:
        for i in range(WRITES):
            Hit.objects.create(path=f"/{number}/{i}")
            if i % 10 == 0:
                with transaction.atomic(using="memdb"):
                    Score.objects.filter(pk=counter.pk).update(points=F("points") + 1)
                    Score.objects.create(player=f"t{number}", points=i)
            if i % 50 == 0:
                IntervalScore.objects.create(player=f"t{number}", points=i)

    errors = run_threads(writer)

    assert errors == []
    assert Hit.objects.count() == THREADS * WRITES
    paths = set(Hit.objects.values_list("path", flat=True))
    assert paths == {f"/{n}/{i}" for n in range(THREADS) for i in range(WRITES)}
    counter.refresh_from_db()
    assert counter.points == THREADS * per_thread_updates
    assert Score.objects.exclude(pk=counter.pk).count() == THREADS * per_thread_updates
    assert IntervalScore.objects.count() == THREADS * (WRITES // 50)


def test_concurrent_writes_and_spools() -> None:
    """Spools (reads on a private connection) interleave with writers without errors."""

    def worker(number: int) -> None:
        for i in range(100):
            if number == 0:
                api.spool("testapp.Score")
            else:
                Score.objects.create(player=f"t{number}", points=i)

    errors = run_threads(worker)

    assert errors == []
    (result,) = api.spool("testapp.Score")
    assert result.rows == Score.objects.count() == (THREADS - 1) * 100
    Score.objects.all().delete()
    api.restore("testapp.Score")
    assert Score.objects.count() == (THREADS - 1) * 100


def test_data_written_in_one_thread_is_visible_in_another() -> None:
    written = threading.Event()
    seen: list[Any] = []

    def write() -> None:
        try:
            Hit.objects.create(path="/from-thread")
        finally:
            connections.close_all()
            written.set()

    def read() -> None:
        try:
            written.wait(10)
            seen.extend(Hit.objects.values_list("path", flat=True))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert seen == ["/from-thread"]
    assert list(Hit.objects.values_list("path", flat=True)) == ["/from-thread"]


@pytest.mark.sqlite_store
def test_data_survives_closing_every_django_connection() -> None:
    """Regression: 0.0.6's memory database vanished when Django closed the connection at
    the end of a request, and the next request failed with "no such table"."""
    Hit.objects.create(path="/before-close")
    Score.objects.create(player="kept")
    connections["memdb"].close()
    assert connections["memdb"].connection is None
    assert store.current_state().keeper is not None

    assert list(Hit.objects.values_list("path", flat=True)) == ["/before-close"]
    assert list(Score.objects.values_list("player", flat=True)) == ["kept"]


def test_data_written_by_a_finished_thread_survives_it() -> None:
    """A thread's connection closing (as at the end of a request) keeps what it wrote."""

    def write(number: int) -> None:
        Hit.objects.bulk_create([Hit(path=f"/{number}/{i}") for i in range(10)])

    connections["memdb"].close()
    assert run_threads(write) == []
    connections["memdb"].close()
    assert Hit.objects.count() == THREADS * 10


def test_request_cycle_closes_the_connection_and_keeps_the_data() -> None:
    """Django's request_finished closes connections (CONN_MAX_AGE=0); the tables stay."""
    from django.core.signals import request_finished, request_started

    request_started.send(sender=None)
    Hit.objects.create(path="/request-1")
    request_finished.send(sender=None)
    assert connections["memdb"].connection is None

    request_started.send(sender=None)
    assert list(Hit.objects.values_list("path", flat=True)) == ["/request-1"]
    request_finished.send(sender=None)
