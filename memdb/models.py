"""``PersistentStorage``: the snapshots that let memory tables survive a restart."""

from __future__ import annotations

from django.db import models


class PersistentStorage(models.Model):
    """One stored snapshot of one memory table, in the default database.

    A table has one current row of kind ``snapshot``; a spool inserts the next
    generation with its chunks and deletes the previous one in the same transaction, so a
    crash at any point leaves one complete snapshot. The bytes live in ``SnapshotChunk``
    rows, so no single row outgrows a server's packet limit (MariaDB's
    ``max_allowed_packet``). Rows of kind ``delta`` are the table's journal: the rows
    changed since the snapshot, one generation each (see ``memdb.journal``). A delta
    is at most one chunk, kept ``inline`` in its row, so storing one is one INSERT.
    """

    KIND_SNAPSHOT = "snapshot"
    KIND_DELTA = "delta"
    KIND_CHOICES = [
        (KIND_SNAPSHOT, "snapshot (the whole table)"),
        (KIND_DELTA, "delta (rows changed since the previous generation)"),
    ]

    app_label = models.CharField(max_length=100)
    model_name = models.CharField(max_length=100, help_text="The model's class name.")
    kind = models.CharField(max_length=16, choices=KIND_CHOICES, default=KIND_SNAPSHOT)
    format = models.CharField(max_length=32, help_text="How rows were turned into bytes.")
    format_version = models.PositiveSmallIntegerField()
    codecs = models.JSONField(
        default=list, blank=True, help_text="Codec chain applied after the format, in order."
    )
    key_ids = models.JSONField(
        default=list,
        blank=True,
        help_text="For each keyed codec, a hash identifying the key it encrypted with "
        "(never the key), so a spool knows when a new key calls for a rewrite.",
    )
    row_count = models.PositiveBigIntegerField()
    size = models.PositiveBigIntegerField(help_text="Bytes of data as stored (all chunks).")
    checksum = models.CharField(
        max_length=64, help_text="sha256 of the chunks' bytes as stored, in order."
    )
    chunk_count = models.PositiveIntegerField(
        default=0, help_text="How many SnapshotChunk rows hold the data (0: it is inline)."
    )
    inline = models.BinaryField(
        null=True,
        blank=True,
        editable=False,
        help_text="The data of a row stored in one piece (a journal delta), when chunk_count is 0.",
    )
    generation = models.PositiveBigIntegerField(
        help_text="Counts the table's snapshots; detects two processes writing one table."
    )
    written_by = models.CharField(max_length=255, blank=True, help_text="host and pid")
    created_at = models.DateTimeField(help_text="When the table was first stored.")
    updated_at = models.DateTimeField(help_text="When this snapshot was written.")

    class Meta:
        verbose_name = "persistent storage"
        verbose_name_plural = "persistent storage"
        ordering = ["app_label", "model_name", "kind", "generation"]
        constraints = [
            # Generation before kind: its index also finds a table's latest row, whatever
            # its kind (read by every journal write), so no other index is needed.
            models.UniqueConstraint(
                fields=["app_label", "model_name", "generation", "kind"],
                name="memdb_storage_generation_kind",
            )
        ]

    def __str__(self) -> str:
        return f"{self.label} {self.kind} #{self.generation}"

    @property
    def label(self) -> str:
        return f"{self.app_label}.{self.model_name}"


class SnapshotChunk(models.Model):
    """One piece of a snapshot's bytes: the codec chain runs on each chunk by itself.

    Spool and restore stream a snapshot chunk by chunk, so neither holds the whole of a
    big table's snapshot in memory, and each row stays under the server's packet limit.
    """

    # No index of its own: the unique (snapshot, number) constraint's index serves.
    snapshot = models.ForeignKey(
        PersistentStorage, on_delete=models.CASCADE, related_name="chunks", db_index=False
    )
    number = models.PositiveIntegerField(help_text="0, 1, 2, ... in the order to decode.")
    data = models.BinaryField()

    class Meta:
        verbose_name = "snapshot chunk"
        ordering = ["snapshot", "number"]
        constraints = [
            models.UniqueConstraint(fields=["snapshot", "number"], name="memdb_chunk_unique")
        ]

    def __str__(self) -> str:
        return f"{self.snapshot} chunk {self.number}"


class MemoryTable(models.Model):
    """No table: the admin's "Memory tables" page hangs off this model.

    Its permissions gate that page: *view* to see it, *change* to spool or restore from it.
    """

    class Meta:
        managed = False
        default_permissions = ("view", "change")
        verbose_name = "memory table"
        verbose_name_plural = "memory tables"
