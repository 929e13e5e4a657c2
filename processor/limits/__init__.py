"""Rate limits: counters (:mod:`.counter`), what the server says (:mod:`.server`) and the
limiter that combines them and backs off after 429s (:mod:`.limiter`)."""

from __future__ import annotations

from .counter import DAY, MINUTE, Counter, Unit, counter_name, flag_counters
from .limiter import Backoff, Limiter
from .server import Mirror, ServerLimits

#: the former name of :class:`Counter` (public API before the counters had a :class:`Unit`).
Capacity = Counter

__all__ = ["DAY", "MINUTE", "Backoff", "Capacity", "Counter", "Limiter", "Mirror", "ServerLimits",
           "Unit", "counter_name", "flag_counters"]
