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


def _row_label(x: object) -> object:
    """The per-row rule the labels follow (a value's shortest text; None when missing)."""
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return None
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


_cells = st.one_of(st.none(), st.sampled_from(["A", "B", "Zürich", "3"]),
                   st.sampled_from([1.0, 3.0, 2.5, np.nan]), st.sampled_from([3, 7]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_cells, _cells), min_size=1, max_size=30), st.booleans())
def test_group_labels_follow_the_per_row_rule(rows, derived):
    """Labels are made once per distinct value (and combination) and shared by the rows; every
    row still gets what the per-row rule gives it, for single columns and intersections."""
    cases = pd.DataFrame({"a": pd.Series([r[0] for r in rows], dtype=object),
                          "b": pd.Series([r[1] for r in rows], dtype=object)})
    single = group_labels(cases, Stratum("a", ("a",)), derived=derived)
    want = [_row_label(x) for x in cases["a"]]
    if not derived:
        want = [MISSING if w is None else w for w in want]
    assert [None if pd.isna(v) else v for v in single] == want
    both = group_labels(cases, Stratum("a x b", ("a", "b")), derived=derived).tolist()
    pairs = [(_row_label(x), _row_label(y)) for x, y in zip(cases["a"], cases["b"])]
    assert both == [None if derived and None in p else
                    " x ".join(MISSING if v is None else v for v in p) for p in pairs]
    assert single.index.equals(cases.index) and single.dtype == object


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.floats(-5, 1e5, allow_nan=False), st.just(np.nan), st.just(0.0)),
                min_size=1, max_size=40))
def test_lesion_size_labels_match_searching_each_volume(volumes):
    edges = [100.0, 1000.0]
    labels, order = lesion_size_labels(pd.Series(volumes), edges)
    names = order[1:]
    for v, lab in zip(volumes, labels):
        if not v > 0:
            assert lab == ("empty" if v == 0 else None)
            continue
        assert lab == names[int(np.searchsorted([0.0, *edges], v, side="right")) - 1]


def test_continuous_strata_are_binned_with_a_warning():
    from medseg_xai.audit import analysis
    from medseg_xai.audit.strata import bin_continuous_strata

    rng = np.random.default_rng(0)
    n = 120
    cases = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "status": "ok",
                          "age": rng.integers(20, 90, n).astype(float),
                          "device": rng.choice(["a", "b"], n), "dice": rng.beta(8, 2, n)})
    orders: dict = {}
    out, strata, notes = bin_continuous_strata(
        cases, parse_strata(["age", "device", "age x device", "age:40,60"]), orders)
    assert [s.name for s in strata] == ["age", "device", "age x device", "age:40,60"]
    assert strata[0].columns == ("age (binned)",) and strata[1].columns == ("device",)
    assert strata[3].columns == ("age (40,60)",)
    assert len(notes) == 2 and "quantile" in notes[0] and "'age:a,b,...'" in notes[0]
    assert "age" in out and out["age"].equals(cases["age"])  # raw values kept
    # quantile bins: 4 groups, each a quarter of the cases give or take ties
    table = analysis.subgroup_table(out, strata[:1], ["dice"], n_resamples=50)
    groups = table[table["stratum"] == "age"]
    assert len(groups) == 4 and groups["n"].min() >= 20
    # given edges: the stated groups, no warning for them
    out2, strata2, notes2 = bin_continuous_strata(cases, parse_strata(["age:40,60"]), {})
    assert notes2 == []
    labels = set(out2[strata2[0].columns[0]])
    assert labels == {"< 40", "[40, 60)", ">= 60"}
    assert (out2.loc[cases["age"] < 40, strata2[0].columns[0]] == "< 40").all()
    with pytest.raises(ValueError, match="increasing edges"):
        parse_strata(["age:60,40"])
