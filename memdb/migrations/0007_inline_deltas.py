"""Journal deltas stored inline in their row, so storing one is a single INSERT; fewer
indexes for that INSERT to update.

- ``inline``: the bytes of a row kept in one piece (``chunk_count`` 0).
- The unique constraint lists ``generation`` before ``kind``, so its index also finds a
  table's latest row; the (app_label, model_name) and "latest" indexes it makes
  redundant are dropped, and so is a chunk's own index on its snapshot (the prefix of
  the unique (snapshot, number) index).

Reversible: going back first moves each inline row's bytes into a chunk of its own.
"""

import django.db.models.deletion
from django.db import migrations, models


def inline_to_chunks(apps, schema_editor):
    storage = apps.get_model("memdb", "PersistentStorage")
    chunk = apps.get_model("memdb", "SnapshotChunk")
    alias = schema_editor.connection.alias
    for row in storage.objects.using(alias).filter(chunk_count=0, inline__isnull=False):
        chunk.objects.using(alias).create(snapshot=row, number=0, data=bytes(row.inline))
        storage.objects.using(alias).filter(pk=row.pk).update(chunk_count=1, inline=None)


class Migration(migrations.Migration):
    dependencies = [
        ("memdb", "0006_storage_latest_index"),
    ]

    operations = [
        # The new unique constraint first: there is always one.
        migrations.AddConstraint(
            model_name="persistentstorage",
            constraint=models.UniqueConstraint(
                fields=("app_label", "model_name", "generation", "kind"),
                name="memdb_storage_generation_kind",
            ),
        ),
        migrations.RemoveConstraint(
            model_name="persistentstorage",
            name="memdb_storage_one_per_generation",
        ),
        migrations.RemoveIndex(
            model_name="persistentstorage",
            name="memdb_storage_table",
        ),
        migrations.RemoveIndex(
            model_name="persistentstorage",
            name="memdb_storage_latest",
        ),
        migrations.AlterField(
            model_name="snapshotchunk",
            name="snapshot",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="chunks",
                to="memdb.persistentstorage",
            ),
        ),
        migrations.AddField(
            model_name="persistentstorage",
            name="inline",
            field=models.BinaryField(
                blank=True,
                help_text="The data of a row stored in one piece (a journal delta), when "
                "chunk_count is 0.",
                null=True,
            ),
        ),
        migrations.RunPython(migrations.RunPython.noop, inline_to_chunks, elidable=False),
        migrations.AlterField(
            model_name="persistentstorage",
            name="chunk_count",
            field=models.PositiveIntegerField(
                default=0, help_text="How many SnapshotChunk rows hold the data (0: it is inline)."
            ),
        ),
    ]
