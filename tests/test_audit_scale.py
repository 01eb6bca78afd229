"""Audits at scale: streamed records, bounded in-flight work, per-stage timings, chunked
table building and bootstrap blocks that give the same numbers, and Dask with the scheduler
and workers as separate processes on loopback.

The sizes here are small (the 1,000 to 100,000-row figures come from
``benchmarks/bench_audit_scale.py``); what is asserted is the mechanism: what the client holds,
what is on disk after an interruption, and that every shortcut gives identical results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medseg_xai.audit import AuditResult, audit, engine, runner, stats
from medseg_xai.audit.cache import CaseCache
from medseg_xai.audit.runner import STAGES, iter_tasks, run_tasks
from medseg_xai.audit.stream import read_records
from medseg_xai.cohort import Cohort

FAST = {"n_resamples": 100, "progress": False, "min_n": 2}
SHAPE = (8, 12, 12)
SETTINGS = {"labels": None, "tolerance": 1.0, "percentile": 95, "empty": "worst",
            "connectivity": None, "overlap_threshold": 0.1, "binarize": False}


def write_repeated_cohort(folder: Path, n_rows: int, n_files: int = 6, bad_every: int = 0) -> Path:
    """A few files repeated under distinct case ids (how the benchmark builds big cohorts);
    every ``bad_every``-th row points at a corrupt prediction."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for i in range(n_files):
        lab = np.zeros(SHAPE, np.uint8)
        lab[1:4, 2:5, 2:5] = 1
        if i % 2:
            lab[5:7, 7:10, 7:10] = 1
        pred = np.roll(lab, i % 3 - 1, axis=2)
        for kind, arr in (("img", rng.random(SHAPE).astype(np.float32)), ("lab", lab),
                          ("pred", pred)):
            nib.save(nib.Nifti1Image(arr, np.diag([1.0, 0.8, 0.8, 1.0])), folder / f"{kind}{i}.nii")
    (folder / "corrupt.nii").write_bytes(b"\0" * 10)
    k = np.arange(n_rows) % n_files
    pred = [f"pred{j}.nii" for j in k]
    if bad_every:
        for r in range(0, n_rows, bad_every):
            pred[r] = "corrupt.nii"
    df = pd.DataFrame({"case_id": [f"c{r:05d}" for r in range(n_rows)],
                       "image": [f"img{j}.nii" for j in k], "label": [f"lab{j}.nii" for j in k],
                       "prediction": pred, "site": np.array(["n", "s", "e"])[np.arange(n_rows) % 3]})
    path = folder / "manifest.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def cohort_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_repeated_cohort(tmp_path_factory.mktemp("scale"), 60, bad_every=20)


@pytest.fixture(scope="module")
def baseline(cohort_path: Path) -> AuditResult:
    return audit(Cohort.from_csv(cohort_path), strata=["site", "lesion_size"], executor="serial",
                 **FAST)


def _stable(result: AuditResult) -> str:
    d = result.to_dict()
    d.pop("run")
    d.pop("timings")
    return json.dumps(d, sort_keys=True)


def test_every_row_accounted_with_bad_rows(baseline):
    assert baseline.n_rows == 60 == baseline.n_evaluated + baseline.n_failed
    assert baseline.n_failed == 3
    assert baseline.cases["case_id"].tolist() == [f"c{r:05d}" for r in range(60)]
    assert set(baseline.cases.index[baseline.cases["status"] == "failed"]) == {0, 20, 40}


@pytest.mark.parametrize("chunk", [1, 7])
def test_tables_built_in_chunks_are_identical(baseline, cohort_path, monkeypatch, chunk):
    """Chunks of 1 put each failed case (no metric columns) in a chunk of its own: columns
    missing from some chunks are filled exactly as one table built at once has them."""
    monkeypatch.setattr(engine, "_READ_CHUNK", chunk)  # records read back a few at a time
    small = audit(Cohort.from_csv(cohort_path), strata=["site", "lesion_size"],
                  executor="serial", **FAST)
    assert _stable(small) == _stable(baseline)
    pd.testing.assert_frame_equal(small.lesions, baseline.lesions)
    pd.testing.assert_frame_equal(small.cases.drop(columns=list(STAGES[:-1]) + ["total_s"],
                                                   errors="ignore"),
                                  baseline.cases.drop(columns=list(STAGES), errors="ignore"))


