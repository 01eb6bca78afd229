"""Feature shift in audits: a planted intensity shift is flagged, a random split is not."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import medseg_xai as mx
from medseg_xai.audit import AuditResult, audit
from medseg_xai.audit.features import (
    FEATURE_SHIFT_COLUMNS,
    feature_shift,
    ood_scores,
    parse_reference,
)
from medseg_xai.cohort import Cohort
from medseg_xai.explain.features import pooled_features

SHAPE = (8, 12, 12)
FAST = {"n_resamples": 500, "progress": False, "min_n": 5}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(),
                         nn.Conv3d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.ConvTranspose3d(8, 4, 2, stride=2), nn.Conv3d(4, 2, 1))


def _cohort(folder: Path, scale: float = 1.5, n_per: int = 12, seed: int = 0) -> Cohort:
    """Devices A, B, C; C's images are intensity-scaled by ``scale`` (the planted shift)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(3 * n_per):
        device = "ABC"[i % 3]
        img = rng.normal(1.0, 0.3, SHAPE) * rng.uniform(0.9, 1.1)
        img[2:6, 3:8, 3:8] += 1.0
        if device == "C":
            img = img * scale
        lab = np.zeros(SHAPE, np.uint8)
        lab[2:6, 3:8, 3:8] = 1
        for name, arr in (("img", img.astype(np.float32)), ("lab", lab)):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), folder / f"{name}{i}.nii.gz")
        rows.append({"case_id": f"c{i:02d}", "image": f"img{i}.nii.gz",
                     "label": f"lab{i}.nii.gz", "device": device,
                     "split": "AB"[int(rng.integers(2))]})
    return Cohort.from_dataframe(pd.DataFrame(rows), root=folder)


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shift")
    cohort = _cohort(folder)
    adapter = mx.SegmentationAdapter(_net(), spatial_dims=3)
    return cohort, adapter, audit(cohort, strata=["device"], adapter=adapter, **FAST)


@pytest.fixture(scope="module")
def features(shifted):
    """Pooled features of every case from separate forward passes (not the audit's)."""
    cohort, adapter, _ = shifted
    return np.stack([pooled_features(adapter, cohort.load_case(c).image, "2")
                     for c in cohort.case_ids])


@pytest.mark.slow
def test_planted_shift_is_flagged(shifted, features):
    cohort, adapter, r = shifted
    fs = r.feature_shift
    assert list(fs.columns) == list(FEATURE_SHIFT_COLUMNS)
    by = fs.set_index("group")
    assert by.loc["C", "flag"] == "shifted" and by.loc["C", "p_adjusted"] < 0.05
    assert by["distance"].idxmax() == "C"
    med = r.cases.groupby("device")["ood_score"].median()
    assert med.idxmax() == "C"
    assert r.settings["feature_layer"] == "2"  # the stride-2 conv: smallest spatial size
    # the audit's features are the pooled layer output of a separate forward pass
    np.testing.assert_allclose(ood_scores(features, np.ones(len(features), bool)),
                               r.cases["ood_score"], rtol=1e-6)
    assert r.cases[["feature_pc1", "feature_pc2"]].notna().all().all()
    assert list(r.model_layers["name"]) == ["0", "2", "4", "5"]


def test_declared_reference_and_json(shifted, tmp_path):
    cohort, adapter, _ = shifted
    r = audit(cohort, strata=["device"], adapter=adapter,
              feature_reference={"device": ["A", "B"]}, **FAST)
    fs = r.feature_shift.set_index(["stratum", "group"])
    assert fs.loc[("device", "C"), "flag"] == "shifted"
    assert fs.loc[("device", "C"), "in_reference"] == 0.0
    assert fs.loc[("reference", "outside reference"), "n"] == 12
    assert fs.loc[("reference", "outside reference"), "flag"] == "shifted"
    med = r.cases.groupby("device")["ood_score"].median()
    assert med["C"] > 3 * max(med["A"], med["B"])
    assert r.settings["feature_reference"] == {"device": ["A", "B"]}
    back = AuditResult.from_json(r.to_json())
    pd.testing.assert_frame_equal(back.feature_shift, r.feature_shift)
    pd.testing.assert_frame_equal(back.model_layers, r.model_layers)
    assert back.to_json() == r.to_json()
    again = audit(cohort, strata=["device"], adapter=adapter,
                  feature_reference=["device=A,B"], **FAST)
    assert again.to_dict()["tables"] == r.to_dict()["tables"]


