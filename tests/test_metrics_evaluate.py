"""evaluate_case: keys of the contract, consistency with single metrics, multi-class, MONAI."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from medseg_xai import metrics as M

BINARY_KEYS = {
    "dice", "jaccard", "precision", "recall", "specificity", "hd", "hd95", "assd", "masd", "nsd",
    "mcc", "volume_pred_mm3", "volume_ref_mm3", "volume_diff_mm3", "abs_volume_diff_mm3",
    "volume_diff_pct", "edge_case", "empty_policy", "convention",
}  # fmt: skip


def _case(rng, shape=(9, 20, 18)):
    ref = np.zeros(shape, bool)
    ref[2:6, 4:12, 5:11] = True
    pred = np.roll(ref, 2, axis=2) | (rng.random(shape) > 0.995)
    return pred, ref


def test_binary_keys_and_consistency_with_single_metrics():
    pred, ref = _case(np.random.default_rng(0))
    sp = (2.5, 0.7, 0.9)
    out = M.evaluate_case(pred, ref, sp, tolerance=1.5, percentile=90)
    assert set(out) == BINARY_KEYS
    assert out["edge_case"] == "none" and out["empty_policy"] == "worst"
    assert out["dice"] == M.dice(pred, ref)
    assert out["jaccard"] == M.jaccard(pred, ref)
    assert out["precision"] == M.precision(pred, ref)
    assert out["recall"] == M.recall(pred, ref)
    assert out["specificity"] == M.specificity(pred, ref)
    assert out["hd"] == M.hausdorff_distance(pred, ref, sp, percentile=None)
    assert out["hd95"] == M.hausdorff_distance(pred, ref, sp, percentile=90)
    assert out["assd"] == M.average_surface_distance(pred, ref, sp)
    assert out["nsd"] == M.normalized_surface_dice(pred, ref, 1.5, sp)
    vols = M.volume_difference(pred, ref, sp)
    for key, value in vols.items():
        assert out[key] == pytest.approx(value)
    assert out["volume_diff_mm3"] == pytest.approx((pred.sum() - ref.sum()) * 2.5 * 0.7 * 0.9)


def test_multiclass_per_class_and_mean_with_names():
    ref = np.zeros((6, 24, 24), np.int16)
    ref[1:5, 2:10, 2:10] = 1
    ref[1:5, 14:22, 12:20] = 2
    pred = ref.copy()
    pred[1:5, 2:10, 9:11] = 1  # class 1 grows
    pred[pred == 2] = 0  # class 2 entirely missed
    pred[0, 0, 0] = 3  # class 3 appears only in the prediction
    sp = (3.0, 1.0, 1.0)
    out = M.evaluate_case(pred, ref, sp, labels={1: "liver", 2: "tumour", 3: "cyst"})
    for lab, name in ((1, "liver"), (2, "tumour"), (3, "cyst")):
        single = M.evaluate_case(pred == lab, ref == lab, sp)
        for key in M.METRIC_KEYS:
            a, b = out[f"{key}_{name}"], single[key]
            assert (math.isnan(a) and math.isnan(b)) or a == b, (key, name)
        assert out[f"edge_case_{name}"] == single["edge_case"]
    assert out["edge_case_tumour"] == "pred_empty" and out["edge_case_cyst"] == "ref_empty"
    assert out["edge_case"] == "tumour:pred_empty;cyst:ref_empty"
    assert out["dice"] == pytest.approx(np.mean([out["dice_liver"], 0.0, 0.0]))
    assert out["hd"] == pytest.approx(
        np.mean([out[f"hd_{n}"] for n in ("liver", "tumour", "cyst")])
    )
    assert math.isnan(out["volume_diff_pct"])  # cyst has no reference volume: no silent drop
    # a list of labels names classes by their value
    plain = M.evaluate_case(pred, ref, sp, labels=[1, 2, 3])
    assert plain["dice_1"] == out["dice_liver"] and "edge_case_2" in plain


def test_multiclass_dice_and_hd_match_monai_one_hot():
    rng = np.random.default_rng(7)
    ref = rng.integers(0, 3, size=(10, 12, 11))
    pred = np.where(rng.random(ref.shape) > 0.8, rng.integers(0, 3, size=ref.shape), ref)
    sp = (1.5, 0.6, 0.8)
    out = M.evaluate_case(pred, ref, sp, labels=[1, 2])

    def one_hot(a):
        return torch.from_numpy(np.stack([a == k for k in range(3)])[None].astype(np.float32))

    dice = compute_dice(one_hot(pred), one_hot(ref), include_background=False)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95 = compute_hausdorff_distance(
            one_hot(pred), one_hot(ref), include_background=False, percentile=95, spacing=list(sp)
        )[0]
    assert [out["dice_1"], out["dice_2"]] == pytest.approx(dice.tolist(), rel=1e-6)
    assert [out["hd95_1"], out["hd95_2"]] == pytest.approx(hd95.tolist(), rel=1e-6)
    assert out["dice"] == pytest.approx(float(dice.mean()), rel=1e-6)


def test_probabilities_add_soft_dice_and_brier():
    ref = np.zeros((5, 5), bool)
    ref[1:3, 1:3] = True
    probs = ref * 0.8 + 0.1  # 0.9 inside, 0.1 outside
    out = M.evaluate_case(probs > 0.5, ref, probabilities=probs)
    assert out["soft_dice"] == pytest.approx(2 * 4 * 0.9 / (0.9 * 4 + 0.1 * 21 + 4))
    assert out["brier"] == pytest.approx(0.01)
    lab = ref.astype(int)
    multi = M.evaluate_case(lab, lab, labels=[1], probabilities=np.stack([1 - probs, probs]))
    assert multi["soft_dice_1"] == pytest.approx(out["soft_dice"])
    with pytest.raises(ValueError, match=r"probabilities: expected shape \(K >= 2"):
        M.evaluate_case(lab, lab, labels=[1], probabilities=probs)


def test_2d_case_with_spacing():
    pred = np.zeros((8, 8), bool)
    ref = np.zeros((8, 8), bool)
    pred[2:5, 2:5] = True
    ref[2:5, 3:6] = True
    out = M.evaluate_case(pred, ref, (1.0, 2.0))
    assert out["dice"] == pytest.approx(2 * 6 / 18)
    assert out["hd"] == pytest.approx(2.0)  # one column shift of 2 mm
    assert out["volume_pred_mm3"] == pytest.approx(18.0)
