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
    from html import escape as html_escape

    from report_html import _compare, json_rows, parse, records

    _, _, r = small
    r.write_json(tmp_path / "audit.json")
    doc = json.loads((tmp_path / "audit.json").read_text())
    html = (tmp_path / "r.html")
    AuditResult.from_json(tmp_path / "audit.json").to_html(html)
    text = html.read_text()
    assert "Failure detection, calibration and hidden strata" in text
    best = [row for row in json_rows(doc, "selective") if row["best"]]
    assert best and all(html_escape(row["sentence"]) in text for row in best)
    p = parse(text)
    overall = [row for row in json_rows(doc, "failure_detection") if row["stratum"] == "overall"]
    assert _compare(records(p.tables["failure-detection-overall"]), overall,
                    {0: "score_label", 1: "score", 2: "n", 3: "n_failures", 4: "aurc",
                     5: "e_aurc", 7: "auroc", 8: "spearman_metric"}) == 8 * len(overall)
    cal = json_rows(doc, "calibration")
    assert _compare(records(p.tables["calibration-table"]), cal,
                    {1: "group", 3: "n", 5: "ece", 6: "ace", 7: "mce"}) == 5 * len(cal)
    assert "No hidden stratum at the stated false-discovery level" in text or \
        "hidden-strata" in p.tables


def test_dashboard_failure_panel_drills_down(small) -> None:
    import dataclasses
    import html

    import pandas as pd

    from medseg_xai.audit.hidden_strata import HIDDEN_STRATA_COLUMNS
    from medseg_xai.widgets import AuditDashboard
    from medseg_xai.widgets.failure_view import FailurePanel

    _, _, r = small
    dash = AuditDashboard(r)
    assert dash.failure is not None and "Failure was pre-specified as Dice &lt; 0.5" in (
        dash.failure.sentences.value)
    best = r.selective[r.selective["best"]]
    assert all(html.escape(t) in dash.failure.sentences.value for t in best["sentence"])
    assert "unc_" not in dash.failure.sentences.value
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