def test_bootstrap_in_blocks_draws_the_same_resamples(baseline, cohort_path, monkeypatch):
    rng = np.random.default_rng(1)
    sums, counts = rng.random((40, 3)), rng.integers(1, 3, (40, 3)).astype(float)
    whole = stats.weighted_means(stats.cluster_weights(40, 500, np.random.default_rng(7)),
                                 sums, counts)
    monkeypatch.setattr(stats, "MAX_BOOTSTRAP_CELLS", 100)  # 2 resamples per block
    (blocked,) = stats.blocked_weighted_means(40, 500, np.random.default_rng(7), (sums, counts))
    np.testing.assert_allclose(blocked, whole, rtol=1e-13)  # same draws, BLAS rounding aside
    small = audit(Cohort.from_csv(cohort_path), strata=["site", "lesion_size"],
                  executor="serial", **FAST)
    cols = ["estimate", "ci_low", "ci_high", "gap", "gap_ci_low", "gap_ci_high", "p_value"]
    np.testing.assert_allclose(small.subgroups[cols].to_numpy(float),
                               baseline.subgroups[cols].to_numpy(float), rtol=1e-12, atol=1e-14)
    assert small.subgroups["flag"].tolist() == baseline.subgroups["flag"].tolist()


def test_stream_holds_what_the_cache_holds_and_survives_an_interruption(tmp_path, monkeypatch):
    # distinct files per row: the cache is keyed by content, so repeated files would share
    cohort = Cohort.from_csv(write_repeated_cohort(tmp_path / "u", 30, n_files=30, bad_every=10))
    stream, cache = tmp_path / "cases.jsonl", tmp_path / "cache"
    real = runner._compute_case
    done: list[str] = []

    def crashing(case_id, *args, **kwargs):
        if len(done) == 11:
            raise KeyboardInterrupt  # the audit is interrupted
        out = real(case_id, *args, **kwargs)
        done.append(case_id)
        return out

    monkeypatch.setattr(runner, "_compute_case", crashing)
    with pytest.raises(KeyboardInterrupt):
        audit(cohort, executor="serial", cache_dir=cache, stream=stream, **FAST)
    # the finished part is on disk, one complete line per finished (or failed) case
    partial = list(read_records(stream))
    ok_ids = [r["case_id"] for r in partial if r["status"] == "ok"]
    assert ok_ids == done and len(partial) == 13  # 11 evaluated + rows 0 and 10 (corrupt)
    entries = CaseCache(cache)
    for rec in partial:
        if rec["status"] != "ok":
            continue
        # entries are named by the key, which starts with the record's input hash
        (entry,) = cache.glob(f"{rec['input_hash']}*.json")
        data = json.loads(entry.read_text())
        stored = entries.get(data["key"])  # validated by the cache itself
        assert stored is not None
        for k, v in stored.items():
            if k != "timing":
                assert rec[k] == v or (v != v and rec[k] != rec[k]), k

    monkeypatch.setattr(runner, "_compute_case", real)
    resumed = audit(cohort, executor="serial", cache_dir=cache, stream=stream, **FAST)
    assert resumed.run["n_from_cache"] == 11 and resumed.n_failed == 3
    lines = list(read_records(stream))
    assert len(lines) == 30 and sorted(r["row"] for r in lines) == list(range(30))
    table = resumed.cases.set_index("case_id")
    for rec in lines:  # the streamed records are the table's rows
        assert table.loc[rec["case_id"], "status"] == rec["status"]
        if rec["status"] == "ok":
            assert table.loc[rec["case_id"], "dice"] == rec["dice"]


def test_per_stage_timings_per_case_and_summed(baseline):
    cases = baseline.cases
    stages = [s for s in STAGES if s != "inference_s"]  # stored predictions: no inference
    ok = cases["status"] == "ok"
    for s in stages:
        assert s in cases.columns
        assert (cases.loc[ok, s] >= 0).all()
    assert (cases.loc[ok, "load_s"] > 0).all() and (cases.loc[ok, "metrics_s"] > 0).all()
    assert (cases["total_s"] >= cases[["load_s", "metrics_s", "lesions_s"]].sum(axis=1)).all()
    summed = baseline.run["stage_seconds"]
    assert set(summed) == set(stages)
    for s in stages:
        assert summed[s] == pytest.approx(cases[s].sum(), rel=1e-6, abs=1e-5)
    d = baseline.to_dict()  # volatile: in "timings" and "run", never in the cases table
    assert not set(stages) & set(d["tables"]["cases"]["columns"])
    assert set(stages) <= set(d["timings"]["columns"])
    back = AuditResult.from_json(baseline.to_json())
    pd.testing.assert_series_equal(back.cases["load_s"], cases["load_s"])


