"""The memdb endpoints. Each calls ``memdb.api`` and nothing else of memdb's internals."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from memdb import api
from memdb.conf import memdb_settings
from memdb.exceptions import (
    ConflictError,
    MemdbError,
    NotPersistentError,
    ProtectedTableError,
    RestoreError,
    UnknownTableError,
)

from .permissions import MemdbThrottle, configured_permissions
from .serializers import (
    ErrorSerializer,
    RestoreResponseSerializer,
    SpoolRequestSerializer,
    SpoolResponseSerializer,
    StorageSerializer,
    TableSerializer,
    TablesRequestSerializer,
)

#: HTTP status and code of each memdb error; anything else is a server-side failure.
ERROR_STATUS: list[tuple[type[MemdbError], int, str]] = [
    (UnknownTableError, status.HTTP_404_NOT_FOUND, "unknown_table"),
    (NotPersistentError, status.HTTP_400_BAD_REQUEST, "not_persistent"),
    (ConflictError, status.HTTP_409_CONFLICT, "conflict"),
    (ProtectedTableError, status.HTTP_409_CONFLICT, "restore_failed"),
    (RestoreError, status.HTTP_409_CONFLICT, "restore_failed"),
]

TABLE_EXAMPLE = {
    "label": "shop.Score",
    "app_label": "shop",
    "model": "Score",
    "persistent": True,
    "policy": "interval",
    "rows": 3,
    "dirty": False,
    "last_spooled": "2026-11-27T03:15:32.123456Z",
    "snapshot_bytes": 8192,
    "snapshot_rows": 3,
    "generation": 4,
    "codecs": ["zlib"],
    "restore_state": "ok",
    "restore_error": None,
    "store": "process",
    "warning": None,
    "leader": "web-1:4242",
}


#: How many problems of an invalid body the ``detail`` message lists (``fields`` has all).
MAX_PROBLEMS_SHOWN = 5


def _messages(detail: Any) -> list[str]:
    """DRF's error detail of one field, nested or not, as flat messages.

    An item of a list field fails as ``{index: [messages]}``: its messages read
    ``"item 3: Not a valid string."``.
    """
    if isinstance(detail, dict):
        return [
            f"{'item ' if isinstance(key, int) else ''}{key}: {message}"
            for key, value in detail.items()
            for message in _messages(value)
        ]
    if isinstance(detail, list):
        return [message for value in detail for message in _messages(value)]
    return [str(detail)]


def _error(description: str, detail: str, code: str) -> OpenApiResponse:
    return OpenApiResponse(
        ErrorSerializer,
        description=description,
        examples=[OpenApiExample(code, value={"detail": detail, "code": code})],
    )


DENIED = {
    401: _error(
        "Not authenticated.", "Authentication credentials were not provided.", "not_authenticated"
    ),
    403: _error(
        "Not staff (or a missing CSRF token).",
        "You do not have permission to perform this action.",
        "permission_denied",
    ),
}
UNKNOWN = {
    404: _error(
        "No memory table has this label.",
        "'shop.Nope' is not a memory table; expected 'app_label.ModelName' of a model tagged InMemoryDB or PersistentInMemoryDB",
        "unknown_table",
    )
}
BAD_BODY = {
    400: _error(
        "A malformed body, or a memory-only table named.",
        "shop.Hit is memory-only (InMemoryDB): it has no snapshot; tag it PersistentInMemoryDB to spool and restore it",
        "not_persistent",
    )
}
#: Answers only a POST can get: throttled, or a body that is not JSON.
POSTED = {
    429: _error(
        "Too many spool or restore requests.",
        "Request was throttled. Expected available in 42 seconds.",
        "throttled",
    ),
    415: _error(
        "A body that is not JSON (send Content-Type: application/json).",
        'Unsupported media type "text/plain" in request.',
        "unsupported_media_type",
    ),
}


class JSONBodyParser(JSONParser):
    """DRF's JSON parser, but a body nested too deep to decode is a 400, not a 500."""

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise exceptions.ParseError("JSON parse error - nested too deeply") from exc


