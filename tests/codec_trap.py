"""Must never be imported: a snapshot's recorded chain names it, and restoring must not
import a name read from storage. If it is imported anyway, it says so and its codec
decodes (so a restore that imported it would succeed instead of failing)."""

import os

os.environ["MEMDB_CODEC_TRAP_IMPORTED"] = "1"


class Trap:
    name = "trap"

    def encode(self, data: bytes) -> bytes:
        return data

    def decode(self, data: bytes) -> bytes:
        return data


def compress(arguments: dict) -> None:
    """A 0.0.6-style processor that leaves the data as it is."""
