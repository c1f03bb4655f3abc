from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from memdb import api
from memdb.spooler import stored_snapshots

from ._util import LabelCommand


class Command(LabelCommand):
    help = "Replace memory tables with their stored snapshots."

    def handle(self, *args: Any, labels: list[str], **options: Any) -> None:
        from memdb.registry import get_model

        chosen = self.resolve(labels, persistent_only=True)
        if not labels:
            chosen = [label for label in chosen if stored_snapshots(get_model(label)).exists()]
        failed = []
        for number, label in enumerate(chosen, 1):
            self.stdout.write(f"[{number}/{len(chosen)}] restoring {label} ...", ending="")
            self.stdout.flush()
            try:
                (result,) = self.run(api.restore, label)
            except CommandError as exc:
                self.stdout.write(self.style.ERROR(" failed"))
                self.stderr.write(str(exc))
                failed.append(label)
                continue
            self.stdout.write(
                f" {result.rows} rows from generation {result.generation}, "
                f"{result.milliseconds:.0f} ms"
            )
        if failed:
            raise CommandError(f"not restored: {', '.join(failed)}")
