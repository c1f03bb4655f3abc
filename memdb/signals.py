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