def _section_prose(text: str) -> list[str]:
    """The failure section's paragraphs (sentences and method notes), tags stripped."""
    import html
    import re

    start = text.index("Failure detection, calibration and hidden strata</h2>")
    end = text.find("<h2", start)
    section = text[start:end if end > 0 else None]
    paras = re.findall(r'<p class="(?:sentence|muted)">(.*?)</p>', section, flags=re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", p)) for p in paras]


def test_sentences_are_words_and_hold_the_tables_numbers(small, tmp_path) -> None:
    # Read by quality staff: no raw column name in the prose, one percentage format, and every
    # number of a sentence is the JSON table's (recounted here from the cases).
    import json
    import re

    from report_html import json_rows

    from medseg_xai.audit.failure import percent, score_label

    _, _, r = small
    r.write_json(tmp_path / "audit.json")
    doc = json.loads((tmp_path / "audit.json").read_text())
    AuditResult.from_json(tmp_path / "audit.json").to_html(tmp_path / "r.html")
    prose = _section_prose((tmp_path / "r.html").read_text())
    assert len(prose) >= 3
    for para in prose:
        assert not re.search(r"\bunc_|ood_score|\bdice\b|Mann-Whitney|\d\.\d%", para), para
    ok = r.cases[r.cases["status"] == "ok"]
    failed = (ok["dice"] < 0.5).to_numpy()
    rows = json_rows(doc, "selective")
    assert rows
    defined = set()
    for row in rows:
        n, sent = row["n"], row["sentence"]
        # a score is defined (its words in brackets) in its first sentence only
        after = " (" if row["score"] not in defined else ", above"
        defined.add(row["score"])
        referred = ok[row["score"]].to_numpy() > row["threshold"]
        n_ref, n_caught = int(referred.sum()), int((referred & failed).sum())
        assert row["failure_sentence"] == (f"Failure was pre-specified as Dice < 0.5 "
                                           f"({int(failed.sum())} of {len(ok)} scans failed).")
        assert row["failure_sentence"] in prose
        assert sent.startswith(f"If the {percent(row['referred'])} of scans ({n_ref} of {n}) "
                               f"scoring highest on the {score_label(row['score'])}{after}")
        assert f"above {row['threshold']:.3g}, go to a human, the other {n - n_ref} " in sent
        assert f"reach mean Dice {row['retained_metric']:.3f} with " in sent
        kept_fail = int((~referred & failed).sum())
        assert f"{percent(row['retained_risk'])} failures ({kept_fail} of {n - n_ref})" in sent
        assert sent.endswith(f"and {percent(row['caught'])} of all failures ({n_caught} of "
                             f"{int(failed.sum())}) are caught.")
        if row["best"]:
            assert sent in prose


def test_worst_group_sentence_names_the_group_whose_failures_escape(small, monkeypatch) -> None:
    # On the engine's cases: the group the overall threshold catches least, recounted here.
    import pandas as pd

    from medseg_xai.audit import failure as fmod

    _, _, r = small
    monkeypatch.setattr(fmod, "MIN_GROUP_FAILURES", 1)  # a 16-scan cohort has few failures
    cases = r.cases
    devices = sorted(cases["device"].dropna().unique())
    settings = fmod.FailureSettings(coverages=(0.5,), target_coverage=0.5)
    table, _, sel, per_case = fmod.failure_tables(
        cases, [("device", cases["device"], devices)], settings, min_n=1)
    row = sel[sel["best"]].iloc[0]
    ok = (cases["status"] == "ok").to_numpy()
    score = (per_case[row["score"]] if row["score"] in per_case else cases[row["score"]])
    referred = score.to_numpy() > row["threshold"]
    failed = ok & (cases["dice"] < 0.5).to_numpy()
    shares = {}
    for d in devices:
        f = failed & (cases["device"] == d).to_numpy()
        if f.sum():
            shares[d] = ((f & referred).sum() / f.sum(), int((f & referred).sum()), int(f.sum()))
    if not shares:
        assert row["worst_group"] == ""
        return
    low = min(s[0] for s in shares.values())
    named = [d for d, s in shares.items() if s[0] == low]
    assert any(row["worst_group"].startswith(
        f"At the threshold for 50% coverage ({row['score_label']} above {row['threshold']:.3g}), "
        f"device {d} has the lowest share of its failures caught: ")
               for d in named), row["worst_group"]
    d = next(d for d in named if f"device {d} " in row["worst_group"])
    share, k, m = shares[d]
    assert f"{fmod.percent(share)} ({k} of {m}), against {fmod.percent(row['caught'])} overall" \
        in row["worst_group"]
    assert isinstance(table, pd.DataFrame) and "score_label" in table


def test_words_of_scores_and_failures() -> None:
    from medseg_xai.audit.failure import failure_label, percent, score_label, score_phrase

    assert failure_label("dice < 0.5") == "Dice < 0.5"
    assert failure_label("hd95 >= 10") == "HD95 (mm) >= 10"
    assert failure_label("missed lesion") == "a missed reference lesion"
    assert score_label("unc_disagreement") == "member disagreement"
    assert score_label("my_score") == "my_score"
    assert score_phrase("unc_combined", ["unc_entropy", "ood_score"]) == (
        "combined uncertainty score (mean rank of predictive entropy and the feature-shift "
        "(OOD) score)")
    assert [percent(x) for x in (0.2, 0.1, 0.004, 0.0, float("nan"))] == [
        "20%", "10%", "0.4%", "0%", "n/a"]


def test_hidden_stratum_sentence_holds_the_row_numbers() -> None:
    import pandas as pd

    from medseg_xai.audit.failure import _hidden_sentences
    from medseg_xai.audit.hidden_strata import HIDDEN_STRATA_COLUMNS

    row = dict.fromkeys(HIDDEN_STRATA_COLUMNS)
    row.update(group_id="H1", rule="lesion contrast <= 0.713", n=27, mean_group=0.4641,
               mean_rest=0.6349, adjusted_gap=0.1992, failure_rate_group=0.5185,
               failure_rate_rest=0.2366, p_adjusted=0.0049)
    text = _hidden_sentences(pd.DataFrame([row]), "dice")["sentence"].iloc[0]
    assert text == ("Hidden stratum H1: the 27 scans with lesion contrast <= 0.713 reach mean "
                    "Dice 0.464 against 0.635 elsewhere on the held-out half, 0.199 lower beyond "
                    "the audited strata; failures 52% against 24%; adjusted p = 0.005.")


def test_rule_words_round_and_rule_exact_keeps_the_threshold() -> None:
    # Words carry 3 significant digits; rule_exact the column and the threshold that defines
    # membership (recounted here).
    import re

    import pandas as pd

    from medseg_xai.audit.hidden_strata import HiddenStrataSettings, find_hidden_strata

    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1000, 600)
    y = 0.8 - 0.4 * (x <= 373.4567) + rng.normal(0, 0.05, 600)
    table = pd.DataFrame({"prop_intensity_sd": x, "dice": y})
    found = find_hidden_strata(table, "dice", numeric=["prop_intensity_sd"], categorical=[],
                               settings=HiddenStrataSettings(max_depth=1))
    row = found.groups.iloc[0]
    m = re.fullmatch(r"prop_intensity_sd <= (\S+)", row["rule_exact"])
    assert m, row["rule_exact"]
    exact = float(m.group(1))
    assert abs(exact - 373.4567) < 20
    assert row["rule"].endswith(f"<= {float(f'{exact:.3g}'):g}") and "e+" not in row["rule"]
    assert row["n"] == int((x <= exact).sum())


