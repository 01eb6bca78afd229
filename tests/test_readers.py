"""Audits with several readers per case (audit.readers), on the demo cohort's simulated readers.

Predictions are made from the generator's truth (eroded / dilated / one lesion dropped), so the
engine runs without a model; every number is checked against medseg_xai.metrics called directly
on the files, or against the definitions in audit.readers.
"""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

import medseg_xai as mx
from medseg_xai.demo import make_cohort
from medseg_xai.metrics import agreement, consensus, evaluate_case

SHAPE = (32, 48, 48)
AUDIT = {"strata": ["device"], "workers": 1, "progress": False, "n_resamples": 300, "min_n": 3}


def _load(path):
    return np.asarray(nib.load(str(path)).dataobj) > 0


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("readers")
    manifest = make_cohort(out, n_cases=10, seed=3, shape=SHAPE, readers=3)
    df = pd.read_csv(manifest)
    (out / "pred").mkdir()
    for i, row in df.iterrows():
        img = nib.load(str(out / row["label"]))
        truth = np.asarray(img.dataobj) > 0
        pred = ndimage.binary_dilation(truth) if i % 2 else ndimage.binary_erosion(truth)
        nib.save(nib.Nifti1Image(pred.astype(np.uint8), img.affine),
                 str(out / "pred" / f"{row['case_id']}.nii.gz"))
    df["prediction"] = [f"pred/{c}.nii.gz" for c in df["case_id"]]
    df.to_csv(out / "manifest.csv", index=False)
    return out


@pytest.fixture(scope="module")
def staple_result(cohort_dir):
    cohort = mx.Cohort.from_csv(cohort_dir / "manifest.csv")
    crit = [{"name": "within", "kind": "noninferiority", "metric": "dice", "margin": 1.0,
             "strata": "overall"},
            {"name": "strict", "kind": "noninferiority", "metric": "nsd", "margin": 0.0,
             "strata": ["device"]}]
    return mx.audit(cohort, reference="staple", criteria=crit, **AUDIT)


def test_demo_readers_are_deterministic_and_leave_the_scans_alone(cohort_dir, tmp_path):
    plain = make_cohort(tmp_path / "plain", n_cases=3, seed=3, shape=SHAPE)
    again = make_cohort(tmp_path / "again", n_cases=3, seed=3, shape=SHAPE, readers=3)
    df = pd.read_csv(again)
    assert [c for c in df.columns if c.startswith("label_")] == ["label_r1", "label_r2",
                                                                 "label_r3"]
    for cid in df["case_id"]:
        for sub in ("images", "labels", "labels_r1", "labels_r3"):
            a = (cohort_dir / sub / f"{cid}.nii.gz").read_bytes()
            b = (tmp_path / "again" / sub / f"{cid}.nii.gz").read_bytes()
            assert a == b, (cid, sub)
        assert ((tmp_path / "plain" / "images" / f"{cid}.nii.gz").read_bytes()
                == (cohort_dir / "images" / f"{cid}.nii.gz").read_bytes())
    assert "label_r1" not in pd.read_csv(plain).columns


def test_reader_r3_misses_small_lesions_more_often(cohort_dir):
    df = pd.read_csv(cohort_dir / "manifest.csv")
    found = {r: 0 for r in ("r1", "r2", "r3")}
    total = 0
    for _, row in df.iterrows():
        truth = _load(cohort_dir / row["label"])
        lab, n = ndimage.label(truth, np.ones((3, 3, 3)))
        total += n
        for r in found:
            reader = _load(cohort_dir / row[f"label_{r}"])
            found[r] += sum(bool((reader & (lab == k)).any()) for k in range(1, n + 1))
    assert total > 3
    assert found["r3"] < found["r1"] <= total and found["r3"] < found["r2"]


