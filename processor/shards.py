"""Shards: one job split across workers, ``--shard K/N`` (K counted from 1, as Playwright
and Jest count).

A line belongs to the shard of the id its answer (or error) carries: its ``custom_id``
when it has a readable one, else ``line-<N>``, its position (lines without a custom_id
are named so everywhere in batchproc). The shard is a keyed BLAKE2b hash of that id,
modulo N: stable across reruns, machines and Python versions (never the salted
``hash()``), and independent of :func:`processor.idset.fingerprint` (the same digest
would leave every id of a shard in one residue class of the id table's slots).

Why position for bare lines, not content: the answer of a bare line is filed under
``line-<N>``, so sharding by that name keeps "one id, one shard" true, which is what
lets a rerun resume, and ``merge`` prove that no id was answered twice. Editing a bare
line keeps it in its shard (its rerun notices the edit, as an unsharded run does);
inserting or deleting lines renames every bare line below (to another shard too), as
it renames them without shards. Give lines a custom_id to make such edits safe.

Bad lines: a line with a readable custom_id is reported by its id's shard (so repeated
ids meet in one shard, which reports the repeats); any other bad line (not JSON, a
custom_id that is not a string) by the shard of ``line-<N>``. Exactly one shard reports
each.

Finding a line's id costs a substring test for lines without ``"custom_id"``, a short
match when it is the first key (the Batch API layout), a full parse otherwise: lines of
other shards are never validated or priced.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import orjson

__all__ = ["Shard", "line_id", "parse_shard", "shard_of"]

_PERSON = b"bp-shard-v1"  # keys the hash: a new scheme gets a new name
_CUSTOM_ID = b'"custom_id"'
_FIRST_KEY_ID = re.compile(rb'\s*\{\s*"custom_id"\s*:\s*("(?:[^"\\]|\\.)*")')
_BOM = b"\xef\xbb\xbf"
_K_OF_N = re.compile(r"\s*([0-9]{1,9})\s*/\s*([0-9]{1,9})\s*", re.ASCII).fullmatch


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``k`` of ``n`` (1 <= k <= n)."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if self.n < 1 or not 1 <= self.k <= self.n:
            raise ValueError(f"shard {self.k}/{self.n}: K must be from 1 to N (N >= 1)")

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

    @property
    def tag(self) -> str:
        """The part of file names that names this shard: ``shard-2-of-4``."""
        return f"shard-{self.k}-of-{self.n}"

    def owns(self, custom_id: str) -> bool:
        """Whether the request with this id is this shard's."""
        return shard_of(custom_id, self.n) == self.k

    def line_filter(self) -> Callable[[int, bytes], bool]:
        """``keep(line number, raw line)``: True for this shard's lines (see the module
        docstring for how a line's id is found)."""
        n, k = self.n, self.k
        if n == 1:
            return lambda number, raw: True

        def keep(number: int, raw: bytes) -> bool:
            return shard_of(line_id(number, raw), n) == k

        return keep


def parse_shard(text: str) -> Shard:
    """``"2/4"`` -> ``Shard(2, 4)``.

    Raises:
        ValueError: with a message for the user (not K/N, K out of 1..N, N < 1).
    """
    m = _K_OF_N(text)
    if m is None:
        raise ValueError(f"--shard must be K/N (e.g. 2/4: the second of four workers), "
                         f"got {text!r}")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise ValueError(f"--shard {text}: N (the number of workers) must be at least 1")
    if not 1 <= k <= n:
        raise ValueError(f"--shard {text}: K must be from 1 to N ({n}), counting from 1 "
                         f"as Playwright and Jest do")
    return Shard(k, n)


def shard_of(custom_id: str, n: int) -> int:
    """The shard (1..n) of the request with this id."""
    digest = hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=8,
                             person=_PERSON).digest()
    return int.from_bytes(digest, "little") % n + 1


def line_id(number: int, raw: bytes) -> str:
    """The id a line's answer or error would carry: its top-level ``custom_id`` when it
    is a non-empty string, else ``line-<number>`` (bare lines, and lines that are not
    JSON or whose custom_id is not a string: bad lines, reported by that shard)."""
    if _CUSTOM_ID in raw:
        found = _explicit_id(raw)
        if found is not None:
            return found
    return f"line-{number}"


def _explicit_id(raw: bytes) -> str | None:
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    m = _FIRST_KEY_ID.match(raw)
    if m is not None and raw.count(_CUSTOM_ID) == 1:
        # The first key, and the only "custom_id" in the line: no other can be top-level.
        try:
            value = orjson.loads(m.group(1))
        except orjson.JSONDecodeError:
            value = None
        return value if isinstance(value, str) and value else None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict):
        value = obj.get("custom_id")
        if isinstance(value, str) and value:
            return value
    return None
