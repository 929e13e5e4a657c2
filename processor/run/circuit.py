"""The outage circuit: while the server is down, probe it instead of spending attempts.

A :class:`Circuit` is fed the outcome of every attempt with the time it came back and
decides; the engine carries the decisions out (it never sends while the circuit says
no, and gives back the attempts the circuit says did not count). Nothing here sleeps
or reads a clock: every method takes ``now``, so it is tested row by row on a fake
clock.

States::

    closed ──(most recent attempts failed)──> open ──(probe time)──> probing
      ^                                        ^  └─(outage window)─> expired: stop (75)
      │                                        └──── the probe failed ─┘ (next probe 2x later)
      └──────── any answer from the server (2xx, 4xx, 429) ────────────┘

Thresholds (the defaults):

* an *outage failure* is a 5xx, 408 / 409, a connection error, a reset or a timeout
  (:class:`~processor.errors.ServerError`, :class:`~processor.errors.APITimeout`); any
  other answer, a 429 or a 400 included, shows the server is up;
* the circuit opens when, of the last ``window`` (20) outcomes no older than ``horizon``
  (60 s), at least ``min_samples`` (10) are there and at least ``threshold`` (80%)
  are outage failures;
* :meth:`Circuit.looks_down` asks the same with only ``suspect_samples`` (3): the
  engine asks it before writing a request off, so that a run with few requests in
  flight does not write requests off during an outage it has too few samples to see;
* while open, one probe request goes every ``interval`` seconds, doubling from
  ``base`` (1 s) to ``cap`` (60 s) after each failed probe, never sooner than the
  server's Retry-After;
* after ``outage_window`` seconds open (30 minutes), :meth:`Circuit.expired` says so
  and the engine stops the run, resumable.
"""

from __future__ import annotations

import enum
import math
from collections import deque

__all__ = ["Circuit", "CircuitState"]


class CircuitState(enum.Enum):
    """Where the circuit is."""

    CLOSED = "closed"
    """The server answers: admit at the limits."""
    OPEN = "open"
    """The server looks down: admit nothing until the next probe."""
    PROBING = "probing"
    """One probe is in flight: admit nothing until it comes back."""


