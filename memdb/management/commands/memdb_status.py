from __future__ import annotations

from typing import Any

from memdb import api

from ._util import LabelCommand, human_bytes

COLUMNS = (
    "table",
    "kind",
    "policy",
    "rows",
    "dirty",
    "snapshot",
    "gen",
    "last spooled",
    "by",
    "restore",
)


class Command(LabelCommand):
    help = "Show every memory table: rows, dirty state, snapshot size and restore state."

    def handle(self, *args: Any, labels: list[str], **options: Any) -> None:
        infos = self.run(api.tables, *labels)
        rows = [
            (
                info.label,
                "persistent" if info.persistent else "memory",
                info.policy or "-",
                str(info.rows),
                "yes" if info.dirty else "no",
                human_bytes(info.snapshot_bytes),
                "-" if info.generation is None else str(info.generation),
                info.last_spooled.strftime("%Y-%m-%d %H:%M:%S") if info.last_spooled else "-",
                info.leader or "-",
                info.restore_state + (f": {info.restore_error}" if info.restore_error else ""),
            )
            for info in infos
        ]
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(COLUMNS)]
        self.stdout.write("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)).rstrip())
        for row in rows:
            self.stdout.write("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
        if infos:
            self.stdout.write(f"store: {infos[0].store}")
        if not rows:
            self.stdout.write(
                "no memory tables: tag a model with InMemoryDB or PersistentInMemoryDB"
            )
        orphaned = self.run(api.orphans)
        if orphaned and not labels:
            self.stdout.write(
                self.style.WARNING(
                    f"orphaned snapshots (no persistent model claims them, kept until "
                    f"discarded with `manage.py memdb_discard --orphans`): {', '.join(orphaned)}"
                )
            )
