"""The parts of processor.limits on their own: counter names and units, what the server
says (ServerLimits, Mirror), and the public names. Fake times only; nothing sleeps."""

from __future__ import annotations

import math

import pytest

import processor
from processor.limits import DAY, MINUTE, Capacity, Counter, Limiter, Unit, counter_name
from processor.limits.server import Mirror, ServerLimits

# --------------------------------------------------------------------------- counter


@pytest.mark.parametrize(
    ("unit", "period", "server", "expected"),
    [
        (Unit.REQUESTS, MINUTE, False, "requests/min"),
        (Unit.TOKENS, MINUTE, False, "tokens/min"),
        (Unit.REQUESTS, DAY, False, "requests/day"),
        (Unit.TOKENS, 86_400, False, "tokens/day"),
        (Unit.TOKENS, 30.0, False, "tokens/30s"),
        (Unit.REQUESTS, 0.5, False, "requests/0.5s"),
        (Unit.REQUESTS, MINUTE, True, "requests/min (server)"),
    ],
    ids=["rpm", "tpm", "rpd", "tpd-int", "30s", "half-s", "server"],
)
def test_counter_name_is_derived_from_unit_and_window(
    unit: Unit, period: float, server: bool, expected: str
) -> None:
    assert counter_name(unit, period, server=server) == expected
    counter = Counter(unit, 100, period=period, now=0.0, server=server)
    assert (counter.name, counter.unit, counter.period) == (expected, unit, period)


@pytest.mark.parametrize(
    ("unit", "tokens", "expected"),
    [(Unit.REQUESTS, 500, 1), (Unit.REQUESTS, 0, 1), (Unit.TOKENS, 500, 500),
     (Unit.TOKENS, 0, 0)],
    ids=["request-of-500", "request-of-0", "tokens-500", "tokens-0"],
)
def test_unit_amount(unit: Unit, tokens: int, expected: int) -> None:
    assert unit.amount(tokens) == expected


def test_per_minute_names_are_the_keys_servers_state() -> None:
    assert [u.per_minute for u in Unit] == ["requests/min", "tokens/min"]


def test_a_label_is_no_unit() -> None:
    # The old Capacity("requests/min", ...) call: refused, not silently taken as tokens.
    with pytest.raises(TypeError, match="Unit"):
        Counter("requests/min", 60)  # type: ignore[arg-type]


def test_bad_limit_message_names_the_counter() -> None:
    with pytest.raises(ValueError, match=r"^tokens/day: limit and period must be positive"):
        Counter(Unit.TOKENS, 0, period=DAY)


@pytest.mark.parametrize(
    ("level", "expected"),
    [(4.0, 4.0), (10.0, 10.0), (1_000.0, 10.0), (-7.5, -7.5)],
    ids=["some", "full", "capped", "debt-kept"],
)
def test_set_level_caps_at_the_size(level: float, expected: float) -> None:
    c = Counter(Unit.TOKENS, 600, now=0.0)  # size 10
    c.set_level(level, 0.0)
    assert c.available(0.0) == expected


def test_set_level_refills_first() -> None:
    c = Counter(Unit.TOKENS, 600, now=0.0)  # 10 a second
    c.set_level(2.0, 0.5)  # what refilled before 0.5 is replaced, not added
    assert c.available(0.5) == 2.0
    assert c.available(0.75) == pytest.approx(4.5)


@pytest.mark.parametrize(
    ("spent", "refund", "expected"),
    [(6, 4, 8.0), (6, 100, 10.0), (30, 5, -15.0)],
    ids=["partial", "capped-at-size", "still-in-debt"],
)
def test_refund_gives_back_up_to_the_size(spent: int, refund: int, expected: float) -> None:
    c = Counter(Unit.TOKENS, 600, now=0.0, initial=10)
    c.spend(spent, 0.0)
    c.refund(refund, 0.0)
    assert c.available(0.0) == expected


def test_capacity_is_the_counter_under_its_old_name() -> None:
    assert Capacity is Counter
    assert processor.Capacity is Counter and processor.Counter is Counter
    assert processor.Unit is Unit and processor.Limiter is Limiter
    for name in ("Capacity", "Counter", "Unit", "Limiter"):
        assert name in processor.__all__


# --------------------------------------------------------------------------- server limits


@pytest.mark.parametrize(
    ("auto", "stated", "said", "auto_after"),
    [
        # Both stated: both plausible, auto unchanged.
        ({Unit.REQUESTS, Unit.TOKENS}, (600.0, 60_000.0),
         {Unit.REQUESTS: 600.0, Unit.TOKENS: 60_000.0}, {Unit.REQUESTS, Unit.TOKENS}),
        # The server states requests only: it has no token limit to learn.
        ({Unit.REQUESTS, Unit.TOKENS}, (600.0, None), {Unit.REQUESTS: 600.0}, {Unit.REQUESTS}),
        # Nothing stated: nothing concluded (a proxy may drop headers on some answers).
        ({Unit.REQUESTS, Unit.TOKENS}, (None, None), {}, {Unit.REQUESTS, Unit.TOKENS}),
        # An implausible tokens limit is ignored, but the unit is still to be learned.
        ({Unit.TOKENS}, (600.0, 0.5), {Unit.REQUESTS: 600.0}, {Unit.TOKENS}),
        # Nonsense (negative, inf, nan) is as if absent.
        ({Unit.TOKENS}, (600.0, -5.0), {Unit.REQUESTS: 600.0}, set()),
        ({Unit.TOKENS}, (600.0, math.inf), {Unit.REQUESTS: 600.0}, set()),
        ({Unit.TOKENS}, (math.nan, 100.0), {Unit.TOKENS: 100.0}, {Unit.TOKENS}),
    ],
    ids=["both", "requests-only", "none", "implausible-tokens", "negative", "inf", "nan"],
)
def test_stated_screens_and_narrows_auto(
    auto: set[Unit],
    stated: tuple[float | None, float | None],
    said: dict[Unit, float],
    auto_after: set[Unit],
) -> None:
    server = ServerLimits(set(auto))
    assert server.stated({Unit.REQUESTS: stated[0], Unit.TOKENS: stated[1]}) == said
    assert server.auto == auto_after


def test_ignored_until_a_plausible_limit_is_stated_again() -> None:
    server = ServerLimits({Unit.TOKENS})
    server.admitted(40)
    assert server.stated({Unit.REQUESTS: None, Unit.TOKENS: 39.0}) == {}
    assert server.ignored == {"tokens/min": 39.0}
    assert not server.learning  # an ignored unit is not waited for
    assert server.stated({Unit.REQUESTS: None, Unit.TOKENS: 40.0}) == {Unit.TOKENS: 40.0}
    assert server.ignored == {}
    assert server.learning  # stated, plausible, not yet adopted by a limiter


def test_smallest_tokens_only_goes_down() -> None:
    server = ServerLimits(set())
    assert math.isinf(server.smallest_tokens)
    for tokens, expected in ((50, 50), (80, 50), (7, 7), (7, 7)):
        server.admitted(tokens)
        assert server.smallest_tokens == expected


# --------------------------------------------------------------------------- mirror


def test_mirror_starts_at_the_servers_level() -> None:
    m = Mirror(Unit.REQUESTS, 600.0, 25.0, now=10.0)
    assert m.counter.name == "requests/min (server)"
    assert m.counter.size == 600.0  # a whole minute, like the server's counter
    assert m.counter.available(10.0) == 25.0
    assert m.counter.available(11.0) == 35.0  # refills at the server's 10/s
    assert m.foreign == 0.0


def test_mirror_sync_waits_for_the_interval_unless_forced() -> None:
    m = Mirror(Unit.REQUESTS, 600.0, 100.0, now=0.0)
    m.sync(600.0, 0.0, now=0.1, min_interval=0.2)
    assert m.counter.available(0.1) == 101.0  # too soon: our own model kept
    m.sync(600.0, 0.0, now=0.1, min_interval=0.2, force=True)
    assert m.counter.available(0.1) == 0.0


def test_mirror_learns_foreign_spending_from_missed_predictions() -> None:
    m = Mirror(Unit.REQUESTS, 600.0, 0.0, now=0.0)
    # Each second the server holds 5 less than our 10/s refill predicts: someone else
    # spends 5/s. The estimate climbs toward it and the mirror refills slower.
    level = 0.0
    for second in range(1, 40):
        predicted = m.counter.available(float(second))
        level = max(0.0, predicted - 5.0 + m.foreign)  # what the server would say
        m.sync(600.0, level, now=float(second), min_interval=0.2)
    assert m.foreign == pytest.approx(5.0, rel=0.05)
    assert m.counter.rate == pytest.approx(5.0, rel=0.05)


def test_mirror_adopts_a_new_limit() -> None:
    m = Mirror(Unit.TOKENS, 60_000.0, 60_000.0, now=0.0)
    m.sync(30_000.0, 30_000.0, now=1.0, min_interval=0.2)
    assert m.counter.limit == 30_000.0
    assert m.counter.available(1.0) == 30_000.0


def test_limiter_mirrors_then_waits_for_them() -> None:
    t = [0.0]
    lim = Limiter(clock=lambda: t[0])
    lim.sync(600.0, 0.0, None, None, sent_at=0.0, cum_requests=0, cum_tokens=0)
    # No flag, but the server's requests counter is empty: 0.1 s for one more at 10/s.
    assert lim.try_acquire(1) == pytest.approx(0.1)
    assert lim.server.foreign_rates == {"requests/min": 0.0}
    assert lim.counters == []  # a mirror is no counter of ours: flags and back-off skip it


def test_observe_finds_the_per_minute_counter_by_unit_and_window() -> None:
    lim = Limiter([Counter(Unit.TOKENS, 1_000, period=30.0, now=0.0),
                   Counter(Unit.TOKENS, 6_000, now=0.0)], clock=lambda: 0.0)
    lim.observe(None, 3_000.0)
    assert [c.limit for c in lim.counters] == [1_000, 3_000.0]
