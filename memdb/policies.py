"""When spooling happens: ``commit``, ``interval`` and ``manual``, plus the flush at exit."""

from __future__ import annotations

import atexit
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from django.core.signals import setting_changed
from django.db import close_old_connections

from .conf import memdb_settings

if TYPE_CHECKING:
    from .registry import ModelType

logger = logging.getLogger("memdb")


@cache
def models_with_policy(policy: str) -> tuple[ModelType, ...]:
    """The persistent models that follow ``policy``, parents first."""
    from .registry import persistent_models, policy_of

    return tuple(m for m in persistent_models() if policy_of(m) == policy)


@cache
def tables_with_policy(policy: str) -> frozenset[str]:
    """The database tables of the persistent models that follow ``policy``."""
    return frozenset(m._meta.db_table for m in models_with_policy(policy))


@cache
def tables_reaching(policy: str) -> frozenset[str]:
    """The tables whose writes can change a table of ``policy``: those tables, and the
    tables they point at with a delete action the database runs itself (Django 6.1's
    ``DB_CASCADE``, ``DB_SET_NULL``, ``DB_SET_DEFAULT``: a row deleted there deletes or
    changes the rows pointing at it, in a statement that names only its own table),
    and so on up."""
    from django.apps import apps

    from .registry import database_delete_keys

    reached = set(tables_with_policy(policy))
    keys = [
        (model._meta.db_table, field.related_model._meta.db_table)
        for model in apps.get_models(include_auto_created=True)
        for field in database_delete_keys(model)
    ]
    grown = True
    while grown:
        before = len(reached)
        reached.update(parent for child, parent in keys if child in reached)
        grown = len(reached) != before
    return frozenset(reached)


#: A statement that writes rows, by its first word.
_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE|TRUNCATE|MERGE)\b", re.IGNORECASE)
#: The table a write names, in the forms Django's statements take on the three
#: databases (``INSERT IGNORE INTO`` on MariaDB, ``INSERT OR IGNORE INTO`` on SQLite).
_TARGET = re.compile(
    r"\s*(?:INSERT\s+(?:IGNORE\s+|OR\s+[A-Z]+\s+)?INTO|UPDATE|DELETE\s+FROM|REPLACE\s+INTO)\s+"
    r"[`\"]?([^`\"\s(,;]+)[`\"]?(?:\s|;|$)",
    re.IGNORECASE,
)


def written_table(sql: str) -> str | None:
    """The table ``sql`` writes, as it names it; "" for a write whose table this does
    not tell (a ``TRUNCATE``, which may name several; a form Django does not use);
    None if it is no write."""
    if _WRITE.match(sql) is None:
        return None
    target = _TARGET.match(sql)
    return "" if target is None else target.group(1)


def may_reach_commit(table: str) -> bool:
    """Whether a write to ``table`` (``written_table``) can change a ``commit`` table:
    a table of ``tables_reaching("commit")``, one it cannot tell, or one named with its
    schema."""
    return not table or "." in table or table in tables_reaching("commit")


def clear_cache(**kwargs: Any) -> None:
    """Forget which models follow which policy (after a setting or a model changed)."""
    models_with_policy.cache_clear()
    tables_with_policy.cache_clear()
    tables_reaching.cache_clear()


setting_changed.connect(clear_cache)


def spool_on_commit(wrapper: Any, spool: Callable[[], None] | None = None) -> None:
    """Have the outermost ``atomic()`` of ``wrapper`` run ``spool`` (``spool_committed``
    unless given) as it commits, once however many writes asked for it."""
    spool = spool or spool_committed
    if not any(entry[1] is spool for entry in wrapper.run_on_commit):
        wrapper.on_commit(spool)


def spool_committed() -> None:
    """Spool the dirty ``commit``-policy tables; errors reach the writer.

    Asks this thread's own connection which of them are dirty, so a write to other
    tables costs one indexed read per ``commit`` table and nothing more. Inside a
    transaction on the default database (``ATOMIC_REQUESTS``, an outer ``atomic()``),
    the spool waits for that transaction to commit (``spool_after_commit``).
    """
    from django.db import connections

    from . import store
    from .spooler import flush, in_transaction, spool_each, storage_alias

    storage = connections[storage_alias()]
    if in_transaction(storage):
        if storage.in_atomic_block:
            spool_on_commit(storage, spool_after_commit)
        # In a transaction managed by hand (set_autocommit(False)), the interval
        # spooler stores the table within INTERVAL seconds.
        return
    wrapper = connections[memdb_settings.ALIAS]
    raw = wrapper.connection
    state = store.current_state()
    if raw is not None and state.kind == "server":
        from .server import Conn

        raw = Conn(wrapper)  # the store's SQL on this thread's connection
    if raw is None or not state.ready:
        flush(policy="commit", raise_errors=True)
        return
    spool_each(store.dirty_models(state, raw, models_with_policy("commit")), raise_errors=True)


