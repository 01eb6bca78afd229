"""Execution faults: machine faults abort, stuck cases time out, workers die with their parent,
bad worker counts are refused, and the same numbers come out of every executor.

Cohorts are tiny NIfTI files written into tmp_path; faults are real (a cache path that is a
file, a full disk from a patched write, a case blocked in a system call, a SIGKILL of the
client) and the behaviour is asserted, never a timing.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import medseg_xai as mx
from medseg_xai.audit import audit, runner
from medseg_xai.audit.cache import CaseCache
from medseg_xai.audit.stream import InfrastructureError
from medseg_xai.cohort import Cohort

FAST = {"n_resamples": 50, "progress": False, "min_n": 2}
SHAPE = (8, 12, 12)


def write_cohort(folder: Path, n: int = 8) -> Path:
    """``n`` tiny cases with stored predictions; returns the manifest path."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n):
        lab = np.zeros(SHAPE, np.uint8)
        lab[2:5, 3:6 + i % 3, 3:7] = 1
        pred = np.roll(lab, i % 2, axis=2)
        for kind, arr in (("img", rng.random(SHAPE).astype(np.float32)), ("lab", lab),
                          ("pred", pred)):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), folder / f"{kind}{i}.nii")
        rows.append({"case_id": f"case-{i}", "image": f"img{i}.nii", "label": f"lab{i}.nii",
                     "prediction": f"pred{i}.nii", "device": "AB"[i % 2]})
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    return write_cohort(tmp_path / "cohort")


def _stable(result: mx.AuditResult) -> str:
    d = result.to_dict()
    d.pop("run")
    d.pop("timings")
    return json.dumps(d, sort_keys=True)


