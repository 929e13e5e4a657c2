"""The ``batchproc`` command: one typer app (``app``), its entry point (``main``), the
tool commands, the progress display, the keys file and the exit codes."""

from __future__ import annotations

from .app import app, main

__all__ = ["app", "main"]