@pytest.mark.slow
def test_random_split_false_positive_rate(shifted, features):
    """Random halves of the unshifted cases: the share flagged at alpha=0.05 stays near 5 %."""
    cohort, adapter, _ = shifted
    keep = (cohort.manifest["device"] != "C").to_numpy()
    x = features[keep]
    cases = cohort.manifest[keep].reset_index(drop=True)
    flagged, n_seeds = 0, 40
    for seed in range(n_seeds):
        split = pd.Series(np.random.default_rng(seed).permutation(
            np.repeat(["x", "y"], [len(x) // 2, len(x) - len(x) // 2])), index=cases.index)
        table, _ = feature_shift(x, cases, [("split", split, ["x"])], seed=seed,
                                 n_permutations=200, min_n=5)
        flagged += int(table["flag"].iloc[0] == "shifted")
    assert flagged / n_seeds <= 0.15  # nominal 0.05; 40 draws: 7+ flags has p < 0.01


def test_without_adapter_or_features(shifted, tmp_path):
    cohort, adapter, _ = shifted
    r = audit(cohort, strata=["device"], adapter=adapter, feature_layer=None, **FAST)
    assert r.feature_shift.empty and "ood_score" not in r.cases
    with pytest.raises(ValueError, match="feature_reference: column 'scanner'"):
        audit(cohort, adapter=adapter, feature_reference={"scanner": ["A"]}, **FAST)
    with pytest.raises(ValueError, match=r"value\(s\) \['Z'\]"):
        audit(cohort, adapter=adapter, feature_reference={"device": ["Z"]}, **FAST)
    with pytest.raises(ValueError, match="COLUMN=V1,V2"):
        parse_reference(["device"])


def test_report_section_shows_the_result_tables(shifted, tmp_path):
    import jinja2

    from medseg_xai.reports import sec_model_and_data as sec

    _, _, r = shifted
    data = sec.build(r, {})
    assert data["layer_summary"]["n_params"] == int(r.model_layers["n_params"].sum())
    env = jinja2.Environment(loader=jinja2.PackageLoader("medseg_xai.reports", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.get_template(sec.TEMPLATE).render(s=data)
    assert 'id="feature-shift-device"' in html and 'id="model-layers"' in html
    assert "data:image/png;base64," in html and 'id="ood-cases"' in html
    worst = r.cases.sort_values("ood_score").iloc[-1]
    assert worst["case_id"] in html
    shifted_row = r.feature_shift.set_index("group").loc["C"]
    assert repr(float(shifted_row["median_ood_score"])) in html  # exact value in data-value
    no_model = AuditResult(**{k: getattr(r, k) for k in (
        "cases", "subgroups", "lesions", "criteria", "lesion_detection", "false_positives",
        "volume_agreement", "verdicts")}, settings=r.settings)
    assert sec.build(no_model, {}) is None
    page = r.to_html(tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Model and data</h2>" in page and 'id="feature-shift-device"' in page


def test_feature_shift_panel_drills_down_to_a_case(shifted):
    from medseg_xai.widgets.model_tab import FeatureShiftPanel

    _, _, r = shifted
    opened = []
    panel = FeatureShiftPanel(r, on_open=opened.append, n=4)
    assert list(panel.rows()["group"]) == ["A", "B", "C"]
    top = r.cases.sort_values("ood_score", ascending=False)["case_id"].head(4).tolist()
    assert panel.outliers()["case_id"].tolist() == top
    panel.cases_box.children[0].children[0].click()
    assert opened == [top[0]]
    panel.group.value = "C"
    assert set(panel.outliers()["device"]) == {"C"}
    no_features = audit(shifted[0], strata=["device"], adapter=shifted[1], feature_layer=None,
                        **FAST)
    with pytest.raises(ValueError, match="no feature shift"):
        FeatureShiftPanel(no_features)


def test_monitor_without_reference_segmentations_matches_the_audit(shifted):
    from medseg_xai.audit.features import monitor

    cohort, adapter, r = shifted
    images = [cohort.load_case(c).image for c in cohort.case_ids]
    meta = cohort.manifest[["case_id", "device"]]
    table, cases = monitor(adapter, images, meta, ["device"], n_permutations=500, min_n=5)
    np.testing.assert_allclose(cases["ood_score"], r.cases["ood_score"], rtol=1e-6)
    assert table.set_index("group").loc["C", "flag"] == "shifted"
    with pytest.raises(ValueError, match="one image per metadata row"):
        monitor(adapter, images[:3], meta, ["device"])


def test_ood_score_is_scikit_learns_ledoit_wolf_mahalanobis():
    from sklearn.covariance import LedoitWolf

    from medseg_xai.audit.features import _sq_mahalanobis

    rng = np.random.default_rng(3)
    ref = rng.normal(size=(30, 8)) @ rng.normal(size=(8, 8)) + 5.0
    new = rng.normal(size=(4, 8)) * 2.0 + 5.0
    mu, sd = ref.mean(0), ref.std(0)
    lw = LedoitWolf().fit((ref - mu) / sd)
    np.testing.assert_allclose(_sq_mahalanobis(ref, new), lw.mahalanobis((new - mu) / sd),
                               rtol=1e-8)
    # leave-one-out: a reference case is scored by a fit without it (same shrinkage intensity)
    x = np.vstack([ref, new])
    scores = ood_scores(x, np.r_[np.ones(30, bool), np.zeros(4, bool)])
    np.testing.assert_allclose(scores[30:], lw.mahalanobis((new - mu) / sd), rtol=1e-8)
    keep = ref[1:]
    lw0 = LedoitWolf().fit((keep - keep.mean(0)) / keep.std(0))
    loo = lw0.mahalanobis((ref[:1] - keep.mean(0)) / keep.std(0))[0]
    assert scores[0] == pytest.approx(loo, rel=0.05)  # shrinkage of the full reference


@pytest.mark.slow
def test_cli_feature_options_on_a_demo_cohort(tmp_path, capsys):
    from medseg_xai.cli import main
    from medseg_xai.demo import make_cohort

    manifest = make_cohort(tmp_path / "cohort", n_cases=12, seed=1, shape=(24, 32, 32))
    devices = sorted(pd.read_csv(manifest)["device"].unique())
    out = tmp_path / "out"
    code = main(["audit", str(manifest), "--out", str(out), "--model", "demo", "--strata",
                 "device", "--feature-reference", f"device={devices[0]},{devices[1]}",
                 "--no-html", "--quiet", "--gallery", "0"])
    assert code in (0, 3)
    r = AuditResult.from_json(out / "audit.json")
    assert r.settings["feature_reference"] == {"device": devices[:2]}
    assert r.cases["ood_score"].notna().all()
    assert (out / "feature_shift.csv").is_file() and (out / "model_layers.csv").is_file()
    code = main(["audit", str(manifest), "--out", str(tmp_path / "bad"), "--model", "demo",
                 "--feature-reference", "device=Nope", "--no-html", "--quiet"])
    assert code == 2 and "Nope" in capsys.readouterr().err


def test_dashboard_shows_the_feature_shift_panel_and_opens_cases(shifted):
    from medseg_xai.widgets import AuditDashboard

    cohort, adapter, r = shifted
    dash = AuditDashboard(r, cohort=cohort, adapter=adapter)
    assert dash.feature_shift is not None and dash.feature_shift in dash.children
    worst = dash.feature_shift.outliers()["case_id"].iloc[0]
    explorer = dash.feature_shift.open_case(worst)
    assert dash.feature_shift.last_error is None, dash.feature_shift.last_error
    assert explorer is dash.explorer
    plain = audit(cohort, strata=["device"], adapter=adapter, feature_layer=None, **FAST)
    assert AuditDashboard(plain).feature_shift is None
