from django.db import models

from memdb.mixins import InMemoryDB, PersistentInMemoryDB


class Hit(models.Model, InMemoryDB):
    """One page view. Lives in memory only: the count starts again at 0 after a restart."""

    path = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.path} at {self.created:%H:%M:%S}"


class Score(models.Model, PersistentInMemoryDB):
    """A player's score. Lives in memory and is spooled, so it survives a restart."""

    player = models.CharField(max_length=50)
    points = models.IntegerField()

    class Meta:
        ordering = ["-points", "player"]

    def __str__(self) -> str:
        return f"{self.player}: {self.points}"
