from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from shop import views

urlpatterns = [
    path("", views.home, name="home"),
    path("countries/", views.countries, name="countries"),
    path("countries/<str:code>/visit", views.visit, name="visit"),
    path("admin/", admin.site.urls),
    path("memdb/", include("memdb_api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]
