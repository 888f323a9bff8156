"""One partition's state as the worker handles a batch of messages: reads go through the
changes staged so far to what is committed, and the staged changes are committed together
(to the changelog, in one Kafka transaction, then to the local store) or dropped.

The committed state keeps two indexes of its sessions, so neither a release nor a tick
reads every session of the partition:

- *dirty*: sessions a release must look at (not released with every event they have);
- *watched*: sessions a tick may act on, by kind and since when (events waiting for a
  registration since, a fully released session quiet since: ``join.watched``), so a tick
  reads only the sessions whose wait or retention time has run out.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from stream_app import join
from stream_app.state.keys import (
    OFFSETS_KEY,
    RELEASES_KEY,
    Kind,
    entry_key,
    piece_key,
    registration_key,
    session_of,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

    from schemas.records import (
        EventPiece,
        PartitionReleases,
        Registration,
        SessionEntry,
        SourceOffsets,
    )

# Sessions whose event ids are kept in memory for de-duplication (derived from the pieces,
# rebuilt on demand), per partition: the active ones, without every id of every session.
KNOWN_IDS_SESSIONS = 2048


@dataclass(frozen=True, slots=True)
class Change:
    """A value written (``value``) or removed (None), with the value it replaces in the
    committed state (kept for the indexes: only for entries)."""

    key: bytes
    kind: Kind
    value: Any
    old: Any


class Backend(Protocol):
    """One partition's committed state: in memory, or a partition of the local RocksDB."""

    partition: int

    def get(self, key: bytes) -> Any:
        """The decoded value at ``key``, or None."""

    def dirty_sessions(self) -> Iterator[str]:
        """Sessions a release must look at."""

    def watched_sessions(self, up_to: Mapping[str, int]) -> Iterator[str]:
        """Sessions watched since at most ``up_to[kind]``, for each kind of ``join.watched``."""

    def session_ids(self) -> Iterator[str]:
        """Every session of the partition."""

    @property
    def entry_count(self) -> int: ...

    @property
    def position(self) -> int:
        """The changelog offset the committed state was restored or written up to (the
        next one to read)."""

    def apply(self, changes: Sequence[Change], position: int) -> None:
        """Commit ``changes``, the state now being what the changelog holds up to
        ``position``."""

    def drop(self) -> None:
        """Forget everything (the changelog is restored from its beginning)."""

    def close(self) -> None: ...


