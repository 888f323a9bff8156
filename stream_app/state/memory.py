"""A partition's committed state in memory (``CLICKSTREAM_WORKER_STORE=memory``): rebuilt
from the changelog whenever the worker takes the partition."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stream_app import join
from stream_app.state.keys import Kind, session_of

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from stream_app.state.partition import Change, Indexes


class MemoryPartition:
    """Decoded values by key, and the dirty and due indexes as a set and a dict."""

    def __init__(self, partition: int, due: Indexes) -> None:
        self.partition = partition
        self._due_of = due
        self._values: dict[bytes, Any] = {}
        self._dirty: set[str] = set()
        self._due: dict[str, int] = {}
        self._entries = 0
        self._position = 0

    def get(self, key: bytes) -> Any:
        return self._values.get(key)

    def dirty_sessions(self) -> Iterator[str]:
        return iter(list(self._dirty))

    def due_sessions(self, now_ms: int) -> Iterator[str]:
        return iter([sid for sid, when in self._due.items() if when <= now_ms])

    def session_ids(self) -> Iterator[str]:
        return iter([session_of(k) for k in self._values if k[:1] == Kind.ENTRY.prefix])

    @property
    def entry_count(self) -> int:
        return self._entries

    @property
    def position(self) -> int:
        return self._position

    def apply(
        self, changes: Sequence[Change], encoded: dict[bytes, bytes | None], position: int
    ) -> None:
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
        when = None if entry is None else self._due_of(entry)
        if when is None:
            self._due.pop(session_id, None)
        else:
            self._due[session_id] = when

    def drop(self) -> None:
        self._values.clear()
        self._dirty.clear()
        self._due.clear()
        self._entries = 0
        self._position = 0

    def close(self) -> None:
        self.drop()
