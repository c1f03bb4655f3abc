"""URLconf of the test suite: the REST control surface mounted as the README says."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("memdb/", include("memdb_api.urls")),
]