def test_staple_reference_and_tables_equal_direct_metrics(cohort_dir, staple_result):
    res = staple_result
    assert res.n_rows == 10 and res.n_failed == 0
    df = pd.read_csv(cohort_dir / "manifest.csv")
    row = df.iloc[1]
    cid = row["case_id"]
    masks = {r: _load(cohort_dir / row[f"label_{r}"]) for r in ("r1", "r2", "r3")}
    pred = _load(cohort_dir / row["prediction"])
    spacing = mx.Cohort.from_csv(cohort_dir / "manifest.csv").load_case(cid).spacing
    cons = consensus(masks, "staple")
    case = res.cases.set_index("case_id").loc[cid]
    direct = evaluate_case(pred, cons.mask, spacing)
    assert case["dice"] == pytest.approx(direct["dice"])
    assert case["hd95"] == pytest.approx(direct["hd95"])
    assert case["reference"] == "staple" and case["n_readers"] == 3
    # Reader pairs equal metrics.agreement on the same files.
    table = res.readers[res.readers["case_id"] == cid]
    pairs = table[table["comparison"] == "reader"].reset_index(drop=True)
    ref = agreement(masks, spacing)
    for key in ("dice", "hd95", "assd", "nsd", "lesion_f1"):
        np.testing.assert_allclose(pairs[key], ref[key], rtol=1e-9)
    assert case["interreader_dice"] == pytest.approx(ref["dice"].mean())
    model = table[(table["comparison"] == "model") & (table["reader_a"] != "consensus")]
    direct_model = [evaluate_case(pred, masks[r], spacing)["dice"] for r in model["reader_a"]]
    np.testing.assert_allclose(model["dice"], direct_model)
    assert case["model_readers_dice"] == pytest.approx(np.mean(direct_model))
    st = table[table["comparison"] == "staple"].set_index("reader_a")
    np.testing.assert_allclose(st.loc[list(masks), "sensitivity"],
                               cons.performance["sensitivity"])


def test_noninferiority_is_the_paired_difference_with_its_ci(staple_result):
    res = staple_result
    ni = res.reader_noninferiority
    ok = res.cases[res.cases["status"] == "ok"]
    d = ok["model_readers_dice"] - ok["interreader_dice"]
    row = ni[(ni["stratum"] == "overall") & (ni["metric"] == "dice")].iloc[0]
    assert row["n"] == len(d)
    assert row["difference"] == pytest.approx(d.mean())
    assert row["model_vs_readers"] - row["reader_vs_reader"] == pytest.approx(row["difference"])
    assert row["ci_low"] <= row["difference"] <= row["ci_high"]
    assert row["margin"] == 1.0  # the pre-specified criterion's margin
    assert row["status"] == ("within reader variability" if row["ci_low"] >= -1.0 else "within-variability not shown")
    crit = res.criteria
    within = crit[crit["criterion"] == "within"]
    assert within["kind"].tolist() == ["noninferiority"]
    assert within["threshold"].tolist() == [-1.0] and within["status"].tolist() == ["PASS"]
    strict = crit[crit["criterion"] == "strict"]
    nsd = ni[(ni["stratum"] == "device") & (ni["metric"] == "nsd")].set_index("group")
    for _, r in strict.iterrows():
        g = nsd.loc[r["group"]]
        expect = ("INSUFFICIENT DATA" if g["n"] < 3 or not math.isfinite(g["ci_low"])
                  else "PASS" if g["ci_low"] >= 0 else "FAIL")
        assert r["status"] == expect and r["value"] == pytest.approx(g["ci_low"], nan_ok=True)


def test_reader_subgroups_cover_every_comparison(staple_result):
    sub = staple_result.reader_subgroups
    overall = sub[(sub["stratum"] == "overall") & (sub["metric"] == "dice")]
    got = list(zip(overall["comparison"], overall["reader_a"], overall["reader_b"]))
    assert got == [("reader", "all readers", "all readers"), ("model", "all readers", "model"),
                   ("reader", "r1", "r2"), ("reader", "r1", "r3"), ("reader", "r2", "r3"),
                   ("model", "r1", "model"), ("model", "r2", "model"), ("model", "r3", "model"),
                   ("model", "consensus", "model")]
    pair = overall[(overall["reader_a"] == "r1") & (overall["reader_b"] == "r3")].iloc[0]
    r = staple_result.readers
    vals = r[(r["comparison"] == "reader") & (r["reader_a"] == "r1") & (r["reader_b"] == "r3")]
    assert pair["estimate"] == pytest.approx(vals["dice"].mean())
    assert pair["ci_low"] <= pair["estimate"] <= pair["ci_high"]
    devices = set(staple_result.cases["device"])
    assert set(sub.loc[sub["stratum"] == "device", "group"]) == devices
    sens = sub[(sub["comparison"] == "staple") & (sub["metric"] == "sensitivity")]
    assert set(sens["reader_a"]) == {"r1", "r2", "r3"}


