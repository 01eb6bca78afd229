"""Strata parsing, derived size bins and group labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medseg_xai.audit.strata import (
    MISSING,
    Stratum,
    add_derived_columns,
    group_labels,
    lesion_size_labels,
    parse_strata,
)


def test_parse_strata_forms():
    out = parse_strata(["device", "device x site", ("site", "sex"), "device"])
    assert out == [Stratum("device", ("device",)), Stratum("device x site", ("device", "site")),
                   Stratum("site x sex", ("site", "sex"))]
    assert parse_strata("box") == [Stratum("box", ("box",))]  # an "x" inside a name is no split
    assert parse_strata(None) == []
    with pytest.raises(ValueError, match="strata"):
        parse_strata([3])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=1, max_size=40),
       st.integers(1, 5))
def test_quantile_bins_contain_their_volumes(volumes, q):
    labels, order = lesion_size_labels(pd.Series(volumes), q)
    assert order[0] == "empty"
    for v, lab in zip(volumes, labels):
        if v == 0:
            assert lab == "empty"
            continue
        lo, hi = lab[1:-5].split(", ")
        assert float(lo) <= v or np.isclose(float(lo), v, rtol=1e-5)
        assert hi == "inf" or v < float(hi) or np.isclose(float(hi), v, rtol=1e-5)
        assert lab in order


def test_edge_bins_and_errors():
    labels, order = lesion_size_labels(pd.Series([0, 50, 100, 5000, np.nan]), [100, 1000])
    assert labels.tolist()[:4] == ["empty", "[0, 100) mm3", "[100, 1000) mm3", "[1000, inf) mm3"]
    assert labels.iloc[4] is None
    assert order == ["empty", "[0, 100) mm3", "[100, 1000) mm3", "[1000, inf) mm3"]
    with pytest.raises(ValueError, match="increasing"):
        lesion_size_labels(pd.Series([1.0]), [100, 10])


def test_group_labels_missing_and_intersections():
    cases = pd.DataFrame({"device": ["A", None, "B"], "site": ["Zürich", "Köln", None],
                          "status": ["ok", "ok", "failed"], "volume_ref_mm3": [0.0, 10.0, np.nan],
                          "n_ref_lesions": [0, 4, np.nan]})
    assert group_labels(cases, Stratum("device", ("device",))).tolist() == ["A", MISSING, "B"]
    inter = group_labels(cases, Stratum("device x site", ("device", "site"))).tolist()
    assert inter == ["A x Zürich", f"{MISSING} x Köln", f"B x {MISSING}"]
    with pytest.raises(ValueError, match="scanner"):
        group_labels(cases, Stratum("scanner", ("scanner",)))
    derived, orders = add_derived_columns(cases, 2)
    assert derived["empty_reference"].tolist()[:2] == ["empty", "non-empty"]
    assert derived["lesion_count"].tolist()[:2] == ["0", "3+"]
    assert derived["lesion_size"].iloc[2] is None  # failed case joins no derived group
    assert orders["lesion_count"] == ["0", "1", "2", "3+"]
