from django.db import models

from memdb.mixins import InMemoryDB, PeristentInMemoryDB, PersistentInMemoryDB


class Hit(models.Model, InMemoryDB):
    path = models.TextField()


class Score(models.Model, PersistentInMemoryDB):
    player = models.CharField(max_length=50)
    points = models.IntegerField(default=0)


class Legacy(models.Model, PeristentInMemoryDB):
    """Uses the 0.0.6 spelling of the mixin."""

    text = models.TextField()


class CommitScore(models.Model, PersistentInMemoryDB):
    memdb_policy = "commit"
    player = models.CharField(max_length=50)
    points = models.IntegerField(default=0)


class IntervalScore(models.Model, PersistentInMemoryDB):
    memdb_policy = "interval"
    player = models.CharField(max_length=50)
    points = models.IntegerField(default=0)


class Team(models.Model, PersistentInMemoryDB):
    name = models.CharField(max_length=50, unique=True)


class Player(models.Model, PersistentInMemoryDB):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="players")
    mentor = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL)
    name = models.CharField(max_length=50)
    tags = models.ManyToManyField("Tag", blank=True)


class Tag(models.Model, PersistentInMemoryDB):
    name = models.SlugField()


#: Django 6.1's delete actions that the database runs itself; the ORM's before it.
DB_CASCADE = getattr(models, "DB_CASCADE", models.CASCADE)
DB_SET_NULL = getattr(models, "DB_SET_NULL", models.SET_NULL)


class Squad(models.Model, PersistentInMemoryDB):
    name = models.CharField(max_length=50)


class Recruit(models.Model, PersistentInMemoryDB):
    """Keys with ON DELETE actions in the database (on Django 6.1): a restore of
    ``Squad`` must not run them, and a delete of a squad, which runs them, spools this
    ``commit`` table."""

    memdb_policy = "commit"
    squad = models.ForeignKey(Squad, on_delete=DB_CASCADE, related_name="recruits")
    coach = models.ForeignKey(
        Squad, null=True, blank=True, on_delete=DB_SET_NULL, related_name="coached"
    )
    name = models.CharField(max_length=50)


class AllTypes(models.Model, PersistentInMemoryDB):
    """One field of every concrete Django field type the spooler must round-trip."""

    small = models.SmallIntegerField()
    integer = models.IntegerField()
    big = models.BigIntegerField()
    pos_small = models.PositiveSmallIntegerField()
    pos_int = models.PositiveIntegerField()
    pos_big = models.PositiveBigIntegerField()
    floating = models.FloatField()
    decimal = models.DecimalField(max_digits=12, decimal_places=4)
    flag = models.BooleanField()
    maybe = models.BooleanField(null=True)
    char = models.CharField(max_length=100)
    text = models.TextField()
    slug = models.SlugField()
    email = models.EmailField()
    url = models.URLField()
    day = models.DateField()
    moment = models.DateTimeField()
    clock = models.TimeField()
    span = models.DurationField()
    uuid = models.UUIDField()
    blob = models.BinaryField()
    doc = models.JSONField()
    ip = models.GenericIPAddressField()
    nothing = models.CharField(max_length=10, null=True)


class Plain(models.Model):
    """A regular model in the default database."""

    name = models.CharField(max_length=50)
