"""Lesion-level hidden strata: per-lesion properties, the search (planted lesion sets on
feature tables, honest nulls, split by scan), and the audit end to end with the bundled model
(planted low-contrast lesions, audit.json, report section, dashboard drill-down)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from medseg_xai.audit.lesion_properties import lesion_properties
from medseg_xai.audit.lesion_strata import (
    LESION_STRATA_COLUMNS,
    lesion_frame,
    lesion_hidden_strata,
    rank_group_lesions,
)
from medseg_xai.decide import lesion_table

# -- per-lesion properties -------------------------------------------------------------------


def _phantom() -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """A body (cube of 100) in air with three lesions: a bright ball in the middle, a faint
    one near the body's edge and a rod."""
    rng = np.random.default_rng(0)
    x = np.zeros((40, 48, 48), np.float32)
    x[4:36, 4:44, 4:44] = 100.0
    x[4:36, 4:44, 4:24] = 80.0  # a second tissue: the body SD is not zero
    ref = np.zeros(x.shape, bool)
    zz, yy, xx = np.ogrid[:40, :48, :48]
    ref |= (zz - 20) ** 2 + (yy - 24) ** 2 + (xx - 30) ** 2 <= 9
    ref |= (zz - 20) ** 2 + (yy - 7) ** 2 + (xx - 34) ** 2 <= 4
    ref[10:30, 36:38, 14:16] = True
    x[ref] += 60.0
    x[(zz - 20) ** 2 + (yy - 7) ** 2 + (xx - 34) ** 2 <= 4] -= 50.0
    return x + rng.normal(0, 1, x.shape).astype(np.float32), ref, (2.0, 1.0, 1.0)


def test_lesion_properties_against_direct_computation() -> None:
    x, ref, spacing = _phantom()
    rows = lesion_table(np.zeros_like(ref), ref, spacing).to_dict("records")
    lesion_properties(x, ref, rows, spacing)
    lab, n = ndimage.label(ref, structure=np.ones((3, 3, 3)))
    assert n == 3 and all(r["source"] == "reference" for r in rows)
    lo, hi = np.percentile(x, [1, 99])
    body = x > lo + 0.1 * (hi - lo)
    sd, mean = x[body].std(), x[body].mean()
    edt = ndimage.distance_transform_edt(ndimage.binary_fill_holes(body), sampling=spacing)
    for r in rows:
        m = lab == int(r["lesion_id"].split("-")[1])  # decide's ids are the labels' numbers
        ring = ndimage.binary_dilation(m, iterations=2) & ~ref
        assert r["lprop_contrast"] == pytest.approx((x[m].mean() - x[ring].mean()) / sd,
                                                    rel=1e-3)
        assert r["lprop_intensity"] == pytest.approx((x[m].mean() - mean) / sd, rel=1e-3)
        assert r["lprop_edge_mm"] == pytest.approx(edt[m].min())
        c = np.argwhere(m).mean(0)
        assert r["lprop_position1"] == pytest.approx(c[1] / 47)
    by = {int(r["volume_voxels"]): r for r in rows}
    faint, ball, rod = by[min(by)], by[max(by)], by[80]
    assert faint["lprop_edge_mm"] < ball["lprop_edge_mm"]  # near the edge
    assert faint["lprop_contrast"] < ball["lprop_contrast"]
    assert rod["lprop_elongation"] > 3 > ball["lprop_elongation"]


def test_lesion_properties_leave_false_positives_alone_and_check_shapes() -> None:
    x, ref, spacing = _phantom()
    pred = np.zeros_like(ref)
    pred[30:33, 40:43, 40:43] = True  # a false positive in air
    rows = lesion_table(pred, ref, spacing).to_dict("records")
    lesion_properties(x[None], ref, rows, spacing)  # channel axis accepted
    fp = [r for r in rows if r["source"] != "reference"]
    assert fp and all("lprop_contrast" not in r for r in fp)
    with pytest.raises(ValueError, match="expected the reference's shape"):
        lesion_properties(x[:, :10], ref, rows, spacing)


# -- the search on lesion tables ---------------------------------------------------------------


