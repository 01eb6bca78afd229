"""AuditDashboard on real audits: selection, tables equal the result, verdict and criteria,
worst cases from the core ranking, comparison, opening cases."""

from __future__ import annotations

import html
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import REAL_AUDIT_KW

import medseg_xai as mx
from medseg_xai.audit.analysis import rank_worst
from medseg_xai.cohort import Cohort
from medseg_xai.widgets import AuditDashboard, CaseExplorer
from medseg_xai.widgets.dashboard import subgroup_rows, worst_cases


@pytest.fixture(scope="module")
def comparison(real_audit, real_cohort, tmp_path_factory):
    """Model B = the reference itself on the same cohort (so B is never worse than A)."""
    df = real_cohort.manifest.copy()
    df["prediction"] = df["label"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cohort_b = Cohort.from_dataframe(df, root=real_cohort.root)
        b = mx.audit(cohort_b, **{**REAL_AUDIT_KW, "n_resamples": 100})
    return mx.compare(real_audit, b, name_a="v1.json", name_b="v2.json")


def test_worst_cases_come_from_the_core_ranking(real_audit) -> None:
    cases = real_audit.cases
    rows = subgroup_rows(real_audit.subgroups, "device", "dice")
    group = rows["group"].iloc[0]
    worst = worst_cases(cases, "dice", "device", group, n=3)
    pd.testing.assert_frame_equal(worst, rank_worst(cases, "dice", stratum="device", group=group,
                                                    n=3))
    ok = cases[(cases["status"] == "ok") & (cases["device"] == group) & (cases["volume_ref_mm3"] > 0)]
    assert worst["dice"].tolist() == sorted(ok["dice"])[: len(worst)]
    assert not (worst["volume_ref_mm3"] == 0).any()  # scans without lesions are not ranked by Dice
    hd = worst_cases(cases, "hd95", n=3)  # lower is better: largest first
    assert hd["hd95"].is_monotonic_decreasing
    with pytest.raises(ValueError, match="metric"):
        worst_cases(cases, "no_such_metric")


def test_tables_verdict_and_criteria_equal_the_result(real_audit) -> None:
    d = AuditDashboard(real_audit)
    assert d.stratum.value == "device" and d.metric.value == "dice"
    np.testing.assert_array_equal(d.rows()["estimate"].to_numpy(float),
                                  subgroup_rows(real_audit.subgroups, "device", "dice")["estimate"]
                                  .to_numpy(float))
    for g in d.rows()["group"]:
        assert str(g) in d.table.value
    assert f"<b class='mx-verdict'>{real_audit.verdict}</b>" in d.children[0].value
    crit = d.criteria.value
    assert f"Verdict: <b>{real_audit.verdict}</b>" in crit and "Definitions" in crit
    for name in real_audit.verdicts["criterion"]:
        assert html.escape(name, quote=False) in crit
    assert bytes(d.forest.value).startswith(b"\x89PNG")
    forest = bytes(d.forest.value)
    d.metric.value = "hd95"
    assert bytes(d.forest.value) != forest and d.last_error is None


def test_comparison_shows_the_paired_differences(real_audit, comparison) -> None:
    d = AuditDashboard(real_audit, comparison)
    assert "v2.json vs v1.json" in d.compare.description
    plain = d.table.value
    d.compare.value = True
    assert d.table.value != plain and "difference" in d.table.value
    expected = subgroup_rows(comparison.subgroups, "device", "dice")
    np.testing.assert_array_equal(d.rows()["difference"].to_numpy(float),
                                  expected["difference"].to_numpy(float))
    assert (d.rows()["difference"].dropna() >= -1e-12).all()  # B is the reference: never worse
    assert AuditDashboard(real_audit).compare.disabled
    with pytest.raises(ValueError, match="ComparisonResult"):
        AuditDashboard(real_audit, real_audit)


def test_worst_case_opens_a_case_explorer(real_audit, real_cohort) -> None:
    d = AuditDashboard(real_audit, cohort=real_cohort)
    buttons = d.worst.children
    assert buttons and all("dice" in btn.description for btn in buttons)
    cid = d.worst_cases()["case_id"].iloc[0]
    assert buttons[0].description.startswith(cid)
    buttons[0].click()
    assert isinstance(d.explorer, CaseExplorer) and d.explorer.case_id == cid
    np.testing.assert_array_equal(d.explorer.ref, real_cohort.load_case(cid).label > 0)
    d2 = AuditDashboard(real_audit)
    d2.worst.children[0].click()
    assert "cohort" in d2.status.value and "mx-error" in d2.status.value


def test_bad_result_is_rejected() -> None:
    with pytest.raises(ValueError, match="result"):
        AuditDashboard(object())


def test_small_results_draw_every_case(real_audit) -> None:
    d = AuditDashboard(real_audit)
    ok = real_audit.cases[real_audit.cases["status"] == "ok"]
    assert d.distribution_points and all(k == n for k, n in d.distribution_points.values())
    assert sum(n for _, n in d.distribution_points.values()) == int(ok["dice"].notna().sum())
    assert "rows shown" not in d.table.value


@pytest.mark.slow
def test_a_large_result_caps_what_it_draws_and_lists(tmp_path) -> None:
    """10,000 cases through the real engine (records of 12 real files replayed, as in
    benchmarks/bench_dashboard.py): points, tables and worst cases are capped, views cached."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_dashboard.py"
    spec = importlib.util.spec_from_file_location("bench_dashboard", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.build_result(tmp_path, 10000, n_files=12, n_resamples=20)
    assert result.n_rows == 10000
    d = AuditDashboard(result, n_worst=4)
    ok = result.cases[result.cases["status"] == "ok"]
    drawn = d.distribution_points
    assert sum(n for _, n in drawn.values()) == int(ok["dice"].notna().sum())  # boxes: all
    assert all(k <= 500 for k, _ in drawn.values()) and any(k < n for k, n in drawn.values())
    group = d.group.value
    expected = rank_worst(result.cases, "dice", stratum=d.stratum.value, group=group, n=4)
    pd.testing.assert_frame_equal(d.worst_cases(), expected)
    assert [b.description.split(" · ")[0] for b in d.worst.children] == \
        expected["case_id"].tolist()
    forest, dist = bytes(d.forest.value), bytes(d.distribution.value)
    d.metric.value = "hd95"
    assert bytes(d.distribution.value) != dist
    d.metric.value = "dice"  # back to a cached view: the same pictures
    assert bytes(d.forest.value) == forest and bytes(d.distribution.value) == dist
    n_groups = len(subgroup_rows(result.subgroups, "device", "dice"))
    small = AuditDashboard(result, max_rows=1, max_points=10)
    assert f"first 1 of {n_groups} rows shown" in small.table.value
    assert all(k <= 10 for k, _ in small.distribution_points.values())


def test_distribution_ticks_show_the_results_n(real_audit) -> None:
    """The box plot's "(n=...)" labels are the subgroup rows' n, not a recount in the view."""
    from medseg_xai.widgets.dashboard import _group_distribution

    rows = subgroup_rows(real_audit.subgroups, "device", "dice")
    counts = {str(g): int(n) + 1000 for g, n in zip(rows["group"], rows["n"])}  # marked
    groups = AuditDashboard(real_audit)._group_values("device", "dice")
    fig, _ = _group_distribution(groups, "device", "dice", counts=counts)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels and all(lab == f"{lab.split(chr(10))[0]}\n(n={counts[lab.split(chr(10))[0]]})"
                          for lab in labels)
    overall = subgroup_rows(real_audit.subgroups, "overall", "dice")
    assert list(overall["group"].astype(str)) == ["all"]  # the box plot's one overall group
    bare, _ = _group_distribution(groups, "device", "dice")
    assert all("n=" not in t.get_text() for t in bare.axes[0].get_xticklabels())
