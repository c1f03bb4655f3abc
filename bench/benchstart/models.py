"""The app of bench/bench_perf.py's start-up part: 20 memory models and one default one.

``Start01`` to ``Start10`` live in memory only, ``Start11`` to ``Start20`` are
persistent (the ``MEMDB["POLICY"]`` default, ``interval``): the first use of the memory
alias creates 20 tables with their triggers, reads ``PersistentStorage`` (empty) and
starts the interval spooler. ``StartDefault`` is a plain model in the default database,
for the query that ends Django's start. Without memdb configured the tags are inert
classes and every model is a default-database model.
"""

from django.db import models

from memdb.mixins import InMemoryDB, PersistentInMemoryDB

MEMORY_MODELS = 20


class StartDefault(models.Model):
    number = models.IntegerField()
    text = models.CharField(max_length=40)
    moment = models.DateTimeField()


def _memory_model(number: int) -> type[models.Model]:
    tag = InMemoryDB if number <= MEMORY_MODELS // 2 else PersistentInMemoryDB
    name = f"Start{number:02d}"
    attrs = {
        "__module__": __name__,
        "__qualname__": name,
        "number": models.IntegerField(),
        "text": models.CharField(max_length=40),
        "moment": models.DateTimeField(),
    }
    return type(name, (models.Model, tag), attrs)


for _number in range(1, MEMORY_MODELS + 1):
    globals()[f"Start{_number:02d}"] = _memory_model(_number)
