"""Codecs written the way a user would write one, for the codec tests.

``Xor`` is configured by import path (``"tests.codec_custom.Xor"``); the tests register
an instance of it under a name of their own. It is a reversible byte transform with a
magic header and a CRC, so damaged data is detected rather than decoded into garbage.
"""

from __future__ import annotations

import zlib

MAGIC = b"XOR1"
MASK = 0x5A
TABLE = bytes(b ^ MASK for b in range(256))


class Xor:
    name = "tests-xor"

    def encode(self, data: bytes) -> bytes:
        return MAGIC + zlib.crc32(data).to_bytes(4, "big") + data.translate(TABLE)

    def decode(self, data: bytes) -> bytes:
        if data[:4] != MAGIC:
            raise ValueError("not an XOR1 stream")
        body = data[8:].translate(TABLE)
        if zlib.crc32(body) != int.from_bytes(data[4:8], "big"):
            raise ValueError("XOR1 CRC mismatch")
        return body


class BrokenDecode(Xor):
    """Encodes fine; raises on decode."""

    name = "tests-broken-decode"

    def decode(self, data: bytes) -> bytes:
        raise ValueError("BrokenDecode always fails")


class BrokenEncode(Xor):
    """Raises on encode."""

    name = "tests-broken-encode"

    def encode(self, data: bytes) -> bytes:
        raise ValueError("BrokenEncode always fails")
