"""What the three memdb commands share: label arguments and error reporting."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from memdb.exceptions import MemdbError


class LabelCommand(BaseCommand):
    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "labels",
            nargs="*",
            metavar="app_label.Model",
            help="Memory tables to act on; all of them when none are given.",
        )

    def run(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MemdbError as exc:
            raise CommandError(str(exc)) from exc

    def resolve(self, labels: list[str], *, persistent_only: bool) -> list[str]:
        from memdb.registry import resolve

        models = self.run(resolve, tuple(labels), persistent_only=persistent_only)
        return [m._meta.label for m in models]


def human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover
