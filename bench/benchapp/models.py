"""Two 3-column tables that differ only in their memdb tag.

``Plain3`` lives in memory only; ``Persist3`` lives in memory and is spooled to
``PersistentStorage`` by the ``interval`` policy (the background spooler thread, every
``MEMDB["INTERVAL"]`` seconds while the table is dirty).
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
