from django.contrib import admin

from .models import Hit, Score


@admin.register(Score)
class ScoreAdmin(admin.ModelAdmin):
    list_display = ["player", "points"]


@admin.register(Hit)
class HitAdmin(admin.ModelAdmin):
    list_display = ["path", "created"]