class MemdbAPIView(APIView):
    """Permissions and throttle from ``MEMDB``; every error as ``{"detail", "code"}`` JSON.

    Never wrapped by ``ATOMIC_REQUESTS`` on the default database, where a spool inside a
    transaction is refused (``memdb.api.storage_view``).
    """

    throttle_classes = [MemdbThrottle]
    parser_classes = [JSONBodyParser]

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Any:
        return api.storage_view(super().as_view(**initkwargs))

    @property
    def throttle_scope(self) -> str:
        return str(memdb_settings.API_THROTTLE_SCOPE)

    def get_permissions(self) -> list[Any]:
        return configured_permissions()

    def get_throttles(self) -> list[Any]:
        return (
            [throttle() for throttle in self.throttle_classes]
            if self.request.method == "POST"
            else []
        )

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, MemdbError):
            return self._memdb_error(exc)
        response = super().handle_exception(exc)
        if isinstance(exc, exceptions.APIException):
            if isinstance(exc, exceptions.ValidationError):
                by_field = exc.detail if isinstance(exc.detail, dict) else {"body": exc.detail}
                fields = {str(name): _messages(msgs) for name, msgs in by_field.items()}
                problems = [f"{name}: {msg}" for name, msgs in fields.items() for msg in msgs]
                shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
                if len(problems) > MAX_PROBLEMS_SHOWN:
                    shown += f"; and {len(problems) - MAX_PROBLEMS_SHOWN} more (see fields)"
                response.data = {
                    "detail": f"The request body is not valid: {shown}",
                    "code": "invalid",
                    "fields": fields,
                }
            else:
                detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
                response.data = {
                    "detail": detail,
                    "code": exc.get_codes() if isinstance(exc.get_codes(), str) else "error",
                }
        return response

    def _memdb_error(self, exc: MemdbError) -> Response:
        http_status, code = status.HTTP_500_INTERNAL_SERVER_ERROR, "memdb_error"
        for error_type, error_status, error_code in ERROR_STATUS:
            if isinstance(exc, error_type):
                http_status, code = error_status, error_code
                break
        body: dict[str, Any] = {"detail": str(exc), "code": code}
        if exc.errors:
            body["errors"] = {label: str(error) for label, error in exc.errors.items()}
            body["results"] = [asdict(result) for result in exc.results]
        return Response(body, status=http_status)

    def tables_from(
        self, request: Request, serializer_class: type
    ) -> tuple[list[str], dict[str, Any]]:
        # An empty body parses as {} (every table); any other JSON, null included, must be
        # an object.
        data = request.data
        if not isinstance(data, dict):
            raise exceptions.ValidationError({"body": ["Expected a JSON object."]})
        serializer = serializer_class(data=data)
        serializer.is_valid(raise_exception=True)
        return list(serializer.validated_data.get("tables") or []), serializer.validated_data


class TableListView(MemdbAPIView):
    @extend_schema(
        operation_id="memdb_tables_list",
        summary="List the memory tables",
        description="Every memory table with its row count, dirty state, snapshot and restore state.",
        responses={200: TableSerializer(many=True), **DENIED},
        # drf-spectacular lists the example itself, as the response is many=True.
        examples=[OpenApiExample("tables", value=TABLE_EXAMPLE, response_only=True)],
        tags=["memdb"],
    )
    def get(self, request: Request) -> Response:
        return Response(TableSerializer(api.tables(), many=True).data)


class TableDetailView(MemdbAPIView):
    @extend_schema(
        operation_id="memdb_tables_retrieve",
        summary="Show one memory table",
        description="The same fields as the list, for the table named `app_label.ModelName`.",
        parameters=[
            OpenApiParameter(
                "label",
                str,
                OpenApiParameter.PATH,
                description="`app_label.ModelName`, case-insensitive.",
                examples=[OpenApiExample("label", value="shop.Score")],
            )
        ],
        responses={200: TableSerializer, **DENIED, **UNKNOWN},
        examples=[OpenApiExample("table", value=TABLE_EXAMPLE, response_only=True)],
        tags=["memdb"],
    )
    def get(self, request: Request, label: str) -> Response:
        (info,) = api.tables(label)
        return Response(TableSerializer(info).data)


