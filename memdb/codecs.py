"""Byte codecs applied to a snapshot after serialization, recorded on each snapshot.

A codec has a ``name`` and ``encode(bytes) -> bytes`` / ``decode(bytes) -> bytes``.
Configured by name (built-ins and registered codecs) or by import path of a class or
instance. Decoding always uses the chain recorded on the snapshot, in reverse.
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

__all__ = ["Codec", "register", "get_codec", "chain_for", "encode", "decode"]


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
    if codec.name in _registry and _registry[codec.name] is not codec:
        raise CodecError(f"a codec named {codec.name!r} is already registered")
    _registry[codec.name] = codec
    return codec


for _codec in (
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
    """Undo ``chain`` (as recorded on a snapshot), last codec first."""
    return _apply(list(chain)[::-1], data, label, "decode")


def _apply(names: list[str], data: bytes, label: str, action: str) -> bytes:
    for name in names:
        try:
            data = getattr(get_codec(name), action)(data)
        except CodecError as exc:
            raise CodecError(f"{label}: {exc}") from exc
        except Exception as exc:
            raise CodecError(f"{label}: codec {name!r} failed to {action}: {exc}") from exc
    return data
