"""Journal deltas stored inline in their row (one INSERT per delta), and two indexes
dropped that other indexes already cover: (app_label, model_name) is the prefix of the
"latest" index, a chunk's snapshot the prefix of its unique (snapshot, number).

Reversible: going back moves each inline delta into a chunk of its own first."""

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
        ('memdb', '0006_storage_latest_index'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='persistentstorage',
            name='memdb_storage_table',
        ),
        migrations.AddField(
            model_name='persistentstorage',
            name='inline',
            field=models.BinaryField(blank=True, help_text='The data of a row stored in one piece (a journal delta), when chunk_count is 0.', null=True),
        ),
        migrations.RunPython(migrations.RunPython.noop, inline_to_chunks, elidable=False),
        migrations.AlterField(
            model_name='persistentstorage',
            name='chunk_count',
            field=models.PositiveIntegerField(default=0, help_text='How many SnapshotChunk rows hold the data (0: it is inline).'),
        ),
        migrations.AlterField(
            model_name='snapshotchunk',
            name='snapshot',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='chunks', to='memdb.persistentstorage'),
        ),
    ]
