"""mx.load_model on TorchScript, checkpoint + class and ONNX files (issue #22): the format is
recognised, predictions agree with the framework's own inference, the CLI runs `audit` and
`explain --lesion`, attribution NIfTIs carry the source affine, the fingerprint is the weights'
or the file's."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.networks.nets import UNet

import medseg_xai as mx
from medseg_xai.cli import main
from medseg_xai.metrics import dice

KWARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 8],
          "strides": [2, 2], "num_res_units": 0}
CLASS = "monai.networks.nets:UNet"
SHAPES = [((16, 20, 12), (1.5, 1.2, 2.0)), ((18, 16, 16), (0.8, 0.9, 1.1))]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = UNet(**KWARGS).eval()
    torch.save({"state_dict": net.state_dict()}, d / "net.pt")
    torch.jit.trace(net, torch.zeros(1, 1, 16, 16, 16)).save(str(d / "net.ts"))
    dyn = {0: "n", 2: "d", 3: "h", 4: "w"}
    torch.onnx.export(net, torch.zeros(1, 1, 16, 16, 16), str(d / "net.onnx"), input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": dyn, "y": dyn}, dynamo=False)
    rows = []
    for i, (shape, sp) in enumerate(SHAPES):
        rng = np.random.RandomState(i)
        img = rng.rand(*shape).astype(np.float32)
        ref = np.zeros(shape, np.uint8)
        ref[5:10, 5:10, 4:9] = 1
        img[ref > 0] += 1.0
        aff = np.diag([*sp, 1.0])
        aff[:3, 3] = [-10.0, 5.0, 3.0]
        nib.save(nib.Nifti1Image(img, aff), d / f"c{i}_img.nii.gz")
        nib.save(nib.Nifti1Image(ref, aff), d / f"c{i}_ref.nii.gz")
        rows.append({"case_id": f"c{i}", "image": f"c{i}_img.nii.gz",
                     "label": f"c{i}_ref.nii.gz", "site": "AB"[i]})
    pd.DataFrame(rows).to_csv(d / "manifest.csv", index=False)
    return {"dir": d, "net": net}


def _spec(files: dict, fmt: str) -> tuple[str, dict]:
    d = files["dir"]
    return {"torchscript": (str(d / "net.ts"), {}), "onnx": (str(d / "net.onnx"), {}),
            "checkpoint": (str(d / "net.pt"), {"model_class": CLASS, "model_kwargs": KWARGS})}[fmt]


@pytest.mark.parametrize("fmt", ["torchscript", "checkpoint", "onnx"])
def test_format_detected_and_predictions_agree(files, fmt: str) -> None:
    import onnxruntime as ort

    path, opts = _spec(files, fmt)
    ad = mx.load_model(path, device="cpu", **opts)
    assert ad.info["format"] == fmt
    sess = ort.InferenceSession(str(files["dir"] / "net.onnx"))
    for i, (shape, _) in enumerate(SHAPES):
        img = nib.load(files["dir"] / f"c{i}_img.nii.gz").get_fdata().astype(np.float32)
        ours = ad.predict(img[None]).numpy()[0]
        # the framework's own inference on the padded grid (divisor 4), cropped back
        pad = [(((-s) % 4) // 2, (-s) % 4 - ((-s) % 4) // 2) for s in shape]
        x = np.pad(img, pad)[None, None]
        if fmt == "onnx":
            y = sess.run(None, {"x": x})[0]
        else:
            with torch.no_grad():
                y = files["net"](torch.from_numpy(x)).numpy()
        crop = tuple(slice(lo, lo + s) for (lo, _), s in zip(pad, shape))
        theirs = y[0].argmax(0)[crop]
        assert dice(ours == 1, theirs == 1) >= 0.999 or not (theirs == 1).any() and not (
            ours == 1).any()
        assert (ours == theirs).mean() >= 0.999


def test_fingerprints_are_of_weights_or_file(files) -> None:
    empty = hashlib.sha256().hexdigest()[:16]
    d = files["dir"]
    onnx_ad = mx.load_model(str(d / "net.onnx"), device="cpu")
    assert onnx_ad.fingerprint == hashlib.sha256(b"net.onnx" + (d / "net.onnx").read_bytes()
                                                 ).hexdigest()[:16]
    ts = mx.load_model(str(d / "net.ts"), device="cpu")
    ck = mx.load_model(str(d / "net.pt"), device="cpu", model_class=CLASS, model_kwargs=KWARGS)
    assert ts.fingerprint == ck.fingerprint == mx.SegmentationAdapter(files["net"]).fingerprint
    assert empty not in (onnx_ad.fingerprint, ts.fingerprint)


def test_onnx_is_gradient_free_with_a_clear_message(files) -> None:
    ad = mx.load_model(str(files["dir"] / "net.onnx"), device="cpu")
    img = nib.load(files["dir"] / "c0_img.nii.gz").get_fdata().astype(np.float32)[None]
    target = mx.targets.region(1, np.ones(img.shape[1:], bool))
    with pytest.raises(ValueError, match="methods that work: 'occlusion', 'feature_ablation'"):
        mx.explain(ad, img, target, method="integrated_gradients")
    exp = mx.explain(ad, img, target, method="occlusion", window=8)
    assert np.abs(exp.attribution).sum() > 0
    from medseg_xai.explain.quality import randomised_copy

    rand = randomised_copy(ad, 0)  # the ONNX initialisers, re-drawn
    assert not torch.equal(rand.logits(img), ad.logits(img))


def test_checkpoint_needs_its_class(files) -> None:
    with pytest.raises(ValueError, match="--model-class"):
        mx.load_model(str(files["dir"] / "net.pt"), device="cpu")
    with pytest.raises(ValueError, match="does not fit"):
        mx.load_model(str(files["dir"] / "net.pt"), device="cpu", model_class=CLASS,
                      model_kwargs={**KWARGS, "channels": [4, 8, 16]})


@pytest.mark.parametrize("fmt", ["onnx", "checkpoint"])
def test_cli_audit_explain_and_model_info(files, fmt: str, tmp_path, capsys) -> None:
    d = files["dir"]
    path, opts = _spec(files, fmt)
    extra = ["--model-class", CLASS, "--model-kwargs", json.dumps(KWARGS)] if opts else []
    rc = main(["audit", str(d / "manifest.csv"), "--model", path, *extra, "--device", "cpu",
               "--out", str(tmp_path / "a"), "--quiet", "--no-html", "--workers", "1",
               "--gallery", "0", "--max-failed", "0", "--feature-layer", "none"])
    assert rc in (0, 3)
    audit = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert audit["provenance"]["model_fingerprint"] == mx.load_model(path, "cpu",
                                                                     **opts).fingerprint
    cases = pd.read_csv(tmp_path / "a" / "cases.csv")
    assert (cases["status"] == "ok").all(), cases["error"].tolist()
    method = "occlusion" if fmt == "onnx" else "saliency"
    rc = main(["explain", str(d / "c0_img.nii.gz"), "--ref", str(d / "c0_ref.nii.gz"), "--model",
               path, *extra, "--lesion", "ref-1", "--method", method, "--window", "8",
               "--out", str(tmp_path / "e")])
    assert rc == 0
    nii = nib.load(tmp_path / "e" / f"c0_img_ref-1_{method}.nii.gz")
    np.testing.assert_allclose(nii.affine, nib.load(d / "c0_img.nii.gz").affine, atol=1e-5)
    capsys.readouterr()
    assert main(["model-info", path, *extra, "--device", "cpu", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == fmt and info["channels"] == 1 and info["divisor"] == [4, 4, 4]


@pytest.mark.parametrize("fmt", ["torchscript", "checkpoint", "onnx"])
def test_adapters_pickle_for_audit_workers(files, fmt: str) -> None:
    import pickle

    path, opts = _spec(files, fmt)
    ad = mx.load_model(path, device="cpu", **opts)
    twin = pickle.loads(pickle.dumps(ad))
    img = np.random.RandomState(0).rand(1, 16, 12, 16).astype(np.float32)
    assert twin.fingerprint == ad.fingerprint
    torch.testing.assert_close(twin.logits(img), ad.logits(img))
