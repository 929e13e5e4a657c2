"""A compact set of request ids, for duplicate detection and resume.

A Python ``set`` of strings costs ~100 bytes per id (the string object plus a hash
slot), so a 10-million-line job would need a gigabyte just to remember what it has
seen. ``IdSet`` keeps a 64-bit fingerprint of each id in an open-addressing table
held in one ``array('Q')``: 8 bytes per slot, at most two thirds of the slots
used, so between 12 and 24 bytes per id (at most 24 MB per million ids).

The price is a false match when two different ids share a fingerprint: with n ids
the chance of any such pair is about n**2 / 2**65 (one in 370,000 for ten million
ids). A false match makes an id look already seen: batchproc then reports it as a
duplicate (or, on resume, as already done), never sends it twice.
"""

from __future__ import annotations

import hashlib
from array import array

__all__ = ["IdSet", "fingerprint"]

_EMPTY = 0


def fingerprint(custom_id: str) -> int:
    """A 64-bit fingerprint of ``custom_id``, never 0 (0 marks an empty slot)."""
    digest = hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class IdSet:
    """A set of ids held as 64-bit fingerprints (see the module docstring)."""

    __slots__ = ("_table", "_mask", "_count")

    def __init__(self, capacity: int = 1024) -> None:
        size = 1024
        while size * 2 < capacity * 3:
            size *= 2
        self._table = array("Q", bytes(8 * size))
        self._mask = size - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, custom_id: object) -> bool:
        if not isinstance(custom_id, str):
            return False
        fp = fingerprint(custom_id)
        table, mask = self._table, self._mask
        i = fp & mask
        while True:
            slot = table[i]
            if slot == fp:
                return True
            if slot == _EMPTY:
                return False
            i = (i + 1) & mask

    def add(self, custom_id: str) -> bool:
        """Add ``custom_id``; return False if it (or its fingerprint) was already there."""
        return self._insert(fingerprint(custom_id))

    def _insert(self, fp: int) -> bool:
        table, mask = self._table, self._mask
        i = fp & mask
        while True:
            slot = table[i]
            if slot == fp:
                return False
            if slot == _EMPTY:
                table[i] = fp
                self._count += 1
                if self._count * 3 > (mask + 1) * 2:
                    self._grow()
                return True
            i = (i + 1) & mask

    def _grow(self) -> None:
        old = self._table
        self._table = array("Q", bytes(8 * len(old) * 2))
        self._mask = len(self._table) - 1
        self._count = 0
        for fp in old:
            if fp != _EMPTY:
                self._insert(fp)

    @property
    def nbytes(self) -> int:
        """Memory held by the table, in bytes."""
        return self._table.itemsize * len(self._table)