class SpoolView(MemdbAPIView):
    @extend_schema(
        operation_id="memdb_spool",
        summary="Spool persistent tables now",
        description=(
            "Writes the named persistent tables (all when `tables` is omitted or empty) to "
            "PersistentStorage. A table unchanged since its stored snapshot is not rewritten "
            "(`unchanged: true`) unless `force` is set. Every table is tried; if some fail, "
            "the answer is the error of the first failure with `errors` per table and the "
            "`results` of the others."
        ),
        request=SpoolRequestSerializer,
        responses={
            200: SpoolResponseSerializer,
            **BAD_BODY,
            **DENIED,
            **UNKNOWN,
            409: _error(
                "Another process wrote the snapshot (generation conflict), or the table's snapshot failed to restore.",
                "shop.Score: the stored snapshot is generation 5, written by web-2:4242 at 2026-11-27 03:15:06, but this process last saw generation 4: another process writes this table too. Restore to take its data, or spool with force to overwrite it",
                "conflict",
            ),
            **POSTED,
        },
        examples=[
            OpenApiExample("some tables", value={"tables": ["shop.Score"]}, request_only=True),
            OpenApiExample(
                "spooled",
                value={
                    "results": [
                        {
                            "label": "shop.Score",
                            "rows": 3,
                            "bytes": 8192,
                            "milliseconds": 3.2,
                            "generation": 5,
                            "unchanged": False,
                            "chunks": 1,
                            "kind": "snapshot",
                        }
                    ]
                },
                response_only=True,
            ),
        ],
        tags=["memdb"],
    )
    def post(self, request: Request) -> Response:
        labels, data = self.tables_from(request, SpoolRequestSerializer)
        results = api.spool(*labels, force=bool(data.get("force")))
        return Response(SpoolResponseSerializer({"results": [asdict(r) for r in results]}).data)


class RestoreView(MemdbAPIView):
    @extend_schema(
        operation_id="memdb_restore",
        summary="Restore tables from their snapshots",
        description=(
            "Replaces the named tables (all that have a snapshot when `tables` is omitted or "
            "empty) with their stored snapshots, together in one transaction. A snapshot that "
            "cannot be restored is left untouched and answered with 409."
        ),
        request=TablesRequestSerializer,
        responses={
            200: RestoreResponseSerializer,
            **BAD_BODY,
            **DENIED,
            **UNKNOWN,
            409: _error(
                "A snapshot could not be restored (corrupt, wrong key, incompatible schema, or none stored).",
                "shop.Score: checksum mismatch, the stored snapshot (generation 8) is corrupt",
                "restore_failed",
            ),
            **POSTED,
        },
        examples=[
            OpenApiExample("some tables", value={"tables": ["shop.Score"]}, request_only=True),
            OpenApiExample(
                "restored",
                value={
                    "results": [
                        {"label": "shop.Score", "rows": 3, "milliseconds": 1.1, "generation": 5}
                    ]
                },
                response_only=True,
            ),
        ],
        tags=["memdb"],
    )
    def post(self, request: Request) -> Response:
        labels, _ = self.tables_from(request, TablesRequestSerializer)
        results = api.restore(*labels)
        return Response(RestoreResponseSerializer({"results": [asdict(r) for r in results]}).data)


class StorageView(MemdbAPIView):
    @extend_schema(
        operation_id="memdb_storage",
        summary="Show the stored snapshots and their sizes",
        description="One entry per PersistentStorage row (never its data), with totals.",
        responses={200: StorageSerializer, **DENIED},
        examples=[
            OpenApiExample(
                "storage",
                value={
                    "snapshots": [
                        {
                            "table": "shop.Score",
                            "kind": "snapshot",
                            "format": "sqlite-table",
                            "rows": 3,
                            "bytes": 8192,
                            "codecs": [],
                            "generation": 4,
                            "written_by": "web-1:4242",
                            "updated": "2026-11-27T03:15:32.123456Z",
                            "chunks": 1,
                            "orphaned": False,
                        }
                    ],
                    "totals": {"snapshots": 1, "rows": 3, "bytes": 8192},
                },
                response_only=True,
            )
        ],
        tags=["memdb"],
    )
    def get(self, request: Request) -> Response:
        snapshots = api.storage()
        totals = {
            "snapshots": len(snapshots),
            "rows": sum(s.rows for s in snapshots),
            "bytes": sum(s.bytes for s in snapshots),
        }
        return Response(StorageSerializer({"snapshots": snapshots, "totals": totals}).data)
