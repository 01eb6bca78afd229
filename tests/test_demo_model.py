"""The bundled demo model: loading, normalisation, and that it is really trained (with real gaps)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from monai.metrics import DiceMetric

from medseg_xai.adapters import SegmentationAdapter
from medseg_xai.demo import UNSEEN_DEVICE, load_model, make_cohort, predict_cohort
from medseg_xai.demo.cohort import generate_cases
from medseg_xai.demo.evaluation import case_dice, lesion_rows
from medseg_xai.demo.model import (
    ARCHITECTURE,
    RECORD_FILE,
    WEIGHTS_FILE,
    DemoSegmenter,
    _weights_dir,
    build_model,
    normalise_intensity,
    training_record,
)
from medseg_xai.demo.scanners import DEVICES

pytestmark = pytest.mark.usefixtures("one_thread")

# Held-out cohorts: their seeds are neither the training (1000) nor the validation seed (2000).
# Scoring is cheap (tens of ms a scan), so the cohorts are large enough for stable means.
HELD_OUT_SEED = 33
HELD_OUT_SEEN_CASES = 60  # seen devices only: about 40 scans with lesions
UNSEEN_SEED = 34
UNSEEN_CASES = 20  # the unseen device only, at the two sites that run it
UNSEEN_SITES = ("Hôpital Saint-Éloi", "Lakeside & Valley Imaging")


@pytest.fixture(scope="module")
def adapter() -> SegmentationAdapter:
    return load_model()


def _score(model: torch.nn.Module, cases) -> tuple[pd.DataFrame, pd.DataFrame]:
    case_rows, lesions = [], []
    model.eval()
    with torch.no_grad():
        for case in cases:
            pred = model(torch.from_numpy(case.image)[None, None]).argmax(1)[0].numpy()
            case_rows.append({"case_id": case.case_id, "device": case.device.name,
                              "has_lesion": bool(case.label.any()),
                              "load_mm3": float(case.label.sum() * np.prod(case.spacing)),
                              "dice": case_dice(pred, case.label)})
            for row in lesion_rows(pred, case.label, case.spacing):
                lesions.append({**row, "device": case.device.name})
    return pd.DataFrame(case_rows), pd.DataFrame(lesions)


@pytest.fixture(scope="module")
def held_out(adapter):
    cases = list(generate_cases(HELD_OUT_SEEN_CASES, HELD_OUT_SEED,
                                exclude_devices=(UNSEEN_DEVICE,)))
    trained = _score(adapter.model, cases)
    untrained = _score(build_model(seed=0), cases)
    return cases, trained, untrained


@pytest.fixture(scope="module")
def held_out_unseen(adapter):
    others = [d for d in DEVICES if d != UNSEEN_DEVICE]
    cases = list(generate_cases(UNSEEN_CASES, UNSEEN_SEED, sites=UNSEEN_SITES,
                                exclude_devices=others))
    assert {c.device.name for c in cases} == {UNSEEN_DEVICE}
    return _score(adapter.model, cases)


def test_weights_are_small_state_dict_loadable_safely():
    path = _weights_dir() / WEIGHTS_FILE
    assert path.stat().st_size < 5 * 1024 * 1024
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    assert set(state) == set(DemoSegmenter().state_dict())


def test_training_record_describes_the_shipped_weights():
    record = training_record()
    assert (_weights_dir() / RECORD_FILE).is_file()
    assert record["config"]["seed"] != HELD_OUT_SEED
    assert record["config"]["val_seed"] != HELD_OUT_SEED
    assert UNSEEN_DEVICE in record["data_recipe"]["train"]["exclude_devices"]
    assert UNSEEN_DEVICE not in record["data_recipe"]["train"]["devices"]
    assert record["weights_bytes"] == (_weights_dir() / WEIGHTS_FILE).stat().st_size
    assert record["time_s"]["train"] > 0
    assert 0.0 <= record["validation"]["seen_devices"]["dice"] <= 1.0
    # The record belongs to this architecture, and its own validation agrees with the tests.
    assert record["architecture"]["channels"] == list(ARCHITECTURE["channels"])
    assert record["validation"]["seen_devices"]["dice_with_lesion"] > 0.7


def test_load_model_returns_ready_adapter(adapter):
    assert isinstance(adapter, SegmentationAdapter)
    assert adapter.activation == "softmax" and adapter.class_names == ["background", "lesion"]
    assert not adapter.model.training
    image = np.random.default_rng(0).random((1, 13, 21, 19)).astype(np.float32) * 500
    p = adapter.probabilities(image)
    assert tuple(p.shape) == (1, 2, 13, 21, 19)
    torch.testing.assert_close(p.sum(1), torch.ones(1, 13, 21, 19))


def test_load_model_rejects_foreign_weights(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="DemoSegmenter"):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="train"):
        load_model(tmp_path / "missing.pt")


@settings(max_examples=25, deadline=None)
@given(scale=st.floats(0.01, 1e4), offset=st.floats(-100.0, 100.0), seed=st.integers(0, 99))
@example(scale=0.015625, offset=3.0, seed=1)  # a voxel within float32 rounding of the mean
def test_normalisation_ignores_the_scanner_intensity_scale(scale, offset, seed):
    x = torch.from_numpy(np.random.default_rng(seed).gamma(2.0, 1.0, (2, 1, 6, 7, 5)))
    a = normalise_intensity(x)
    b = normalise_intensity(x * scale + offset)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    head = x > x.mean(dim=(2, 3, 4), keepdim=True)
    for n in range(2):
        vals = a[n][head[n]]
        assert abs(float(vals.mean())) < 1e-4 and abs(float(vals.std(unbiased=False)) - 1) < 1e-3


def test_normalisation_of_a_constant_scan_is_finite():
    out = normalise_intensity(torch.full((1, 1, 4, 4, 4), 7.0))
    assert torch.isfinite(out).all() and float(out.abs().max()) == 0.0


def test_case_dice_matches_monai(held_out):
    cases, _, _ = held_out
    metric = DiceMetric(include_background=False, reduction="none")
    rng = np.random.default_rng(0)
    checked = 0
    for case in cases:
        if not case.label.any():
            continue
        pred = np.logical_xor(case.label > 0, rng.random(case.label.shape) < 0.01)
        onehot = [torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))
                  for m in (pred, case.label > 0)]
        expected = float(metric(onehot[0], onehot[1])[0, 0])
        assert case_dice(pred, case.label) == pytest.approx(expected, abs=1e-6)
        checked += 1
    assert checked >= 5


def test_model_is_really_trained_on_seen_devices(held_out):
    _, (cases, _), (untrained, _) = held_out
    assert set(cases.device) == {d for d in DEVICES if d != UNSEEN_DEVICE}
    seen = cases[cases.has_lesion]
    assert len(seen) >= 30
    # Every held-out scan with a lesion counts, including those holding only tiny lesions
    # (which the model misses by design, see below).
    assert seen["dice"].mean() > 0.7
    assert untrained.loc[seen.index, "dice"].mean() < 0.2
    assert seen["dice"].mean() > untrained.loc[seen.index, "dice"].mean() + 0.5
    # Each seen device, the thick-slice GE one included, is well segmented.
    per_device = seen.groupby("device")["dice"].mean()
    assert per_device.min() > 0.5, per_device.to_dict()
    # Scans without lesions stay (mostly) empty.
    empty = cases[~cases.has_lesion]
    assert len(empty) >= 5 and empty["dice"].mean() > 0.8


def test_model_is_weaker_on_the_unseen_device(held_out, held_out_unseen):
    _, (cases, _), _ = held_out
    unseen_cases, _ = held_out_unseen
    seen = cases[cases.has_lesion]["dice"]
    unseen = unseen_cases[unseen_cases.has_lesion]["dice"]
    assert len(unseen) >= 8
    assert unseen.mean() < seen.mean() - 0.3


def test_model_misses_small_lesions_more(held_out):
    _, (_, lesions), _ = held_out
    small = lesions[lesions.volume_mm3 < 30]
    larger = lesions[lesions.volume_mm3 >= 30]
    assert len(small) >= 8 and len(larger) >= 30
    assert larger["detected"].mean() > 0.85
    assert small["detected"].mean() < larger["detected"].mean() - 0.4
    assert small["dice"].mean() < larger["dice"].mean() - 0.4


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("pred") / "cohort", n_cases=3, seed=8)


def test_predict_cohort_writes_maps_with_image_geometry(small_cohort, adapter):
    out = predict_cohort(small_cohort, adapter, progress=False)
    assert out.parent == small_cohort.parent
    df = pd.read_csv(out)
    assert {"prediction", "probability"} <= set(df.columns)
    assert len(df) == 3
    for row in df.itertuples():
        img = nib.load(str(out.parent / row.image))
        pred = nib.load(str(out.parent / row.prediction))
        prob = nib.load(str(out.parent / row.probability))
        np.testing.assert_allclose(pred.affine, img.affine)
        np.testing.assert_allclose(prob.affine, img.affine)
        assert pred.shape == img.shape == prob.shape
        assert prob.get_data_dtype() == np.float32 and pred.get_data_dtype() == np.uint8
        p = np.asarray(prob.dataobj)
        lab = np.asarray(pred.dataobj)
        assert p.min() >= 0.0 and p.max() <= 1.0
        # Two-class softmax: argmax == foreground probability above one half.
        assert np.array_equal(lab > 0, p > 0.5) or np.mean((lab > 0) != (p > 0.5)) < 1e-4
        expected = adapter.foreground_probability(img.get_fdata(dtype=np.float32))[0].numpy()
        np.testing.assert_allclose(p, expected, atol=1e-5)


def test_predict_cohort_into_other_folder_keeps_paths_valid(small_cohort, adapter, tmp_path):
    out = predict_cohort(small_cohort, adapter, out_dir=tmp_path / "preds", progress=False,
                         manifest_name="with_preds.csv")
    assert out == tmp_path / "preds" / "with_preds.csv"
    df = pd.read_csv(out)
    for col in ("image", "label", "prediction", "probability"):
        for rel in df[col]:
            assert (out.parent / rel).is_file(), (col, rel)


def test_predict_cohort_bad_manifest(tmp_path, adapter):
    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,label\nx,y.nii.gz\n", encoding="utf-8")
    with pytest.raises(ValueError, match="image"):
        predict_cohort(bad, adapter, progress=False)
    with pytest.raises(FileNotFoundError):
        predict_cohort(tmp_path / "nope.csv", adapter, progress=False)
