"""``store.retry_locked``: SQLite's lock conflicts are retried until a deadline, and
nothing else is."""

from __future__ import annotations

import sqlite3
import time

import pytest

from memdb import store


def locked() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database table is locked: testapp_score")
    exc.sqlite_errorcode = sqlite3.SQLITE_LOCKED  # type: ignore[attr-defined]
    return exc


class Flaky:
    """Raises each of ``errors`` in turn, then returns ``"done"``; counts the calls."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_a_lock_conflict_is_retried_until_the_call_goes_through() -> None:
    func = Flaky(locked(), locked(), locked())
    assert store.retry_locked(func, timeout=5) == "done"
    assert func.calls == 4


def test_other_errors_are_raised_at_once() -> None:
    func = Flaky(sqlite3.OperationalError("no such table: testapp_score"))
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        store.retry_locked(func, timeout=5)
    assert func.calls == 1


def test_a_timeout_of_zero_raises_the_first_conflict() -> None:
    func = Flaky(locked())
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.retry_locked(func, timeout=0)
    assert func.calls == 1


def test_a_conflict_that_outlasts_the_timeout_is_raised() -> None:
    func = Flaky(*(locked() for _ in range(10_000)))
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store.retry_locked(func, timeout=0.05)
    assert 0.05 <= time.monotonic() - started < 2
    assert 1 < func.calls < 10_000
