"""A partition's committed state in memory (``CLICKSTREAM_WORKER_STORE=memory``): rebuilt
from the changelog whenever the worker takes the partition."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stream_app import join
from stream_app.state.keys import Kind, session_of

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from stream_app.state.partition import Change


class MemoryPartition:
    """Decoded values by key, and the dirty and watched indexes as a set and a dict."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self._values: dict[bytes, Any] = {}
        self._dirty: set[str] = set()
        self._watched: dict[str, tuple[str, int]] = {}
        self._entries = 0
        self._position = 0

    def get(self, key: bytes) -> Any:
        return self._values.get(key)

    def dirty_sessions(self) -> Iterator[str]:
        return iter(list(self._dirty))

    def watched_sessions(self, up_to: Mapping[str, int]) -> Iterator[str]:
        return iter(
            [sid for sid, (kind, since) in self._watched.items() if since <= up_to.get(kind, -1)]
        )

    def session_ids(self) -> Iterator[str]:
        return iter([session_of(k) for k in self._values if k[:1] == Kind.ENTRY.prefix])

    @property
    def entry_count(self) -> int:
        return self._entries

    @property
    def position(self) -> int:
        return self._position

    def apply(self, changes: Sequence[Change], position: int) -> None:
        values = self._values
        for change in changes:
            key, value = change.key, change.value
            existed = key in values
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value
            if change.kind is Kind.ENTRY:
                self._entries += (value is not None) - existed
                self._index(session_of(key), value)
        self._position = position

    def _index(self, session_id: str, entry: Any) -> None:
        if entry is None or join.is_fully_released(entry):
            self._dirty.discard(session_id)
        else:
            self._dirty.add(session_id)
        watch = None if entry is None else join.watched(entry)
        if watch is None:
            self._watched.pop(session_id, None)
        else:
            self._watched[session_id] = watch

    def drop(self) -> None:
        self._values.clear()
        self._dirty.clear()
        self._watched.clear()
        self._entries = 0
        self._position = 0

    def close(self) -> None:
        self.drop()