def _tables(n_cases: int, seed: int, planted: bool) -> tuple[pd.DataFrame, pd.DataFrame,
                                                             np.ndarray]:
    """Cases with 1-4 lesions each; with ``planted``, faint lesions near the body edge are
    missed far more often (a fault no column names, seen through the measured properties)."""
    rng = np.random.default_rng(seed)
    cases = pd.DataFrame({"case_id": [f"c{i:04d}" for i in range(n_cases)], "status": "ok",
                          "device": rng.choice(["A", "B", "C"], n_cases),
                          "prop_noise": rng.normal(0.1, 0.02, n_cases)})
    rows, is_planted = [], []
    for i, cid in enumerate(cases["case_id"]):
        for k in range(1, int(rng.integers(1, 5)) + 1):
            edge, contrast = float(rng.gamma(3.0, 6.0)), float(rng.normal(1, 0.3))
            hit = planted and edge < 10.0 and contrast < 0.9
            p_det = 0.25 if hit else 0.9 - 0.1 * (cases.loc[i, "device"] == "C")
            rows.append({"case_id": cid, "lesion_id": f"ref-{k}", "source": "reference",
                         "status": "detected" if rng.random() < p_det else "missed",
                         "volume_mm3": float(rng.lognormal(5, 1)), "dice": rng.random(),
                         "lprop_edge_mm": edge + rng.normal(0, 1.0),
                         "lprop_contrast": contrast + rng.normal(0, 0.05)})
            is_planted.append(hit)
    lesions = pd.DataFrame(rows)
    fp = pd.DataFrame([{"case_id": "c0000", "lesion_id": "pred-9", "source": "prediction",
                        "status": "false_positive", "volume_mm3": 5.0}])
    return cases, pd.concat([lesions, fp], ignore_index=True), np.r_[is_planted, False]


def _groups(cases: pd.DataFrame) -> list:
    return [("device", cases["device"].astype(object), sorted(cases["device"].unique()))]


def _search(cases: pd.DataFrame, lesions: pd.DataFrame, seed: int = 0):
    return lesion_hidden_strata(lesions, cases, _groups(cases), {"failure": {}, "strata": [
        "device"]}, {"seed": seed, "min_n": 10}, categorical=["device"])


def test_planted_lesion_set_is_recovered_and_described() -> None:
    recovered, first = 0, 0
    for seed in range(4):
        cases, lesions, planted = _tables(400, seed, planted=True)
        table, membership, info = _search(cases, lesions, seed)
        assert list(table.columns) == list(LESION_STRATA_COLUMNS)
        assert membership.iloc[-1] == ""  # the false-positive row belongs to no group
        ious = [((membership == g).to_numpy() & planted).sum()
                / max(((membership == g).to_numpy() | planted).sum(), 1)
                for g in table["group_id"]]
        recovered += max(ious, default=0) >= 0.5
        first += bool(ious) and ious[0] >= 0.5
        if len(table):
            top = table.iloc[0]
            assert top["group_id"] == "L1" and "distance to the body edge" in top["rule"]
            assert "lesion contrast" in top["rule"]
            assert top["mean_group"] < top["mean_rest"] and top["p_adjusted"] < 0.05
            assert top["n_cases"] <= top["n"]
        assert info["n_units"] == 400 and "lesion size" in info["adjusted_for"]
    assert recovered >= 3 and first >= 3


def test_honest_cohorts_rarely_yield_a_lesion_group() -> None:
    # Holm at alpha 0.05 allows a group in 5% of honest cohorts; the device effect is a known
    # stratum, not a hidden one. Measured (stratified confirmation test): 0 of these 12, and 2
    # of 40 more (seeds 200-239).
    with_group = sum(len(_search(*_tables(300, 100 + s, planted=False)[:2], seed=s)[0]) > 0
                     for s in range(12))
    assert with_group <= 1


def test_lesions_of_one_patient_share_a_half() -> None:
    from medseg_xai.audit.hidden_strata import _split

    cases, lesions, _ = _tables(200, 3, planted=False)
    cases["patient_id"] = [f"p{i // 2}" for i in range(len(cases))]  # two scans a patient
    frame = lesion_frame(lesions, cases, [("device", cases["device"])], (0, 100, 1000))
    assert len(frame) == (lesions["source"] == "reference").sum()
    disc = _split(frame, "patient_id", 0)
    halves = pd.Series(disc).groupby(frame["patient_id"].to_numpy()).nunique()
    assert (halves == 1).all() and 0.3 < disc.mean() < 0.7
    assert {"_stratum0", "_size", "detected", "case_prop_noise"} <= set(frame.columns)


def test_rank_group_lesions_missed_first() -> None:
    les = pd.DataFrame({"case_id": ["a", "b", "c", "d"], "lesion_id": ["ref-1"] * 4,
                        "status": ["detected", "missed", "detected", "missed"],
                        "dice": [0.2, 0.0, 0.9, 0.1], "hidden_stratum": ["L1", "L1", "L1", ""]})
    assert list(rank_group_lesions(les, "L1")["case_id"]) == ["b", "a", "c"]
    assert rank_group_lesions(les.drop(columns="hidden_stratum"), "L1").empty


# -- end to end through the bundled model ------------------------------------------------------


