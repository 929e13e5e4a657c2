"""What the server says about a key's limits, from its ``x-ratelimit-*`` headers.

:class:`ServerLimits` screens the per-minute limits a server states (a limit below one
request, or below a request the server has answered, cannot be real), tells which
``auto`` limits are still to be learned, brings our per-minute counters to the limits
stated (never above the flags) and keeps a :class:`Mirror` of each of the server's own
counters. It decides nothing about admission: the
:class:`~processor.limits.limiter.Limiter` waits for its counters and the mirrors.
"""

from __future__ import annotations

import math

from .counter import MINUTE, Counter, Unit

__all__ = ["MAX_STATED", "Mirror", "ServerLimits"]

#: the highest per-minute limit a server can mean, by unit: hundreds of times any real
#: one (OpenAI's highest tiers state tens of thousands of requests, hundreds of millions
#: of tokens). A server stating more (1e308) is broken: the figure is ignored, not learned.
MAX_STATED = {Unit.REQUESTS: 1e8, Unit.TOKENS: 1e11}


class Mirror:
    """Our model of one of the server's own counters, kept in step with its headers.

    OpenAI-style servers report ``x-ratelimit-remaining-*`` with every answer: what was
    left right after that request was counted. From that, the time the request was
    sent and what we have spent since, the server's level now is
    ``remaining + refill since sending - our spending since``. Between two syncs the
    mirror refills at the server's rate less what *other* clients of the same key
    spend; that foreign rate is learned from how far each prediction missed.
    """

    __slots__ = ("counter", "foreign", "_synced_at")

    def __init__(self, unit: Unit, limit: float, level: float, now: float) -> None:
        # A full minute of credit, like the server's own counter.
        self.counter = Counter(unit, limit, burst_seconds=MINUTE, now=now, initial=limit,
                               server=True)
        self.counter.set_level(level, now)
        #: units per second that other clients of the key seem to spend.
        self.foreign = 0.0
        self._synced_at = now

    def sync(self, limit: float, level: float, now: float, min_interval: float,
             force: bool = False) -> None:
        """Adopt the server's ``limit`` and ``level`` now, learning the foreign rate."""
        counter = self.counter
        dt = now - self._synced_at
        if dt < min_interval and not force:
            return
        if abs(limit - counter.limit) > 1e-9:
            counter.set_limit(limit, now)
        predicted = counter.available(now)
        full_rate = counter.limit / counter.period
        # Integral control: each missed prediction nudges the foreign-spend estimate. The
        # miss is spread over at least ``min_interval``: a burst of forced syncs (429s)
        # milliseconds apart must not blow a small miss up into a huge rate.
        error = (predicted - level) / max(dt, min_interval)
        self.foreign = min(0.95 * full_rate, max(0.0, self.foreign + 0.5 * error))
        counter.set_scale(max(0.05, 1.0 - self.foreign / full_rate), now)
        self._synced_at = now
        counter.set_level(level, now)


