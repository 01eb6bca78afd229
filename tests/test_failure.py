"""Failure detection (audit.failure): AURC against brute force, sentences, calibration tables."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from medseg_xai.audit.failure import (
    FailureSettings,
    aurc,
    calibration_tables,
    case_calibration,
    decode_sums,
    failure_tables,
    parse_failure,
)
from medseg_xai.metrics.calibration import calibration_error


def _brute_aurc(scores: np.ndarray, failed: np.ndarray) -> float:
    """Mean over every ordering consistent with the scores of Geifman's AURC."""
    n = len(scores)
    vals = []
    for perm in itertools.permutations(range(n)):
        order = sorted(perm, key=lambda i: scores[i])  # stable: perm breaks ties
        f = failed[order]
        vals.append(np.mean(np.cumsum(f) / np.arange(1, n + 1)))
    return float(np.mean(vals))


@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=6))
def test_aurc_equals_brute_force_over_tie_orders(pairs: list[tuple[int, bool]]) -> None:
    s = np.array([p[0] for p in pairs], float)
    f = np.array([p[1] for p in pairs], float)
    assert aurc(s, f) == pytest.approx(_brute_aurc(s, f), abs=1e-12)


def test_aurc_known_values() -> None:
    f = np.array([0, 0, 1, 1], float)
    assert aurc(np.array([1, 2, 3, 4.0]), f) == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)
    assert aurc(np.zeros(4), f) == pytest.approx(np.mean([0.5] * 4))  # all tied: random
    # a perfect score reaches the ideal, so e_aurc = 0
    cases = pd.DataFrame({"status": "ok", "dice": [0.9, 0.8, 0.3, 0.1] * 5,
                          "unc_entropy": [0.1, 0.2, 0.7, 0.9] * 5, "n_missed": 0})
    table, curves, sent, _ = failure_tables(cases, [], FailureSettings(coverages=(0.6,)))
    row = table.iloc[0]
    assert row["e_aurc"] == pytest.approx(0.0, abs=1e-12) and row["auroc"] == 1.0
    assert row["spearman_metric"] == pytest.approx(-1.0)
    s = sent.iloc[0]  # 60% coverage: the 12 lowest scores (Dice 0.9, 0.8 and ties) kept
    assert s["threshold"] == 0.7 and s["caught"] == 0.5 and s["retained_risk"] == pytest.approx(
        5 / 15)
    assert curves["risk"].iloc[-1] == pytest.approx(0.5)


def test_subgroup_uses_the_overall_threshold() -> None:
    rng = np.random.default_rng(0)
    n = 200
    dev = np.where(np.arange(n) < 50, "new", "old")
    unc = rng.random(n) + (dev == "new") * 1.0
    dice = np.where(dev == "new", 0.3, 0.85) + rng.normal(0, 0.02, n)
    cases = pd.DataFrame({"status": "ok", "dice": dice, "unc_entropy": unc,
                          "unc_disagreement": unc + rng.normal(0, 0.1, n), "device": dev})
    labels = cases["device"].astype(object)
    table, _, _, per_case = failure_tables(cases, [("device", labels, ["new", "old"])],
                                           FailureSettings(target_coverage=0.75), min_n=10)
    assert "unc_combined" in per_case
    new = table[(table["group"] == "new") & (table["score"] == "unc_entropy")].iloc[0]
    overall = table[(table["group"] == "all") & (table["score"] == "unc_entropy")].iloc[0]
    assert new["threshold"] == overall["threshold"] and new["caught"] == 1.0
    assert new["referred"] == 1.0 and overall["referred"] == pytest.approx(0.25)


def test_parse_failure_and_settings() -> None:
    assert parse_failure("dice<0.5")[0] == "dice"
    assert parse_failure("Missed lesion") == ("missed lesion", None, None)
    with pytest.raises(ValueError, match="expected '<metric> <op> <value>'"):
        parse_failure("dice is bad")
    with pytest.raises(ValueError, match="unknown setting"):
        FailureSettings.from_value({"coverage": 0.8})
    assert FailureSettings.from_value("hd95 > 10").failure == "hd95 > 10"


def test_calibration_tables_mean_equals_per_case_monai_values() -> None:
    rng = np.random.default_rng(3)
    sums, ece, groups = [], [], []
    for i in range(12):
        p = rng.random((6, 7)).astype(np.float32) ** 2
        ref = rng.random((6, 7)) < p
        part = case_calibration(p, ref.astype(np.int8), None, 10)
        assert part["ece"] == pytest.approx(float(calibration_error(p[None], ref[None], 10)[0]),
                                            abs=1e-12)
        sums.append(decode_sums(part["calibration_sums"]).reshape(1, 3, 10))
        assert part["calibration_classes"] == "1"
        ece.append(part["ece"])
        groups.append("a" if i < 5 else "b")
    cases = pd.DataFrame({"status": "ok", "g": groups})
    table, rel = calibration_tables(np.array(sums), ["1"], cases,
                                    [("g", cases["g"].astype(object), ["a", "b"])], min_n=3)
    a = table[table["group"] == "a"].iloc[0]
    assert a["ece"] == pytest.approx(np.mean(ece[:5])) and a["n"] == 5 and a["n_voxels"] == 210
    assert rel[rel["group"] == "all"]["count"].sum() == 12 * 42
