"""The run side of ``--shard K/N``: the shard's files, its line filter and its total."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from ..errors import ConfigError
from ..shards import Shard
from ..stats import Stats
from ..store.shardfiles import other_splits, shard_paths

__all__ = ["ShardScope", "shard_defaults"]

T = TypeVar("T")


def shard_defaults(src: Path, shard: Shard, output: Path | None, errors: Path | None
                   ) -> tuple[Path | None, Path | None]:
    """Default outputs of ``shard`` for the ones not given (refusing a second split of
    the job beside the first: a rerun with another N against the default names).

    Raises:
        ConfigError: results of a split into another number of workers are beside the
            job, and this run would write default names.
    """
    default_out, default_err = shard_paths(src, shard)
    if output is None or errors is None:
        others = other_splits(src, shard)
        if others:
            names = ", ".join(p.name for p in others[:4]) + (", ..." if len(others) > 4 else "")
            raise ConfigError(
                f"this job was split into another number of workers before ({names}): "
                f"shard {shard} would answer some of their lines again. Rerun with their "
                "--shard K/N to resume them, or `batchproc merge` them and move them "
                "away, or give --output and --errors for a new split")
    return (output or default_out), (errors or default_err)


class ShardScope:
    """One shard's share of the input: the line filter and the count of its lines.

    The total shown while the run reads the input is an estimate (1/N of the lines);
    once the whole input has been read it is the exact count.
    """

    __slots__ = ("shard", "stats", "lines", "_keep")

    def __init__(self, shard: Shard, stats: Stats) -> None:
        self.shard = shard
        self.stats = stats
        self.lines = 0
        self._keep = shard.line_filter()

    def estimate_total(self, input_lines: int) -> None:
        """Set the stats' total to this shard's expected share, and say so."""
        self.stats.total = round(input_lines / self.shard.n)
        self.stats.notes.append(
            f"shard {self.shard}: about {self.stats.total:,} of the input's "
            f"{input_lines:,} lines (an estimate until the input was read through)")

    def keep(self, number: int, raw: bytes) -> bool:
        if self._keep(number, raw):
            self.lines += 1
            return True
        return False

    def counted(self, items: Iterable[T]) -> Iterator[T]:
        """Pass ``items`` through; once exhausted, the total is the exact count."""
        yield from items
        self.stats.total = self.lines
        notes = self.stats.notes
        for i, note in enumerate(notes):
            if note.startswith(f"shard {self.shard}: about"):
                notes[i] = f"shard {self.shard}: {self.lines:,} lines of the input are its share"
                break

    @staticmethod
    def filter_for(scope: ShardScope | None) -> Callable[[int, bytes], bool] | None:
        return scope.keep if scope is not None else None