class PartitionState:
    """One partition's state, with the changes staged for the batch being handled.

    Args:
        backend: the committed state.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.partition = backend.partition
        self._staged: dict[bytes, Change] = {}
        self._known: OrderedDict[str, set[str]] = OrderedDict()

    # -- reading ------------------------------------------------------------------------

    def _get(self, key: bytes) -> Any:
        change = self._staged.get(key)
        return self.backend.get(key) if change is None else change.value

    def entry(self, session_id: str) -> SessionEntry | None:
        return cast("SessionEntry | None", self._get(entry_key(session_id)))

    def registration(self, session_id: str) -> Registration | None:
        return cast("Registration | None", self._get(registration_key(session_id)))

    def piece(self, session_id: str, index: int) -> EventPiece | None:
        return cast("EventPiece | None", self._get(piece_key(session_id, index)))

    def piece_reader(self, session_id: str) -> Callable[[int], EventPiece | None]:
        return lambda index: self.piece(session_id, index)

    def releases(self) -> PartitionReleases:
        found = cast("PartitionReleases | None", self._get(RELEASES_KEY))
        return found or {"partition": self.partition, "pending": [], "releases": []}

    def offsets(self) -> SourceOffsets | None:
        return cast("SourceOffsets | None", self._get(OFFSETS_KEY))

    def known_ids(self, entry: SessionEntry) -> set[str]:
        """The ids of the session's events, from the pieces unless recently used."""
        session_id = entry["session_id"]
        ids = self._known.get(session_id)
        if ids is None:
            ids = {e["event_id"] for e in join.events_of(entry, self.piece_reader(session_id))}
            self._known[session_id] = ids
            if len(self._known) > KNOWN_IDS_SESSIONS:
                self._known.popitem(last=False)
        else:
            self._known.move_to_end(session_id)
        return ids

    def user_entries(self, user_id: str) -> list[SessionEntry]:
        """Every registered session of ``user_id``, staged changes included: a scan of
        the partition's registrations (erasures are rare; no index costs each click)."""
        staged = self._staged_sessions()
        ids = itertools.chain(staged, (i for i in self.backend.session_ids() if i not in staged))
        # Streamed, not gathered (a partition may hold millions); the entry decoded only
        # for the user's sessions.
        users = (i for i in ids if (r := self.registration(i)) and r["user_id"] == user_id)
        return list(self._entries(users))

    def _entries(self, session_ids: Iterable[str]) -> Iterator[SessionEntry]:
        for session_id in session_ids:
            entry = self.entry(session_id)
            if entry is not None:
                yield entry

    def _staged_sessions(self) -> set[str]:
        return {session_of(c.key) for c in self._staged.values() if c.kind is Kind.ENTRY}

    def dirty_entries(self) -> list[SessionEntry]:
        """Every session a release must look at, staged changes included."""
        staged = self._staged_sessions()
        ids = {sid for sid in self.backend.dirty_sessions() if sid not in staged}
        ids.update(
            sid for sid in staged if (e := self.entry(sid)) and not join.is_fully_released(e)
        )
        return list(self._entries(ids))

    def watched_entries(self, up_to: Mapping[str, int]) -> list[SessionEntry]:
        """Every session watched since at most ``up_to[kind]`` (see ``join.watched``),
        staged changes included."""
        staged = self._staged_sessions()
        ids = {sid for sid in self.backend.watched_sessions(up_to) if sid not in staged}
        for sid in staged:
            entry = self.entry(sid)
            watch = join.watched(entry) if entry is not None else None
            if watch is not None and watch[1] <= up_to.get(watch[0], -1):
                ids.add(sid)
        return list(self._entries(ids))

    # -- staging ------------------------------------------------------------------------

    def _stage(self, key: bytes, kind: Kind, value: Any) -> None:
        change = self._staged.get(key)
        if change is not None:
            old = change.old
        else:
            old = self.backend.get(key) if kind is Kind.ENTRY else None
        self._staged[key] = Change(key, kind, value, old)

    def put_entry(self, entry: SessionEntry) -> None:
        self._stage(entry_key(entry["session_id"]), Kind.ENTRY, entry)

    def put_registration(self, session_id: str, registration: Registration) -> None:
        self._stage(registration_key(session_id), Kind.REGISTRATION, registration)

    def put_appended(self, appended: join.Appended) -> None:
        """A session's changed pieces and its entry (which counts them); the known ids
        follow."""
        session_id = appended.entry["session_id"]
        for index, piece in appended.pieces.items():
            self._stage(piece_key(session_id, index), Kind.PIECE, piece)
        self.put_entry(appended.entry)
        known = self._known.get(session_id)
        if known is not None:
            known.update(appended.new_ids)

    def remove_pieces(self, session_id: str, indexes: Iterable[int]) -> None:
        for index in indexes:
            self._stage(piece_key(session_id, index), Kind.PIECE, None)

    def remove_session(self, entry: SessionEntry) -> None:
        session_id = entry["session_id"]
        self.remove_pieces(session_id, range(entry["piece_count"]))
        self._stage(registration_key(session_id), Kind.REGISTRATION, None)
        self._stage(entry_key(session_id), Kind.ENTRY, None)
        self._known.pop(session_id, None)

    def forget_known_ids(self, session_id: str) -> None:
        self._known.pop(session_id, None)

    def put_releases(self, releases: PartitionReleases) -> None:
        self._stage(RELEASES_KEY, Kind.RELEASES, releases)

    def put_offsets(self, offsets: SourceOffsets) -> None:
        self._stage(OFFSETS_KEY, Kind.OFFSETS, offsets)

    # -- committing ---------------------------------------------------------------------

    @property
    def changed(self) -> bool:
        return bool(self._staged)

    @property
    def staged_count(self) -> int:
        return len(self._staged)

    def staged(self) -> list[Change]:
        return list(self._staged.values())

    def committed(self, position: int) -> None:
        """The staged changes are on the changelog up to ``position``: apply them."""
        self.backend.apply(list(self._staged.values()), position)
        self._staged.clear()

    def drop_staged(self) -> None:
        """The staged changes will not be committed: forget them (and what was derived)."""
        self._staged.clear()
        self._known.clear()
