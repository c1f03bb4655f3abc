from django.contrib import admin

from memdb.admin import MemDBModelAdmin

from .models import Country, Hit, Score


@admin.register(Score)
class ScoreAdmin(MemDBModelAdmin):
    """Adds the actions "Spool now" and "Restore from storage" to the score list."""

    list_display = ["player", "points"]


@admin.register(Hit)
class HitAdmin(admin.ModelAdmin):
    list_display = ["path", "created"]


@admin.register(Country)
class CountryAdmin(MemDBModelAdmin):
    list_display = ["code", "name", "visits"]
    search_fields = ["code", "name"]
