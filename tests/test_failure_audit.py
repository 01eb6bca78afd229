"""audit(uncertainty=, failure=) end to end on a small cohort with the bundled model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.metrics import CalibrationErrorMetric

from medseg_xai.audit import audit
from medseg_xai.audit.result import FAILURE_TABLES, AuditResult


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, one_thread: None):
    from medseg_xai.cohort import Cohort
    from medseg_xai.demo import load_model, make_cohort

    root = tmp_path_factory.mktemp("failure-cohort")
    cohort = Cohort.from_csv(make_cohort(root, n_cases=16, seed=1, shape=(24, 32, 32)))
    adapter = load_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = audit(cohort, strata=["device"], adapter=adapter, progress=False, workers=1,
                       min_n=3, n_resamples=100, uncertainty={"flips": (0, 2)},
                       failure={"calibration_bins": 15, "coverages": [0.8]})
    return cohort, adapter, result


def test_case_and_lesion_columns(small) -> None:
    _, _, r = small
    ok = r.cases[r.cases["status"] == "ok"]
    for col in ("unc_entropy", "unc_disagreement", "unc_volume_cv", "unc_combined", "ece",
                "ace", "mce", "prop_noise", "prop_nonuniformity", "hidden_stratum"):
        assert col in r.cases.columns, col
    assert (ok["unc_members"] == 3).all()
    assert ok["unc_disagreement"].between(0, 1).all() and ok["unc_entropy"].between(0, 1).all()
    assert {"unc_entropy", "unc_max_vote"} <= set(r.lesions.columns)
    assert "uncertainty_s" in r.cases.columns
    assert r.settings["uncertainty"]["flips"] == [0, 2]
    assert r.settings["failure"]["failure"] == "dice < 0.5"


def test_case_ece_equals_monai_on_the_models_probabilities(small) -> None:
    cohort, adapter, r = small
    row = r.cases[r.cases["status"] == "ok"].iloc[0]
    case = cohort.load_case(row["case_id"])
    p = adapter.probabilities(case.image).numpy()[0]
    fg = torch.from_numpy(1.0 - p[0])[None, None]
    ref = torch.from_numpy((case.label > 0).astype(np.float32))[None, None]
    for key, red in (("ece", "expected"), ("ace", "average"), ("mce", "maximum")):
        m = CalibrationErrorMetric(num_bins=15, calibration_reduction=red)
        m(y_pred=fg, y=ref)
        assert row[key] == pytest.approx(float(m.aggregate()), abs=1e-6)


def test_tables_and_json_round_trip(small, tmp_path) -> None:
    _, _, r = small
    fd = r.failure_detection
    assert set(fd["score"]) >= {"unc_entropy", "unc_disagreement", "ood_score", "unc_combined"}
    overall = fd[fd["stratum"] == "overall"]
    assert (overall["n"] == r.n_evaluated).all()
    assert overall["aurc"].between(0, 1).all() and (overall["e_aurc"] >= -1e-12).all()
    cal = r.calibration
    assert cal.loc[cal["stratum"] == "overall", "n"].iloc[0] == r.n_evaluated
    assert np.isclose(cal.loc[cal["stratum"] == "overall", "ece"].iloc[0],
                      r.cases.loc[r.cases["status"] == "ok", "ece"].mean())
    assert len(r.selective) == len(overall)  # one coverage target per score
    path = tmp_path / "audit.json"
    r.write_json(path)
    back = AuditResult.from_json(path)
    for name in FAILURE_TABLES:
        assert len(getattr(back, name)) == len(getattr(r, name)), name
    assert back.settings["failure"] == r.settings["failure"]


def test_uncertainty_needs_an_adapter(small) -> None:
    cohort, _, _ = small
    with pytest.raises(ValueError, match="uncertainty: expected an adapter"):
        audit(cohort, uncertainty=True, progress=False)
    with pytest.raises(ValueError, match="failure: expected"):
        audit(cohort, adapter=small[1], failure=3, progress=False)


def test_report_section_shows_the_json_numbers(small, tmp_path) -> None:
    import json

    from report_html import _compare, json_rows, parse, records

    _, _, r = small
    r.write_json(tmp_path / "audit.json")
    doc = json.loads((tmp_path / "audit.json").read_text())
    html = (tmp_path / "r.html")
    AuditResult.from_json(tmp_path / "audit.json").to_html(html)
    text = html.read_text()
    assert "Failure detection, calibration and hidden strata" in text
    best = [row for row in json_rows(doc, "selective") if row["best"]]
    assert best and f"If the scans with {best[0]['score']} above" in text
    p = parse(text)
    overall = [row for row in json_rows(doc, "failure_detection") if row["stratum"] == "overall"]
    assert _compare(records(p.tables["failure-detection-overall"]), overall,
                    {0: "score", 1: "n", 2: "n_failures", 3: "aurc", 4: "e_aurc", 6: "auroc",
                     7: "spearman_metric"}) == 7 * len(overall)
    cal = json_rows(doc, "calibration")
    assert _compare(records(p.tables["calibration-table"]), cal,
                    {1: "group", 3: "n", 5: "ece", 6: "ace", 7: "mce"}) == 5 * len(cal)
    assert "No hidden stratum at the stated false-discovery level" in text or \
        "hidden-strata" in p.tables


def test_dashboard_failure_panel_drills_down(small) -> None:
    import dataclasses

    import pandas as pd

    from medseg_xai.audit.hidden_strata import HIDDEN_STRATA_COLUMNS
    from medseg_xai.widgets import AuditDashboard
    from medseg_xai.widgets.failure_view import FailurePanel

    _, _, r = small
    dash = AuditDashboard(r)
    assert dash.failure is not None and "If the scans with" in dash.failure.sentences.value
    assert "aurc" in dash.failure.scores.value and "ece" in dash.failure.calibration.value
    # drill-down mechanics on the engine's cases with one stratum marked by hand
    cases = r.cases.copy()
    ok = cases.index[cases["status"] == "ok"][:4]
    cases["hidden_stratum"] = ""
    cases.loc[ok, "hidden_stratum"] = "H1"
    row = {c: None for c in HIDDEN_STRATA_COLUMNS}
    row.update(group_id="H1", description="lesion contrast <= 0.5", n=4)
    marked = dataclasses.replace(r, cases=cases, hidden_strata=pd.DataFrame([row]))
    opened: list[str] = []
    panel = FailurePanel(marked, on_open=opened.append, n=3)
    assert panel.group.value == "H1" and len(panel.members.children) == 3
    assert set(panel.cases()["case_id"]) <= set(cases.loc[ok, "case_id"])
    panel.members.children[0].click()
    assert opened == [str(panel.cases()["case_id"].iloc[0])]


def test_cli_failure_options(tmp_path) -> None:
    import json

    from medseg_xai.cli import main
    from medseg_xai.demo import load_model, make_cohort, predict_cohort

    manifest = predict_cohort(make_cohort(tmp_path / "c", n_cases=12, seed=4, shape=(24, 32, 32)),
                              load_model(), progress=False)
    assert main(["audit", str(manifest), "--out", str(tmp_path / "bad"), "--quiet",
                 "--failure", "dice is bad"]) == 2
    rc = main(["audit", str(manifest), "--out", str(tmp_path / "out"), "--quiet", "--no-html",
               "--failure", "missed lesion", "--strata", "device", "--min-n", "3",
               "--n-resamples", "50", "--gallery", "0"])
    assert rc == 0
    doc = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert doc["settings"]["failure"]["failure"] == "missed lesion"
    assert "hidden_strata" in doc["tables"] and "prop_noise" in doc["tables"]["cases"]["columns"]
    # stored predictions: no probabilities, no uncertainty -> no score, no calibration rows
    assert doc["tables"]["failure_detection"]["data"] == []