class ServerLimits:
    """The limits one key's server states, screened, learned and mirrored.

    Args:
        auto: the units whose per-minute limit is learned from the server (``auto``).
        sync_interval: least seconds between two mirror syncs (429s always sync).
    """

    __slots__ = ("auto", "learned", "ignored", "smallest_tokens", "mirrors", "sync_interval")

    def __init__(self, auto: set[Unit], sync_interval: float = 0.2) -> None:
        self.auto = auto
        #: limits learned from the server's headers, by counter name ("requests/min").
        self.learned: dict[str, float] = {}
        #: limits the server stated that cannot be real, by counter name (the latest
        #: value said); they are ignored until it states a plausible one again.
        self.ignored: dict[str, float] = {}
        #: the smallest token cost admitted so far (a stated token limit below it cannot be
        #: real: the server answered that request).
        self.smallest_tokens = math.inf
        self.mirrors: dict[Unit, Mirror] = {}
        self.sync_interval = sync_interval

    @property
    def learning(self) -> bool:
        """True while an ``auto`` limit has not been learned yet (admit cautiously)."""
        # A unit whose stated limit is ignored is not waited for: it runs without one.
        # (Asked on every admission: the common case, nothing to learn, returns at once.)
        if not self.auto:
            return False
        return any(u.per_minute not in self.learned and u.per_minute not in self.ignored
                   for u in self.auto)

    def admitted(self, tokens: float) -> None:
        """Note a request of ``tokens`` sent (the server will have seen one that large)."""
        if tokens < self.smallest_tokens:
            self.smallest_tokens = tokens

    def plausible(self, unit: Unit, limit: float) -> bool:
        """Whether a stated per-minute ``limit`` of ``unit`` can be real.

        A requests limit below one request, or a tokens limit below the smallest
        request already admitted (which the server then answered), cannot be; nor can
        one above :data:`MAX_STATED`.
        """
        if limit > MAX_STATED[unit]:
            return False
        if unit is Unit.REQUESTS:
            return limit >= 1.0
        smallest = self.smallest_tokens  # inf until a request was admitted
        return limit >= 1.0 and (math.isinf(smallest) or limit >= smallest)

    def screen(self, unit: Unit, limit: float | None) -> float | None:
        """``limit`` if plausible (noting or clearing :attr:`ignored`), else None."""
        if limit is None or not limit > 0 or not math.isfinite(limit):
            return None
        if self.plausible(unit, limit):
            self.ignored.pop(unit.per_minute, None)
            return limit
        self.ignored[unit.per_minute] = limit
        return None

    def stated(self, limits: dict[Unit, float | None]) -> dict[Unit, float]:
        """The plausible limits among those stated; a unit left out is no longer learned."""
        screened = {u: self.screen(u, limit) for u, limit in limits.items()}
        said = {u: limit for u, limit in screened.items() if limit}
        if said:
            # The server sends limit headers: a unit it leaves out has nothing to learn.
            self.auto -= {u for u in Unit if u not in said and u.per_minute not in self.ignored}
        return said

    def mirror(self, unit: Unit, limit: float, level: float, now: float, *,
               force: bool, refused: float | None) -> Mirror | None:
        """Sync the mirror of the server's ``unit`` counter; the new one if it had none.

        ``refused``: the answered request was refused (429) and so not counted by the
        server: what it cost is given back to the mirror first.
        """
        mirror = self.mirrors.get(unit)
        if mirror is None:
            mirror = self.mirrors[unit] = Mirror(unit, limit, level, now)
            return mirror
        if refused is not None:
            mirror.counter.spend(-refused, now)
        mirror.sync(limit, level, now, self.sync_interval, force)
        return None

    def adopt(self, said: dict[Unit, float], counters: list[Counter], now: float, *,
              scale: float, burst_seconds: float) -> list[Counter]:
        """Bring our per-minute ``counters`` to the limits ``said`` (see :meth:`stated`).

        A counter goes down to a lower stated limit, or back up to at most its flag (its
        ``ceiling``). In ``auto`` mode a unit without a per-minute counter gets one: those
        are returned for the limiter to add (running at its back-off ``scale``).
        """
        new = []
        for unit, limit in said.items():
            auto = unit in self.auto
            counter = next((c for c in counters if c.unit is unit and c.period == MINUTE), None)
            if counter is None:
                if auto:
                    counter = Counter(unit, limit, burst_seconds=burst_seconds, now=now)
                    counter.ceiling = math.inf  # learned, not a flag: see Limiter.too_large
                    counter.set_scale(scale, now)
                    new.append(counter)
                    self.learned[unit.per_minute] = limit
                continue
            if abs(counter.limit - min(limit, counter.ceiling)) > 1e-9:
                counter.set_limit(min(limit, counter.ceiling), now)
                if auto:
                    self.learned[unit.per_minute] = limit
        return new

    def sync_mirrors(self, said: dict[Unit, float], remaining: dict[Unit, float | None],
                     spent: dict[Unit, float], *, sent_at: float, now: float, force: bool,
                     refused_tokens: int | None) -> bool:
        """Bring the mirrors in step with one answer's headers; True if one was created.

        ``remaining``: the ``x-ratelimit-remaining-*`` values; ``spent``: what we spent
        since the answered request was admitted at ``sent_at``, by unit.
        """
        created = False
        for unit, limit in said.items():
            left = remaining[unit]
            if left is None:
                continue
            level = left + max(0.0, now - sent_at) * limit / MINUTE - spent[unit]
            refused = None if refused_tokens is None else unit.amount(float(refused_tokens))
            created = self.mirror(unit, limit, level, now, force=force,
                                  refused=refused) is not None or created
        return created

    @property
    def foreign_rates(self) -> dict[str, float]:
        """Per-minute rates other clients of the key seem to spend, by counter name."""
        return {u.per_minute: m.foreign * MINUTE for u, m in self.mirrors.items()}
