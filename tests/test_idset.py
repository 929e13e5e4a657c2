"""The compact id set: membership, duplicates, growth and memory per id (processor.idset)."""

from __future__ import annotations

import pytest

from processor.idset import IdSet, fingerprint


@pytest.mark.parametrize(
    ("ids", "expected_len"),
    [
        ([], 0),
        (["a"], 1),
        (["a", "b", "c"], 3),
        (["a", "a", "a"], 1),
        (["x", "y", "x", "z", "y"], 3),
        (["", "0", " "], 3),
        (["é", "e\u0301", "日本語", "emoji-🙂"], 4),
        (["lone-surrogate-\ud800"], 1),
    ],
    ids=["empty", "one", "three", "same-thrice", "mixed-dups", "blank-ish", "unicode",
         "surrogate"],
)
def test_add_contains_len(ids: list[str], expected_len: int) -> None:
    s = IdSet()
    for cid in ids:
        s.add(cid)
    assert len(s) == expected_len
    for cid in ids:
        assert cid in s
    assert "never-added" not in s


def test_add_returns_true_once_then_false() -> None:
    s = IdSet()
    assert s.add("req-1") is True
    assert s.add("req-2") is True
    assert s.add("req-1") is False
    assert s.add("req-2") is False
    assert len(s) == 2


@pytest.mark.parametrize(
    "value", [1, None, b"req-1", ("req-1",), 1.5], ids=["int", "none", "bytes", "tuple", "float"]
)
def test_non_strings_are_never_members(value: object) -> None:
    s = IdSet()
    s.add("req-1")
    s.add("1")
    assert value not in s


@pytest.mark.parametrize(
    "n", [1_366, 2_000, 5_000, 40_000], ids=["first-growth", "2k", "5k", "40k"]
)
def test_growth_keeps_every_id(n: int) -> None:
    s = IdSet()
    ids = [f"request-{i:07d}" for i in range(n)]
    assert all(s.add(cid) for cid in ids)
    assert len(s) == n
    assert all(cid in s for cid in ids)
    # Re-adding after growth still finds every one.
    assert not any(s.add(cid) for cid in ids)
    assert len(s) == n
    assert sum(f"other-{i}" in s for i in range(2_000)) == 0


@pytest.mark.parametrize(
    "n", [1_366, 2_000, 2_730, 2_731, 10_000, 50_000],
    ids=["just-grown", "2k", "full-before-2nd-growth", "just-grown-again", "10k", "50k"],
)
def test_nbytes_per_id_is_between_12_and_24_after_growth(n: int) -> None:
    s = IdSet()
    start = s.nbytes
    for i in range(n):
        s.add(f"id-{i}")
    assert s.nbytes > start, "expected the table to have grown"
    assert 12 <= s.nbytes / len(s) <= 24


def test_presized_set_holds_its_capacity_without_growing() -> None:
    s = IdSet(capacity=3_000)
    before = s.nbytes
    for i in range(3_000):
        s.add(f"id-{i}")
    assert s.nbytes == before
    assert len(s) == 3_000
    assert all(f"id-{i}" in s for i in range(3_000))


def test_default_set_holds_1024_ids_without_growing() -> None:
    s = IdSet()
    before = s.nbytes
    for i in range(1_024):
        s.add(f"id-{i}")
    assert s.nbytes == before
    assert len(s) == 1_024


@pytest.mark.parametrize(
    "cid",
    ["", "a", "request-1", "日本語", "\ud800"],
    ids=["empty", "a", "ascii", "cjk", "surrogate"],
)
def test_fingerprint_is_a_stable_nonzero_64_bit_int(cid: str) -> None:
    fp = fingerprint(cid)
    assert fp == fingerprint(cid)
    assert 0 < fp < 2**64


def test_fingerprints_differ_for_different_ids() -> None:
    fps = {fingerprint(f"id-{i}") for i in range(10_000)}
    assert len(fps) == 10_000


# --------------------------------------------------------------------------- values


def test_values_are_stored_and_replaced() -> None:
    s = IdSet(values=True)
    assert s.add("a", 5) is True
    assert s.get("a") == 5
    assert s.add("a", 7) is False  # not new, but the value is replaced
    assert s.get("a") == 7
    assert len(s) == 1
    assert s.get("missing") is None


def test_get_without_values_is_zero_or_none() -> None:
    s = IdSet()
    s.add("a", 99)
    assert s.get("a") == 0
    assert s.get("b") is None


def test_values_survive_growth() -> None:
    s = IdSet(values=True)
    for i in range(5_000):
        s.add(f"id-{i}", i + 1)
    assert all(s.get(f"id-{i}") == i + 1 for i in range(5_000))


@pytest.mark.parametrize(
    ("values", "present", "expected", "expected_value"),
    [(True, True, True, 42), (True, False, False, None), (False, True, False, 0)],
    ids=["present", "absent-not-added", "no-values"],
)
def test_update_fingerprint(
    values: bool, present: bool, expected: bool, expected_value: int | None
) -> None:
    s = IdSet(values=values)
    if present:
        s.add("a", 1)
    assert s.update_fingerprint(fingerprint("a"), 42) is expected
    assert s.get("a") == expected_value
    assert len(s) == (1 if present else 0)


def test_add_fingerprint_is_add() -> None:
    s = IdSet()
    assert s.add_fingerprint(fingerprint("a")) is True
    assert "a" in s
    assert s.add("a") is False


def test_values_add_half_the_memory() -> None:
    assert IdSet(values=True).nbytes == IdSet().nbytes * 3 // 2


def test_values_are_kept_modulo_2_32() -> None:
    s = IdSet(values=True)
    s.add("a", 2**40 + 5)
    assert s.get("a") == 5
    s.update_fingerprint(fingerprint("a"), 2**33 + 7)
    assert s.get("a") == 7
