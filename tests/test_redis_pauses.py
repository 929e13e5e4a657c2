"""Admission's waits for Redis in the run log: one open-ended ``pause`` when the shared
budget cannot be asked, one ``resume`` when it answers again (the e2e run with a real
redis-server stopped and restarted is in tests/test_redis_e2e.py)."""

from __future__ import annotations

from typing import Any

from processor.jobs import Job
from processor.limits import Limiter
from processor.run.keys import KeyPool, Lane
from processor.stats import Stats


class Flaky(Limiter):
    """A remote limiter whose store is up or down as the test says."""

    remote = True
    down: str | None = None
    clock = 0.0

    @property
    def trouble(self) -> str | None:
        return self.down

    def trouble_event(self) -> tuple[str, dict[str, Any]]:
        return "redis", {"url": "redis://:***@h:1/0", "error": "ConnectionError"}

    async def acquire(self, tokens: int) -> float:
        return 0.5 if self.down else 0.0

    def now(self) -> float:
        return self.clock


class Record:
    enabled = True

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def pause(self, reason: str, seconds: float | None = None, **detail: Any) -> None:
        self.seen.append(("pause", reason, {"seconds": seconds} | detail))

    def resume(self, reason: str, **detail: Any) -> None:
        self.seen.append(("resume", reason, detail))


async def test_one_pause_per_outage_and_its_resume() -> None:
    limiter = Flaky.per_minute(None, None)
    assert isinstance(limiter, Flaky)
    stats = Stats()
    pool = KeyPool([Lane(None, limiter)], stats)
    events = Record()
    pool.events = events  # type: ignore[assignment]
    job = Job("a", 1, "/v1/chat/completions", {"model": "m"})
    for t, down in [(0, None), (1, "waiting for Redis"), (2, "waiting for Redis"),
                    (4.5, None), (5, None), (6, "waiting for Redis"), (7, None)]:
        limiter.clock, limiter.down = t, down
        lane, wait = await pool.acquire(job)
        assert stats.waiting_for == down
        assert (wait > 0) == bool(down) and lane is not None
    assert [(kind, reason) for kind, reason, _ in events.seen] == [
        ("pause", "redis"), ("resume", "redis"), ("pause", "redis"), ("resume", "redis")]
    first = events.seen[0][2]
    assert first == {"seconds": None, "url": "redis://:***@h:1/0", "error": "ConnectionError"}
    assert events.seen[1][2] == {"down": 3.5} and events.seen[3][2] == {"down": 1.0}