def test_cache_hits_report_this_runs_time(cohort_path, tmp_path):
    cohort = Cohort.from_csv(cohort_path)
    audit(cohort, executor="serial", cache_dir=tmp_path / "c", **FAST)
    again = audit(cohort, executor="serial", cache_dir=tmp_path / "c", **FAST)
    hits = again.cases[again.cases["status"] == "ok"]
    assert again.run["n_from_cache"] == 57
    assert (hits["load_s"] == 0).all() and (hits["cache_s"] > 0).all()


@pytest.mark.parametrize("executor", ["process", "dask"])
def test_in_flight_work_is_bounded(cohort_path, executor):
    """Tasks are pulled from the generator only as records come back (back-pressure)."""
    cohort = Cohort.from_csv(cohort_path)
    state = {"pulled": 0, "received": 0, "ahead": 0}

    def tasks():
        for t in iter_tasks(cohort):
            state["pulled"] += 1
            state["ahead"] = max(state["ahead"], state["pulled"] - state["received"])
            yield t

    def sink(rec):
        state["received"] += 1

    kw: dict = {"workers": 2, "mp_context": "fork"}
    cluster = None
    if executor == "dask":
        distributed = pytest.importorskip("distributed")
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                           dashboard_address=None)
        client = distributed.Client(cluster)
        kw = {"executor": client}
    else:
        kw["executor"] = "process"
    try:
        info = run_tasks(tasks(), SETTINGS, sink=sink, n_tasks=len(cohort), progress=False, **kw)
    finally:
        if cluster is not None:
            client.close()
            cluster.close()
    assert state["received"] == 60 and info.n_cases == 60 and info.workers == 2
    chunk = runner._chunk_size(60, 2, runner.CHUNK_CAP[executor])
    # at most 2 chunks per worker in flight, plus the chunk being filled
    assert state["ahead"] <= (2 * 2 + 1) * chunk < 60


