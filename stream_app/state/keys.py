"""How a partition's state is keyed, in its changelog and on disk.

Every key starts with the kind of value it holds:

- ``e`` + session id: the session's ``SessionEntry``;
- ``g`` + session id: its ``Registration``;
- ``p`` + session id + NUL + index (4 bytes, big-endian): one ``EventPiece`` of its events;
- ``r``: the partition's ``PartitionReleases``;
- ``o``: the partition's ``SourceOffsets``.

The index of a piece has a fixed width, so a session id may hold any character.
"""

from __future__ import annotations

from enum import Enum

from schemas import SchemaName


class Kind(Enum):
    """A kind of state value: its key prefix and its schema."""

    ENTRY = (b"e", SchemaName.SESSION_ENTRY)
    REGISTRATION = (b"g", SchemaName.REGISTRATION)
    PIECE = (b"p", SchemaName.EVENT_PIECE)
    RELEASES = (b"r", SchemaName.PARTITION_RELEASES)
    OFFSETS = (b"o", SchemaName.SOURCE_OFFSETS)

    def __init__(self, prefix: bytes, schema: str) -> None:
        self.prefix = prefix
        self.schema = schema


_BY_PREFIX = {kind.prefix[0]: kind for kind in Kind}
RELEASES_KEY = Kind.RELEASES.prefix
OFFSETS_KEY = Kind.OFFSETS.prefix


def entry_key(session_id: str) -> bytes:
    return b"e" + session_id.encode()


def registration_key(session_id: str) -> bytes:
    return b"g" + session_id.encode()


def piece_key(session_id: str, index: int) -> bytes:
    return b"p" + session_id.encode() + b"\x00" + index.to_bytes(4, "big")


def kind_of(key: bytes) -> Kind:
    """The kind of value a key holds; KeyError for a key of no kind."""
    return _BY_PREFIX[key[0]]


def session_of(key: bytes) -> str:
    """The session id of an entry, registration or piece key."""
    if key[0] == b"p"[0]:
        return key[1:-5].decode()
    return key[1:].decode()


def piece_index(key: bytes) -> int:
    return int.from_bytes(key[-4:], "big")
