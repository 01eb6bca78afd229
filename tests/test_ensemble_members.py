"""Ensemble members as the audit's uncertainty source (issue 27): an nnU-Net model's fold
models (``uncertainty_members="folds"``) or several models (a list / ``--ensemble-model``).

The fold models come from the session's real nnU-Net folder (tests/nnunet_fixture.py: planned,
preprocessed and trained by nnU-Net itself) with two more folds written in nnU-Net's checkpoint
format (fold 0's weights perturbed), so the folds disagree as real ones do.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

import medseg_xai as mx  # noqa: E402
from medseg_xai.cli import main  # noqa: E402
from medseg_xai.metrics import dice  # noqa: E402

pytestmark = pytest.mark.slow  # nnU-Net's planner runs once per session (shared fixture)


def _more_folds(src: Path, dst: Path, n: int = 3, scale: float = 0.3) -> Path:
    """A copy of ``src`` with folds 1..n-1: fold 0's weights plus seeded noise."""
    shutil.copytree(src, dst)
    ck = torch.load(str(dst / "fold_0" / "checkpoint_final.pth"), map_location="cpu",
                    weights_only=True)
    g = torch.Generator().manual_seed(0)
    for k in range(1, n):
        w = {name: (t + scale * t.std() * torch.randn(t.shape, generator=g)
                    if t.is_floating_point() and t.numel() > 1 else t)
             for name, t in ck["network_weights"].items()}
        (dst / f"fold_{k}").mkdir()
        torch.save({**ck, "network_weights": w}, str(dst / f"fold_{k}" / "checkpoint_final.pth"))
    return dst


@pytest.fixture(scope="module")
def folds3(nnunet, tmp_path_factory) -> dict:
    folder = _more_folds(nnunet["folder"], tmp_path_factory.mktemp("folds") / nnunet["folder"].name)
    adapter = mx.load_model(str(folder), device="cpu")
    return {"folder": folder, "adapter": adapter, "members": mx.models.fold_members(adapter)}


def _image(path: Path) -> tuple[np.ndarray, np.ndarray]:
    nii = nib.load(path)
    return np.asarray(nii.dataobj, np.float32)[None], nii.affine


def test_fold_members_are_the_folds_and_reproduce_the_ensemble(nnunet, folds3) -> None:
    a, members = folds3["adapter"], folds3["members"]
    assert [m.member_name for m in members] == ["fold 0", "fold 1", "fold 2"]
    assert [m.info["folds"] for m in members] == [["0"], ["1"], ["2"]]
    for k, m in enumerate(members):  # shared networks: nothing loaded twice
        assert m.model.networks[0] is a.model.networks[k]
    # a member's fingerprint is what loading that fold alone gives
    assert members[2].fingerprint == mx.load_model(str(folds3["folder"]), device="cpu",
                                                   folds=2).fingerprint
    assert len({m.fingerprint for m in members} | {a.fingerprint}) == 4
    img, affine = _image(nnunet["cases"][1][0])  # off the model's spacing: resampled
    p = a.with_geometry(affine=affine).probabilities(img).numpy()[0]
    logp = [np.log(np.clip(m.with_geometry(affine=affine).probabilities(img).numpy()[0],
                           1e-12, 1.0)) for m in members]
    # nnU-Net averages the folds' logits: softmax(mean log-probability) is its probability
    # (to nnU-Net's float16 sliding-window accumulator)
    mean = torch.softmax(torch.from_numpy(np.mean(logp, axis=0)), dim=0).numpy()
    np.testing.assert_allclose(mean, p, atol=2e-3)
    masks = [np.exp(lp).argmax(0) == 1 for lp in logp]
    assert all(m.any() for m in masks) and min(dice(m, p.argmax(0) == 1) for m in masks) < 0.99


def test_folds_refused_for_other_models(nnunet) -> None:
    from medseg_xai.models.members import check_members

    one_fold = mx.load_model(str(nnunet["folder"]), device="cpu")
    with pytest.raises(ValueError, match="at least 2 folds, got 1 .fold 0"):
        mx.models.fold_members(one_fold)
    demo = mx.load_model("demo", device="cpu")
    with pytest.raises(ValueError, match="expected an nnU-Net model .*got a demo model"):
        mx.models.fold_members(demo)
    with pytest.raises(ValueError, match="at least 2 models"):
        check_members([demo], demo)
    with pytest.raises(ValueError, match="expected a SegmentationAdapter"):
        check_members([demo, "model.pt"], demo)


@pytest.fixture(scope="module")
def fold_audit(nnunet, folds3):
    cohort = mx.Cohort.from_csv(nnunet["dir"] / "manifest.csv")
    return mx.audit(cohort, adapter=folds3["adapter"], uncertainty={"flips": (0,)},
                    uncertainty_members="folds", failure={"hidden_strata": False},
                    progress=False, workers=1)


