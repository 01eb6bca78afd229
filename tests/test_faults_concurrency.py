"""Concurrency (issue 28): one run per ``--out`` (a lock with a clear "in use" message, freed
by the kernel when its holder dies), and a scan deleted while the audit runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medseg_xai import Cohort, audit
from medseg_xai._io import FolderInUse, folder_lock
from medseg_xai.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from faults_helpers import FAST, write_cohort  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("concurrency") / "c", n=3)


@pytest.mark.slow
def test_a_second_run_on_the_same_out_is_refused(manifest, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out):
        code = main(["audit", str(manifest), "--out", str(out), "--quiet", "--no-html",
                     "--workers", "1"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1
        assert f"--out: folder 'out' is in use by another medseg-xai run (process {os.getpid()})" \
            in err
        assert not (out / "audit.json").exists() and not (out / "cases.jsonl").exists()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
        proc = subprocess.run([sys.executable, "-m", "medseg_xai", "audit", str(manifest),
                               "--out", str(out), "--quiet", "--no-html"], capture_output=True,
                              text=True, env=env, timeout=120)
        assert proc.returncode == 2 and "in use" in proc.stderr  # another process: refused too
    assert main(["audit", str(manifest), "--out", str(out), "--quiet", "--no-html",
                 "--workers", "1"]) == 0  # released
    assert (out / "audit.json").is_file()


def test_the_lock_dies_with_its_holder(tmp_path):
    code = ("import sys, time; from medseg_xai._io import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse, match=f"process {holder.pid}"), folder_lock(tmp_path):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    t0 = time.perf_counter()
    with folder_lock(tmp_path):  # no stale lock after kill -9
        assert time.perf_counter() - t0 < 1


def test_a_scan_deleted_mid_audit_fails_its_row_naming_case_and_field(tmp_path):
    m = write_cohort(tmp_path / "c", n=3)
    cohort = Cohort.from_csv(m)
    assert len(cohort.problems) == 0
    (tmp_path / "c" / "pred1.nii.gz").unlink()  # after the manifest check, before the case
    r = audit(cohort, **FAST)
    err = r.cases.set_index("case_id").loc["c1", "error"]
    assert err.startswith("case 'c1': prediction file not found") and "Errno" not in err, err
    assert "pred1.nii.gz" in err and str(tmp_path) not in err
    assert r.n_failed == 1 and r.n_evaluated == 2
