"""The miss-analysis PNG (shared by `medseg-xai explain` and the demo) orients from the affine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg_xai.miss_files import explanation_png


def _texts(fig) -> set[str]:
    return {t.get_text() for t in fig.findobj(match=lambda a: hasattr(a, "get_text"))}


def test_png_names_anatomical_planes_from_the_affine(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((12, 14, 16)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[5:8, 6:9, 7:10] = True
    heat = rng.standard_normal(image.shape).astype(np.float32)
    oriented = explanation_png(tmp_path / "a.png", image, mask, None, heat, None, "t",
                               affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    letters = _texts(oriented)
    assert {"R", "L", "A", "P", "S", "I"} <= letters
    assert not any("voxel axes" in t for t in letters)
    plain = explanation_png(tmp_path / "b.png", image, mask, None, heat, (2.0, 2.0, 2.0), "t")
    assert any("voxel axes" in t for t in _texts(plain))
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
