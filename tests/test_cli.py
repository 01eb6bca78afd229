"""The ``medseg-xai`` command line: real sub-commands on real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import medseg_xai as mx
from medseg_xai.cli import main


def _nifti(path: Path, array: np.ndarray, spacing: tuple[float, ...]) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path


def test_version_and_help_run_as_console_script() -> None:
    out = subprocess.run([sys.executable, "-m", "medseg_xai", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"medseg-xai {mx.__version__}"
    helptext = subprocess.run([sys.executable, "-m", "medseg_xai", "--help"],
                              capture_output=True, text=True, check=True).stdout
    for command in ("demo", "audit", "report", "explain", "metrics"):
        assert command in helptext


def test_metrics_command_matches_evaluate_case(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(3)
    ref = np.zeros((12, 20, 20), np.uint8)
    ref[3:8, 5:12, 6:14] = 1
    pred = np.roll(ref, 2, axis=2)
    pred[rng.random(pred.shape) > 0.98] = 1
    spacing = (2.5, 0.8, 0.8)
    p = _nifti(tmp_path / "pred.nii.gz", pred, spacing)
    r = _nifti(tmp_path / "ref.nii.gz", ref, spacing)
    lesion_csv = tmp_path / "lesions.csv"
    assert main(["metrics", str(p), str(r), "--tolerance", "2", "--lesions", str(lesion_csv)]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = mx.metrics.evaluate_case(pred, ref, spacing=spacing, tolerance=2.0)
    for key in ("dice", "hd95", "assd", "nsd"):
        assert printed[key] == pytest.approx(expected[key], rel=1e-9)
    table = pd.read_csv(lesion_csv)
    assert (table["status"] == "false_positive").sum() == printed["lesions"]["n_false_positive"]


def test_metrics_command_reports_bad_input(tmp_path: Path, capsys) -> None:
    a = _nifti(tmp_path / "a.nii.gz", np.zeros((4, 5, 6), np.uint8), (1, 1, 1))
    b = _nifti(tmp_path / "b.nii.gz", np.zeros((4, 5, 7), np.uint8), (1, 1, 1))
    assert main(["metrics", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "shape" in err and "(4, 5, 6)" in err and "(4, 5, 7)" in err


def test_audit_then_report_commands(tmp_path: Path, capsys) -> None:
    root = tmp_path / "cohort"
    (root / "img").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for i in range(8):
        image = rng.normal(size=(10, 16, 16)).astype(np.float32)
        ref = np.zeros((10, 16, 16), np.uint8)
        ref[3:7, 4:10, 4:10] = 1
        pred = ref.copy()
        pred[3:7, 4:10, 4 + i % 3: 10] = 1
        pred[3:4] = 0 if i % 2 else pred[3:4]
        for kind, arr in (("image", image), ("label", ref), ("prediction", pred)):
            _nifti(root / "img" / f"{kind}{i}.nii.gz", arr, (2.0, 1.0, 1.0))
        rows.append({"case_id": f"c{i}", "image": f"img/image{i}.nii.gz",
                     "label": f"img/label{i}.nii.gz", "prediction": f"img/prediction{i}.nii.gz",
                     "site": "Hôpital <b>A</b>" if i % 2 else "B"})
    rows.append({"case_id": "broken", "image": "img/missing.nii.gz", "label": "img/label0.nii.gz",
                 "prediction": "img/prediction0.nii.gz", "site": "B"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    out = tmp_path / "out"
    code = main(["audit", str(root / "manifest.csv"), "--out", str(out), "--strata", "site",
                 "--workers", "1", "--quiet"])
    assert code == 3  # completed with a failed row: outputs written, count printed
    captured = capsys.readouterr()
    assert "audited 9 cases (8 evaluated, 1 failed)" in captured.out
    assert "1 row(s) failed (allowed: 0)" in captured.err
    data = json.loads((out / "audit.json").read_text(encoding="utf-8"))
    cases = pd.read_csv(out / "cases.csv")
    assert len(cases) == 9 and (cases["status"] == "failed").sum() == 1
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Hôpital &lt;b&gt;A&lt;/b&gt;" in html and "<b>A</b>" not in html
    assert "broken" in html
    assert len(data["tables"]["cases"]["data"]) == 9
    again = tmp_path / "again.html"
    assert main(["report", str(out / "audit.json"), "--out", str(again)]) == 0
    assert again.stat().st_size > 10_000


def test_explain_command_writes_attribution_on_the_source_grid(tmp_path: Path, capsys) -> None:
    manifest = mx.demo.make_cohort(tmp_path / "c", n_cases=3, seed=4, shape=(24, 40, 40))
    rows = pd.read_csv(manifest)
    with_lesion = rows[rows["n_lesions"] > 0].iloc[0]
    image = tmp_path / "c" / with_lesion["image"]
    label = tmp_path / "c" / with_lesion["label"]
    out = tmp_path / "exp"
    code = main(["explain", str(image), "--ref", str(label), "--target", "lesion",
                 "--lesion", "1", "--method", "saliency", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    share = float(printed.split("inside the target: ")[1].split()[0])
    assert 0.0 <= share <= 1.0
    stem = Path(with_lesion["image"]).name.removesuffix(".gz").removesuffix(".nii")  # case id
    saved = nib.load(str(out / f"{stem}_saliency_lesion.nii.gz"))
    src = nib.load(str(image))
    assert saved.shape == src.shape
    np.testing.assert_allclose(saved.affine, src.affine)
    assert np.isfinite(saved.get_fdata()).all() and saved.get_fdata().any()
    assert (out / f"{stem}_saliency_lesion.png").read_bytes()[:4] == b"\x89PNG"
    # A case id that is a path must not write outside --out (it names the files).
    for evil in ("../escaped", "sub/dir"):
        assert main(["explain", str(image), "--ref", str(label), "--target", "lesion",
                     "--lesion", "1", "--method", "saliency", "--case-id", evil,
                     "--out", str(out)]) == 2
        assert "case_id" in capsys.readouterr().err
    assert not list(tmp_path.glob("escaped*")) and not (out / "sub").exists()
    # Asking for a lesion target without saying which lesion is a clear error.
    assert main(["explain", str(image), "--ref", str(label), "--target", "lesion",
                 "--out", str(out)]) == 2
    assert "--lesion" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
def test_demo_device_without_cuda_is_a_one_line_error_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cuda", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and "no CUDA device" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before the cohort, the model or the lock


def test_demo_runs_its_model_on_the_device_asked_for(tmp_path, monkeypatch):
    import torch

    import medseg_xai.demo as demo

    seen = []

    class Stop(Exception):
        pass

    def fake_load_model(weights=None, device="cpu"):
        seen.append(device)
        raise Stop

    monkeypatch.setattr(demo, "load_model", fake_load_model)
    from medseg_xai.demo.run_demo import run_demo

    with pytest.raises(Stop):
        run_demo(tmp_path / "d", n_cases=4, progress=False, device=torch.device("cpu"))
    assert seen == [torch.device("cpu")]
