"""Audit engine end to end on tiny NIfTI cohorts written into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import medseg_xai as mx
from medseg_xai.audit import AuditResult, audit, compare, engine, runner, write_outputs
from medseg_xai.audit.result import MODEL_TABLES, READER_TABLES
from medseg_xai.cohort import Cohort
from medseg_xai.metrics import evaluate_case

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
SHAPE = (12, 16, 16)
FAST = {"n_resamples": 200, "progress": False, "min_n": 3}


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path.name


def make_manifest(folder: Path, n: int = 18, degrade: str | None = "B", tag: str = "") -> pd.DataFrame:
    """n cases; devices A/B/C, sites with non-ASCII names, two scans per patient.

    Predictions equal the reference except: device ``degrade`` loses half of its lesion, every
    fourth case has a small false positive, and every sixth case has an empty reference.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(42)
    rows = []
    for i in range(n):
        device = "ABC"[i % 3]
        img = rng.random(SHAPE).astype(np.float32)
        lab = np.zeros(SHAPE, np.uint8)
        if i % 6:
            w = 2 + i % 4
            lab[2:6, 3:3 + w, 4:9] = 1
        pred = lab.copy()
        if device == degrade:
            pred[2:4] = 0
        if i % 4 == 0:
            pred[9:11, 12:14, 12:14] = 1
        rows.append({
            "case_id": f"case-{i:02d}",
            "image": _save(folder / f"img{i}.nii.gz", img),
            "label": _save(folder / f"lab{i}.nii.gz", lab),
            "prediction": _save(folder / f"pred{tag}{i}.nii.gz", pred),
            "patient_id": f"P{i // 2}",
            "device": device,
            "site": ["Zürich", "São Paulo"][(i // 3) % 2],
        })
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cohort")
    make_manifest(folder).to_csv(folder / "manifest.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def serial_result(cohort_dir: Path) -> AuditResult:
    cohort = Cohort.from_csv(cohort_dir / "manifest.csv")
    return audit(cohort, strata=["device", "site", "lesion_size", "device x site"],
                 executor="serial", **FAST)


def _stable(result: AuditResult) -> dict:
    d = result.to_dict()
    d.pop("run")
    d.pop("timings")
    return d


def test_every_row_accounted_and_metrics_match_evaluate_case(serial_result, cohort_dir):
    r = serial_result
    assert r.n_rows == 18 == r.n_evaluated + r.n_failed and r.n_failed == 0
    row = r.cases.set_index("case_id").loc["case-01"]
    lab = np.asarray(nib.load(cohort_dir / "lab1.nii.gz").dataobj) > 0
    pred = np.asarray(nib.load(cohort_dir / "pred1.nii.gz").dataobj) > 0
    ref = evaluate_case(pred, lab, spacing=(1.0, 1.0, 2.0))
    for key in ("dice", "hd95", "assd", "nsd", "volume_ref_mm3"):
        assert row[key] == pytest.approx(ref[key])
    assert row["n_ref_lesions"] == 1
    # patient ids never leave the cohort in clear text
    assert not r.cases["patient_id"].str.startswith("P").any()
    assert r.cases["patient_id"].nunique() == 9


def test_subgroups_match_independent_pandas(serial_result):
    r = serial_result
    ok = r.cases[r.cases["status"] == "ok"]
    for metric in ("dice", "hd95", "recall"):
        overall = ok[metric].mean()
        by = ok.groupby("device")[metric].agg(["mean", "median", "count"])
        sub = r.metric(metric, "device").set_index("group")
        assert list(sub.index) == ["A", "B", "C"]
        for g in by.index:
            assert sub.loc[g, "n"] == by.loc[g, "count"]
            assert sub.loc[g, "estimate"] == pytest.approx(by.loc[g, "mean"])
            assert sub.loc[g, "median"] == pytest.approx(by.loc[g, "median"])
            assert sub.loc[g, "gap"] == pytest.approx(by.loc[g, "mean"] - overall)
            if metric == "hd95":  # unbounded: no interval below 50 patients (stats)
                assert sub.loc[g, "n_clusters"] < 50 and np.isnan(sub.loc[g, "ci_low"])
                continue
            assert sub.loc[g, "ci_low"] <= sub.loc[g, "estimate"] + 1e-12
            assert sub.loc[g, "ci_high"] >= sub.loc[g, "estimate"] - 1e-12
        assert r.metric(metric).loc[0, "estimate"] == pytest.approx(overall)
    dice = r.metric("dice", "device").set_index("group")
    assert dice.loc["B", "estimate"] < dice.loc["A", "estimate"]
    assert dice.loc["B", "gap_best"] < 0 and dice.loc["B", "gap_best_ci_high"] < 0
    assert dice.loc["A", "best_group"] in ("A", "C")
    # intersections: labels join both columns
    inter = r.subgroups[r.subgroups["stratum"] == "device x site"]
    assert set(inter["group"]) == {"A x Zürich", "A x São Paulo", "B x Zürich", "B x São Paulo",
                                   "C x Zürich", "C x São Paulo"}
    # the family-wise correction never lowers a p-value
    tested = r.subgroups.dropna(subset=["p_value"])
    assert (tested["p_adjusted"] >= tested["p_value"] - 1e-12).all()


def test_lesion_tables(serial_result):
    r = serial_result
    ref = r.lesions[r.lesions["source"] == "reference"]
    assert len(ref) == 15  # every non-empty reference has one lesion
    det = r.lesion_detection
    all_row = det[(det["stratum"] == "overall") & (det["size_bin"] == "all")].iloc[0]
    assert all_row["n_lesions"] == 15
    assert all_row["n_detected"] == int((ref["status"] == "detected").sum())
    assert 0 <= all_row["ci_low"] <= all_row["rate"] <= all_row["ci_high"] <= 1
    fp = r.false_positives.set_index(["stratum", "group"]).loc[("overall", "all")]
    empty = r.cases[r.cases["volume_ref_mm3"] == 0]
    assert fp["n_scans"] == len(empty) == 3
    assert fp["n_with_fp"] == int((empty["volume_pred_mm3"] > 0).sum())
    va = r.volume_agreement.set_index(["stratum", "group"]).loc[("overall", "all")]
    d = r.cases["volume_pred_mm3"] - r.cases["volume_ref_mm3"]
    assert va["bias"] == pytest.approx(d.mean())
    assert va["loa_high"] == pytest.approx(d.mean() + 1.96 * d.std(ddof=1))
    assert r.provenance["edge_cases"]["both_empty"] + r.provenance["edge_cases"]["ref_empty"] == 3
    sizes = r.subgroups[(r.subgroups["stratum"] == "lesion_size") & (r.subgroups["metric"] == "dice")]
    assert sizes["group"].iloc[0] == "empty" and sizes["n"].iloc[0] == 3


def test_determinism_and_json_round_trip(serial_result, cohort_dir, tmp_path):
    again = audit(Cohort.from_csv(cohort_dir / "manifest.csv"),
                  strata=["device", "site", "lesion_size", "device x site"], executor="serial",
                  **FAST)
    assert json.dumps(_stable(again), sort_keys=True) == json.dumps(_stable(serial_result),
                                                                    sort_keys=True)
    text = serial_result.to_json(tmp_path / "a.json")
    assert "São Paulo" in text and "NaN" not in text
    back = AuditResult.from_json(tmp_path / "a.json")
    assert back.to_json() == text
    pd.testing.assert_frame_equal(back.subgroups, serial_result.subgroups)
    assert back.cases["case_id"].tolist() == serial_result.cases["case_id"].tolist()
    other_seed = audit(Cohort.from_csv(cohort_dir / "manifest.csv"), strata=["device"],
                       executor="serial", seed=1, **FAST)
    # Every bootstrap interval of the stratum, not one: with six patients per group a single
    # percentile often lands on the same resampled mean whatever the seed.
    cols = ["ci_low", "ci_high", "gap_ci_low", "gap_ci_high"]
    ci = serial_result.subgroups.query("stratum == 'device'")[cols].to_numpy(float)
    ci_other = other_seed.subgroups.query("stratum == 'device'")[cols].to_numpy(float)
    assert ci.shape == ci_other.shape and not np.allclose(ci, ci_other, equal_nan=True)
    with pytest.raises(ValueError, match="schema"):
        AuditResult.from_json('{"schema": "other"}')


def test_bad_inputs_become_failed_rows(tmp_path):
    df = make_manifest(tmp_path, n=8)
    (tmp_path / "corrupt.nii.gz").write_bytes(b"garbage")
    _save(tmp_path / "mismatch.nii.gz", np.zeros(SHAPE, np.uint8), np.diag([1.0, 1.0, 3.0, 1.0]))
    nan_img = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    nan_img[3, 3, 3] = np.nan
    _save(tmp_path / "nan.nii.gz", nan_img)
    df.loc[1, "label"] = "missing.nii.gz"
    df.loc[2, "label"] = "corrupt.nii.gz"
    df.loc[3, "prediction"] = "mismatch.nii.gz"
    df.loc[4, "image"] = "nan.nii.gz"
    df.loc[4, "device"] = "D"  # device D only exists on a failed row -> empty subgroup
    with pytest.warns(UserWarning, match="row problem"):
        cohort = Cohort.from_dataframe(df, root=tmp_path)
    r = audit(cohort, strata=["device", "site"], executor="serial",
              criteria=[{"metric": "dice", "op": ">=", "threshold": 0.5, "strata": ["device"]}],
              **FAST)
    assert r.n_rows == 8 and r.n_failed == 4 and r.n_evaluated == 4
    errors = r.cases.set_index("case_id")["error"]
    assert "case-01" in errors["case-01"] and "label file not found" in errors["case-01"]
    assert "could not read label file" in errors["case-02"]
    assert "prediction grid does not match" in errors["case-03"]
    assert "NaN" in errors["case-04"]
    assert (r.cases.loc[r.cases["status"] == "failed", "dice"].isna()).all()
    d = r.metric("dice", "device").set_index("group")
    assert d.loc["D", "n"] == 0 and np.isnan(d.loc["D", "estimate"])
    assert d.loc["D", "flag"] == "insufficient data"
    crit = r.criteria.set_index("group")
    assert crit.loc["D", "status"] == "INSUFFICIENT DATA"
    assert r.failed["case_id"].tolist() == ["case-01", "case-02", "case-03", "case-04"]


def test_bad_arguments(serial_result, cohort_dir):
    cohort = Cohort.from_csv(cohort_dir / "manifest.csv")
    with pytest.raises(ValueError, match=r"column\(s\) \['scanner'\]"):
        audit(cohort, strata=["scanner"], **FAST)
    with pytest.raises(ValueError, match="executor"):
        audit(cohort, executor="threads", **FAST)
    with pytest.raises(ValueError, match="op"):
        audit(cohort, criteria=[{"metric": "dice", "op": "=>", "threshold": 1}], **FAST)
    with pytest.raises(ValueError, match=r"strata \['site'\] are not audited"):
        audit(cohort, strata=["device"], criteria=[{"metric": "dice", "op": ">=", "threshold": 1,
                                                    "strata": ["site"]}], **FAST)
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['dcie'\]"):
        audit(cohort, criteria=[{"metric": "dcie", "op": ">=", "threshold": 1}], **FAST)


@pytest.mark.parametrize(("setting", "value"), [
    ("empty", "zero"), ("ci_method", "bca"), ("test", "ttest"), ("correction", "bonferroni"),
    ("n_resamples", 0), ("confidence", 95), ("alpha", 0.0),
])
def test_bad_settings_fail_before_any_case_runs(cohort_dir, monkeypatch, setting, value):
    monkeypatch.setattr(engine, "run_tasks", lambda *a, **k: pytest.fail("cases ran"))
    cohort = Cohort.from_csv(cohort_dir / "manifest.csv")
    from medseg_xai.audit.plan import OPTION_FIELDS

    field = ".".join(OPTION_FIELDS[setting])  # the plan names the field it refuses
    with pytest.raises(ValueError, match=rf"^plan\.{field}: expected .*, got {value!r}$"):
        audit(cohort, **{**FAST, setting: value})


def test_every_case_failed_still_gives_a_result(tmp_path):
    df = pd.DataFrame({"case_id": ["a", "b", "c"], "image": ["x.nii.gz"] * 3,
                       "label": ["y.nii.gz"] * 3, "prediction": ["z.nii.gz"] * 3,
                       "device": ["A", "B", "A"]})
    with pytest.warns(UserWarning, match="row problem"):
        cohort = Cohort.from_dataframe(df, root=tmp_path)
    r = audit(cohort, strata=["device"], criteria="default", executor="serial", **FAST)
    assert r.n_rows == 3 == r.n_failed and r.n_evaluated == 0
    assert set(r.criteria["status"]) == {"INSUFFICIENT DATA"}
    assert r.verdict == "INSUFFICIENT DATA"
    assert (r.false_positives["n_scans"] == 0).all()
    assert "every one of the 3 cases failed" in r.to_html(tmp_path / "r.html").read_text().lower()


def test_resume_after_interrupted_run(cohort_dir, tmp_path, monkeypatch):
    cohort = Cohort.from_csv(cohort_dir / "manifest.csv")
    cache = tmp_path / "cache"
    real = runner._compute_case
    calls: list[str] = []

    def crashing(case_id, *args, **kwargs):
        if len(calls) == 7:
            raise KeyboardInterrupt  # the process dies mid-audit
        calls.append(case_id)
        return real(case_id, *args, **kwargs)

    monkeypatch.setattr(runner, "_compute_case", crashing)
    with pytest.raises(KeyboardInterrupt):
        audit(cohort, strata=["device"], executor="serial", cache_dir=cache, **FAST)
    assert len(list(cache.glob("*.json"))) == 7
    first = list(calls)

    calls.clear()

    def counting(case_id, *args, **kwargs):
        calls.append(case_id)
        return real(case_id, *args, **kwargs)

    monkeypatch.setattr(runner, "_compute_case", counting)
    resumed = audit(cohort, strata=["device"], executor="serial", cache_dir=cache, **FAST)
    assert sorted(calls) == sorted(set(cohort.case_ids) - set(first))  # only the rest
    assert resumed.run["n_from_cache"] == 7 and resumed.n_rows == 18
    fresh = audit(cohort, strata=["device"], executor="serial", **FAST)
    assert json.dumps(_stable(resumed)) == json.dumps(_stable(fresh))
    calls.clear()
    audit(cohort, strata=["device"], executor="serial", cache_dir=cache, **FAST)
    assert calls == []  # everything cached now
    # other settings -> other keys: nothing stale is reused
    audit(cohort, strata=["device"], executor="serial", cache_dir=cache, tolerance=2.0, **FAST)
    assert len(calls) == 18


def test_process_pool_equals_serial(serial_result, cohort_dir):
    r = audit(Cohort.from_csv(cohort_dir / "manifest.csv"),
              strata=["device", "site", "lesion_size", "device x site"], executor="process",
              workers=2, **FAST)
    assert r.run["executor"] == "process"
    assert json.dumps(_stable(r)) == json.dumps(_stable(serial_result))


def test_dask_local_cluster_equals_serial(serial_result, cohort_dir):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        # the scheduler address path: audit opens (and closes) its own client
        r = audit(Cohort.from_csv(cohort_dir / "manifest.csv"),
                  strata=["device", "site", "lesion_size", "device x site"],
                  dask_scheduler=cluster.scheduler_address, **FAST)
    assert r.run["executor"] == "dask" and r.run["workers"] == 2
    assert json.dumps(_stable(r)) == json.dumps(_stable(serial_result))


def test_criteria_pass_fail_insufficient(serial_result, cohort_dir, tmp_path):
    yaml_text = """
criteria:
  - name: mean Dice >= 0.8 per device
    metric: dice
    op: ">="
    threshold: 0.8
    strata: [device]
  - name: largest gap
    kind: gap
    metric: dice
    op: "<="
    threshold: 0.05
    strata: [device, site]
  - name: big lesions found
    kind: detection
    min_volume_mm3: 100
    op: ">="
    threshold: 0.9
  - name: needs many
    metric: hd95
    statistic: ci_high
    op: "<="
    threshold: 100
    min_n: 50
"""
    (tmp_path / "c.yaml").write_text(yaml_text)
    r = audit(Cohort.from_csv(cohort_dir / "manifest.csv"), strata=["device", "site"],
              executor="serial", criteria=tmp_path / "c.yaml", **FAST)
    c = r.criteria
    per_device = c[c["criterion"] == "mean Dice >= 0.8 per device"].set_index("group")
    dice = r.metric("dice", "device").set_index("group")
    for g in "ABC":
        expected = "PASS" if dice.loc[g, "estimate"] >= 0.8 else "FAIL"
        assert per_device.loc[g, "status"] == expected
    assert per_device.loc["B", "status"] == "FAIL"
    gap = c[c["criterion"] == "largest gap"].set_index("stratum")
    assert gap.loc["device", "value"] == pytest.approx(dice["gap"].abs().max())
    assert gap.loc["device", "group"] == dice["gap"].abs().idxmax()
    assert gap.loc["device", "status"] == "FAIL"
    big = c[c["criterion"] == "big lesions found"].iloc[0]
    ref = r.lesions[(r.lesions["source"] == "reference") & (r.lesions["volume_mm3"] >= 100)]
    assert big["n"] == len(ref)
    assert big["value"] == pytest.approx((ref["status"] == "detected").mean())
    assert c[c["criterion"] == "needs many"]["status"].tolist() == ["INSUFFICIENT DATA"]
    v = r.verdicts.set_index("criterion")["status"]
    assert v["mean Dice >= 0.8 per device"] == "FAIL" and v["needs many"] == "INSUFFICIENT DATA"
    assert r.verdict == "FAIL"


def test_compare_names_subgroups_that_got_worse(serial_result, tmp_path):
    folder = tmp_path / "two"
    good = make_manifest(folder, degrade=None, tag="good")
    worse = make_manifest(folder, degrade="C", tag="worse")
    # 6 scans per device: the guaranteed-coverage (betting) interval of a Dice difference
    # cannot exclude 0 from 6 values (range 2); the bootstrap's interval is what this checks
    kw = dict(strata=["device"], executor="serial", ci_method="BCa", **FAST)
    ra = audit(Cohort.from_dataframe(good, root=folder), **kw)
    rb = audit(Cohort.from_dataframe(worse, root=folder), **kw)
    cmp = compare(ra, rb, name_a="v1", name_b="v2")
    worse_rows = cmp.worse
    assert ("device", "C", "dice") in set(zip(worse_rows["stratum"], worse_rows["group"],
                                             worse_rows["metric"]))
    assert not ((worse_rows["stratum"] == "device") & (worse_rows["group"] == "A")).any()
    row = cmp.subgroups.set_index(["stratum", "group", "metric"]).loc[("device", "C", "dice")]
    diff = (rb.cases["dice"] - ra.cases["dice"])[rb.cases["device"] == "C"]
    assert row["difference"] == pytest.approx(diff.mean())
    assert row["ci_high"] < 0
    assert any("device = C" in s and "v2" in s for s in cmp.describe_worse())
    with pytest.raises(ValueError, match="same cohort"):
        compare(ra, serial_result.__class__(**{**serial_result.__dict__,
                                               "cases": serial_result.cases.head(3)}))


def test_adapter_inference_records_time_and_memory(tmp_path):
    torch = pytest.importorskip("torch")
    df = make_manifest(tmp_path, n=4).drop(columns="prediction")
    cohort = Cohort.from_dataframe(df, root=tmp_path)
    torch.manual_seed(0)
    model = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1)
    adapter = mx.SegmentationAdapter(model, spatial_dims=3)
    r = audit(cohort, adapter=adapter, strata=["device"], **FAST)
    assert r.run["executor"] == "serial" and r.n_failed == 0
    assert (r.cases["inference_s"] > 0).all() and (r.cases["peak_memory_mb"] > 0).all()
    case = cohort.load_case("case-01")
    pred = adapter.predict(case.image)[0].numpy() > 0
    expected = evaluate_case(pred, case.label > 0, spacing=case.spacing)
    assert r.cases.loc[1, "dice"] == pytest.approx(expected["dice"])
    assert r.provenance["model_fingerprint"] == adapter.fingerprint
    assert "inference_s" not in r.to_dict()["tables"]["cases"]["columns"]
    back = AuditResult.from_json(r.to_json())
    assert back.cases["inference_s"].tolist() == r.cases["inference_s"].tolist()


def test_write_outputs_and_cli_helper(serial_result, cohort_dir, tmp_path):
    written = write_outputs(serial_result, tmp_path / "out")
    cases = pd.read_csv(written["cases"])
    assert len(cases) == serial_result.n_rows
    doc = json.loads(written["json"].read_text(encoding="utf-8"))
    assert doc["schema_version"] == "1.1"
    # A 1.0 document (before verdict, report, explanations and the added tables) still reads.
    old = {k: v for k, v in doc.items() if k not in ("verdict", "report", "explanations")}
    old["schema_version"] = "1.0"
    old["tables"] = {k: v for k, v in doc["tables"].items()
                     if k not in ("group_counts", *READER_TABLES, *MODEL_TABLES)}
    back = AuditResult.from_json(json.dumps(old))
    assert back.report == {} and back.explanations == [] and back.group_counts.empty
    pd.testing.assert_frame_equal(back.subgroups, serial_result.subgroups, check_dtype=False)
    assert back.verdict == serial_result.verdict
    with pytest.raises(ValueError, match="schema version 1.x"):
        AuditResult.from_json(json.dumps({**doc, "schema_version": "2.0"}))
    from medseg_xai.audit import AuditPlan
    from medseg_xai.audit.criteria import DEFAULT_CRITERIA
    from medseg_xai.audit.io import read_cohort

    plan = AuditPlan.from_options(strata=["device"], criteria="default", n_resamples=200)
    result = audit(read_cohort(cohort_dir / "manifest.csv"), plan, workers=1, progress=False)
    files = write_outputs(result, tmp_path / "cli")
    assert files["subgroups"].exists() and result.verdicts["criterion"].nunique() == len(DEFAULT_CRITERIA)


def test_top_level_names():
    # mx.audit is the audit sub-package made callable (issue 13); its call is audit()
    assert mx.audit.audit is audit and mx.compare is compare and mx.AuditResult is AuditResult
    assert mx.Cohort is Cohort


def test_to_html_delegates_to_reports(serial_result, tmp_path, monkeypatch):
    import medseg_xai.reports as reports

    seen = {}

    def fake(result, path, **kw):
        seen.update(result=result, path=path, kw=kw)
        return Path(path)

    monkeypatch.setattr(reports, "write_html", fake)
    out = serial_result.to_html(tmp_path / "r.html", config={"title": "t"})
    assert out == tmp_path / "r.html"
    assert seen["result"] is serial_result and seen["kw"] == {"config": {"title": "t"}}
