"""The admin: stored snapshots, "Spool now" / "Restore" actions, a "Memory tables" page.

Everything goes through ``memdb.api``. Who may do what follows the admin's permissions:
*view* to see, *change* to spool or restore, *delete* to discard a stored snapshot.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse

from . import api
from .exceptions import MemdbError
from .models import MemoryTable, PersistentStorage
from .registry import label_of, model_name_of, persistent_models

__all__ = ["MemDBModelAdmin", "PersistentStorageAdmin", "MemoryTableAdmin"]


def _spool(request: HttpRequest, labels: list[str], notify: Any) -> None:
    try:
        results = api.spool(*labels)
    except MemdbError as exc:
        results = exc.results
        notify(request, f"Not spooled: {exc}", messages.ERROR)
    for result in results:
        if result.unchanged:
            notify(
                request,
                f"Nothing to write for {result.label}: unchanged since generation "
                f"{result.generation} ({result.rows} rows, {filesizeformat(result.bytes)}).",
                messages.INFO,
            )
        else:
            notify(
                request,
                f"Spooled {result.label}: {result.rows} rows, {filesizeformat(result.bytes)}, "
                f"generation {result.generation}, in {result.milliseconds:.0f} ms.",
                messages.SUCCESS,
            )


def _restore(request: HttpRequest, labels: list[str], notify: Any) -> None:
    try:
        results = api.restore(*labels)
    except MemdbError as exc:
        results = exc.results
        notify(request, f"Not restored: {exc}", messages.ERROR)
    for result in results:
        notify(
            request,
            f"Restored {result.label}: {result.rows} rows from generation {result.generation}, "
            f"in {result.milliseconds:.0f} ms.",
            messages.SUCCESS,
        )


class StorageViews:
    """A ModelAdmin mixin: its views are never wrapped by ``ATOMIC_REQUESTS`` on the
    default database, where a spool inside a transaction is refused (see
    ``memdb.api.storage_view``). Their own writes are to the memory database."""

    def get_urls(self) -> list[Any]:
        urls: list[Any] = super().get_urls()  # type: ignore[misc]
        for pattern in urls:
            if callable(getattr(pattern, "callback", None)):
                api.storage_view(pattern.callback)
        return urls


class MemDBModelAdmin(StorageViews, admin.ModelAdmin):
    """A ModelAdmin for memory models, with the actions "Spool now" and "Restore from storage".

    Use it as the base class (or mixin) of a memory model's admin; both actions need the
    model's *change* permission and act on the whole table, whatever rows are selected.
    """

    actions = ["memdb_spool_now", "memdb_restore"]

    @admin.action(
        description="Spool now (write the whole table to storage)", permissions=["change"]
    )
    def memdb_spool_now(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        _spool(request, [label_of(self.model)], self.message_user)

    @admin.action(
        description="Restore from storage (replace the whole table)", permissions=["change"]
    )
    def memdb_restore(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        _restore(request, [label_of(self.model)], self.message_user)


@admin.register(PersistentStorage)
class PersistentStorageAdmin(StorageViews, admin.ModelAdmin):
    """The stored snapshots: sizes at a glance, never their data, never editable."""

    list_display = [
        "table",
        "kind",
        "row_count",
        "human_size",
        "codec_chain",
        "generation",
        "written_by",
        "updated_at",
        "model_present",
    ]
    list_filter = ["app_label", "kind", "format"]
    search_fields = ["app_label", "model_name"]
    ordering = ["app_label", "model_name"]
    actions = ["restore_selected", "discard_selected"]
    readonly_fields = fields = (
        "table",
        "kind",
        "format",
        "format_version",
        "codec_chain",
        "row_count",
        "human_size",
        "chunk_count",
        "checksum",
        "generation",
        "written_by",
        "created_at",
        "updated_at",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[PersistentStorage]:
        return super().get_queryset(request)

    @admin.display(
        description="model",
        boolean=True,
    )
    def model_present(self, obj: PersistentStorage) -> bool:
        """False for an orphaned snapshot: its model was removed; discard it when done."""
        return any(
            m._meta.app_label == obj.app_label and model_name_of(m) == obj.model_name
            for m in persistent_models()
        )

    @admin.display(description="table", ordering="model_name")
    def table(self, obj: PersistentStorage) -> str:
        return obj.label

    @admin.display(description="size", ordering="size")
    def human_size(self, obj: PersistentStorage) -> str:
        return filesizeformat(obj.size)

    @admin.display(description="codecs")
    def codec_chain(self, obj: PersistentStorage) -> str:
        return " → ".join(obj.codecs or []) or "—"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """*change* allows the restore action; one snapshot's page is read-only, no Save."""
        return obj is None and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """No delete page or "delete selected": discarding goes through memdb.api."""
        return False

    def has_discard_permission(self, request: HttpRequest) -> bool:
        """ "Discard selected snapshots" takes the model's delete permission."""
        return super().has_delete_permission(request)

    @admin.action(description="Restore selected tables", permissions=["change"])
    def restore_selected(self, request: HttpRequest, queryset: QuerySet[PersistentStorage]) -> None:
        _restore(request, sorted({row.label for row in queryset}), self.message_user)

    @admin.action(description="Discard selected snapshots", permissions=["discard"])
    def discard_selected(
        self, request: HttpRequest, queryset: QuerySet[PersistentStorage]
    ) -> HttpResponse | None:
        labels = sorted({row.label for row in queryset})
        if request.POST.get("post") == "yes":
            try:
                deleted = api.discard(*labels)
            except MemdbError as exc:
                self.message_user(request, f"Not discarded: {exc}", messages.ERROR)
                return None
            self.message_user(
                request,
                f"Discarded {deleted} snapshot(s) of {', '.join(labels)}; the tables spool "
                f"again from memory.",
                messages.SUCCESS,
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Discard snapshots?",
            "opts": self.model._meta,
            "queryset": queryset,
            "labels": labels,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(
            request, "admin/memdb/persistentstorage/discard_confirmation.html", context
        )


@admin.register(MemoryTable)
class MemoryTableAdmin(admin.ModelAdmin):
    """The "Memory tables" page: every memory table, with spool and restore buttons."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        from django.urls import path

        info = self.model._meta.app_label, self.model._meta.model_name
        return [
            path(
                "",
                api.storage_view(self.admin_site.admin_view(self.changelist_view)),
                name=f"{info[0]}_{info[1]}_changelist",
            ),
        ]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            if not self.has_change_permission(request):
                raise PermissionDenied
            return self._act(request)
        try:
            infos = api.tables()
        except MemdbError as exc:
            self.message_user(request, f"Cannot list the memory tables: {exc}", messages.ERROR)
            infos = []
        if infos and infos[0].warning:
            self.message_user(request, f"Note: {infos[0].warning}.", messages.WARNING)
        largest = max([i.snapshot_bytes or 0 for i in infos] + [1])
        rows = [
            {
                "info": info,
                "size": filesizeformat(info.snapshot_bytes)
                if info.snapshot_bytes is not None
                else "—",
                "bar": round(100 * (info.snapshot_bytes or 0) / largest, 1),
            }
            for info in infos
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Memory tables",
            "opts": self.model._meta,
            "rows": rows,
            "can_change": self.has_change_permission(request),
            "any_persistent": any(i.persistent for i in infos),
            "store": infos[0].store if infos else None,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/memdb/memorytable/memory_tables.html", context)

    def _act(self, request: HttpRequest) -> HttpResponse:
        action = request.POST.get("action")
        label = request.POST.get("table", "")
        labels = [label] if label else []
        if action == "spool":
            _spool(request, labels, self.message_user)
        elif action == "restore":
            _restore(request, labels, self.message_user)
        else:
            self.message_user(request, f"Unknown action {action!r}.", messages.ERROR)
        return HttpResponseRedirect(request.path)
