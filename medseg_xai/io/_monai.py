"""MONAI's ``LoadImage``, built once per reader and role (it costs more than a small volume)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

#: (MONAI reader name, is_image) -> LoadImage; the audit's fork pool builds these before forking
LOADERS: dict[tuple[str, bool], Any] = {}


def monai_loader(reader: str, is_image: bool) -> Any:
    """A cached ``LoadImage(reader=...)``: images as float32, labels in their stored type."""
    key = (reader, bool(is_image))
    if key not in LOADERS:
        from monai.transforms import LoadImage

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            LOADERS[key] = LoadImage(image_only=False, ensure_channel_first=True, reader=reader,
                                     dtype=np.float32 if is_image else None)
    return LOADERS[key]