@pytest.fixture(scope="module")
def planted_audit(tmp_path_factory: pytest.TempPathFactory, one_thread: None):
    from medseg_xai.audit import audit
    from medseg_xai.cohort import Cohort
    from medseg_xai.demo import load_model, make_cohort
    from medseg_xai.demo.planted_lesions import plant_lesions

    root = tmp_path_factory.mktemp("lesion-strata")
    manifest = make_cohort(root, n_cases=60, seed=7, shape=(24, 40, 40))
    planted = plant_lesions(manifest, "contrast", share=0.4, strength=0.85, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort = Cohort.from_csv(manifest)
        result = audit(cohort, strata=["device"], adapter=load_model(),
                       progress=False, workers=1, min_n=5, n_resamples=50,
                       failure={"calibration_bins": 0})
    return result, planted, cohort


@pytest.mark.slow
def test_audit_finds_the_planted_lesions(planted_audit) -> None:
    r, planted, _ = planted_audit
    ref = r.lesions[r.lesions["source"] == "reference"]
    assert {"lprop_contrast", "lprop_edge_mm", "hidden_stratum"} <= set(r.lesions.columns)
    assert ref["lprop_contrast"].notna().all()
    key = ref["case_id"] + "/" + ref["lesion_id"]
    is_planted = key.isin(set(planted["case_id"] + "/" + planted["lesion_id"])).to_numpy()
    det = (ref["status"] == "detected").to_numpy()
    assert det[~is_planted].mean() - det[is_planted].mean() > 0.3  # the fault hurts the model
    table = r.lesion_hidden_strata
    assert len(table) >= 1 and r.provenance["lesion_hidden_strata"]["n_groups"] == len(table)
    m = (ref["hidden_stratum"] == table["group_id"].iloc[0]).to_numpy()
    assert (m & is_planted).sum() / (m | is_planted).sum() >= 0.5
    assert table["n"].iloc[0] == m.sum()


@pytest.mark.slow
def test_json_report_and_dashboard_drill_down(planted_audit, tmp_path) -> None:
    import html
    import json

    from report_html import parse, records

    from medseg_xai.audit.result import AuditResult
    from medseg_xai.widgets.failure_view import FailurePanel

    r, _, _ = planted_audit
    r.write_json(tmp_path / "audit.json")
    doc = json.loads((tmp_path / "audit.json").read_text())
    assert "lesion_hidden_strata" in doc["tables"]
    back = AuditResult.from_json(tmp_path / "audit.json")
    pd.testing.assert_frame_equal(back.lesion_hidden_strata.reset_index(drop=True),
                                  r.lesion_hidden_strata.reset_index(drop=True),
                                  check_dtype=False)
    assert list(back.lesions["hidden_stratum"]) == list(r.lesions["hidden_stratum"])
    back.to_html(tmp_path / "r.html")
    text = (tmp_path / "r.html").read_text()
    top = r.lesion_hidden_strata.iloc[0]
    assert html.escape(f"Missed lesions concentrate in: {top['rule']}") in text
    # the sentence the core holds, shares as percentages of the table's rates
    from medseg_xai.audit.score_words import percent

    assert html.escape(top["sentence"]) in text and "Mann-Whitney" not in text
    assert (f"detected {percent(top['mean_group'])} against {percent(top['mean_rest'])} "
            f"elsewhere") in top["sentence"]
    assert f"{int(top['n'])} lesions in {int(top['n_cases'])} scans" in top["sentence"]
    rows = records(parse(text).tables["lesion-hidden-strata"])
    assert len(rows) == len(r.lesion_hidden_strata)
    opened: list[tuple[str, str]] = []
    panel = FailurePanel(back, on_open_lesion=lambda c, lesion: opened.append((c, lesion)), n=3)
    assert panel.lesion_group.value == "L1" and len(panel.lesion_members.children) == 3
    first = panel.lesions().iloc[0]
    assert first["status"] == "missed" and first["hidden_stratum"] == "L1"
    panel.lesion_members.children[0].click()
    assert opened == [(first["case_id"], first["lesion_id"])]
    # an older document without the table still opens: no lesion part, no error
    del doc["tables"]["lesion_hidden_strata"]
    doc["provenance"].pop("lesion_hidden_strata", None)
    (tmp_path / "old.json").write_text(json.dumps(doc))
    old = AuditResult.from_json(tmp_path / "old.json")
    assert old.lesion_hidden_strata.empty
    assert FailurePanel(old).lesion_members.children == ()


@pytest.mark.slow
def test_dashboard_opens_the_lesion_in_the_case_explorer(planted_audit) -> None:
    from medseg_xai.demo import load_model
    from medseg_xai.widgets import AuditDashboard

    r, _, cohort = planted_audit
    dash = AuditDashboard(r, cohort=cohort, adapter=load_model())
    panel = dash.failure
    first = panel.lesions().iloc[0]
    panel.lesion_members.children[0].click()  # the real path: open_case, then select_lesion
    explorer = dash.explorer
    assert explorer.selected_lesion == first["lesion_id"]
    assert explorer.lesions.status(first["lesion_id"]) == first["status"] == "missed"
