from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from memdb import api

from ._util import LabelCommand


class Command(LabelCommand):
    help = (
        "Delete stored snapshots: of tables that cannot be restored, or orphaned ones "
        "whose model was removed. The memory tables themselves are not touched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "labels",
            nargs="*",
            metavar="app_label.Model",
            help="Tables (or orphaned snapshot labels) whose snapshots to delete.",
        )
        parser.add_argument(
            "--orphans",
            action="store_true",
            help="Delete every orphaned snapshot (no persistent model claims it).",
        )
        parser.add_argument(
            "--noinput",
            "--no-input",
            action="store_false",
            dest="interactive",
            help="Do not ask for confirmation.",
        )

    def handle(
        self, *args: Any, labels: list[str], orphans: bool, interactive: bool, **options: Any
    ) -> None:
        chosen = list(labels) + (self.run(api.orphans) if orphans else [])
        if not chosen:
            raise CommandError(
                "name the tables whose snapshots to delete, or give --orphans; "
                "`manage.py memdb_status` lists orphaned snapshots"
            )
        if interactive:
            answer = input(
                f"Delete the stored snapshots of {', '.join(chosen)}? This cannot be undone. "
                "Type 'yes' to continue: "
            )
            if answer.strip().lower() != "yes":
                raise CommandError("nothing deleted")
        deleted = self.run(api.discard, *chosen)
        self.stdout.write(f"deleted {deleted} snapshot(s) of {', '.join(chosen)}")
