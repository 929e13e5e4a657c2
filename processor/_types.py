"""Type aliases shared across the package."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

JSONObject = dict[str, Any]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
