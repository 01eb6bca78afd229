"""AuditDashboard without a browser: selection, tables, worst cases, comparison, opening cases."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import medseg_xai as mx
from medseg_xai.cohort import Cohort
from medseg_xai.demo import make_cohort
from medseg_xai.metrics import label_lesions
from medseg_xai.widgets import AuditDashboard, CaseExplorer
from medseg_xai.widgets.dashboard import subgroup_rows, worst_cases


def _with_predictions(root, manifest, name, drop_every):
    """Predictions = reference minus its last lesion in every ``drop_every``-th case."""
    df = pd.read_csv(manifest)
    out = root / name
    out.mkdir()
    paths = []
    for i, row in df.iterrows():
        lab = nib.load(root / row["label"])
        mask = np.asarray(lab.dataobj) > 0
        labels, n = label_lesions(mask)
        if n and i % drop_every == 0:
            mask &= labels != n
        p = out / f"{row['case_id']}.nii.gz"
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), lab.affine), p)
        paths.append(str(p.relative_to(root)))
    df["prediction"] = paths
    path = root / f"{name}.csv"
    df.to_csv(path, index=False)
    return Cohort.from_csv(path)


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    manifest = make_cohort(root, n_cases=14, seed=3, shape=(20, 28, 28))
    cohort_a = _with_predictions(root, manifest, "pred_a", drop_every=3)
    cohort_b = _with_predictions(root, manifest, "pred_b", drop_every=2)
    kw = {"strata": ["device"], "seed": 0, "n_resamples": 200, "executor": "serial", "min_n": 2,
          "criteria": [{"metric": "dice", "statistic": "estimate", "op": ">=", "threshold": 0.5}]}
    return mx.audit(cohort_a, **kw), mx.audit(cohort_b, **kw), cohort_a


def test_selection_logic_matches_the_result_tables(audits) -> None:
    a, _, _ = audits
    rows = subgroup_rows(a.subgroups, "device", "dice")
    assert set(rows["group"]) == set(a.cases.loc[a.cases["status"] == "ok", "device"].astype(str))
    assert (rows["metric"] == "dice").all()
    worst = worst_cases(a.cases, "dice", "device", rows["group"].iloc[0], n=3)
    group = a.cases[(a.cases["device"] == rows["group"].iloc[0]) & (a.cases["status"] == "ok")]
    assert worst["dice"].tolist() == sorted(group["dice"])[: len(worst)]
    # Lower-is-better metrics list the largest values first.
    worst_hd = worst_cases(a.cases, "hd95", n=3)
    ok = a.cases[a.cases["status"] == "ok"]["hd95"].dropna()
    assert worst_hd["hd95"].tolist() == sorted(ok, reverse=True)[:3]
    with pytest.raises(ValueError, match="metric"):
        worst_cases(a.cases, "no_such_metric")


def test_dashboard_shows_the_chosen_stratum_and_metric(audits) -> None:
    a, b, cohort = audits
    d = AuditDashboard(a, b, cohort=cohort)
    assert d.stratum.value == "device" and d.metric.value == "dice"
    table = d.table.value
    for g in subgroup_rows(a.subgroups, "device", "dice")["group"]:
        assert str(g) in table
    assert "ci_low" in table and "flag" in table
    assert bytes(d.forest.value).startswith(b"\x89PNG")
    assert bytes(d.distribution.value).startswith(b"\x89PNG")
    assert "status" in d.criteria.value and "dice" in d.criteria.value
    forest = bytes(d.forest.value)
    d.metric.value = "hd95"
    assert bytes(d.forest.value) != forest
    assert d.worst_cases()["hd95"].is_monotonic_decreasing
    assert d.last_error is None


def test_comparison_switches_to_paired_differences(audits) -> None:
    a, b, cohort = audits
    d = AuditDashboard(a, b, cohort=cohort, names=("v1", "v2"))
    plain = d.table.value
    d.compare.value = True
    assert d.table.value != plain and "difference" in d.table.value
    expected = mx.compare(a, b).subgroups
    rows = subgroup_rows(expected, "device", "dice")
    np.testing.assert_allclose(d.rows()["difference"].to_numpy(float),
                               rows["difference"].to_numpy(float))
    # B drops lesions in more cases, so its mean Dice difference is never positive.
    assert (d.rows()["difference"].dropna() <= 1e-12).all()
    assert AuditDashboard(a).compare.disabled


def test_worst_case_opens_a_case_explorer(audits) -> None:
    a, b, cohort = audits
    d = AuditDashboard(a, cohort=cohort)
    buttons = d.worst.children
    assert buttons and all("dice" in btn.description for btn in buttons)
    cid = d.worst_cases()["case_id"].iloc[0]
    assert buttons[0].description.startswith(cid)
    buttons[0].click()
    assert isinstance(d.explorer, CaseExplorer) and d.explorer.case_id == cid
    assert d.explorer_box.children == (d.explorer,)
    case = cohort.load_case(cid)
    np.testing.assert_array_equal(d.explorer.ref, case.label > 0)
    # Without the cohort the button explains what is missing instead of failing silently.
    d2 = AuditDashboard(a)
    d2.worst.children[0].click()
    assert "cohort" in d2.status.value and "mx-error" in d2.status.value


def test_bad_result_is_rejected() -> None:
    with pytest.raises(ValueError, match="result"):
        AuditDashboard(object())