class Circuit:
    """Decides when the server is down, when to probe it, and when to give up.

    Args:
        outage_window: seconds the circuit may stay open before :meth:`expired`.
        window: how many recent outcomes are weighed.
        horizon: outcomes older than this many seconds are forgotten.
        threshold: share of outage failures that opens the circuit.
        min_samples: outcomes needed (within ``horizon``) before it may open.
        suspect_samples: outcomes :meth:`looks_down` needs.
        base / cap: first and longest interval between probes, in seconds.

    Raises:
        ValueError: a negative window or interval, or a threshold outside (0, 1].
    """

    __slots__ = ("outage_window", "window", "horizon", "threshold", "min_samples",
                 "suspect_samples", "base", "cap", "_state", "closed", "opened_at", "probe_at",
                 "interval", "down_before", "outages", "_outcomes")

    def __init__(
        self,
        *,
        outage_window: float = 1800.0,
        window: int = 20,
        horizon: float = 60.0,
        threshold: float = 0.8,
        min_samples: int = 10,
        suspect_samples: int = 3,
        base: float = 1.0,
        cap: float = 60.0,
    ) -> None:
        if not outage_window >= 0 or not base > 0 or not cap >= base or not horizon > 0:
            raise ValueError("outage_window must be >= 0, base > 0, cap >= base, horizon > 0")
        if not 0 < threshold <= 1 or not 1 <= min_samples <= window or suspect_samples < 1:
            raise ValueError("threshold must be in (0, 1], 1 <= min_samples <= window")
        # Capped at a century, like every time value: timers need finite numbers.
        self.outage_window = min(outage_window, 100 * 365 * 86_400.0)
        self.window = window
        self.horizon = horizon
        self.threshold = threshold
        self.min_samples = min_samples
        self.suspect_samples = suspect_samples
        self.base = base
        self.cap = cap
        self.state = CircuitState.CLOSED  # sets ``closed`` too
        #: when the current outage began (None while closed).
        self.opened_at: float | None = None
        #: earliest time of the next probe (while open).
        self.probe_at = math.inf
        #: current seconds between probes.
        self.interval = base
        #: seconds spent open in earlier, finished outages.
        self.down_before = 0.0
        #: how many times the circuit opened.
        self.outages = 0
        self._outcomes: deque[tuple[float, bool]] = deque(maxlen=window)

    @property
    def state(self) -> CircuitState:
        return self._state

    @state.setter
    def state(self, state: CircuitState) -> None:
        self._state = state
        #: the state is CLOSED (kept as a plain attribute: asked once per request).
        self.closed = state is CircuitState.CLOSED

    def _counts(self, now: float) -> tuple[int, int]:
        """(outcomes, outage failures) among the recent ones."""
        outcomes = self._outcomes
        while outcomes and now - outcomes[0][0] > self.horizon:
            outcomes.popleft()
        return len(outcomes), sum(1 for _, failed in outcomes if failed)

    def _mostly_failed(self, now: float, samples: int) -> bool:
        n, failed = self._counts(now)
        return n >= samples and failed >= self.threshold * n

    def record(self, failed: bool, now: float, *, probe: bool = False,
               retry_after: float | None = None) -> bool:
        """Feed one attempt's outcome.

        Args:
            failed: True for an outage failure, False for any answer from the server.
            now: when the outcome came back.
            probe: it was the probe's outcome.
            retry_after: the server's hint, if it gave one (a probe never goes sooner).

        Returns:
            True if this outcome opened the circuit.
        """
        if not failed:
            if not self.closed:
                self._close(now)
            self._outcomes.append((now, False))
            return False
        if self.closed:
            self._outcomes.append((now, True))
            if self._mostly_failed(now, self.min_samples):
                self.trip(now, retry_after)
                return True
            return False
        if probe:
            self.state = CircuitState.OPEN
            self.interval = min(self.cap, self.interval * 2)
            self.probe_at = now + max(self.interval, retry_after or 0.0)
        # A failure of a request sent before the circuit opened changes nothing.
        return False

    def looks_down(self, now: float) -> bool:
        """Most recent outcomes failed, judged on as few as ``suspect_samples``."""
        return self.closed and self._mostly_failed(now, self.suspect_samples)

    def trip(self, now: float, retry_after: float | None = None) -> None:
        """Open the circuit now (no-op if already open)."""
        if not self.closed:
            return
        self.state = CircuitState.OPEN
        self.opened_at = now
        self.outages += 1
        self.interval = self.base
        self.probe_at = now + max(self.base, retry_after or 0.0)

    def _close(self, now: float) -> None:
        self.down_before += self.down_for(now)
        self.state = CircuitState.CLOSED
        self.opened_at = None
        self.probe_at = math.inf
        self.interval = self.base
        self._outcomes.clear()

    def can_probe(self, now: float) -> bool:
        """True when the circuit is open and the next probe is due."""
        return self.state is CircuitState.OPEN and now >= self.probe_at

    def start_probe(self) -> None:
        """The engine sent the probe: nothing else goes until it is back."""
        if self.state is CircuitState.OPEN:
            self.state = CircuitState.PROBING

    def expired(self, now: float) -> bool:
        """Open for the whole outage window: time to stop (resumable)."""
        return self.opened_at is not None and now - self.opened_at >= self.outage_window

    def expires_at(self) -> float:
        """When the current outage outlasts the window (inf while closed)."""
        if self.opened_at is None:
            return math.inf
        return self.opened_at + self.outage_window

    def wake_at(self) -> float:
        """When the circuit next changes by itself (a probe is due, or it expires)."""
        end = self.expires_at()
        return min(self.probe_at, end) if self.state is CircuitState.OPEN else end

    def down_for(self, now: float) -> float:
        """Seconds the current outage has lasted (0 while closed)."""
        return 0.0 if self.opened_at is None else max(0.0, now - self.opened_at)

    def total_down(self, now: float) -> float:
        """Seconds open in all, the current outage included."""
        return self.down_before + self.down_for(now)
