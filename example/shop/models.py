"""Three kinds of memory table, one of each policy a real site would use."""

from django.db import models

from memdb.mixins import InMemoryDB, PersistentInMemoryDB


class Hit(models.Model, InMemoryDB):
    """One page view. Lives in memory only: the count starts again at 0 after a restart."""

    path = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.path} at {self.created:%H:%M:%S}"


class Score(models.Model, PersistentInMemoryDB):
    """A leaderboard entry. Spooled when each write commits: none is lost in a crash."""

    memdb_policy = "commit"

    player = models.CharField(max_length=50)
    points = models.IntegerField()

    class Meta:
        ordering = ["-points", "player"]

    def __str__(self) -> str:
        return f"{self.player}: {self.points}"


class Country(models.Model, PersistentInMemoryDB):
    """A lookup table, read far more than written: spooled every second, compressed."""

    memdb_policy = "interval"
    memdb_codecs = ["zlib"]

    code = models.CharField(max_length=2, unique=True)
    name = models.CharField(max_length=100)
    visits = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "countries"

    def __str__(self) -> str:
        return self.name