@pytest.mark.slow
def test_dask_scheduler_and_workers_as_separate_processes(cohort_path, baseline, tmp_path,
                                                          monkeypatch):
    """How an audit spreads over machines: ``dask scheduler`` and ``dask worker`` processes
    (on 127.0.0.1 here), a relative manifest and a relative cache from the client's folder,
    workers running in another folder."""
    pytest.importorskip("distributed")
    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        pytest.skip("dask command not installed")
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    logs = open(tmp_path / "dask.log", "w")  # noqa: SIM115 - closed below
    procs = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              env=env, stdout=logs, stderr=logs, cwd="/")]
    try:
        from distributed import Client

        client = Client(scheduler_file=str(sched_file), timeout=60) if _wait_for(sched_file) \
            else pytest.fail("scheduler did not start")
        procs.append(subprocess.Popen(  # one worker process, two threads (a small machine)
            [str(dask), "worker", "--scheduler-file", str(sched_file), "--nthreads", "2",
             "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
            env=env, stdout=logs, stderr=logs, cwd="/"))
        client.wait_for_workers(1, timeout=120)
        address = client.scheduler.address
        client.close()
        assert address.startswith("tcp://127.0.0.1:")
        work = tmp_path / "client"
        work.mkdir()
        rel = os.path.relpath(cohort_path, work)
        monkeypatch.chdir(work)  # the client's folder; the workers run in "/"
        r = audit(Cohort.from_csv(rel), strata=["site", "lesion_size"], dask_scheduler=address,
                  cache_dir="cache", **FAST)
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()
    assert (r.run["executor"], r.run["workers"]) == ("dask", 2)
    assert _stable(r) == _stable(baseline)
    # in the client's folder (6 distinct files: the cache is keyed by content)
    assert len(list((work / "cache").glob("*.json"))) == 6


def _wait_for(path: Path, seconds: float = 60) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            return True
        time.sleep(0.1)
    return False


def test_efficiency_summary_and_report_section(baseline):
    eff = baseline.run["efficiency"]
    cases = baseline.cases
    assert eff["n_cases"] == 60 and eff["cases_per_s"] == pytest.approx(60 / eff["elapsed_s"])
    for stage in ("load", "metrics", "lesions", "cache", "total"):
        v = cases[f"{stage}_s"].dropna()
        st = eff["stages"][stage]
        assert st["total_s"] == pytest.approx(v.sum())
        assert st["median_s"] == pytest.approx(v.median()) and st["max_s"] == v.max()
    shares = [st["share"] for k, st in eff["stages"].items() if k != "total"]
    assert sum(shares) == pytest.approx(1.0)
    assert eff["slowest"][0]["total_s"] == cases["total_s"].max()
    back = AuditResult.from_json(baseline.to_json())  # volatile, but kept in the JSON
    assert back.run["efficiency"]["stages"]["load"]["total_s"] == pytest.approx(
        eff["stages"]["load"]["total_s"])

    import jinja2

    from medseg_xai.reports import sec_efficiency

    s = sec_efficiency.build(baseline, {})
    assert [r["stage"] for r in s["stages"]][:2] == ["loading volumes", "metrics"]
    assert dict(s["facts"])["Executor"] == "serial × 1"
    folder = Path(sec_efficiency.__file__).with_name("templates")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder), autoescape=True)
    html = env.get_template("sec_efficiency.html.j2").render(s=s)  # autoescaped, like the report
    assert "lesion matching" in html and eff["slowest"][0]["case_id"] in html
    from medseg_xai.reports.render import render_html

    page = render_html(baseline)  # registered: part of the report
    assert sec_efficiency.TITLE in page and 'id="efficiency-stages"' in page
    assert sec_efficiency.build(AuditResult(**{k: getattr(baseline, k) for k in (
        "cases", "subgroups", "lesions", "criteria", "lesion_detection", "false_positives",
        "volume_agreement", "verdicts")}), {}) is None  # a result without timings: no section


def test_subgroup_rows_do_not_shift_when_a_metric_or_stratum_is_appended(baseline):
    """Resamples are shared by a stratum's metrics (one draw per stratum, the slow part at
    100,000 cases) and each (stratum, metric) keeps its own stream for group intervals and
    tests: appending a metric or a stratum leaves every other row's numbers unchanged."""
    from medseg_xai.audit import analysis
    from medseg_xai.audit.strata import parse_strata

    cases, orders = analysis.prepare_cases(baseline.cases, 3)
    kw = {"orders": orders, "n_resamples": 200, "min_n": 2}
    strata = parse_strata(["site"])
    few = analysis.subgroup_table(cases, strata, ["dice", "hd95"], **kw)
    more = analysis.subgroup_table(cases, parse_strata(["site", "lesion_size"]),
                                   ["dice", "hd95", "recall"], **kw)
    cols = ["estimate", "ci_low", "ci_high", "gap", "gap_ci_low", "gap_ci_high",
            "gap_best", "gap_best_ci_low", "gap_best_ci_high", "p_value"]
    keyed = more.set_index(["stratum", "group", "metric"])
    same = keyed.loc[[tuple(k) for k in few[["stratum", "group", "metric"]].to_numpy()], cols]
    np.testing.assert_array_equal(same.to_numpy(float), few[cols].to_numpy(float))
    assert np.isfinite(few["gap_ci_low"].to_numpy(float)).any()


