"""Signals sent around spool and restore, always outside any memdb transaction."""

from __future__ import annotations

from django.dispatch import Signal

#: Before a table is spooled. sender: the model class; kwargs: ``label``.
pre_spool = Signal()
#: After a snapshot is committed. sender: the model; kwargs: ``label``, ``result`` (SpoolResult).
post_spool = Signal()
#: Before a snapshot is loaded. sender: the model; kwargs: ``label``.
pre_restore = Signal()
#: After a table is restored and committed. sender: the model; kwargs: ``label``,
#: ``result`` (RestoreResult).
post_restore = Signal()

# The 0.0.6 processor hooks, kept as they were so its users' receivers work unchanged.
# Both are sent with ``sender=object`` and one keyword argument, ``kwargs``: a mutable
# dict with ``data``, ``application`` (app label), ``model`` (class name), ``database``
# (the memory alias), ``processors`` (a list the receiver may append callables to) and
# ``process`` (``MEMDB_PROCESS_ENCODE`` or ``MEMDB_PROCESS_DECODE``). Each processor is
# then called with that dict and may replace ``data``.
#
#: On spool: ``data`` starts as JSON-ready Python data (Django's serialization of the
#: table's rows) and may end as bytes, a str, or JSON-ready data.
store_save = Signal()
#: On restore: ``data`` starts as the stored bytes and must end as the JSON-ready data
#: (or its JSON text, as str or UTF-8 bytes). Processors run in the order appended.
store_load = Signal()

#: The ``process`` values (also set as settings by ``memdb.configure``).
MEMDB_PROCESS_ENCODE = "encode"
MEMDB_PROCESS_DECODE = "decode"
