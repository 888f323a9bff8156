"""Content digests: a batch read later is the batch that was written, byte for byte.

- A part's digest (one partition's sessions in a batch): SHA-256 over the BSON of its
  documents as MongoDB stores them, session by session in ``session_number`` order, each
  session's document followed by its event chunks in chunk order. BSON documents carry
  their own length, so the concatenation is unambiguous. The writer hashes the bytes it
  inserts; a reader hashes the bytes MongoDB returns (``RawBSONDocument``): any changed,
  missing or added byte changes the digest.
- A batch's digest: SHA-256 over one line ``<partition>:<part digest>\\n`` per partition,
  in partition order. Each partition's owner computes its part alone, so the batch's
  digest is made of the parts' rather than of one pass over the whole batch.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


class PartDigest:
    """The digest of one part, fed its documents' BSON in order."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, documents: Iterable[bytes | memoryview]) -> None:
        """One session's documents: its head, then its chunks in order."""
        for raw in documents:
            self._hash.update(raw)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def batch_digest(parts: Mapping[int, str]) -> str:
    """The batch's digest from its parts' (every partition's, 0 to N-1)."""
    lines = "".join(f"{partition}:{parts[partition]}\n" for partition in sorted(parts))
    return hashlib.sha256(lines.encode()).hexdigest()


class BatchCheck:
    """Recomputes a batch's part digests from the sessions a reader is given, in
    ``session_number`` order (partitions interleaved), and names the parts that differ
    from what was recorded when the batch was written."""

    def __init__(self, recorded: Mapping[int, str]) -> None:
        self._recorded = dict(recorded)
        self._parts = {partition: PartDigest() for partition in recorded}

    def add(self, partition: int, documents: Iterable[bytes | memoryview]) -> None:
        part = self._parts.get(partition)
        if part is None:  # a session of a partition the batch does not have
            part = self._parts[partition] = PartDigest()
        part.add(documents)

    def differing_parts(self) -> list[int]:
        return sorted(
            partition
            for partition, part in self._parts.items()
            if part.hexdigest() != self._recorded.get(partition)
        )