def test_workers_without_a_model_do_not_import_torch():
    """A pool worker without a model never imports torch (3 s and hundreds of MB each); the
    fork pool's parent builds MONAI's loaders first so that forked workers inherit them."""
    code = ("import sys; from medseg_xai.audit import runner; runner._fix_threads(False); "
            "print('torch' in sys.modules); runner._preload(); "
            "from medseg_xai.io import _monai; print(sorted(_monai.LOADERS))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.split("\n")
    assert out[0] == "False"
    # the NIfTI loaders for labels and images
    assert out[1] == "[('NibabelReader', False), ('NibabelReader', True)]"


def test_dask_chunks_are_larger_than_pool_chunks():
    # each Dask future costs client and scheduler time: fewer, larger chunks there
    assert runner._chunk_size(100_000, 2, runner.CHUNK_CAP["dask"]) == 32
    assert runner._chunk_size(100_000, 2, runner.CHUNK_CAP["process"]) == 8
    assert runner._chunk_size(10, 4, runner.CHUNK_CAP["dask"]) == 1


def _clustered_cases(n: int = 240) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    patient = np.arange(n) // 4
    effect = rng.normal(0, 0.08, n // 4)[patient]  # scans of a patient are correlated
    cases = pd.DataFrame({"case_id": [f"c{i}" for i in range(n)], "patient_id": patient.astype(str),
                          "status": "ok", "site": np.where(patient % 2, "a", "b"),
                          "dice": np.clip(0.8 + effect + rng.normal(0, 0.02, n), 0, 1)})
    cases["hd95"] = np.where(np.arange(n) % 4 == 0, np.nan, 5 + 10 * effect)
    cases.loc[patient < 3, "hd95"] = np.nan  # three patients without any hd95
    return cases


@pytest.mark.parametrize("ci_method", ["percentile", "auto"])
def test_patient_level_group_intervals_match_the_cluster_bootstrap(ci_method):
    """Group intervals with patient ids come from one draw of each group's patients shared by
    the metrics: the same clustered interval as ``stats.mean_interval(clusters=...)`` (legacy:
    ``bootstrap_mean_ci(clusters=...)``), up to Monte Carlo error and the betting interval's
    random order; a metric with missing values counts only the patients that have one."""
    from medseg_xai.audit import analysis
    from medseg_xai.audit.strata import parse_strata

    cases = _clustered_cases()
    n = len(cases)
    table = analysis.subgroup_table(cases, parse_strata(["site"]), ["dice", "hd95"],
                                    n_resamples=4000, min_n=2, ci_method=ci_method)
    for (stratum, group, metric), row in table.set_index(["stratum", "group", "metric"]).iterrows():
        sel = cases["site"] == group if stratum == "site" else np.ones(n, bool)
        keep = sel & cases[metric].notna()
        ref = stats.mean_interval(cases.loc[keep, metric], metric=metric, method=ci_method,
                                  clusters=cases.loc[keep, "patient_id"],
                                  n_resamples=4000, rng=np.random.default_rng(9))
        assert row.n_clusters == cases.loc[keep, "patient_id"].nunique()
        if row.n_clusters < stats.MIN_INTERVAL_UNITS[stats.interval_method(metric, ci_method)]:
            assert np.isnan(row.ci_low) and np.isnan(ref[0])  # too few patients: no interval
            continue
        width = ref[1] - ref[0]
        assert abs(row.ci_low - ref[0]) < 0.1 * width and abs(row.ci_high - ref[1]) < 0.1 * width


def test_write_json_streams_the_same_bytes_as_to_json(baseline, real_audit, tmp_path):
    """``write_json`` (what the CLI and the demo write) gives byte for byte ``to_json``'s
    document: the tables' rows are encoded as they are made, not built first."""
    from medseg_xai.audit.result import _LazyRows

    for i, result in enumerate((baseline, real_audit)):
        path = result.write_json(tmp_path / f"streamed{i}.json")
        assert path.read_bytes() == (result.to_json() + "\n").encode("utf-8")
        assert AuditResult.from_json(path).to_json() == result.to_json()
    doc = baseline.to_dict(lazy=True)
    assert isinstance(doc["tables"]["lesions"]["data"], _LazyRows)
    assert len(doc["tables"]["cases"]["data"]) == len(baseline.cases)


def test_lesion_coordinates_are_arrow_lists_of_the_cases_values(baseline, cohort_path, tmp_path):
    """The coordinate columns are Arrow lists (as tuples of Python floats they were 0.9 KB
    per case at 100,000 cases) holding what ``metrics.lesions`` gives for the case's files;
    the CSV writes them as tuples, as before, and ``from_json`` restores the same columns."""
    from medseg_xai._io import _as_tuple, write_csv
    from medseg_xai.metrics import lesions as case_lesions

    coords = ["centroid_voxel", "centroid_mm", "bbox"]
    les = baseline.lesions
    assert all(isinstance(les[c].dtype, pd.ArrowDtype) for c in coords)
    folder = cohort_path.parent
    lab, pred = (nib.load(folder / f"{k}3.nii") for k in ("lab", "pred"))
    expected = case_lesions(np.asarray(pred.dataobj), np.asarray(lab.dataobj),
                            spacing=[float(z) for z in lab.header.get_zooms()])
    got = les[les["case_id"] == "c00003"].reset_index(drop=True)
    assert len(got) == len(expected) >= 2  # two reference lesions, prediction shifted
    assert got["lesion_id"].tolist() == expected["lesion_id"].tolist()
    for col in coords:
        assert [_as_tuple(v) for v in got[col]] == list(expected[col])
    path = write_csv(got, tmp_path / "lesions.csv")
    text = pd.read_csv(path)
    assert text["bbox"].tolist() == [str(v) for v in expected["bbox"]]
    assert text["centroid_mm"].tolist() == [str(v) for v in expected["centroid_mm"]]
    back = AuditResult.from_json(baseline.to_json()).lesions
    pd.testing.assert_frame_equal(back[coords], les[coords])


def test_system_arrow_pool_is_used_inside_and_restored():
    """Inside, Arrow buffers come from the C allocator (mimalloc kept freed buffers: 40-80 MB
    at 100,000 cases); the previous pool is back afterwards, and buffers made inside stay
    valid after it."""
    import pyarrow as pa

    from medseg_xai._memory import system_arrow_pool

    before = pa.default_memory_pool().backend_name
    with system_arrow_pool():
        assert pa.default_memory_pool().backend_name == "system"
        kept = pd.Series([f"case-{i}" for i in range(1000)], dtype="string[pyarrow]")
    assert pa.default_memory_pool().backend_name == before
    assert kept.iloc[999] == "case-999"
    del kept


def test_detection_positions_of_lesions_absent_from_the_cases():
    from medseg_xai.audit.analysis import _case_positions

    pos = _case_positions(pd.Series(["a", "b", "c"]), pd.Series(["c", "x", "a", None, "c"]))
    assert pos.tolist() == [2, -1, 0, -1, 2]


def test_column_parts_put_out_of_order_chunks_in_manifest_order():
    """Records from a pool arrive in completion order; each column is put in row order on its
    own (no sorted copy of the whole table), strings and Arrow coordinates included."""
    from medseg_xai.audit.result import coordinate_columns

    def chunk(rows):
        df = pd.DataFrame({"row": rows, "case_id": [f"c{r}" for r in rows],
                           "dice": [r / 10 for r in rows],
                           "centroid_mm": [[float(r), 1.0, 2.0] for r in rows]})
        if rows[0] == 5:
            df["late"] = "x"  # a column only some chunks have
        return coordinate_columns(df)

    parts = engine._ColumnParts()
    for rows in ([3, 4], [0, 1, 2], [5, 6]):
        parts.add(chunk(rows))
    table = parts.table({"row": (0, 0), "case_id": (0, 1), "dice": (0, 2),
                         "centroid_mm": (0, 3), "late": (5, 4)})
    assert table["row"].tolist() == list(range(7))
    assert table["case_id"].tolist() == [f"c{r}" for r in range(7)]
    assert table["dice"].tolist() == [r / 10 for r in range(7)]
    assert [v[0] for v in table["centroid_mm"]] == [float(r) for r in range(7)]
    assert isinstance(table["centroid_mm"].dtype, pd.ArrowDtype)
    assert table["late"].isna().tolist() == [True] * 5 + [False] * 2


def test_stream_reads_records_back_in_manifest_order(tmp_path):
    """Records written in completion order are read back by row through the stream's line
    index (16 bytes per case), so the tables need no reordering; in order, no index is used."""
    from medseg_xai.audit.stream import RecordStream, read_at, read_chunks

    with RecordStream(tmp_path / "s.jsonl") as sink:
        for row in (2, 0, 3, 1):
            sink.write({"row": row, "case_id": f"c{row}", "note": "é" * row, "x": float("nan")})
    offsets = sink.in_row_order()
    assert offsets is not None and len(offsets) == 4
    chunks = list(read_chunks(sink.path, lambda recs: [r["row"] for r in recs], 3, offsets))
    assert chunks == [[0, 1, 2], [3]]
    assert [r["note"] for r in read_at(sink.path, offsets)] == ["", "é", "éé", "ééé"]
    with RecordStream(tmp_path / "t.jsonl") as ordered:
        for row in range(3):
            ordered.write({"row": row})
    assert ordered.in_row_order() is None
