"""metrics.agreement: one row per reader pair, equal to an independent pairwise computation.

Dice and Jaccard come from MedPy, HD95 / ASSD / NSD from MONAI itself, lesion-wise F1 from
scikit-image connected components matched by hand: none of them goes through medseg_xai.
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations

import numpy as np
import pytest
import torch
from medpy.metric.binary import dc, jc
from monai.metrics import (
    compute_average_surface_distance,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from scipy import ndimage
from skimage.measure import label as sk_label

from medseg_xai import metrics as M
from medseg_xai.metrics import AGREEMENT_COLUMNS, agreement


def _blobs(rng, shape, density):
    noise = ndimage.gaussian_filter(rng.random(shape), sigma=1.5)
    return noise > np.quantile(noise, 1 - density)


def _readers(seed, shape=(14, 20, 18), n=3):
    """A shared truth plus per-reader dilation/erosion and a dropped component."""
    rng = np.random.default_rng(seed)
    truth = _blobs(rng, shape, 0.12)
    out = {}
    for i in range(n):
        m = truth.copy()
        if i % 3 == 1:
            m = ndimage.binary_dilation(m)
        elif i % 3 == 2:
            m = ndimage.binary_erosion(m) | (rng.random(shape) > 0.998)
        out[f"reader{i + 1}"] = m
    return out


def _independent(a, b, spacing, tolerance=1.0, thr=0.1):
    """Pair metrics without medseg_xai: MedPy overlap, MONAI surfaces, skimage lesions."""
    ya = torch.from_numpy(a[None, None].astype(np.float32))  # a = reference
    yb = torch.from_numpy(b[None, None].astype(np.float32))
    sp = list(spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95 = compute_hausdorff_distance(yb, ya, include_background=True, spacing=sp,
                                          percentile=95).item()
        assd = compute_average_surface_distance(yb, ya, include_background=True, symmetric=True,
                                                spacing=sp).item()
        nsd = compute_surface_dice(yb, ya, [tolerance], include_background=True, spacing=sp).item()
    la = sk_label(a, connectivity=a.ndim)
    lb = sk_label(b, connectivity=b.ndim)
    tp = missed = 0
    hit_b: set[int] = set()
    for k in range(1, la.max() + 1):
        les = la == k
        if (les & b).sum() / les.sum() >= thr:
            tp += 1
            hit_b |= set(np.unique(lb[les & b]).tolist()) - {0}
        else:
            missed += 1
    fp = lb.max() - len(hit_b)
    den = 2 * tp + missed + fp
    return {"dice": dc(b, a), "jaccard": jc(b, a), "hd95": hd95, "assd": assd, "nsd": nsd,
            "lesion_f1": 2 * tp / den if den else math.nan}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agreement_equals_independent_pairwise_computation(seed):
    masks = _readers(seed)
    spacing = (2.0, 0.8, 1.1)
    table = agreement(masks, spacing)
    pairs = list(combinations(masks, 2))
    assert list(table.columns) == AGREEMENT_COLUMNS
    assert list(zip(table["reader_a"], table["reader_b"])) == pairs
    voxel = float(np.prod(spacing))
    for (_, row), (ra, rb) in zip(table.iterrows(), pairs):
        ref = _independent(masks[ra], masks[rb], spacing)
        for key, value in ref.items():
            assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (ra, rb, key)
        assert row["volume_a_mm3"] == pytest.approx(masks[ra].sum() * voxel)
        assert row["volume_b_mm3"] == pytest.approx(masks[rb].sum() * voxel)
        assert row["edge_case"] == "none"


def test_symmetric_metrics_do_not_depend_on_reader_order():
    masks = _readers(5)
    names = list(masks)
    fwd = agreement(masks).set_index(["reader_a", "reader_b"])
    rev = agreement({k: masks[k] for k in reversed(names)}).set_index(["reader_b", "reader_a"])
    rev.index.names = fwd.index.names
    rev = rev.loc[fwd.index]
    for key in ("dice", "jaccard", "hd95", "assd", "nsd"):
        np.testing.assert_allclose(fwd[key], rev[key], rtol=1e-6)


def test_sequence_input_names_readers_and_2d_works():
    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    b = np.roll(a, 1, axis=1)
    table = agreement([a, b, a])
    assert table[["reader_a", "reader_b"]].values.tolist() == [["r1", "r2"], ["r1", "r3"],
                                                              ["r2", "r3"]]
    assert table.loc[1, "dice"] == 1.0 and table.loc[1, "hd95"] == 0.0
    assert table.loc[0, "dice"] == pytest.approx(M.dice(b, a))


def test_empty_readers_follow_the_empty_policy():
    z = np.zeros((6, 6, 6), bool)
    m = z.copy()
    m[2:4, 2:4, 2:4] = True
    table = agreement({"a": z, "b": z, "c": m})
    both, one = table.iloc[0], table.iloc[1]
    assert both["edge_case"] == "both_empty" and both["dice"] == 1.0 and both["hd95"] == 0.0
    assert one["edge_case"] == "pred_empty" or one["edge_case"] == "ref_empty"
    assert one["dice"] == 0.0 and one["hd95"] == pytest.approx(M.image_diagonal_mm((6,) * 3,
                                                                                   (1.0,) * 3))
    nan = agreement({"a": z, "b": z}, empty="nan")
    assert math.isnan(nan.loc[0, "dice"])


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        ({"a": np.ones((4, 4), bool)}, "at least 2 readers"),
        ({"a": np.ones((4, 4), bool), "b": np.ones((4, 5), bool)}, "shape"),
        ({"a": np.ones((4, 4)), "b": np.full((4, 4), 2)}, "masks_by_reader\\['b'\\]"),
        ("r1", "expected a mapping"),
    ],
)
def test_bad_input_names_the_reader(masks, match):
    with pytest.raises(ValueError, match=match):
        agreement(masks)


def test_convention_is_passed_through():
    masks = _readers(7)
    spacing = (2.0, 0.8, 1.1)
    medpy = agreement(masks, spacing, convention="medpy")
    names = list(masks)
    direct = M.evaluate_case(masks[names[1]], masks[names[0]], spacing, convention="medpy")
    assert medpy.loc[0, "hd95"] == pytest.approx(direct["hd95"])
    assert medpy.loc[0, "assd"] == pytest.approx(direct["assd"])
