"""The tables the benchmarks write to; see bench/README.md.

``Plain3`` lives in memory only; ``Persist3`` lives in memory and is spooled to
``PersistentStorage`` by the ``interval`` policy (the background spooler thread, every
``MEMDB["INTERVAL"]`` seconds while the table is dirty); ``Manual3`` is spooled only on
request (``manual``). The models below them (bench/bench_perf.py) share one row shape,
an integer, a 40-character text and a datetime, in every place a table can live.
"""

from django.db import models

from memdb.mixins import InMemoryDB, PersistentInMemoryDB


class Plain3(models.Model, InMemoryDB):
    name = models.CharField(max_length=50)
    value = models.IntegerField()
    score = models.FloatField()


class Persist3(models.Model, PersistentInMemoryDB):
    memdb_policy = "interval"

    name = models.CharField(max_length=50)
    value = models.IntegerField()
    score = models.FloatField()


class Manual3(models.Model, PersistentInMemoryDB):
    memdb_policy = "manual"

    name = models.CharField(max_length=50)
    value = models.IntegerField()
    score = models.FloatField()


class Row(models.Model):
    """An integer, a 40-character text and a datetime (plus the id)."""

    number = models.IntegerField()
    text = models.CharField(max_length=40)
    moment = models.DateTimeField()

    class Meta:
        abstract = True


class CommitSmall(Row, PersistentInMemoryDB):
    """``commit`` policy, kept at 1k rows: each committed write stores a journal delta."""

    memdb_policy = "commit"


class CommitBig(Row, PersistentInMemoryDB):
    """``commit`` policy, kept at 100k rows."""

    memdb_policy = "commit"


class BigRow(Row, PersistentInMemoryDB):
    """The 1M-row table spooled and restored (``manual``: only when the benchmark asks)."""

    memdb_policy = "manual"


class MemRow(Row, InMemoryDB):
    """Memory only: the reads' memory side."""


class DefaultRow(Row):
    """A plain model in the default database: the floor of a durable write, and the
    reads' default-database side. Created by ``migrate --run-syncdb`` (the app has no
    migrations; the router keeps the memory models off the default database)."""
