"""Durations and clock times in messages, for any value a server may send (processor.stats)."""

from __future__ import annotations

import math
import time

import pytest

from processor.stats import MAX_SHOWN, clamp_seconds, clock_at, human_duration


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, "?"),
        (math.nan, "?"),
        (-5.0, "0s"),
        (0.2, "1s"),
        (42.0, "42s"),
        (185.0, "3m05s"),
        (5000.0, "1h23m"),
        (86_400.0 * 3 + 3600 * 4, "3d04h"),
        (MAX_SHOWN, "100 years or more"),
        (1e17, "100 years or more"),
        (math.inf, "100 years or more"),
    ],
    ids=["none", "nan", "negative", "fraction", "42s", "3m05s", "5000s", "days", "max",
         "1e17", "inf"],
)
def test_human_duration(seconds: float | None, expected: str) -> None:
    assert human_duration(seconds) == expected


@pytest.mark.parametrize("seconds", [1e17, 1e308, math.inf, MAX_SHOWN],
                         ids=["1e17", "1e308", "inf", "max"])
def test_clock_at_never_overflows(seconds: float) -> None:
    assert clock_at(seconds) == "100 years or more from now"


def test_clock_at_shows_the_local_time() -> None:
    def shown(now: float) -> str:
        return time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(now + 3600.0))

    before = time.time()
    said = clock_at(3600.0)
    assert said in {shown(before), shown(time.time())}  # a minute may turn in between
    assert clock_at(None) == clock_at(math.nan) == "?"


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(math.nan, 0.0), (-1.0, 0.0), (0.0, 0.0), (7.5, 7.5), (1e17, MAX_SHOWN),
     (math.inf, MAX_SHOWN)],
    ids=["nan", "negative", "zero", "7.5", "1e17", "inf"],
)
def test_clamp_seconds(seconds: float, expected: float) -> None:
    assert clamp_seconds(seconds) == expected