def test_lesion_reader_counts_and_detection_sets(cohort_dir, staple_result):
    les = staple_result.reader_lesions
    assert len(les) > 0
    assert (les["n_readers_marked"] == les["marked_by"].str.split(",").str.len()).all()
    df = pd.read_csv(cohort_dir / "manifest.csv").set_index("case_id")
    for _, r in les.head(4).iterrows():
        masks = {k: _load(cohort_dir / df.loc[r["case_id"], f"label_{k}"]) for k in ("r1", "r2", "r3")}
        union = np.logical_or.reduce(list(masks.values()))
        lab, _ = ndimage.label(union, np.ones((3, 3, 3)))
        comp = lab == int(r["lesion_id"].split("-")[1])
        assert r["marked_by"] == ",".join(k for k, m in masks.items() if (m & comp).any())
    det = staple_result.reader_detection
    o = det[det["stratum"] == "overall"].set_index("lesion_set")
    assert o.loc["any reader", "n_lesions"] == len(les)
    assert o.loc["all readers", "n_lesions"] == int((les["n_readers_marked"] == 3).sum())
    assert o.loc["majority of readers", "n_detected"] == int(
        les.loc[les["n_readers_marked"] >= 2, "detected"].sum())
    ref_rows = staple_result.lesions[staple_result.lesions["source"] == "reference"]
    assert ref_rows["n_readers_marked"].between(1, 3).all()


@pytest.mark.slow
def test_reference_can_be_one_reader_or_majority(cohort_dir):
    cohort = mx.Cohort.from_csv(cohort_dir / "manifest.csv")
    by_r2 = mx.audit(cohort, reference="r2", **AUDIT)
    by_vote = mx.audit(cohort, reference="majority", **AUDIT)
    df = pd.read_csv(cohort_dir / "manifest.csv")
    row = df.iloc[3]
    masks = {r: _load(cohort_dir / row[f"label_{r}"]) for r in ("r1", "r2", "r3")}
    pred = _load(cohort_dir / row["prediction"])
    sp = cohort.load_case(row["case_id"]).spacing
    c2 = by_r2.cases.set_index("case_id").loc[row["case_id"]]
    cv = by_vote.cases.set_index("case_id").loc[row["case_id"]]
    assert c2["dice"] == pytest.approx(evaluate_case(pred, masks["r2"], sp)["dice"])
    vote = consensus(masks, "majority").mask
    assert cv["dice"] == pytest.approx(evaluate_case(pred, vote, sp)["dice"])
    cons_row = by_vote.readers[(by_vote.readers["case_id"] == row["case_id"])
                               & (by_vote.readers["reader_a"] == "consensus")].iloc[0]
    assert cons_row["dice"] == pytest.approx(cv["dice"])


@pytest.mark.slow
def test_missing_reader_fails_its_row_or_is_allowed(cohort_dir, tmp_path):
    df = pd.read_csv(cohort_dir / "manifest.csv")
    for col in ("image", "label", "prediction", "label_r1", "label_r2", "label_r3"):
        df[col] = [str(cohort_dir / p) for p in df[col]]
    df.loc[2, "label_r2"] = str(tmp_path / "gone.nii.gz")
    df.loc[4, "label_r3"] = None
    df = df.drop(columns=["label"])
    with pytest.warns(UserWarning, match="row problem"):
        cohort = mx.Cohort.from_dataframe(df)
    with pytest.raises(ValueError, match="no 'label' column"):
        mx.audit(cohort, **AUDIT)
    with pytest.raises(ValueError, match="reader of"):
        mx.audit(cohort, reference="r9", **AUDIT)
    strict = mx.audit(cohort, reference="staple", **AUDIT)
    assert strict.n_rows == 10 and strict.n_evaluated + strict.n_failed == 10
    failed = strict.failed.set_index("case_id")["error"]
    assert list(failed.index) == [df.loc[2, "case_id"], df.loc[4, "case_id"]]
    assert "label_r2" in failed.iloc[0] and "label_r3" in failed.iloc[1]
    assert str(tmp_path) not in failed.iloc[0]  # file names only
    loose = mx.audit(cohort, reference="staple", allow_missing_readers=True, **AUDIT)
    assert loose.n_failed == 0 and loose.n_rows == 10, loose.failed.to_dict()
    c = loose.cases.set_index("case_id")
    assert c.loc[df.loc[2, "case_id"], "n_readers"] == 2
    assert c.loc[df.loc[2, "case_id"], "readers_missing"] == "r2"
    assert c.loc[df.loc[4, "case_id"], "readers_missing"] == "r3"
    assert c.loc[df.loc[0, "case_id"], "n_readers"] == 3
    # One reader left is too few for a consensus: that row fails, naming what is missing.
    df.loc[2, "label_r1"] = None
    with pytest.warns(UserWarning):
        thin = mx.Cohort.from_dataframe(df)
    res = mx.audit(thin, reference="staple", allow_missing_readers=True, **AUDIT)
    err = res.failed.set_index("case_id")["error"]
    assert list(err.index) == [df.loc[2, "case_id"]]
    assert "at least 2 readers" in err.iloc[0] and "r1" in err.iloc[0]


