"""The permission and throttle classes of the memdb endpoints, from settings."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from rest_framework.permissions import BasePermission
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle

from memdb.conf import memdb_settings


def configured_permissions() -> list[BasePermission]:
    """Instances of ``MEMDB["API_PERMISSION_CLASSES"]`` (staff only by default)."""
    permissions = []
    for path in memdb_settings.API_PERMISSION_CLASSES:
        try:
            permissions.append(import_string(path)())
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"MEMDB['API_PERMISSION_CLASSES'] names {path!r}, which cannot be imported: {exc}"
            ) from exc
    return permissions


class MemdbThrottle(ScopedRateThrottle):
    """DRF's scoped throttle on ``MEMDB["API_THROTTLE_SCOPE"]``; no rate set: no limit.

    The rate is read from DRF's settings at each request, not from ``THROTTLE_RATES``
    (captured once at import), so a changed ``REST_FRAMEWORK`` setting takes effect.
    """

    def get_rate(self) -> Any:
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)
