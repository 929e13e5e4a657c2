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
_MASK32 = 0xFFFFFFFF


def fingerprint(custom_id: str) -> int:
    """A 64-bit fingerprint of ``custom_id``, never 0 (0 marks an empty slot)."""
    digest = hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class IdSet:
    """A set of ids held as 64-bit fingerprints (see the module docstring).

    Args:
        capacity: ids expected (the table grows as needed).
        values: also keep one 32-bit value per id (e.g. a hash of its input line, to
            notice an input that changed between runs): 4 more bytes per slot. Values
            are stored modulo 2**32.
    """

    __slots__ = ("_table", "_values", "_mask", "_count")

    def __init__(self, capacity: int = 1024, *, values: bool = False) -> None:
        size = 1024
        while size * 2 < capacity * 3:
            size *= 2
        self._table = array("Q", bytes(8 * size))
        self._values: array[int] | None = array("I", bytes(4 * size)) if values else None
        self._mask = size - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _find(self, fp: int) -> int:
        """The slot holding ``fp``, or the empty slot where it would go."""
        table, mask = self._table, self._mask
        i = fp & mask
        while True:
            slot = table[i]
            if slot == fp or slot == _EMPTY:
                return i
            i = (i + 1) & mask

    def __contains__(self, custom_id: object) -> bool:
        if not isinstance(custom_id, str):
            return False
        fp = fingerprint(custom_id)
        return self._table[self._find(fp)] == fp

    def add(self, custom_id: str, value: int = 0) -> bool:
        """Add ``custom_id``; return False if it (or its fingerprint) was already there.

        With ``values``, the value is stored (or replaced) either way.
        """
        return self.add_fingerprint(fingerprint(custom_id), value)

    def add_fingerprint(self, fp: int, value: int = 0) -> bool:
        """Add a fingerprint made by :func:`fingerprint` (e.g. read back from a ledger)."""
        i = self._find(fp)
        if self._values is not None:
            self._values[i] = value & _MASK32
        if self._table[i] == fp:
            return False
        self._table[i] = fp
        self._count += 1
        if self._count * 3 > (self._mask + 1) * 2:
            self._grow()
        return True

    def update_fingerprint(self, fp: int, value: int) -> bool:
        """Set the value of a fingerprint already present; False (nothing added) if absent."""
        i = self._find(fp)
        if self._table[i] != fp or self._values is None:
            return False
        self._values[i] = value & _MASK32
        return True

    def get(self, custom_id: str) -> int | None:
        """The value stored with ``custom_id`` (0 without ``values``), or None if absent."""
        fp = fingerprint(custom_id)
        i = self._find(fp)
        if self._table[i] != fp:
            return None
        return self._values[i] if self._values is not None else 0

    def _grow(self) -> None:
        old, old_values = self._table, self._values
        size = len(old) * 2
        self._table = array("Q", bytes(8 * size))
        self._values = array("I", bytes(4 * size)) if old_values is not None else None
        self._mask = size - 1
        self._count = 0
        for i, fp in enumerate(old):
            if fp != _EMPTY:
                self.add_fingerprint(fp, old_values[i] if old_values is not None else 0)

    @property
    def nbytes(self) -> int:
        """Memory held by the table, in bytes."""
        total = self._table.itemsize * len(self._table)
        if self._values is not None:
            total += self._values.itemsize * len(self._values)
        return total
