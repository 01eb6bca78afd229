"""Exported maps keep the source grid and affine: the map written for an RAS, an LPS and an
axis-permuted copy of the same scan lands on the same world coordinates (read back with
nibabel, as an external viewer would)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg_xai.adapters import SegmentationAdapter
from tests.test_geometry import _flip, _permute


class _Uniform(torch.nn.Module):
    """A 3x3x3 box filter and a 1x1x1 head: equivariant under flips and axis permutations, so
    the attribution of a copy is the copy of the attribution."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Conv3d(1, 2, 3, padding=1, bias=False)
        self.head = torch.nn.Conv3d(2, 2, 1)
        with torch.no_grad():
            self.body.weight.fill_(1 / 27)
            self.body.weight[1] *= -1
            self.head.weight.copy_(torch.tensor([[1.0, 0.5], [-1.0, 2.0]])[..., None, None, None])
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


@pytest.fixture(scope="module")
def crop():
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=2)
    data = np.asarray(img.get_fdata(), dtype=np.float32)[20:60, 30:78, 25:61]
    aff = img.affine @ np.array([[1, 0, 0, 20], [0, 1, 0, 30], [0, 0, 1, 25], [0, 0, 0, 1.0]])
    return data / data.max(), aff


@pytest.mark.slow
def test_attribution_maps_land_on_the_same_world_coordinates(crop, tmp_path) -> None:
    from medseg_xai.widgets import CaseExplorer, ExplorerOptions

    data, aff = crop
    mask = np.zeros(data.shape, bool)
    mask[25:31, 10:18, 20:26] = True  # off-centre: a wrong flip would move it
    ad = SegmentationAdapter(_Uniform())
    copies = {
        "RAS": (data, mask.astype(np.float32), aff),
        "LPS": (*_flip(data, aff, (0, 1))[:1], _flip(mask.astype(np.float32), aff, (0, 1))[0],
                _flip(data, aff, (0, 1))[1]),
        "permuted": (_permute(data, aff, (2, 0, 1))[0],
                     _permute(mask.astype(np.float32), aff, (2, 0, 1))[0],
                     _permute(data, aff, (2, 0, 1))[1]),
    }
    canon = {}
    for name, (img, m, a) in copies.items():
        ex = CaseExplorer(ad, img, m > 0, m > 0, affine=a, case_id=name,
                          options=ExplorerOptions(background=False))
        ex.select_lesion("ref-1")
        ex.method.value = "saliency"
        exp = ex.run_explanation()
        assert ex.last_error is None, ex.status.value
        out = nib.load(ex.export_attribution(tmp_path / f"{name}.nii.gz"))
        # the map lies on the copy's own grid, under the copy's affine: it overlays the source
        assert out.shape == img.shape
        np.testing.assert_allclose(out.affine, a)
        np.testing.assert_allclose(np.asarray(out.dataobj), exp.attribution)
        # an external reader reorients to RAS: every copy must give the same array and affine
        ras = nib.as_closest_canonical(out)
        canon[name] = (np.asarray(ras.dataobj), ras.affine)
        assert np.abs(canon[name][0]).max() > 0
    for name in ("LPS", "permuted"):
        np.testing.assert_allclose(canon[name][1], canon["RAS"][1])
        np.testing.assert_allclose(canon[name][0], canon["RAS"][0], rtol=1e-5, atol=1e-7)
    # the attribution's centre of mass sits at the same place in the world in every copy
    worlds = []
    for name, (_, _, a) in copies.items():
        arr = np.abs(np.asarray(nib.load(tmp_path / f"{name}.nii.gz").dataobj, dtype=float))
        idx = np.indices(arr.shape).reshape(3, -1)
        v = (idx * arr.ravel()).sum(axis=1) / arr.sum()
        worlds.append((a @ np.array([*v, 1.0]))[:3])
    np.testing.assert_allclose(worlds[1], worlds[0], atol=1e-3)
    np.testing.assert_allclose(worlds[2], worlds[0], atol=1e-3)
