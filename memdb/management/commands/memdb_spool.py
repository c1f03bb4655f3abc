from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from memdb import api

from ._util import LabelCommand, human_bytes


class Command(LabelCommand):
    help = "Spool persistent memory tables to PersistentStorage now."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--force",
            action="store_true",
            help="Overwrite a snapshot another process wrote or one that failed to restore.",
        )

    def handle(self, *args: Any, labels: list[str], force: bool, **options: Any) -> None:
        chosen = self.resolve(labels, persistent_only=True)
        failed = []
        for number, label in enumerate(chosen, 1):
            self.stdout.write(f"[{number}/{len(chosen)}] spooling {label} ...", ending="")
            self.stdout.flush()
            try:
                (result,) = self.run(api.spool, label, force=force)
            except CommandError as exc:
                self.stdout.write(self.style.ERROR(" failed"))
                self.stderr.write(str(exc))
                failed.append(label)
                continue
            if result.unchanged:
                self.stdout.write(f" unchanged since generation {result.generation}, not rewritten")
                continue
            self.stdout.write(
                f" {result.rows} rows, {human_bytes(result.bytes)}, "
                f"generation {result.generation}, {result.milliseconds:.0f} ms"
            )
        if failed:
            raise CommandError(f"not spooled: {', '.join(failed)}")
