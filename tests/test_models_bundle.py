"""MONAI bundles through mx.load_model (issue #22): the bundle's own preprocessing (Orientationd,
Spacingd, NormalizeIntensityd) and inferer, mapped back to the source grid; agreement with the
bundle's own inference (its parsed preprocessing, inferer and postprocessing with Invertd) on
scans at other spacings than the model's; gradients and Grad-CAM through the pipeline."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

import medseg_xai as mx
from medseg_xai.cli import main
from medseg_xai.metrics import dice

NET = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1,
       "out_channels": 2, "channels": [4, 8, 8], "strides": [2, 2], "num_res_units": 0}
CONFIG = {
    "bundle_root": ".",
    "image_key": "image",
    "network_def": NET,
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "@image_key", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [1.5, 1.5, 1.5],
         "mode": "bilinear"},
        {"_target_": "NormalizeIntensityd", "keys": "@image_key"}]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32],
                "sw_batch_size": 1, "overlap": 0.25},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing",
         "orig_keys": "@image_key", "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
}
# source grids: other spacings than the model's 1.5 mm, one with flipped axes (LPS-like)
GRIDS = [((20, 24, 14), (1.0, 1.2, 2.0), (1, 1, 1)), ((16, 18, 22), (2.0, 1.8, 1.1), (-1, -1, 1))]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("bundle")
    (d / "configs").mkdir()
    (d / "models").mkdir()
    (d / "configs" / "inference.json").write_text(json.dumps(CONFIG))
    (d / "configs" / "metadata.json").write_text(json.dumps({"name": "tiny", "network_data_format": {
        "inputs": {"image": {"num_channels": 1}},
        "outputs": {"pred": {"channel_def": {"0": "background", "1": "lesion"}}}}}))
    torch.manual_seed(0)
    from monai.networks.nets import UNet

    net = UNet(**{k: v for k, v in NET.items() if k != "_target_"})
    with torch.no_grad():  # a lesion detector by construction: bias the head towards intensity
        net.model[-1].conv.bias.copy_(torch.tensor([0.3, -0.3]))
    torch.save(net.state_dict(), d / "models" / "model.pt")
    cases = []
    for i, (shape, sp, flips) in enumerate(GRIDS):
        rng = np.random.RandomState(i)
        img = rng.rand(*shape).astype(np.float32)
        ref = np.zeros(shape, np.uint8)
        ref[6:12, 6:12, 5:10] = 1
        img[ref > 0] += 2.0
        aff = np.diag([*(f * s for f, s in zip(flips, sp)), 1.0])
        aff[:3, 3] = [5.0, -3.0, 2.0]
        nib.save(nib.Nifti1Image(img, aff), d / f"c{i}_img.nii.gz")
        nib.save(nib.Nifti1Image(ref, aff), d / f"c{i}_ref.nii.gz")
        cases.append((d / f"c{i}_img.nii.gz", d / f"c{i}_ref.nii.gz"))
    (d / "manifest.csv").write_text("case_id,image,label\n" + "".join(
        f"c{i},{a.name},{b.name}\n" for i, (a, b) in enumerate(cases)))
    return {"dir": d, "cases": cases}


def _bundle_own_inference(d, image_path) -> np.ndarray:
    """What the bundle's evaluator does: preprocessing from the file, inferer, postprocessing."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(d / "configs" / "inference.json"))
    parser["bundle_root"] = str(d)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(d / "models" / "model.pt", weights_only=True))
    net.eval()
    data = parser.get_parsed_content("preprocessing")({"image": str(image_path)})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], net)[0]
    out = parser.get_parsed_content("postprocessing")(data)["pred"]
    return np.asarray(out[0])


def test_bundle_agrees_with_its_own_inference(bundle) -> None:
    d = bundle["dir"]
    ad = mx.load_model(str(d), device="cpu")
    assert ad.info["format"] == "monai_bundle" and ad.class_names == ["background", "lesion"]
    assert ad.info["spacing"] == [1.5, 1.5, 1.5]
    for img_path, _ in bundle["cases"]:
        nii = nib.load(img_path)
        img = np.asarray(nii.dataobj, dtype=np.float32)
        ours = ad.with_geometry(affine=nii.affine).predict(img[None]).numpy()[0]
        theirs = _bundle_own_inference(d, img_path)
        assert ours.shape == img.shape == theirs.shape
        assert (theirs == 1).any()
        assert dice(ours == 1, theirs == 1) >= 0.999
        assert (ours == theirs).mean() >= 0.999


def test_bundle_gradients_and_gradcam_come_back_to_the_source_grid(bundle) -> None:
    d = bundle["dir"]
    img_path, ref_path = bundle["cases"][1]
    nii = nib.load(img_path)
    img = np.asarray(nii.dataobj, dtype=np.float32)[None]
    ref = np.asarray(nib.load(ref_path).dataobj) > 0
    ad = mx.load_model(str(d), device="cpu").with_geometry(affine=nii.affine)
    target = mx.targets.region(1, ref)
    sal = mx.explain(ad, img, target, method="saliency").attribution
    assert sal.shape == ref.shape and np.abs(sal).sum() > 0
    cam = mx.explain(ad, img, target, method="gradcam", layer="network.model.0",
                     relu=False).attribution
    assert cam.shape == ref.shape and np.isfinite(cam).all() and np.abs(cam).sum() > 0


def test_bundle_cli_audit_and_explain(bundle, tmp_path) -> None:
    d = bundle["dir"]
    rc = main(["audit", str(d / "manifest.csv"), "--model", str(d), "--device", "cpu", "--out",
               str(tmp_path / "a"), "--quiet", "--no-html", "--workers", "1", "--gallery", "0",
               "--feature-layer", "none"])
    assert rc in (0, 3)
    cases = (tmp_path / "a" / "cases.csv").read_text()
    assert ",ok," in cases
    img, ref = bundle["cases"][0]
    rc = main(["explain", str(img), "--ref", str(ref), "--model", str(d), "--lesion", "ref-1",
               "--method", "saliency", "--out", str(tmp_path / "e")])
    assert rc == 0
    out = nib.load(tmp_path / "e" / "c0_img_ref-1_saliency.nii.gz")
    np.testing.assert_allclose(out.affine, nib.load(img).affine, atol=1e-5)
