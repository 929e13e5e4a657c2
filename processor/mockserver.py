"""The mock OpenAI server, kept at its old import path: see :mod:`processor.testing`."""

from __future__ import annotations

from .testing import (
    STATS_KEY,
    MockConfig,
    MockStats,
    OutageMode,
    build_app,
    cost_of,
    format_duration,
    run,
    serve,
)

__all__ = [
    "STATS_KEY",
    "MockConfig",
    "MockStats",
    "OutageMode",
    "build_app",
    "cost_of",
    "format_duration",
    "run",
    "serve",
]