def test_reader_on_another_grid_fails_its_row(cohort_dir, tmp_path):
    df = pd.read_csv(cohort_dir / "manifest.csv")
    for col in ("image", "label", "prediction", "label_r1", "label_r2", "label_r3"):
        df[col] = [str(cohort_dir / p) for p in df[col]]
    img = nib.load(df.loc[0, "label_r1"])
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :-1], img.affine),
             str(tmp_path / "crop.nii.gz"))
    df.loc[0, "label_r1"] = str(tmp_path / "crop.nii.gz")
    res = mx.audit(mx.Cohort.from_dataframe(df), **AUDIT)
    assert res.n_failed == 1
    assert "label_r1 grid does not match the image" in res.failed["error"].iloc[0]


@pytest.mark.slow
def test_json_round_trip_and_same_seed_same_bytes(cohort_dir, staple_result):
    text = staple_result.to_json()
    back = mx.AuditResult.from_json(text)
    for name in ("readers", "reader_lesions", "reader_subgroups", "reader_noninferiority",
                 "reader_detection"):
        pd.testing.assert_frame_equal(getattr(back, name).reset_index(drop=True),
                                      getattr(staple_result, name).reset_index(drop=True),
                                      check_dtype=False)
    again = mx.audit(mx.Cohort.from_csv(cohort_dir / "manifest.csv"), reference="staple",
                     criteria=staple_result.settings["criteria"], **AUDIT)
    a, b = json.loads(text), json.loads(again.to_json())
    for key in ("run", "timings"):
        a.pop(key), b.pop(key)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    # Results from before the reader tables existed still load.
    old = json.loads(text)
    for name in ("readers", "reader_lesions", "reader_subgroups"):
        old["tables"].pop(name)
    assert mx.AuditResult.from_json(json.dumps(old)).readers.empty


def test_single_reference_audit_has_empty_reader_tables(cohort_dir):
    df = pd.read_csv(cohort_dir / "manifest.csv").drop(columns=["label_r1", "label_r2",
                                                                "label_r3"])
    res = mx.audit(mx.Cohort.from_dataframe(df, root=cohort_dir), **AUDIT)
    assert res.readers.empty and res.reader_noninferiority.empty
    assert "interreader_dice" not in res.cases.columns
    with pytest.raises(ValueError, match="needs reader columns"):
        mx.audit(mx.Cohort.from_dataframe(df, root=cohort_dir), reference="staple", **AUDIT)


@pytest.mark.parametrize(("crit", "match"), [
    ({"kind": "noninferiority", "metric": "hd95"}, "expected one of \\('dice', 'nsd'\\)"),
    ({"kind": "noninferiority", "margin": -1}, "margin: expected a number >= 0"),
    ({"kind": "noninferiority", "margin": 0.1, "op": "<=", "threshold": 0.1}, "lower CI bound"),
])
def test_noninferiority_criterion_validation(crit, match):
    from medseg_xai.audit.criteria import load_criteria

    with pytest.raises(ValueError, match=match):
        load_criteria([crit])
    ok = load_criteria([{"kind": "noninferiority", "margin": 0.1}])[0]
    assert (ok["metric"], ok["op"], ok["threshold"], ok["margin"]) == ("dice", ">=", -0.1, 0.1)


