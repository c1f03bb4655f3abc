from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError

from memdb import api
from memdb.exceptions import MemdbError, RestoreError
from memdb.registry import get_model
from memdb.spooler import stored_snapshots

from ._util import LabelCommand


class Command(LabelCommand):
    help = "Replace memory tables with their stored snapshots."

    def handle(self, *args: Any, labels: list[str], **options: Any) -> None:
        chosen = self.resolve(labels, persistent_only=True)
        if not labels:
            chosen = [label for label in chosen if stored_snapshots(get_model(label)).exists()]
        if not chosen:
            self.stdout.write("no stored snapshots to restore")
            return
        self.stdout.write(f"restoring {len(chosen)} table(s) together ...")
        self.stdout.flush()
        errors: dict[str, MemdbError] = {}
        try:
            results = api.restore(*chosen)
        except RestoreError as exc:
            results, errors = exc.results, exc.errors
            if not errors:
                raise CommandError(str(exc)) from exc
        except MemdbError as exc:
            raise CommandError(str(exc)) from exc
        by_label = {result.label: result for result in results}
        for number, label in enumerate(chosen, 1):
            prefix = f"[{number}/{len(chosen)}] restoring {label} ..."
            if label in by_label:
                result = by_label[label]
                self.stdout.write(
                    f"{prefix} {result.rows} rows from generation {result.generation}, "
                    f"{result.milliseconds:.0f} ms"
                )
            else:
                self.stdout.write(prefix + self.style.ERROR(" failed"))
                self.stderr.write(str(errors.get(label, "not restored")))
        failed = [label for label in chosen if label not in by_label]
        if failed:
            raise CommandError(f"not restored: {', '.join(failed)}")
