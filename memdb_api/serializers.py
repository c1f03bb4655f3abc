"""Request and response shapes of the memdb endpoints (documented in ``openapi.yaml``)."""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from drf_spectacular.extensions import OpenApiSerializerExtension
from rest_framework import serializers

POLICY_CHOICES = ["commit", "interval", "manual"]
RESTORE_STATES = ["ok", "failed", "none"]
#: A table label in a request body: something besides ASCII whitespace, no NUL character.
#: The whitespace class is spelled out: ``\s`` differs between Python and JSON Schema.
LABEL_PATTERN = r"^[^\x00]*[^\x00 \t\n\r\f\v][^\x00]*$"


class StrictCharField(serializers.CharField):
    """A JSON string only: DRF's ``CharField`` would take the number 5 as ``"5"``."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class StrictBooleanField(serializers.BooleanField):
    """JSON ``true`` or ``false`` only: DRF's ``BooleanField`` would take 0, "yes", "off"."""

    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class TableSerializer(serializers.Serializer):
    label = serializers.CharField(
        help_text="`app_label.ModelName`: how the other endpoints name it."
    )
    app_label = serializers.CharField()
    model = serializers.CharField(source="model_name")
    persistent = serializers.BooleanField(help_text="Spooled to PersistentStorage.")
    policy = serializers.ChoiceField(
        choices=POLICY_CHOICES, allow_null=True, help_text="Null for memory-only tables."
    )
    rows = serializers.IntegerField(help_text="Rows in memory now.")
    dirty = serializers.BooleanField(help_text="Changed since its last snapshot.")
    last_spooled = serializers.DateTimeField(allow_null=True)
    snapshot_bytes = serializers.IntegerField(allow_null=True)
    snapshot_rows = serializers.IntegerField(allow_null=True)
    generation = serializers.IntegerField(allow_null=True)
    codecs = serializers.ListField(child=serializers.CharField())
    restore_state = serializers.ChoiceField(
        choices=RESTORE_STATES,
        help_text="ok: restored in this store; failed: see restore_error; none: nothing restored.",
    )
    restore_error = serializers.CharField(allow_null=True)
    store = serializers.ChoiceField(
        choices=[("process", "process"), ("host", "host"), ("server", "server")],
        help_text="Where the table lives. process: a memory database private to the process "
        "that answers; host: a database file shared by every worker of its host; server: "
        "tables on the default database's server, shared by every host.",
    )
    warning = serializers.CharField(
        allow_null=True,
        help_text="Set when the answering process looks like one of several workers of one "
        "server (e.g. gunicorn --workers 4): each has its own copy of the table.",
    )
    leader = serializers.CharField(
        allow_null=True,
        help_text="Who led the table's last spool in its store (host:pid); null before one.",
    )


class TablesRequestSerializer(serializers.Serializer):
    tables = serializers.ListField(
        # A blank label or one with a NUL character is a 400, as the pattern says. No
        # trimming: Python's str.strip() also strips control characters that the schema's
        # pattern counts as content, so a label like "\x1c" must reach the lookup (a 404).
        child=StrictCharField(
            max_length=200, trim_whitespace=False, validators=[RegexValidator(LABEL_PATTERN)]
        ),
        required=False,
        max_length=1000,
        help_text="Labels (`app_label.ModelName`); omitted or empty: every persistent table.",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = (
            set(self.initial_data) - set(self.fields)
            if isinstance(self.initial_data, dict)
            else set()
        )
        if unknown:
            raise serializers.ValidationError(
                {name: ["Unknown field."] for name in sorted(unknown)}
            )
        return attrs


class ClosedRequestSchema(OpenApiSerializerExtension):
    """Document what ``validate`` enforces: a request body with an unknown key is a 400.

    (A typo such as ``{"table": [...]}`` must not silently mean "every table".)
    """

    target_class = TablesRequestSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema: Any, direction: Any) -> Any:
        schema = auto_schema._map_serializer(self.target, direction, bypass_extensions=True)
        schema["additionalProperties"] = False
        return schema


class SpoolRequestSerializer(TablesRequestSerializer):
    force = StrictBooleanField(
        required=False,
        default=False,
        help_text="Overwrite a snapshot another process wrote or one that failed to restore.",
    )


class SpoolResultSerializer(serializers.Serializer):
    label = serializers.CharField()
    rows = serializers.IntegerField()
    bytes = serializers.IntegerField()
    milliseconds = serializers.FloatField()
    generation = serializers.IntegerField()
    unchanged = serializers.BooleanField(
        help_text="Nothing changed since the stored snapshot, so none was written."
    )
    chunks = serializers.IntegerField(help_text="How many stored chunks hold the snapshot.")
    kind = serializers.ChoiceField(
        choices=["snapshot", "delta"],
        help_text="snapshot: the whole table was stored; delta: only the rows changed "
        "since the last spool (commit policy, see the journal in the README).",
    )


class RestoreResultSerializer(serializers.Serializer):
    label = serializers.CharField()
    rows = serializers.IntegerField()
    milliseconds = serializers.FloatField()
    generation = serializers.IntegerField()


class SpoolResponseSerializer(serializers.Serializer):
    results = SpoolResultSerializer(many=True)


class RestoreResponseSerializer(serializers.Serializer):
    results = RestoreResultSerializer(many=True)


class SnapshotSerializer(serializers.Serializer):
    table = serializers.CharField(source="label")
    kind = serializers.CharField()
    format = serializers.CharField()
    rows = serializers.IntegerField()
    bytes = serializers.IntegerField()
    codecs = serializers.ListField(child=serializers.CharField())
    generation = serializers.IntegerField()
    written_by = serializers.CharField()
    updated = serializers.DateTimeField()
    chunks = serializers.IntegerField(help_text="How many stored chunks hold it.")
    orphaned = serializers.BooleanField(
        help_text="No persistent model claims it any more (its app or model was removed); "
        "it is never restored and stays until discarded."
    )


class StorageTotalsSerializer(serializers.Serializer):
    snapshots = serializers.IntegerField()
    rows = serializers.IntegerField()
    bytes = serializers.IntegerField()


class StorageSerializer(serializers.Serializer):
    snapshots = SnapshotSerializer(many=True)
    totals = StorageTotalsSerializer()


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField(help_text="What went wrong, naming the table.")
    code = serializers.CharField(help_text="A stable machine-readable code.")
    errors = serializers.DictField(
        child=serializers.CharField(),
        required=False,
        help_text="Per table, when an operation over several tables partly failed.",
    )
    results = serializers.ListField(
        child=serializers.DictField(),
        required=False,
        help_text="What succeeded before the failure was reported.",
    )
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Per request field, what is wrong with it (code `invalid`).",
    )
