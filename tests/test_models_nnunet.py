"""nnU-Net v2 results folders through mx.load_model (issue #22).

The folder is made by nnU-Net's own fingerprint extractor, planner, preprocessor and trainer
(tests/nnunet_fixture.py) on four tiny synthetic cases; nothing is downloaded. The exact path
must agree with ``nnUNetPredictor`` itself (Dice >= 0.999) on scans at the model's and at other
spacings; Grad-CAM must equal a map computed on nnU-Net's grid and mapped back by hand; a
pipeline that forgets nnU-Net's axis order fails the alignment gate.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2")

import medseg_xai as mx  # noqa: E402
from medseg_xai.cli import main  # noqa: E402
from medseg_xai.metrics import dice  # noqa: E402

pytestmark = pytest.mark.slow  # nnU-Net's planner runs once per session (tens of seconds)
# the session fixture ``nnunet`` (folder, cases on these grids) is in conftest.py: shared
# with tests/test_ensemble_members.py, so nnU-Net's planner runs once per session
from conftest import NNUNET_GRIDS as GRIDS  # noqa: E402


@pytest.fixture(scope="session")
def adapter(nnunet):
    return mx.load_model(str(nnunet["folder"]), device="cpu")


def _nnunet_own(pr, image: Path) -> np.ndarray:
    """nnU-Net's own inference: its reader (SimpleITK) and predictor; back in NIfTI order."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    img, props = SimpleITKIO().read_images([str(image)])
    return pr.predict_single_npy_array(img, props, None, None, False).transpose(2, 1, 0)


def test_recognised_and_described(nnunet, adapter) -> None:
    info = mx.models.model_info(adapter)
    assert info["format"] == "nnunet" and info["configuration"] == "3d_fullres"
    assert info["classes"] == ["background", "lesion"] and info["channels"] == 1
    assert info["spacing"] == [1.0, 1.0, 2.0] and info["folds"] == ["0"]
    assert info["normalisation"] == "ZScoreNormalization" and info["mirroring_axes"] == [0, 1, 2]
    ck = nnunet["folder"] / "fold_0" / "checkpoint_final.pth"
    import hashlib

    assert adapter.fingerprint == hashlib.sha256(b"checkpoint_final.pth" + ck.read_bytes()
                                                 ).hexdigest()[:16]


def test_exact_path_agrees_with_nnunet_predictor(nnunet, adapter) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    pr = nnUNetPredictor(device=torch.device("cpu"), perform_everything_on_device=False,
                         allow_tqdm=False)
    pr.initialize_from_trained_model_folder(str(nnunet["folder"]), use_folds=(0,))
    for image, _ in nnunet["cases"]:
        nii = nib.load(image)
        img = np.asarray(nii.dataobj, np.float32)
        ours = adapter.with_geometry(affine=nii.affine).predict(img[None]).numpy()[0]
        theirs = _nnunet_own(pr, image)
        assert (theirs == 1).any()
        assert dice(ours == 1, theirs == 1) >= 0.999, image.name


def test_differentiable_path_is_close(nnunet, adapter) -> None:
    """Trilinear instead of nnU-Net's spline resampling: the measured gap (docs/models.md)."""
    for image, _ in nnunet["cases"]:
        nii = nib.load(image)
        img = np.asarray(nii.dataobj, np.float32)[None]
        a = adapter.with_geometry(affine=nii.affine)
        exact = a.predict(img).numpy()[0]
        diff = a.logits(img).argmax(1).numpy()[0]
        assert dice(diff == 1, exact == 1) >= 0.9, image.name


def _hand_mapped_cam(a, img: np.ndarray, target, layer: str) -> np.ndarray:
    """Grad-CAM on nnU-Net's own grid, mapped back by hand: un-pad, reverse the axes, resample
    to the source grid (the test image needs no crop, no resampling along the way)."""
    from captum.attr import LayerGradCam

    pipe = a.model
    x = torch.from_numpy(img[None])
    module = dict(pipe.named_modules())[layer]
    with pipe.single_pass():
        cam = LayerGradCam(lambda t: target(pipe(t)), module).attribute(
            x, relu_attributions=False).detach()
    last = pipe._last
    up = torch.nn.functional.interpolate(cam, size=tuple(last["padded"]), mode="trilinear",
                                         align_corners=False)[0, 0]
    crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(last["pads"], last["pre_shape"]))
    zyx = up[crop][None, None]
    zyx = torch.nn.functional.interpolate(zyx, size=last["cropped_shape"], mode="trilinear",
                                          align_corners=False)[0, 0]
    return zyx.numpy().transpose(2, 1, 0)


