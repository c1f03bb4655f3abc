"""memdb_api: a Django REST framework control surface for django-memdb.

Mount it with ``path("memdb/", include("memdb_api.urls"))``. Every view calls
``memdb.api`` only. Staff-only by default (``MEMDB["API_PERMISSION_CLASSES"]``); spool
and restore are throttled by the DRF scope ``MEMDB["API_THROTTLE_SCOPE"]``.
"""
