"""The engine's side of the outage circuit: which request is the probe, which recent
failures opened it (their attempts are given back), and what the run's stats say."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from ..jobs import Job
from ..stats import Stats, StopReason, human_duration
from .circuit import Circuit
from .events import NO_EVENTS, Events
from .policy import Stop

__all__ = ["OutageWatch"]

log = logging.getLogger(__name__)


class OutageWatch:
    """Feeds a :class:`~processor.run.circuit.Circuit` every attempt's outcome.

    Args:
        circuit: the circuit (its decisions); ``stats``: where the outage shows.
        wall: the wall clock, for "down since HH:MM" (injected for tests).
    """

    events: Events = NO_EVENTS

    def __init__(self, circuit: Circuit, stats: Stats,
                 wall: Callable[[], float] | None = None) -> None:
        self.circuit = circuit
        self.stats = stats
        self._wall = wall or time.time
        self.probe: Job | None = None
        #: jobs whose failure the circuit weighs (they get their attempt back if it opens).
        self.recent: deque[Job] = deque(maxlen=circuit.window)

    def failed(self, job: Job, now: float, hint: float | None, *, retry: bool) -> bool:
        """A 5xx or a connection failure of ``job``: True if it was an outage's (the
        engine gives its attempt back and requeues it).

        A failure while the circuit is open, or one that opens it, does not count
        against the request's attempts, and nor do the recent failures that opened it.
        Nor is a request written off (``retry`` False: it would be) while most recent
        attempts failed.
        """
        circuit = self.circuit
        probe = job is self.probe
        if probe:
            self.probe = None
        was_open = not circuit.closed
        tripped = circuit.record(True, now, probe=probe, retry_after=hint)
        if not (was_open or tripped):
            if retry or not circuit.looks_down(now):
                self.recent.append(job)
                return False
            circuit.trip(now, hint)  # it would be written off while the server looks down
            tripped = True
        if tripped:
            self._began()
        else:
            self.stats.outage(since=self.stats.outage_since, probe_every=circuit.interval)
        return True

    def alive(self, job: Job, now: float) -> None:
        """An answer (any but a 5xx or a connection failure): the server is up."""
        circuit = self.circuit
        if job is self.probe:
            self.probe = None
        was_open = not circuit.closed
        circuit.record(False, now)
        if was_open:
            self.stats.outage(since=None, probe_every=None, seconds=circuit.total_down(now))
            self.events.resume("outage", down=round(circuit.total_down(now), 3))
            log.warning("the server answers again; resuming")

    def probing(self, job: Job) -> None:
        """``job`` goes as the probe."""
        self.circuit.start_probe()
        self.probe = job
        self.stats.outage(since=self.stats.outage_since, probe_every=self.circuit.interval)

    def _began(self) -> None:
        self.stats.outage(since=self._wall(), probe_every=self.circuit.interval,
                          outages=self.circuit.outages)
        self.events.pause("outage", None, outages=self.circuit.outages)
        # The failures that opened it did not count either.
        for job in self.recent:
            job.attempts = max(0, job.attempts - 1)
        self.recent.clear()
        log.warning("the server looks down (most recent attempts failed with 5xx or "
                    "connection errors): probing it with one request at a time")

    def expired(self, now: float) -> Stop:
        """The server stayed down for the whole outage window: stop, resumable."""
        circuit = self.circuit
        stats = self.stats
        stats.outage(since=stats.outage_since, probe_every=stats.probe_every,
                     seconds=circuit.total_down(now))
        since = time.strftime("%H:%M", time.localtime(stats.outage_since or self._wall()))
        return Stop(StopReason.RERUN_LATER,
                    f"the server has been down since {since} (5xx answers or connection "
                    f"errors for {human_duration(circuit.down_for(now))}, longer than the "
                    f"--outage-window of {human_duration(circuit.outage_window)}); nothing "
                    "was written off: rerun the same command to resume")
