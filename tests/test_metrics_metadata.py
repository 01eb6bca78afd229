"""Metric metadata: one entry per metric, used by metric_direction and the glossary."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_xai import metrics as M
from medseg_xai.audit import stats
from medseg_xai.metrics.metadata import METRICS, glossary, metric_info


def test_every_metric_evaluate_case_and_the_summaries_produce_has_metadata():
    rng = np.random.default_rng(0)
    pred = rng.random((8, 12, 12)) > 0.7
    ref = rng.random((8, 12, 12)) > 0.7
    out = M.evaluate_case(pred, ref, probabilities=rng.random((8, 12, 12)),
                          extra=M.EXTRA_METRICS)
    summary = M.lesion_summary(M.lesions(pred, ref))
    pq = M.panoptic_quality(pred, ref)
    numeric = [k for k, v in {**out, **summary, **pq}.items() if isinstance(v, (int, float))]
    missing = [k for k in numeric if metric_info(k) is None]
    assert missing == []
    # values lie in their declared range
    for key in numeric:
        lo, hi = metric_info(key).range
        v = {**out, **summary, **pq}[key]
        assert np.isnan(v) or lo <= v <= hi, key


@pytest.mark.parametrize("metric, direction", [
    ("dice", 1), ("dice_liver", 1), ("hd", -1), ("hd95", -1), ("hd95_2", -1), ("masd", -1),
    ("nsd", 1), ("mcc", 1), ("cldice", 1), ("pq", 1), ("abs_volume_diff_mm3", -1),
    ("volume_diff_pct", 0), ("fp_per_case", -1), ("lesion_f1", 1), ("unknown_thing", 0),
])
def test_audit_direction_delegates_to_the_metadata(metric, direction):
    assert stats.metric_direction(metric) == direction == M.metric_direction(metric)


def test_glossary_rows_and_definitions():
    rows = glossary(["dice", "hd95_liver", "nope"])
    assert [r["name"] for r in rows] == ["dice", "hd95_liver"]
    assert rows[1]["unit"] == "mm" and rows[1]["direction"] == -1
    assert all(info.definition.endswith(".") and info.definition[0].isupper()
               for info in METRICS.values())
    assert {"direction", "range", "unit", "definition", "name"} == set(rows[0])