def spool_after_commit() -> None:
    """``spool_committed`` once the default database's transaction committed.

    Its data has committed by then, so an error is logged rather than raised at the
    caller (whose other ``on_commit`` callbacks would be skipped); the table stays
    dirty, and the interval spooler stores it within ``INTERVAL`` seconds, as it does
    when a savepoint rollback dropped this callback.
    """
    from .exceptions import MemdbError

    try:
        spool_committed()
    except MemdbError as exc:
        logger.error("memdb: after the default database's transaction committed: %s", exc)


class IntervalSpooler(threading.Thread):
    """Spools dirty ``interval``-policy tables every ``MEMDB["INTERVAL"]`` seconds, and
    ``commit``-policy tables left dirty (a spool that failed, or was deferred to a
    transaction on the default database that never ran it)."""

    def __init__(self) -> None:
        super().__init__(name="memdb-interval-spooler", daemon=True)
        self.stopping = threading.Event()

    def run(self) -> None:
        """Tick every ``INTERVAL`` seconds from the start of the last tick, not its end.

        Waiting a full interval after each spool would let a write that just missed one
        spool wait for that spool, the interval and the next spool: ``INTERVAL`` plus
        two spools. At a fixed rate the bound is ``INTERVAL`` plus one spool.
        """
        from .spooler import flush

        started = time.monotonic()
        while not self.stopping.wait(
            max(0.0, started + float(memdb_settings.INTERVAL) - time.monotonic())
        ):
            started = time.monotonic()
            try:
                for policy in ("interval", "commit"):
                    flush(policy=policy, skip_busy=True)
            except Exception:
                logger.exception("memdb: interval spool failed")
            finally:
                close_old_connections()

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout)


_interval: IntervalSpooler | None = None
_interval_lock = threading.Lock()


def process_started() -> None:
    """Start the interval spooler once the memory database is ready, if a table needs it."""
    global _interval
    if not (tables_with_policy("interval") or tables_with_policy("commit")):
        return
    with _interval_lock:
        if _interval is None or not _interval.is_alive():
            _interval = IntervalSpooler()
            _interval.start()


def stop_interval() -> None:
    global _interval
    with _interval_lock:
        thread, _interval = _interval, None
    if thread is not None:
        thread.stop()


def flush_at_exit() -> None:
    """Spool every dirty persistent table, if this process used the memory database."""
    from . import store
    from .spooler import flush

    stop_interval()
    if not memdb_settings.FLUSH_ON_EXIT:
        return
    if not store.used_in_this_process():
        return
    try:
        flush()
    except Exception:
        logger.exception("memdb: flush at exit failed; recent writes may be lost")


_installed = False


def install_exit_handlers() -> None:
    """atexit always; SIGTERM only where nobody else handles it (a server's own handler wins)."""
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(flush_at_exit)
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # pragma: no cover - not the main interpreter
        pass


def _on_sigterm(signum: int, frame: Any) -> None:
    """Flush in a helper thread, then die of SIGTERM as if memdb had no handler.

    Raising ``SystemExit`` here would unwind whatever the main thread was doing, and
    code that catches every exception (a WSGI server writing a response) swallows it:
    the process would neither flush nor stop. A second SIGTERM during the flush kills
    at once.
    """
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        threading.Thread(
            target=_flush_then_die, args=(signum,), name="memdb-sigterm-flush", daemon=True
        ).start()
    except RuntimeError:
        # At interpreter shutdown (Python 3.12+ starts no thread then): the exit's own
        # flush runs, and the process is ending; a second SIGTERM kills at once.
        pass


def _flush_then_die(signum: int) -> None:
    try:
        flush_at_exit()
    finally:
        os.kill(os.getpid(), signum)