def test_plain_pass_batched_with_the_copies_changes_no_result(monkeypatch, one_thread) -> None:
    """The audit's own pass goes in one batch with its flipped copy (k = 1 within 2x): Dice,
    probabilities (calibration), features / ood_score and the uncertainty columns equal those
    of the separate plain pass to float rounding."""
    import tempfile
    from pathlib import Path

    from medseg_xai.audit import runner
    from medseg_xai.cohort import Cohort
    from medseg_xai.demo import load_model, make_cohort

    joined: list[int] = []
    real = runner._joint_tta

    def spy(adapter, image, settings):
        out = real(adapter, image, settings)
        joined.append(out is not None)
        return out

    features: dict[str, list] = {"joint": [], "separate": []}
    compute = runner._compute_case
    results = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort = Cohort.from_csv(make_cohort(Path(tmp), n_cases=6, seed=2, shape=(24, 32, 32)))
        for mode in ("joint", "separate"):
            monkeypatch.setattr(runner, "_joint_tta",
                                spy if mode == "joint" else lambda *a: None)
            monkeypatch.setattr(runner, "_compute_case", lambda *a, _m=mode, **k: features[
                _m].append(compute(*a, **k)) or features[_m][-1])
            results[mode] = audit(cohort, adapter=load_model(), progress=False, workers=1,
                                  n_resamples=20, uncertainty={"flips": (2,), "jitter": 1},
                                  feature_layer="auto", failure={"calibration_bins": 10})
    assert joined == [True] * 6
    a, b = results["joint"], results["separate"]
    ok = a.cases["status"] == "ok"
    assert ok.all() and (a.cases["unc_members"] == 3).all()
    for col in ("dice", "hd95", "ece", "unc_entropy", "unc_disagreement", "unc_volume_cv"):
        np.testing.assert_allclose(a.cases[col], b.cases[col], atol=1e-6, err_msg=col)
    fa, fb = ([r["features"] for r in features[m]] for m in ("joint", "separate"))
    assert len(fa) == 6 and len(fa[0]) > 1
    # batched kernels round differently: within 1e-6 of the features' scale (~100)
    np.testing.assert_allclose(fa, fb, rtol=0, atol=1e-6 * np.abs(fb).max())
    # the squared Mahalanobis distance of 6 cases amplifies the features' 1e-7 rounding
    np.testing.assert_allclose(a.cases["ood_score"], b.cases["ood_score"], rtol=1e-4)
    for col in ("unc_entropy", "unc_max_vote"):
        np.testing.assert_allclose(a.lesions[col], b.lesions[col], atol=1e-6, err_msg=col)
    t = a.cases[["inference_s", "uncertainty_s"]]
    assert (t > 0).all().all()  # the plain image's share of the batch, and the rest
