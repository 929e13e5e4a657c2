"""Time buckets in bounded memory: a fixed number of buckets whose width doubles (pairs
merged) when the runs outlast them, and a fixed-size latency histogram per bucket.

Everything a bucket holds merges by addition (or by keeping the later value), so a
doubling loses nothing but resolution: a log of any length is summed in the same few
hundred buckets.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field

__all__ = ["Bucket", "LatencySketch", "Slot", "Timeline"]

#: latencies are counted in log-spaced bins from MIN_LATENCY seconds, each RATIO wider.
MIN_LATENCY = 0.001
RATIO = 1.1
BINS = 170  # 1 ms x 1.1^170: about 3 hours, past any timeout
#: the latest time a timeline holds (about 30 years of runs end to end).
MAX_TIME = 1e9
_LOG_RATIO = math.log(RATIO)


class LatencySketch:
    """A histogram of latencies in :data:`BINS` log-spaced bins (about 5% error)."""

    __slots__ = ("bins", "count")

    def __init__(self) -> None:
        self.bins = array("Q", bytes(8 * BINS))
        self.count = 0

    def add(self, seconds: float) -> None:
        if seconds <= MIN_LATENCY:
            index = 0
        else:
            index = min(BINS - 1, int(math.log(seconds / MIN_LATENCY) / _LOG_RATIO) + 1)
        self.bins[index] += 1
        self.count += 1

    def merge(self, other: LatencySketch) -> None:
        bins = self.bins
        for i, n in enumerate(other.bins):
            if n:
                bins[i] += n
        self.count += other.count

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0..1), the geometric middle of its bin; None if empty."""
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.bins):
            seen += n
            if seen >= rank and n:
                if i == 0:
                    return MIN_LATENCY
                return float(MIN_LATENCY * RATIO ** (i - 0.5))
        return float(MIN_LATENCY * RATIO ** (BINS - 1))


@dataclass(slots=True)
class Slot:
    """One limit group's sends in one bucket, and the limits in force when it sent
    (:mod:`.limits`)."""

    sent: int = 0
    tokens: int = 0
    rpm: float | None = None
    tpm: float | None = None

    def merge(self, other: Slot) -> None:
        self.sent += other.sent
        self.tokens += other.tokens
        self.rpm = other.rpm if other.rpm is not None else self.rpm
        self.tpm = other.tpm if other.tpm is not None else self.tpm


@dataclass(slots=True)
class Bucket:
    """What happened in one slice of time (sums, and the last value seen of states)."""

    sent: int = 0
    tokens: int = 0  # charged at admission (what counts against the limits)
    used: int = 0  # as the answers say
    ok: int = 0
    e429: int = 0
    e5xx: int = 0
    etimeout: int = 0
    eother: int = 0
    failed: int = 0
    busy: float = 0.0  # attempt-seconds on the wire (in flight x seconds)
    latency: LatencySketch | None = None
    groups: dict[str, Slot] | None = None  # per limit group (:mod:`.limits`)
    done: int | None = None
    total: int | None = None
    eta: float | None = None
    seen: bool = False

    def merge(self, other: Bucket) -> None:
        self.sent += other.sent
        self.tokens += other.tokens
        self.used += other.used
        self.ok += other.ok
        self.e429 += other.e429
        self.e5xx += other.e5xx
        self.etimeout += other.etimeout
        self.eother += other.eother
        self.failed += other.failed
        self.busy += other.busy
        if other.latency is not None:
            if self.latency is None:
                self.latency = LatencySketch()
            self.latency.merge(other.latency)
        if other.groups:
            if self.groups is None:
                self.groups = {}
            for name, slot in other.groups.items():
                mine = self.groups.get(name)
                if mine is None:
                    self.groups[name] = slot
                else:
                    mine.merge(slot)
        for name in ("done", "total", "eta"):
            value = getattr(other, name)
            if value is not None:
                setattr(self, name, value)
        self.seen = self.seen or other.seen


@dataclass(slots=True)
class Timeline:
    """At most ``size`` buckets of ``width`` seconds from 0; the width doubles as needed.

    Args:
        size: the number of buckets (even).
        width: the first width in seconds.
    """

    size: int = 240
    width: float = 0.25
    buckets: list[Bucket] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.buckets = [Bucket() for _ in range(self.size)]

    def at(self, x: float) -> Bucket:
        """The bucket holding time ``x`` (seconds, >= 0), doubling the width if needed."""
        if not 0.0 <= x <= MAX_TIME:
            x = MAX_TIME if x > MAX_TIME else 0.0  # NaN too
        index = int(x / self.width)
        while index >= self.size:
            self._double()
            index = int(x / self.width)
        return self.buckets[index]

    def _double(self) -> None:
        merged = []
        for i in range(0, self.size, 2):
            left = self.buckets[i]
            left.merge(self.buckets[i + 1])
            merged.append(left)
        self.buckets = merged + [Bucket() for _ in range(self.size - len(merged))]
        self.width *= 2

    def spread(self, start: float, end: float) -> None:
        """Add an attempt on the wire from ``start`` to ``end`` to ``busy``, bucket by bucket."""
        start, end = max(start, 0.0), min(end, MAX_TIME)
        if not end > start:
            return
        self.at(end)  # widen first: every bucket touched below then exists
        width = self.width
        first, last = int(start / width), min(int(end / width), self.size - 1)
        if first == last:
            self.buckets[first].busy += end - start
            return
        buckets = self.buckets
        buckets[first].busy += (first + 1) * width - start
        for i in range(first + 1, last):
            buckets[i].busy += width
        buckets[last].busy += end - last * width

    def used_buckets(self) -> int:
        """How many buckets from the start hold anything."""
        for i in range(self.size - 1, -1, -1):
            if self.buckets[i].seen:
                return i + 1
        return 0
