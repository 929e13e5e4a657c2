"""Text read from a file (a run log, a cache), fit to show in a terminal or a page."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["shown"]

#: characters never shown as they are: controls (a terminal obeys ESC sequences in a
#: custom_id or a model name) and the marks that reverse or isolate text direction.
_UNSHOWN = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def shown(value: Any, limit: int = 200) -> str:
    """``value`` as text: at most ``limit`` characters, controls and direction marks
    written as ``\\uXXXX``."""
    text = (value if isinstance(value, str) else str(value))[:limit]
    return _UNSHOWN.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
