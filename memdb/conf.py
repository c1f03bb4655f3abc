"""The ``MEMDB`` settings dict: defaults, normalisation and reload on ``setting_changed``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from .codecs import as_chain

POLICIES = ("commit", "interval", "manual")
STORES = ("process", "host", "server")

#: Every key of ``settings.MEMDB`` with its default.
DEFAULTS: dict[str, Any] = {
    # Database alias of the in-memory store (``memdb.configure`` adds it to DATABASES).
    "ALIAS": "memdb",
    # Where the memory tables live (``memdb.configure`` builds the alias from it):
    # "process", a SQLite memory database private to each process, "host", a SQLite
    # database file on a RAM-backed file system shared by every worker of the host, or
    # "server", UNLOGGED tables on the default database's PostgreSQL server, shared by
    # every process of every host.
    "STORE": "process",
    # The "host" store's database file (None: django-memdb-<alias>-<hash of the default
    # database>.sqlite3 in /dev/shm, or the temporary directory where there is none).
    "HOST_PATH": None,
    # Keep a "host" store's file made in an earlier boot of the host as it is (a
    # HOST_PATH on disk survives a reboot), instead of emptying it and restoring it
    # from storage.
    "HOST_KEEP_ON_REBOOT": False,
    # When persistent tables are spooled: "commit" (before each committed write
    # returns), "interval" (a background thread every INTERVAL seconds) or "manual"
    # (admin, API, command, and at clean shutdown). A model's ``memdb_policy`` overrides.
    "POLICY": "interval",
    # Seconds between two spools of dirty tables under the "interval" policy: at most
    # this much recent work is lost if the process crashes.
    "INTERVAL": 1.0,
    # Restore every stored snapshot at the first use of the memory alias in a process.
    "RESTORE_ON_START": True,
    # Spool dirty persistent tables when the process exits cleanly (atexit, SIGTERM).
    "FLUSH_ON_EXIT": True,
    # Seconds a statement on the memory database waits for a table lock held by
    # another thread before the "database table is locked" error reaches the caller.
    "LOCK_TIMEOUT": 10.0,
    # Codec names or import paths applied in order to every snapshot's bytes
    # (a model's ``memdb_codecs`` overrides). Built-ins: zlib, gzip, bz2, lzma, fernet.
    "CODECS": (),
    # Bytes of a snapshot per stored chunk, before its codecs run. Each chunk is one row
    # of SnapshotChunk: keep it well under the server's packet limit (MariaDB's
    # max_allowed_packet, 16 MiB by default; a chunk may be sent escaped, up to twice
    # its size). Spool and restore hold a few chunks in memory at a time (the drivers
    # copy and escape what they send), whatever the table's size.
    "CHUNK_SIZE": 4 * 1024 * 1024,
    # Directory of the scratch files a spool or restore streams a snapshot through
    # (None: Python's tempfile default, i.e. TMPDIR or /tmp). Needs about one
    # snapshot's size free while a spool or restore runs.
    "TEMP_DIR": None,
    # Keys of the "fernet" codec, newest first: spools encrypt with the first one,
    # restores decrypt with any of them (see "Key rotation" in the README).
    "FERNET_KEYS": (),
    # Import paths of the DRF permission classes guarding the memdb_api endpoints.
    "API_PERMISSION_CLASSES": ("rest_framework.permissions.IsAdminUser",),
    # DRF throttle scope of POST /memdb/spool and /memdb/restore; set its rate in
    # REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] (no rate there: not throttled).
    "API_THROTTLE_SCOPE": "memdb",
}


@dataclass(frozen=True)
class MemDBSettings:
    ALIAS: str
    STORE: str
    HOST_PATH: str | None
    HOST_KEEP_ON_REBOOT: bool
    POLICY: str
    INTERVAL: float
    RESTORE_ON_START: bool
    FLUSH_ON_EXIT: bool
    LOCK_TIMEOUT: float
    CODECS: tuple[str, ...]
    CHUNK_SIZE: int
    TEMP_DIR: str | None
    FERNET_KEYS: tuple[str | bytes, ...]
    API_PERMISSION_CLASSES: tuple[str, ...]
    API_THROTTLE_SCOPE: str
    unknown_keys: tuple[str, ...] = ()


def _keys(value: Any) -> tuple[str | bytes, ...]:
    """One key or a list of them; empty entries (an unset environment variable) dropped."""
    keys = (value,) if isinstance(value, (str, bytes)) else tuple(value or ())
    return tuple(key for key in keys if key)


def _load() -> MemDBSettings:
    user = dict(getattr(settings, "MEMDB", {}) or {})
    values = {**DEFAULTS, **user}
    unknown = tuple(sorted(k for k in user if k not in DEFAULTS))
    return MemDBSettings(
        ALIAS=values["ALIAS"],
        STORE=values["STORE"],
        HOST_PATH=None if values["HOST_PATH"] is None else str(values["HOST_PATH"]),
        HOST_KEEP_ON_REBOOT=bool(values["HOST_KEEP_ON_REBOOT"]),
        POLICY=values["POLICY"],
        INTERVAL=values["INTERVAL"],
        RESTORE_ON_START=bool(values["RESTORE_ON_START"]),
        FLUSH_ON_EXIT=bool(values["FLUSH_ON_EXIT"]),
        LOCK_TIMEOUT=values["LOCK_TIMEOUT"],
        CODECS=as_chain(values["CODECS"]),
        CHUNK_SIZE=values["CHUNK_SIZE"],
        TEMP_DIR=None if values["TEMP_DIR"] is None else str(values["TEMP_DIR"]),
        FERNET_KEYS=_keys(values["FERNET_KEYS"]),
        API_PERMISSION_CLASSES=as_chain(values["API_PERMISSION_CLASSES"]),
        API_THROTTLE_SCOPE=values["API_THROTTLE_SCOPE"],
        unknown_keys=unknown,
    )


class _Proxy:
    """``memdb_settings.POLICY`` etc., read from Django settings and cached until they change."""

    _cached: MemDBSettings | None = None

    def __getattr__(self, name: str) -> Any:
        if self._cached is None:
            type(self)._cached = _load()
        return getattr(self._cached, name)

    def reload(self) -> None:
        type(self)._cached = None


memdb_settings: Any = _Proxy()


@receiver(setting_changed)
def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting in ("MEMDB", "DATABASES"):
        memdb_settings.reload()
