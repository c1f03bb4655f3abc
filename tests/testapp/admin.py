"""Admins of the test models: memory models get "Spool now" and "Restore from storage"."""

from django.contrib import admin

from memdb.admin import MemDBModelAdmin

from .models import Hit, Score


@admin.register(Score)
class ScoreAdmin(MemDBModelAdmin):
    list_display = ["player", "points"]


@admin.register(Hit)
class HitAdmin(MemDBModelAdmin):
    """A memory-only table: its "Spool now" must say why it cannot."""

    list_display = ["path"]
