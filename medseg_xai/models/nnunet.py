"""nnU-Net v2 results folders and exported zips (placeholder: discovery only)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["find_nnunet_folder"]


def find_nnunet_folder(path: Path) -> Path | None:
    """The ``Trainer__Plans__configuration`` folder under ``path`` (itself included): the one
    holding ``plans.json``, ``dataset.json`` and ``fold_*/checkpoint_*.pth``; None if none."""
    candidates = [path, *sorted(p.parent for p in path.rglob("plans.json"))]
    for c in candidates:
        if (c / "plans.json").is_file() and (c / "dataset.json").is_file() and any(
                c.glob("fold_*/checkpoint_*.pth")):
            return c
    return None
