"""The outage circuit on a fake clock, row by row (processor.run.circuit)."""

from __future__ import annotations

import math

import pytest

from processor.run.circuit import Circuit, CircuitState

F, A = True, False  # an outage failure, a sign of life


def feed(c: Circuit, outcomes: list[bool], start: float = 0.0, step: float = 0.1) -> list[bool]:
    """Record each outcome ``step`` seconds apart; return which ones opened the circuit."""
    return [c.record(o, start + i * step) for i, o in enumerate(outcomes)]


@pytest.mark.parametrize(
    ("outcomes", "opens_at"),
    [
        ([F] * 9, None),  # too few samples to judge
        ([F] * 10, 9),  # 10 of 10
        ([A] + [F] * 9, 9),  # 9 of 10
        ([A, A, A] + [F] * 7, None),  # 7 of 10
        ([A, A, A] + [F] * 12, 14),  # 12 of 15 = 80%
        ([A, A, A, A, A] + [F] * 15, None),  # 15 of 20 = 75%
        ([A, A, A, A, A] + [F] * 16, 20),  # the oldest A slid out: 16 of 20
        ([F, A] * 20, None),  # a flaky server at 50% never opens it
    ],
    ids=["9F", "10F", "A+9F", "3A+7F", "3A+12F", "5A+15F", "5A+16F", "alternating"],
)
def test_opens_on_a_high_failure_share(outcomes: list[bool], opens_at: int | None) -> None:
    c = Circuit()
    opened = feed(c, outcomes)
    expected = [i == opens_at for i in range(len(outcomes))]
    if opens_at is not None:
        expected[opens_at + 1:] = [False] * (len(outcomes) - opens_at - 1)
    assert opened == expected
    assert c.closed is (opens_at is None)


def test_old_outcomes_are_forgotten() -> None:
    c = Circuit(horizon=60.0)
    feed(c, [F] * 9, start=0.0)
    # 9 failures a minute and more ago do not count with a new one.
    assert c.record(F, 70.0) is False
    assert c.closed


def test_looks_down_needs_only_a_few_samples() -> None:
    c = Circuit()
    feed(c, [F, F])
    assert not c.looks_down(1.0)
    c.record(F, 1.0)
    assert c.looks_down(1.0)
    c.record(A, 1.1)
    assert not c.looks_down(1.1)  # 3 of 4 = 75%


def test_probe_schedule_doubles_up_to_the_cap() -> None:
    c = Circuit(base=1.0, cap=8.0)
    c.trip(100.0)
    assert c.state is CircuitState.OPEN and c.opened_at == 100.0
    rows = []
    now = 100.0
    for _ in range(6):
        assert not c.can_probe(c.probe_at - 0.01)
        now = c.probe_at
        assert c.can_probe(now)
        c.start_probe()
        assert c.state is CircuitState.PROBING and not c.can_probe(now + 1000)
        c.record(F, now + 0.5, probe=True)
        rows.append(c.probe_at - (now + 0.5))
    assert rows == [2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    assert c.state is CircuitState.OPEN


def test_retry_after_delays_the_probe() -> None:
    c = Circuit(base=1.0)
    c.trip(0.0, retry_after=30.0)
    assert c.probe_at == 30.0
    c.start_probe()
    c.record(F, 31.0, probe=True, retry_after=120.0)
    assert c.probe_at == 151.0


def test_a_stale_failure_while_open_changes_nothing() -> None:
    c = Circuit()
    c.trip(0.0)
    before = (c.state, c.probe_at, c.interval)
    assert c.record(F, 0.5) is False  # sent before it opened
    assert (c.state, c.probe_at, c.interval) == before


@pytest.mark.parametrize("probing", [False, True], ids=["open", "probing"])
def test_any_answer_closes_it_and_counts_the_outage(probing: bool) -> None:
    c = Circuit()
    c.trip(10.0)
    if probing:
        c.start_probe()
    c.record(A, 25.0)
    assert c.closed and c.opened_at is None and c.probe_at == math.inf
    assert c.total_down(99.0) == 15.0 and c.outages == 1
    # A fresh start from the answer that closed it: the failures before the outage do
    # not count toward the next one, so it takes 9 new ones (9 of 10).
    assert feed(c, [F] * 9, start=30.0) == [False] * 8 + [True]


def test_expires_after_the_outage_window() -> None:
    c = Circuit(outage_window=120.0)
    assert not c.expired(1e9)  # closed never expires
    c.trip(10.0)
    assert c.expires_at() == 130.0
    assert not c.expired(129.9) and c.expired(130.0)
    assert c.wake_at() == c.probe_at == 11.0
    c.start_probe()
    assert c.wake_at() == 130.0  # probing: only the window's end wakes it


def test_second_outage_is_counted_and_timed() -> None:
    c = Circuit()
    c.trip(0.0)
    c.record(A, 5.0)
    c.trip(100.0)
    assert c.outages == 2
    assert c.total_down(103.0) == 8.0
    assert c.interval == c.base  # the probe schedule restarts


@pytest.mark.parametrize(
    "kwargs",
    [{"outage_window": -1.0}, {"base": 0.0}, {"base": 2.0, "cap": 1.0}, {"threshold": 0.0},
     {"threshold": 1.5}, {"min_samples": 30}, {"outage_window": math.nan}],
    ids=["negative-window", "zero-base", "cap-below-base", "zero-threshold", "threshold>1",
         "min-samples>window", "nan-window"],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Circuit(**kwargs)  # type: ignore[arg-type]


def test_an_endless_window_stays_finite() -> None:
    c = Circuit(outage_window=math.inf)
    c.trip(0.0)
    assert math.isfinite(c.expires_at())