def test_audit_with_fold_members(nnunet, folds3, fold_audit, tmp_path) -> None:
    r, a = fold_audit, folds3["adapter"]
    assert (r.cases["status"] == "ok").all()
    # 3 folds x (image + 1 flip): members only feed the uncertainty...
    assert (r.cases["unc_members"] == 6).all() and (r.cases["unc_disagreement"] > 0).all()
    # ...the metrics stay those of the fold ensemble the user passed (the resampled scan)
    image, label = nnunet["cases"][1]
    img, affine = _image(image)
    pred = a.with_geometry(affine=affine).predict(img).numpy()[0] == 1
    assert r.cases["dice"][1] == pytest.approx(dice(pred, np.asarray(nib.load(label).dataobj) > 0))
    src = r.settings["uncertainty_source"]
    assert src["kind"] == "folds" and src["n_models"] == 3 and src["n_members"] == 6
    assert [m["name"] for m in src["models"]] == ["fold 0", "fold 1", "fold 2"]
    fps = [m.fingerprint for m in folds3["members"]]
    assert [m["fingerprint"] for m in src["models"]] == fps
    assert r.provenance["uncertainty_members"] == fps
    assert src["description"] == ("disagreement between the 3 fold models of the nnU-Net "
                                  "model, each on the image as given and 1 flipped copy "
                                  "(6 members per scan)")
    r.to_json(tmp_path / "audit.json")
    doc = json.loads((tmp_path / "audit.json").read_text())
    assert doc["settings"]["uncertainty_source"] == src
    assert doc["provenance"]["uncertainty_members"] == fps
    # the report's failure-detection section names the source (from the JSON: same words)
    from medseg_xai.audit.result import AuditResult

    html = AuditResult.from_json(tmp_path / "audit.json").to_html(tmp_path / "r.html")
    text = Path(html).read_text()
    import html as html_lib

    assert f"Where the uncertainty scores come from: {html_lib.escape(src['description'])}." in text


def test_cli_ensemble_model_and_errors(nnunet, folds3, tmp_path, capsys) -> None:
    manifest, folder = str(nnunet["dir"] / "manifest.csv"), str(folds3["folder"])
    base = ["audit", manifest, "--device", "cpu", "--quiet", "--no-html", "--workers", "1",
            "--gallery", "0", "--feature-layer", "none"]
    rc = main([*base, "--model", folder, "--ensemble-model", str(nnunet["folder"]),
               "--out", str(tmp_path / "a")])
    assert rc in (0, 3)
    doc = json.loads((tmp_path / "a" / "audit.json").read_text())
    src = doc["settings"]["uncertainty_source"]
    assert src["kind"] == "models" and src["n_members"] == 2
    assert [m["audited"] for m in src["models"]] == [True, False]
    assert src["models"][0]["fingerprint"] == folds3["adapter"].fingerprint
    assert src["description"].startswith("disagreement between 2 models (the audited model "
                                         "and 1 other)")
    cases = doc["tables"]["cases"]
    col = cases["columns"].index("unc_members")
    assert {row[col] for row in cases["data"]} == {2}
    capsys.readouterr()
    # 'folds' with a model that is not nnU-Net's: exit 2, one line naming what was expected
    assert main([*base, "--model", "demo", "--uncertainty-members", "folds",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "expected an nnU-Net model" in err and len(err.splitlines()) == 1
    assert main([*base, "--uncertainty-members", "folds", "--out", str(tmp_path / "c")]) == 2
    assert "expected --model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: one or the other
        main([*base, "--model", folder, "--uncertainty-members", "folds", "--ensemble-model",
              folder, "--out", str(tmp_path / "d")])
    assert exc.value.code == 2


def test_determinism_probe_runs_the_exact_path_on_the_scans_geometry(nnunet, folds3,
                                                                    monkeypatch) -> None:
    """The audit's two-pass probe predicts as the audit does: nnU-Net's own predictor on the
    scan's spacing, never the differentiable path (which cost seconds per fold here)."""
    from medseg_xai.audit.model_checks import probe_model
    from medseg_xai.models.nnunet import NnUNetPipeline

    seen = []
    real = NnUNetPipeline.exact_logits

    def exact(self, x):
        seen.append(self.spacing)
        return real(self, x)

    def refuse(self, x):
        raise AssertionError("the probe took the differentiable path")

    monkeypatch.setattr(NnUNetPipeline, "exact_logits", exact)
    monkeypatch.setattr(NnUNetPipeline, "forward", refuse)
    cohort = mx.Cohort.from_csv(nnunet["dir"] / "manifest.csv")
    rec = probe_model(folds3["adapter"], cohort, seed=0)
    assert rec is not None and rec["deterministic"] is True
    _, affine = _image(Path(cohort.paths(rec["case_id"])["image"]))
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    assert seen and all(s == pytest.approx(spacing) for s in seen)