def _render_section(result, config=None):
    """The section as the report renders it (registry protocol: ``s``, ``num``, ``title``)."""
    import jinja2

    from medseg_xai.reports import sec_reference_standard_readers as sec

    data = sec.build(result, dict(config or {}))
    if data is None:
        return None
    env = jinja2.Environment(loader=jinja2.PackageLoader("medseg_xai.reports", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    body = env.get_template("sec_reference_standard_readers.html.j2").render(
        s=data, num=3, title=sec.TITLE, anchor="reference-standard-readers")
    return data, body


def test_report_section_shows_agreement_and_noninferiority_per_device(staple_result):
    data, html = _render_section(staple_result)
    assert 'id="reader-agreement"' in html and 'id="reader-noninferiority"' in html
    assert "r1 vs r2" in html and "model vs consensus" in html and "STAPLE consensus" in html
    ni = staple_result.reader_noninferiority
    for _, r in ni[ni["stratum"] == "device"].iterrows():
        assert r["group"] in html
    assert {r["status"] for _, r in ni.iterrows()} <= {
        "within reader variability", "within-variability not shown", "insufficient data"}
    for status in set(ni["status"]):
        assert status in html
    # Numbers shown are the result's own (formatted), never recomputed.
    from medseg_xai.reports.tables import fmt

    sub = staple_result.reader_subgroups
    pair = sub[(sub["stratum"] == "overall") & (sub["reader_a"] == "r1")
               & (sub["reader_b"] == "r2") & (sub["metric"] == "dice")].iloc[0]
    assert f"{fmt(pair['estimate'])} ({fmt(pair['ci_low'])} to {fmt(pair['ci_high'])})" in html
    assert data["figure"].startswith("data:image/png;base64,")
    assert "<script" not in html


def test_report_section_is_left_out_without_readers_and_escapes_names(cohort_dir, staple_result):
    df = pd.read_csv(cohort_dir / "manifest.csv").drop(columns=["label_r1", "label_r2",
                                                                "label_r3"])
    single = mx.audit(mx.Cohort.from_dataframe(df, root=cohort_dir), **AUDIT)
    assert _render_section(single) is None
    back = mx.AuditResult.from_json(staple_result.to_json())
    back.readers = back.readers.replace({"r1": "<b>r1</b>"})
    back.reader_subgroups = back.reader_subgroups.replace({"r1": "<b>r1</b>"})
    _, html = _render_section(back)
    assert "<b>r1</b>" not in html and "&lt;b&gt;r1&lt;/b&gt;" in html


def test_widget_view_shows_the_result_tables(staple_result):
    from medseg_xai.widgets.readers import ReaderAgreementView, agreement_rows

    view = ReaderAgreementView(staple_result)
    assert view.stratum.options == ("overall", "device")
    rows = agreement_rows(staple_result, "overall", "dice")
    assert "r1 vs r2" in set(rows["comparison"]) and "model vs consensus" in set(rows["comparison"])
    assert "r1 vs r2" in view.table.value and view.plot.value[:4] == b"\x89PNG"
    view.stratum.value = "device"
    view.metric.value = "hd95"
    dev = agreement_rows(staple_result, "device", "hd95")
    assert set(dev["group"]) == set(staple_result.cases["device"])
    sub = staple_result.reader_subgroups
    first = sub[(sub["stratum"] == "device") & (sub["metric"] == "hd95")].iloc[0]
    assert dev.iloc[0]["estimate"] == first["estimate"]
    assert html_escape(str(first["group"])) in view.table.value
    from medseg_xai.audit.result import TABLES

    single = mx.AuditResult(**{k: getattr(staple_result, k) for k in TABLES})
    with pytest.raises(ValueError, match="several readers"):
        ReaderAgreementView(single)


def html_escape(text):
    import html

    return html.escape(text)


def test_reader_layers_for_the_case_explorer():
    from matplotlib.figure import Figure

    from medseg_xai.widgets.readers import draw_readers, reader_outlines, reader_votes

    a = np.zeros((3, 8, 8), bool)
    a[1, 2:6, 2:6] = True
    b = a.copy()
    b[1, 2:6, 5] = False
    c = np.zeros_like(a)
    votes, dis = reader_votes({"r1": a, "r2": b, "r3": c})
    assert votes.max() == 2 and votes[1, 3, 3] == 2 and votes[1, 3, 5] == 1
    np.testing.assert_array_equal(dis, (votes > 0) & (votes < 3))
    lines = reader_outlines({"r1": a, "r2": b})
    assert set(lines) == {"r1", "r2"} and lines["r1"].shape == (8, 8)
    np.testing.assert_array_equal(lines["r1"], a[1] & ~ndimage.binary_erosion(a[1]))
    ax = Figure().subplots()
    draw_readers(ax, np.zeros((8, 8)), {"r1": a[1], "r2": b[1]}, readers=["r2"])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["r2", "readers differ"]


@pytest.mark.slow
def test_cli_reference_and_allow_missing_readers(cohort_dir, tmp_path, capsys):
    from medseg_xai.cli import main

    df = pd.read_csv(cohort_dir / "manifest.csv").drop(columns=["label"])
    for col in ("image", "prediction", "label_r1", "label_r2", "label_r3"):
        df[col] = [str(cohort_dir / p) for p in df[col]]
    df.loc[1, "label_r3"] = str(tmp_path / "absent.nii.gz")
    df.to_csv(tmp_path / "m.csv", index=False)
    args = ["audit", str(tmp_path / "m.csv"), "--strata", "device", "--no-html", "--quiet",
            "--reference", "majority"]
    main([*args, "--out", str(tmp_path / "strict")])
    strict = json.loads((tmp_path / "strict" / "audit.json").read_text())
    assert strict["provenance"]["n_failed"] == 1 and strict["settings"]["reference"] == "majority"
    main([*args, "--allow-missing-readers", "--out", str(tmp_path / "loose")])
    loose = mx.AuditResult.from_json(tmp_path / "loose" / "audit.json")
    assert loose.n_failed == 0 and loose.settings["allow_missing_readers"] is True
    assert (tmp_path / "loose" / "reader_noninferiority.csv").is_file()
    capsys.readouterr()


def test_full_report_has_the_reader_section(staple_result, tmp_path):
    html = staple_result.to_html(tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<section class="report" id="reference-standard-readers">' in html
    assert 'href="#reference-standard-readers"' in html
    assert 'id="reader-noninferiority"' in html and "Is the model within inter-reader" in html
    for device in set(staple_result.cases["device"]):
        assert html_escape(device) in html


@pytest.mark.slow
def test_reader_case_view_and_dashboard_tab(cohort_dir, staple_result):
    from medseg_xai.widgets import AuditDashboard
    from medseg_xai.widgets.readers import ReaderCaseView

    cohort = mx.Cohort.from_csv(cohort_dir / "manifest.csv")
    cid = staple_result.reader_lesions["case_id"].iloc[0]
    view = ReaderCaseView.from_cohort(cohort, cid)
    assert view.picture.value[:4] == b"\x89PNG" and view.choose.value == ("r1", "r2", "r3")
    img, masks = view.slices()
    assert any(m.any() for m in masks.values())  # opens on the slice with the most votes
    view.choose.value = ("r3",)
    view.slice.value = 0
    assert view.slices()[0].shape == img.shape
    dash = AuditDashboard(staple_result)
    assert dash.readers is not None and dash.readers.widget in dash.children
    from medseg_xai.widgets import CaseExplorer, ExplorerOptions

    explorer = CaseExplorer.from_cohort(cohort, cid, options=ExplorerOptions(background=False))
    assert sorted(explorer.readers) == ["r1", "r2", "r3"]
    assert explorer.reader_view().choose.options == ("r1", "r2", "r3")


def test_report_says_where_the_margin_came_from(staple_result):
    _, html = _render_section(staple_result)
    assert "pre-specified as an acceptance criterion" in html  # the fixture's criteria
    bare = mx.AuditResult.from_json(staple_result.to_json())
    bare.settings = {**bare.settings, "criteria": []}
    _, html = _render_section(bare)
    assert "the default: no acceptance criterion" in html


@pytest.mark.slow
def test_process_pool_gives_the_same_reader_tables(cohort_dir, staple_result):
    res = mx.audit(mx.Cohort.from_csv(cohort_dir / "manifest.csv"), reference="staple",
                   criteria=staple_result.settings["criteria"], executor="process",
                   mp_context="fork", **{**AUDIT, "workers": 2})
    for name in ("readers", "reader_lesions", "reader_subgroups", "reader_noninferiority"):
        pd.testing.assert_frame_equal(getattr(res, name), getattr(staple_result, name))
