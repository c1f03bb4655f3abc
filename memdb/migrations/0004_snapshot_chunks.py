"""Snapshots move from one ``data`` column into ``SnapshotChunk`` rows.

A snapshot written before this migration becomes one chunk holding its bytes unchanged:
its codec chain ran over the whole image, which is exactly "the chain runs on each
chunk" with a single chunk, and its checksum (sha256 of the stored bytes) still holds.
"""

import django.db.models.deletion
from django.db import migrations, models


def data_into_chunks(apps, schema_editor):
    storage = apps.get_model("memdb", "PersistentStorage")
    chunk = apps.get_model("memdb", "SnapshotChunk")
    alias = schema_editor.connection.alias
    for pk in storage.objects.using(alias).values_list("pk", flat=True):
        data = storage.objects.using(alias).values_list("data", flat=True).get(pk=pk)
        chunk.objects.using(alias).create(snapshot_id=pk, number=0, data=data)
        storage.objects.using(alias).filter(pk=pk).update(chunk_count=1)


def chunks_into_data(apps, schema_editor):
    storage = apps.get_model("memdb", "PersistentStorage")
    chunk = apps.get_model("memdb", "SnapshotChunk")
    alias = schema_editor.connection.alias
    split = storage.objects.using(alias).filter(chunk_count__gt=1).exclude(codecs=[])
    if split.exists():
        labels = sorted({f"{row.app_label}.{row.model_name}" for row in split})
        raise RuntimeError(
            f"cannot migrate memdb back before 0004: the snapshots of {', '.join(labels)} "
            f"are in several chunks each encoded by its own codec run, which the older "
            f"code cannot read. Spool them with MEMDB['CHUNK_SIZE'] above their size, or "
            f"discard them, then migrate back."
        )
    for pk in storage.objects.using(alias).values_list("pk", flat=True):
        parts = (
            chunk.objects.using(alias)
            .filter(snapshot_id=pk)
            .order_by("number")
            .values_list("data", flat=True)
        )
        storage.objects.using(alias).filter(pk=pk).update(data=b"".join(bytes(p) for p in parts))


class Migration(migrations.Migration):
    dependencies = [
        ("memdb", "0003_snapshot_key_ids"),
    ]

    operations = [
        migrations.AddField(
            model_name="persistentstorage",
            name="chunk_count",
            field=models.PositiveIntegerField(
                default=0, help_text="How many SnapshotChunk rows hold the data."
            ),
        ),
        migrations.AlterField(
            model_name="persistentstorage",
            name="checksum",
            field=models.CharField(
                help_text="sha256 of the chunks' bytes as stored, in order.", max_length=64
            ),
        ),
        migrations.AlterField(
            model_name="persistentstorage",
            name="size",
            field=models.PositiveBigIntegerField(help_text="Bytes of data as stored (all chunks)."),
        ),
        migrations.CreateModel(
            name="SnapshotChunk",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "number",
                    models.PositiveIntegerField(help_text="0, 1, 2, ... in the order to decode."),
                ),
                ("data", models.BinaryField()),
                (
                    "snapshot",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="chunks",
                        to="memdb.persistentstorage",
                    ),
                ),
            ],
            options={
                "verbose_name": "snapshot chunk",
                "ordering": ["snapshot", "number"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("snapshot", "number"), name="memdb_chunk_unique"
                    )
                ],
            },
        ),
        migrations.RunPython(data_into_chunks, chunks_into_data, elidable=False),
        # A default, so that migrating back can re-add the column to existing rows
        # before chunks_into_data fills it.
        migrations.AlterField(
            model_name="persistentstorage",
            name="data",
            field=models.BinaryField(default=b""),
        ),
        migrations.RemoveField(
            model_name="persistentstorage",
            name="data",
        ),
    ]
