from __future__ import annotations

from django.apps import AppConfig


class MemDBConfig(AppConfig):
    name = "memdb"
    verbose_name = "Memory database"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Register checks and exit handlers; never touch a database here."""
        from . import checks, policies  # noqa: F401  (checks register on import)

        policies.install_exit_handlers()
