from django.apps import AppConfig


class BenchStartConfig(AppConfig):
    name = "benchstart"
    label = "benchstart"
    default_auto_field = "django.db.models.BigAutoField"
