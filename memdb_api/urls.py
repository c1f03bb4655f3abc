"""``path("memdb/", include("memdb_api.urls"))``: each path works with and without a slash.

The slashed twins are left out of the OpenAPI schema so each operation is documented once.
"""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "memdb_api"

_routes = [
    ("tables", views.TableListView, "tables"),
    ("tables/<str:label>", views.TableDetailView, "table"),
    ("spool", views.SpoolView, "spool"),
    ("restore", views.RestoreView, "restore"),
    ("storage", views.StorageView, "storage"),
]

urlpatterns = [
    *(path(route, view.as_view(), name=name) for route, view, name in _routes),
    *(
        path(route + "/", view.as_view(schema=None), name=f"{name}-slash")
        for route, view, name in _routes
    ),
    # A label with a slash in it names no table: answer with the API's JSON 404 too.
    path("tables/<path:label>", views.TableDetailView.as_view(schema=None), name="table-any"),
]
