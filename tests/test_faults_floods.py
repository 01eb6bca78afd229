"""Lesion floods (issue 28): matching on the overlapping pairs only (memory linear in the
pairs, not n_ref x n_pred), equal to the dense assignment, with a stated limit."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg_xai.metrics import instances
from medseg_xai.metrics.instances import match_instances, match_pairs
from medseg_xai.metrics.lesions import lesions


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 7), st.integers(1, 7), st.floats(0.05, 0.9), st.integers(0, 2**31 - 1))
def test_sparse_matching_equals_the_dense_assignment(n_ref, n_pred, thr, seed):
    rng = np.random.default_rng(seed)
    iou = np.where(rng.random((n_ref, n_pred)) < 0.4, rng.random((n_ref, n_pred)), 0.0)
    dense = match_instances(iou, thr)
    r, p = np.nonzero(iou)
    sparse = match_pairs(r, p, iou[r, p], thr)
    # the same total IoU and number of pairs (ties may pick other pairs of equal total)
    assert len(sparse) == len(dense)
    assert sum(v for *_, v in sparse) == pytest.approx(sum(v for *_, v in dense))
    assert len({i for i, *_ in sparse}) == len(sparse) == len({j for _, j, _ in sparse})
    assert all(v >= thr for *_, v in sparse)


def _flood(n_ref: int, n_shared: int, n_extra: int, size: int = 40):
    """Single-voxel lesions on a grid with gaps (each its own component)."""
    rng = np.random.default_rng(1)
    slots = np.stack(np.meshgrid(*[np.arange(0, size, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    pick = rng.permutation(len(slots))
    ref = np.zeros((size,) * 3, bool)
    pred = np.zeros((size,) * 3, bool)
    ref[tuple(slots[pick[:n_ref]].T)] = True
    pred[tuple(np.concatenate([slots[pick[:n_shared]],
                               slots[pick[n_ref:n_ref + n_extra]]]).T)] = True
    return pred, ref


@pytest.mark.slow
def test_a_flood_of_lesions_stays_small_in_memory():
    pred, ref = _flood(5000, 4000, 500)
    tracemalloc.start()
    df = lesions(pred, ref, spacing=(1.0, 1.0, 1.0), matching="hungarian")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    dense_table = 5001 * 4501 * 8  # one int64 (n_ref x n_pred) table: 180 MB
    assert peak < dense_table / 4, peak / 2**20
    counts = df["status"].value_counts().to_dict()
    assert counts == {"detected": 4000, "missed": 1000, "false_positive": 500}


def test_a_group_past_the_limit_is_refused_by_name(monkeypatch):
    # a 3 x 3 block of mutually overlapping pairs: 9 cells
    r = np.repeat([1, 2, 3], 3)
    p = np.tile([1, 2, 3], 3)
    iou = np.full(9, 0.2)
    assert len(match_pairs(r, p, iou, 0.1, max_cells=9)) == 3
    with pytest.raises(ValueError, match=r"3 reference lesions and 3 predicted components overlap "
                                         r"in one connected group .* expected at most 8 cells"):
        match_pairs(r, p, iou, 0.1, max_cells=8)
    monkeypatch.setattr(instances, "MAX_MATCH_CELLS", 0)
    ref = np.zeros((6, 6), bool)
    ref[1:3, 1:3] = True
    with pytest.raises(ValueError, match="lesion matching: 1 reference lesions"):
        lesions(ref, ref, spacing=(1.0, 1.0), matching="hungarian")
