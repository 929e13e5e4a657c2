"""The public API is what ``processor.__all__`` says (httpx's test_exported_members)."""

from __future__ import annotations

import processor


def test_all_names_exist_and_are_public() -> None:
    for name in processor.__all__:
        assert hasattr(processor, name), name
    public = {n for n in dir(processor) if not n.startswith("_")} - {"annotations"}
    modules = {n for n in public if type(getattr(processor, n)).__name__ == "module"}
    assert public - modules == set(processor.__all__) - {"__version__"}


def test_all_is_sorted_and_unique() -> None:
    names = [n for n in processor.__all__ if n != "__version__"]
    assert len(names) == len(set(names))
    assert names == sorted(names, key=str.upper) or names == sorted(names)