# -- infrastructure faults abort, data faults stay per row ------------------------------------


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_full_disk_on_the_cache_aborts_the_audit(manifest, tmp_path, monkeypatch, executor):
    def full(self, key, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(CaseCache, "put", full)  # fork: pool workers inherit the patch
    kw = {"workers": 2, "mp_context": "fork"} if executor == "process" else {}
    with pytest.raises(InfrastructureError) as info:
        audit(Cohort.from_csv(manifest), executor=executor, cache_dir=tmp_path / "cache",
              **kw, **FAST)
    msg = str(info.value)
    assert "No space left on device" in msg and "the cache" in msg
    assert info.value.errno == errno.ENOSPC
    assert str(tmp_path) not in msg  # one clear line, no folder names
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_unwritable_cache_aborts_before_any_case_runs(manifest, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_compute_case", lambda *a, **k: pytest.fail("a case ran"))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(InfrastructureError, match="cannot write the cache"):
        audit(Cohort.from_csv(manifest), executor="serial", cache_dir=blocker / "cache", **FAST)
    with pytest.raises(InfrastructureError, match="cannot write the streamed case records"):
        audit(Cohort.from_csv(manifest), executor="serial", stream=blocker / "cases.jsonl",
              **FAST)


def test_read_only_cache_folder_aborts(manifest, tmp_path, monkeypatch):
    real_open = open

    def read_only(path, *args, **kwargs):  # EROFS for writes under the cache folder only
        mode = args[0] if args else kwargs.get("mode", "r")
        if "cache" in str(path) and any(c in mode for c in "wax"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", read_only)
    with pytest.raises(InfrastructureError, match="Read-only file system"):
        audit(Cohort.from_csv(manifest), executor="serial", cache_dir=tmp_path / "cache", **FAST)


def test_data_faults_stay_in_their_row(tmp_path):
    path = write_cohort(tmp_path / "c", n=6)
    (tmp_path / "c" / "pred2.nii").write_bytes(b"not a nifti")
    r = audit(Cohort.from_csv(path), executor="serial", cache_dir=tmp_path / "cache", **FAST)
    assert (r.n_rows, r.n_failed) == (6, 1)
    assert "case-2" in r.cases.loc[2, "error"] and r.cases.loc[2, "status"] == "failed"


# -- a stuck case times out --------------------------------------------------------------------


def _stuck_on(case_id: str, how: str, fifo: Path | None = None):
    real = runner._compute_case

    def compute(cid, *args, **kwargs):
        if cid == case_id:
            if how == "syscall":  # blocks in open(2) until a writer appears: never
                with open(fifo, "rb") as fh:
                    fh.read()
            else:  # busy in Python code
                while True:
                    pass
        return real(cid, *args, **kwargs)

    return compute


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_case_timeout_fails_a_case_blocked_in_a_system_call(manifest, tmp_path, monkeypatch,
                                                            executor):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    monkeypatch.setattr(runner, "_compute_case", _stuck_on("case-3", "syscall", fifo))
    kw = {"workers": 2, "mp_context": "fork"} if executor == "process" else {}
    # the limit is far above a normal tiny case's time even on a loaded machine: only the stuck
    # case can reach it (a timed test must not depend on the machine's speed)
    r = audit(Cohort.from_csv(manifest), strata=["device"], executor=executor, case_timeout=3.0,
              **kw, **FAST)
    assert (r.n_rows, r.n_evaluated, r.n_failed) == (8, 7, 1)
    err = r.cases.set_index("case_id").loc["case-3", "error"]
    assert "case-3" in err and "timeout" in err and "3 s" in err
    assert r.run["case_timeout_s"] == 3.0


def test_case_timeout_in_a_dask_worker_thread(manifest, monkeypatch):
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(runner, "_compute_case", _stuck_on("case-5", "busy"))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        r = audit(Cohort.from_csv(manifest), executor=client, case_timeout=3.0, **FAST)
    assert (r.n_evaluated, r.n_failed) == (7, 1)
    assert "timeout" in r.cases.loc[5, "error"]


@pytest.mark.parametrize("bad", [0, -1, 0.0, float("inf"), "1", True])
def test_bad_case_timeout_refused(manifest, bad):
    with pytest.raises(ValueError, match="case_timeout"):
        audit(Cohort.from_csv(manifest), case_timeout=bad, **FAST)


# -- worker counts and the run record ---------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -2, True, 1.5])
def test_workers_below_one_refused(manifest, monkeypatch, bad):
    monkeypatch.setattr(runner, "_compute_case", lambda *a, **k: pytest.fail("a case ran"))
    with pytest.raises(ValueError, match="workers: expected a positive number"):
        audit(Cohort.from_csv(manifest), workers=bad, executor="process", **FAST)


def test_run_record_states_the_real_executor_and_workers(manifest):
    cohort = Cohort.from_csv(manifest)
    serial = audit(cohort, executor="serial", workers=4, **FAST)  # workers unused serially
    assert (serial.run["executor"], serial.run["workers"]) == ("serial", 1)
    pool = audit(cohort, executor="process", workers=2, mp_context="fork", **FAST)
    assert (pool.run["executor"], pool.run["workers"]) == ("process", 2)
    assert _stable(pool) == _stable(serial)


# -- the same numbers whichever executor runs the inference -----------------------------------


@pytest.mark.slow
def test_inference_identical_on_every_executor(tmp_path):
    torch = pytest.importorskip("torch")
    path = write_cohort(tmp_path / "c", n=4)
    df = pd.read_csv(path).drop(columns="prediction")
    cohort = Cohort.from_dataframe(df, root=tmp_path / "c")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv3d(8, 2, 3, padding=1))
    adapter = mx.SegmentationAdapter(model, spatial_dims=3)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        serial = audit(cohort, adapter=adapter, executor="serial", **FAST)
        assert torch.get_num_threads() == 2  # the caller's setting is restored
        pool = audit(cohort, adapter=adapter, executor="process", workers=1, **FAST)
    finally:
        torch.set_num_threads(before)
    assert pool.run["executor"] == "process" and pool.n_failed == 0
    assert _stable(pool) == _stable(serial)
    assert (serial.cases["inference_s"] > 0).all()


# -- kill -9 of the client: no orphans, and the rerun resumes ---------------------------------

_KILL_CLIENT = textwrap.dedent("""
    import os, signal, sys
    from medseg_xai.audit import runner, audit
    from medseg_xai.cohort import Cohort
    real = runner._compute_case
    pids, kill_at = sys.argv[3], sys.argv[4]

    def compute(cid, *a, **k):
        with open(pids, "a") as fh:
            fh.write(f"{os.getpid()}\\n")
        if cid == kill_at:
            os.kill(os.getppid(), signal.SIGKILL)  # the client dies mid-run, like kill -9
            signal.pause()  # this worker must now die with it, not linger
        return real(cid, *a, **k)

    runner._compute_case = compute
    audit(Cohort.from_csv(sys.argv[1]), executor="process", workers=2, mp_context="fork",
          cache_dir=sys.argv[2], progress=False, n_resamples=50)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead but not yet reaped
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_kill_9_of_the_client_leaves_no_workers_and_resume_recomputes_only_missing(tmp_path):
    manifest = write_cohort(tmp_path / "c", n=24)
    cache, pids = tmp_path / "cache", tmp_path / "pids.txt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    log = tmp_path / "client.log"
    with open(log, "w") as out:  # a file, not a pipe: a lingering worker must not hang the test
        proc = subprocess.run([sys.executable, "-c", _KILL_CLIENT, str(manifest), str(cache),
                               str(pids), "case-12"], env=env, stdout=out, stderr=out,
                              timeout=300)
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    workers = {int(p) for p in pids.read_text().split()}
    assert len(workers) >= 1
    deadline = time.monotonic() + 30  # the kernel delivers the parent-death signal promptly
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = [p for p in workers if _alive(p)]
    for p in orphans:  # clean up before failing
        os.kill(p, signal.SIGKILL)
    assert not orphans, "orphaned pool workers"
    finished = len(list(cache.glob("*.json")))
    assert 0 < finished < 24
    calls = []
    real = runner._compute_case
    resumed = None

    def counting(cid, *a, **k):
        calls.append(cid)
        return real(cid, *a, **k)

    runner._compute_case = counting
    try:
        resumed = audit(Cohort.from_csv(manifest), executor="serial", cache_dir=cache, **FAST)
    finally:
        runner._compute_case = real
    assert resumed.n_rows == 24 and resumed.n_failed == 0
    assert resumed.run["n_from_cache"] == finished and len(calls) == 24 - finished


# -- the command line -------------------------------------------------------------------------


def test_cli_case_timeout_stream_and_refusals(manifest, tmp_path, capsys):
    from medseg_xai.cli import main

    out = tmp_path / "out"
    rc = main(["audit", str(manifest), "--out", str(out), "--case-timeout", "120",
               "--workers", "1", "--no-html", "--quiet"])
    assert rc in (0, None) or rc == 0
    run = json.loads((out / "audit.json").read_text())["run"]
    assert run["case_timeout_s"] == 120.0 and run["executor"] == "serial"
    lines = (out / "cases.jsonl").read_text().splitlines()  # streamed as the cases finished
    assert len(lines) == 8 and {json.loads(x)["case_id"] for x in lines} == {
        f"case-{i}" for i in range(8)}
    capsys.readouterr()
    assert main(["audit", str(manifest), "--out", str(out), "--workers", "0", "--quiet"]) == 2
    assert "workers" in capsys.readouterr().err
    assert main(["audit", str(manifest), "--out", str(out), "--case-timeout", "-1",
                 "--quiet"]) == 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    try:
        rc = main(["audit", str(manifest), "--out", str(out), "--cache", str(blocker / "c"),
                   "--workers", "1", "--no-html", "--quiet"])
    except InfrastructureError:
        rc = 1  # before the command line maps it to its exit code
    assert rc not in (0, 2, 3)


def test_killed_pool_worker_aborts_and_resume_recomputes_only_missing(tmp_path, monkeypatch):
    from concurrent.futures.process import BrokenProcessPool

    manifest = write_cohort(tmp_path / "c", n=16)
    cache = tmp_path / "cache"
    real = runner._compute_case

    def dying(cid, *a, **k):
        if cid == "case-9":
            os.kill(os.getpid(), signal.SIGKILL)  # the worker is killed mid-run
        return real(cid, *a, **k)

    monkeypatch.setattr(runner, "_compute_case", dying)  # fork: the workers inherit it
    with pytest.raises(BrokenProcessPool):
        audit(Cohort.from_csv(manifest), executor="process", workers=2, mp_context="fork",
              cache_dir=cache, **FAST)
    finished = {p.name for p in cache.glob("*.json")}
    assert len(finished) < 16
    calls: list[str] = []

    def counting(cid, *a, **k):
        calls.append(cid)
        return real(cid, *a, **k)

    monkeypatch.setattr(runner, "_compute_case", counting)
    resumed = audit(Cohort.from_csv(manifest), executor="serial", cache_dir=cache, **FAST)
    assert resumed.n_rows == 16 and resumed.n_failed == 0
    assert resumed.run["n_from_cache"] == len(finished) and len(calls) == 16 - len(finished)
    assert "case-9" in calls