def test_gradcam_is_mapped_back_through_the_inverse(nnunet, adapter) -> None:
    image, label = nnunet["cases"][0]
    nii = nib.load(image)
    img = np.asarray(nii.dataobj, np.float32)[None]
    a = adapter.with_geometry(affine=nii.affine)
    target = mx.targets.region(1, np.asarray(nib.load(label).dataobj) > 0)
    layer = "networks.0.encoder.stages.0"
    ours = mx.explain(a, img, target, method="gradcam", layer=layer, relu=False).attribution
    hand = _hand_mapped_cam(a, img, target, layer)
    assert ours.shape == img.shape[1:]
    assert np.corrcoef(ours.ravel(), hand.ravel())[0, 1] >= 0.99
    naive = torch.nn.functional.interpolate(  # the old bug: layer grid straight onto the input
        torch.from_numpy(hand.transpose(2, 1, 0).copy())[None, None], size=img.shape[1:],
        mode="trilinear", align_corners=False)[0, 0].numpy()
    assert np.corrcoef(ours.ravel(), naive.ravel())[0, 1] < 0.9


def test_alignment_gate_fails_for_a_transposed_pipeline(nnunet, adapter, monkeypatch) -> None:
    from medseg_xai.models.nnunet import NnUNetPipeline

    a = adapter.with_geometry(spacing=GRIDS[1][1])
    assert a.model.alignment_error(GRIDS[1][0]) <= 1.0
    # deliberately transposed: the way back skips the axis reversal (resampled onto the grid)
    def no_reverse(y):
        return torch.nn.functional.interpolate(
            y[None], size=GRIDS[1][0], mode="trilinear", align_corners=False)[0]

    monkeypatch.setattr(NnUNetPipeline, "_to_source_axes", staticmethod(no_reverse))
    assert a.model.alignment_error(GRIDS[1][0]) > 3.0


def test_cli_audit_explain_model_info(nnunet, tmp_path, capsys) -> None:
    folder, d = str(nnunet["folder"]), nnunet["dir"]
    rc = main(["audit", str(d / "manifest.csv"), "--model", folder, "--device", "cpu", "--out",
               str(tmp_path / "a"), "--quiet", "--no-html", "--workers", "1", "--gallery", "0",
               "--feature-layer", "none"])
    assert rc in (0, 3)
    text = (tmp_path / "a" / "cases.csv").read_text()
    assert text.count(",ok,") == len(GRIDS), text
    image, label = nnunet["cases"][0]  # fits one patch: Grad-CAM is mapped back
    rc = main(["explain", str(image), "--ref", str(label), "--model", folder, "--lesion",
               "ref-1", "--method", "gradcam", "--method", "saliency", "--out",
               str(tmp_path / "e")])
    assert rc == 0
    stem = image.name.removesuffix(".nii.gz")
    for method in ("gradcam", "saliency"):
        out = nib.load(tmp_path / "e" / f"{stem}_ref-1_{method}.nii.gz")
        np.testing.assert_allclose(out.affine, nib.load(image).affine, atol=1e-5)
    miss = json.loads((tmp_path / "e" / f"{stem}_ref-1_miss.json").read_text())
    cam = next(r for r in miss["evidence"] if r["method"] == "gradcam")
    assert "misaligned" not in cam["reason"]
    capsys.readouterr()
    assert main(["model-info", folder, "--device", "cpu"]) == 0
    assert "nnunet" in capsys.readouterr().out


def test_exported_zip_loads_the_same_model(nnunet, adapter, tmp_path) -> None:
    """The layout of nnUNetv2_export_model_to_zip: Dataset/Trainer__Plans__Config/... inside."""
    import zipfile

    folder = nnunet["folder"]
    zpath = tmp_path / "model.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in ["plans.json", "dataset.json", "dataset_fingerprint.json",
                  "fold_0/checkpoint_final.pth"]:
            z.write(folder / f, f"{folder.parent.name}/{folder.name}/{f}")
    assert mx.models.detect_format(zpath) == "nnunet"
    z_ad = mx.load_model(str(zpath), device="cpu")
    assert z_ad.fingerprint == adapter.fingerprint
    image, _ = nnunet["cases"][0]
    nii = nib.load(image)
    img = np.asarray(nii.dataobj, np.float32)[None]
    np.testing.assert_array_equal(z_ad.with_geometry(affine=nii.affine).predict(img).numpy(),
                                  adapter.with_geometry(affine=nii.affine).predict(img).numpy())
