"""Compatibility alias: encoding loading moved to :mod:`processor.cost.encodings`."""

from __future__ import annotations

from .cost.encodings import EncodingLoader, encoding_from_file, encoding_name_for_model

__all__ = ["EncodingLoader", "encoding_from_file", "encoding_name_for_model"]
