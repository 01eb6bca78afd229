"""Helpers shared by the loaders: file hashes, class import, state-dict extraction."""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["files_hash", "import_class", "extract_state_dict"]


def files_hash(paths: Iterable[Path]) -> str:
    """sha256 (hex) of the files' bytes, in the given order, names included."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def import_class(spec: str) -> type:
    """``"package.module:Class"`` (or ``package.module.Class``) -> the class."""
    mod, sep, name = spec.partition(":")
    if not sep:
        mod, _, name = spec.rpartition(".")
    if not mod or not name:
        raise ValueError(f"model_class: expected 'package.module:Class', got {spec!r}")
    try:
        obj = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model_class: could not import {spec!r} ({type(exc).__name__}: "
                         f"{exc})") from exc
    if not isinstance(obj, type):
        raise ValueError(f"model_class: {spec!r} is not a class")
    return obj


def extract_state_dict(obj: Any, what: str) -> dict[str, Any]:
    """The state dict inside a loaded checkpoint: the dict itself, or its ``state_dict`` /
    ``model`` / ``network_weights`` / ``model_state_dict`` entry; a ``module.`` prefix
    (DataParallel) is removed."""
    import torch

    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "network_weights", "model", "net"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor)
                                                         for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor)
                                                       for v in obj.values()):
        raise ValueError(f"{what}: expected a state dict (parameter name -> tensor), or a "
                         "checkpoint holding one under 'state_dict', 'model' or "
                         "'network_weights'")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj
