"""Byte codecs applied to a snapshot after serialization, recorded on each snapshot.

A codec has a ``name`` and ``encode(bytes) -> bytes`` / ``decode(bytes) -> bytes``.
Configured by name (built-ins and registered codecs) or by import path of a class or
instance. Decoding always uses the chain recorded on the snapshot, in reverse; a name
read from storage is only ever looked up among the registered codecs and the import
paths the settings configure, never imported on its own, so restoring cannot run code
chosen by whoever wrote the storage. No codec pickles or evaluates data.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from django.utils.module_loading import import_string

from .exceptions import CodecError

__all__ = ["Codec", "FernetCodec", "register", "get_codec", "chain_for", "encode", "decode"]

#: Chain entries that name a 0.0.6 signal processor rather than a codec.
PROCESSOR_PREFIX = "processor:"


@runtime_checkable
class Codec(Protocol):
    name: str

    def encode(self, data: bytes) -> bytes: ...

    def decode(self, data: bytes) -> bytes: ...


class FunctionCodec:
    def __init__(
        self, name: str, encode: Callable[[bytes], bytes], decode: Callable[[bytes], bytes]
    ) -> None:
        self.name = name
        self._encode = encode
        self._decode = decode

    def encode(self, data: bytes) -> bytes:
        return self._encode(data)

    def decode(self, data: bytes) -> bytes:
        return self._decode(data)


_registry: dict[str, Codec] = {}


def register(codec: Codec) -> Codec:
    """Make ``codec`` available by its name; a second codec of the same name is refused."""
    if not isinstance(codec, Codec):
        raise CodecError(f"{codec!r} is not a codec: it needs name, encode() and decode()")
    if codec.name.startswith(PROCESSOR_PREFIX):
        raise CodecError(f"codec names may not start with {PROCESSOR_PREFIX!r}: {codec.name!r}")
    if codec.name in _registry and _registry[codec.name] is not codec:
        raise CodecError(f"a codec named {codec.name!r} is already registered")
    _registry[codec.name] = codec
    return codec


class FernetCodec:
    """Authenticated encryption (``cryptography``'s Fernet) with key rotation.

    ``MEMDB["FERNET_KEYS"]`` lists the keys, newest first: spools encrypt with the
    first, restores decrypt with whichever listed key fits. A chain with this codec is
    rewritten by every explicit spool, so a spool after a new key was put first
    re-encrypts the table with it.
    """

    name = "fernet"

    def _fernet(self) -> Any:
        from .conf import memdb_settings

        try:
            from cryptography.fernet import Fernet, MultiFernet
        except ImportError as exc:
            raise CodecError(
                "codec 'fernet' needs the cryptography package: pip install 'django-memdb[crypto]'"
            ) from exc
        keys = memdb_settings.FERNET_KEYS
        if not keys:
            raise CodecError("codec 'fernet' needs at least one key in MEMDB['FERNET_KEYS']")
        try:
            return MultiFernet([Fernet(key) for key in keys])
        except (ValueError, TypeError) as exc:
            raise CodecError(
                f"codec 'fernet': MEMDB['FERNET_KEYS'] holds an invalid key ({exc}); "
                "make one with cryptography.fernet.Fernet.generate_key()"
            ) from exc

    def encode(self, data: bytes) -> bytes:
        return bytes(self._fernet().encrypt(data))

    def key_id(self) -> str:
        """A short hash of the key new snapshots are encrypted with (the first one)."""
        import hashlib

        from .conf import memdb_settings

        self._fernet()  # the same clear errors as encode() when keys are missing or bad
        key = memdb_settings.FERNET_KEYS[0]
        return hashlib.sha256(key if isinstance(key, bytes) else key.encode()).hexdigest()[:16]

    def decode(self, data: bytes) -> bytes:
        from cryptography.fernet import InvalidToken

        fernet = self._fernet()
        try:
            return bytes(fernet.decrypt(data))
        except InvalidToken as exc:
            raise CodecError(
                "codec 'fernet': no key in MEMDB['FERNET_KEYS'] decrypts this snapshot "
                "(a wrong key, the key that wrote it was removed, or the bytes are damaged)"
            ) from exc


for _codec in (
    FernetCodec(),
    FunctionCodec("zlib", zlib.compress, zlib.decompress),
    FunctionCodec("gzip", lambda b: gzip.compress(b, mtime=0), gzip.decompress),
    FunctionCodec("bz2", bz2.compress, bz2.decompress),
    FunctionCodec("lzma", lzma.compress, lzma.decompress),
):
    register(_codec)


def get_codec(name: str) -> Codec:
    """The codec registered as ``name``, else the one at import path ``name``."""
    if name in _registry:
        return _registry[name]
    if "." in name:
        try:
            obj: Any = import_string(name)
        except ImportError as exc:
            raise CodecError(f"unknown codec {name!r}: {exc}") from exc
        codec = obj() if isinstance(obj, type) else obj
        if not isinstance(codec, Codec):
            raise CodecError(f"{name!r} is not a codec: it needs name, encode() and decode()")
        return codec
    raise CodecError(f"unknown codec {name!r}; known: {', '.join(sorted(_registry))}")


def configured_names() -> set[str]:
    """Every codec name the settings and the models configure."""
    from django.apps import apps

    from .conf import memdb_settings

    names = set(memdb_settings.CODECS)
    for model in apps.get_models():
        names.update(as_chain(getattr(model, "memdb_codecs", None)))
    return names


def key_ids(chain: Iterable[str], *, label: str) -> list[str]:
    """``name:key id`` of each codec of ``chain`` that has a ``key_id()`` (encryption).

    Recorded on each snapshot: a table whose data is unchanged is rewritten when the
    key it would be encrypted with differs from the one that encrypted it.
    """
    ids = []
    for name in chain:
        if name.startswith(PROCESSOR_PREFIX):
            continue
        try:
            codec = get_codec(name)
            if callable(getattr(codec, "key_id", None)):
                ids.append(f"{name}:{codec.key_id()}")  # type: ignore[attr-defined]
        except CodecError as exc:
            raise CodecError(f"{label}: {exc}") from exc
    return ids


def chain_for(model: Any) -> tuple[str, ...]:
    from .conf import memdb_settings

    owner = model._meta.auto_created or model
    configured = getattr(owner, "memdb_codecs", None)
    return as_chain(memdb_settings.CODECS if configured is None else configured)


def as_chain(names: str | Iterable[str] | None) -> tuple[str, ...]:
    """A codec chain from settings: one name alone counts as a chain of one."""
    if not names:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def encode(chain: Iterable[str], data: bytes, *, label: str) -> bytes:
    """Run ``data`` through ``chain`` in order; errors name ``label`` and the codec."""
    return _apply(list(chain), data, label, "encode")


def decode(chain: Iterable[str], data: bytes, *, label: str) -> bytes:
    """Undo ``chain`` (as recorded on a snapshot), last codec first.

    An import path in the recorded chain is used only if the settings configure it.
    """
    names = list(chain)[::-1]
    unknown = [n for n in names if n not in _registry and n not in configured_names()]
    if unknown:
        raise CodecError(
            f"{label}: the snapshot was encoded with codec {unknown[0]!r}, which is neither "
            "built in, registered, nor configured in MEMDB['CODECS'] or a model's "
            "memdb_codecs (a name read from storage is never imported on its own)"
        )
    return _apply(names, data, label, "decode")


def _apply(names: list[str], data: bytes, label: str, action: str) -> bytes:
    for name in names:
        try:
            data = getattr(get_codec(name), action)(data)
        except CodecError as exc:
            raise CodecError(f"{label}: {exc}") from exc
        except Exception as exc:
            raise CodecError(f"{label}: codec {name!r} failed to {action}: {exc}") from exc
    return data
