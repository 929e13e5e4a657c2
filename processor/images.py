"""Compatibility alias: image token rules moved to :mod:`processor.cost.images`."""

from __future__ import annotations

from .cost.images import (
    IMAGE_MODELS,
    IMAGE_MODELS_AS_OF,
    REMOTE_IMAGE_SIZE,
    ImageFormatError,
    ImageModel,
    base_model_name,
    image_model,
    image_part_tokens,
    image_size_from_bytes,
    image_size_from_data_url,
    image_tokens,
)

__all__ = [
    "IMAGE_MODELS",
    "IMAGE_MODELS_AS_OF",
    "REMOTE_IMAGE_SIZE",
    "ImageFormatError",
    "ImageModel",
    "base_model_name",
    "image_model",
    "image_part_tokens",
    "image_size_from_bytes",
    "image_size_from_data_url",
    "image_tokens",
]
